"""Helpers of the loss-space tests (tests/test_weighting.py and
tests/loss_weighting/test_<name>.py): a sequence of losses and stacked task grads,
and a jitted run of a transform over it."""

import jax
import jax.numpy as jnp
import numpy as np

K = 3
T = 8


def sequence(seed=0, t=T, k=K, low=0.2, high=3.0):
  rng = np.random.default_rng(seed)
  losses = rng.uniform(low, high, size=(t, k))
  grads = [{"a": rng.normal(size=(k, 3)), "b": rng.normal(size=(k, 2, 2))} for _ in range(t)]
  return losses, grads


def flat(tg):
  return np.concatenate([np.asarray(tg["a"]).reshape(K, -1),
                         np.asarray(tg["b"]).reshape(K, -1)], axis=1)


def run(tx, losses, grads, params=None):
  update = jax.jit(tx.update)
  state = tx.init(params)
  outs = []
  for l, g in zip(losses, grads):
    out, state = update(g, state, params, task_losses=jnp.asarray(l))
    outs.append(flat(out))
  return np.stack(outs), state
