"""STCH (Lin et al. 2024): μ = 1 on raw log losses is uniform.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, strategies as st

import mtlx


STEPS = 4


def _losses(seed, k, low=-3.0, high=3.0):
  rng = np.random.default_rng(seed)
  return 10.0 ** rng.uniform(low, high, size=(STEPS, k))


@functools.lru_cache(maxsize=None)
def _stch_mu_one(k):
  tx = mtlx.stch(mu=1.0, num_tasks=k)

  @jax.jit
  def run(losses):
    state, out = tx.init(None), []
    for t in range(STEPS):
      w, state = mtlx.loss_weights(tx, state, losses[t])
      out.append(w)
    return jnp.stack(out)

  return run


@given(k=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_mu_one_on_raw_log_losses_is_uniform(k, seed):
  # K μ log Σ exp(log L_k / μ) with μ = 1 is K log Σ L_k: weights K / Σ L for all k.
  losses = _losses(seed, k, -2, 2)
  w = np.asarray(_stch_mu_one(k)(losses))
  np.testing.assert_allclose(w, np.broadcast_to(k / np.sum(losses, axis=1, keepdims=True), w.shape),
                             rtol=1e-10)
