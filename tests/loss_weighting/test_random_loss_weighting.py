"""Random loss weighting (Lin et al. 2022): the key schedule against the NumPy
reference; random weights with unit mean.
"""

import jax
import jax.numpy as jnp
import numpy as np

import mtlx
from tests.loss_weighting.sequences import K, T, flat, run, sequence
from tests.reference import loss_weighting_ref as ref


def test_matches_reference_key_schedule():
  losses, grads = sequence(seed=3)
  outs, _ = run(mtlx.random_loss_weighting(seed=7), losses, grads)
  key = jax.random.PRNGKey(7)
  draws = []
  for _ in range(T):
    key, sub = jax.random.split(key)
    draws.append(np.asarray(jax.random.normal(sub, (K,), jnp.float32), np.float64))
  w = ref.rlw(np.stack(draws))
  want = np.stack([wt[:, None] * flat(g) for wt, g in zip(w, grads)])
  np.testing.assert_allclose(outs, want, rtol=1e-6)
  # different seeds give different weights; same seed the same
  outs2, _ = run(mtlx.random_loss_weighting(seed=8), losses, grads)
  assert np.abs(outs2 - outs).max() > 1e-3


def test_weights_are_random_with_unit_mean():
  tx = mtlx.random_loss_weighting(seed=0)
  run = jax.jit(lambda s: mtlx.loss_weights(tx, s, jnp.ones(4)))
  s = tx.init(None)
  ws = []
  for _ in range(400):
    w, s = run(s)
    ws.append(np.asarray(w))
  ws = np.stack(ws)
  # E[K softmax(z)_k] = 1 by symmetry; 400 draws: standard error ~0.04
  np.testing.assert_allclose(ws.mean(0), 1.0, atol=0.15)
  assert ws.std(0).min() > 0.3
