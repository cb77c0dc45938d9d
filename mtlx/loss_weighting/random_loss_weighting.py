"""Random Loss Weighting (Lin et al., TMLR 2022)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import optax

from mtlx import validation
from mtlx.loss_weighting import base


class RLWState(NamedTuple):
  """The PRNG key for the next draw."""
  key: jax.Array


def random_loss_weighting(seed: int = 0) -> optax.GradientTransformationExtraArgs:
  """Random Loss Weighting (RLW): fresh random weights at every update.

  .. math::  z \\sim \\mathcal{N}(0, I_K),\\qquad w = K\\,\\mathrm{softmax}(z)

  The paper's weights are ``softmax(z)`` (sum 1); mtlx scales them by K so they
  sum to K, like the unit weights of linear scalarization (the update of RLW is
  then an unbiased-scale random perturbation of it). Key schedule: ``key, sub =
  jax.random.split(state.key)``; ``z = jax.random.normal(sub, (K,), float32)``.

  Args:
    seed: seeds the PRNG key held in the state.

  Returns:
    A loss-space ``optax.GradientTransformationExtraArgs``; state
    :class:`RLWState`. K is read from the update (no ``num_tasks`` needed).

  Reference: B. Lin, F. Ye, Y. Zhang, I. W. Tsang, "Reasonable Effectiveness of
  Random Weighting: A Litmus Test for Multi-Task Learning", TMLR 2022 (normal
  distribution + softmax, their default).

  Cost: one K-sample draw per update; works on the one-backward path.
  """
  validation.check_number(seed, "seed", integer=True, method="random_loss_weighting")

  def init_fn(k):
    del k
    return RLWState(jax.random.PRNGKey(seed))

  def weight_fn(state, task_losses):
    k = task_losses.shape[0]
    key, sub = jax.random.split(state.key)
    z = jax.random.normal(sub, (k,), jax.numpy.float32)
    weights = k * jax.nn.softmax(z.astype(base.compute_dtype(task_losses)))
    return weights, RLWState(key)

  return base.loss_weighting(weight_fn, init_fn=init_fn, name="random_loss_weighting")
