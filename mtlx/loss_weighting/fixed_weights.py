"""Fixed per-task loss weights."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import optax

from mtlx import validation
from mtlx.loss_weighting import base


def fixed_weights(weights: Any) -> optax.GradientTransformationExtraArgs:
  """Fixed loss weights: ``g_k -> w_k g_k`` with a constant ``w``.

  .. math::  \\min_θ \\sum_k w_k L_k(θ)

  The hand-tuned weighted sum that every adaptive weighting is compared with;
  chained with ``mtlx.linear_scalarization()`` it equals
  ``mtlx.linear_scalarization(weights)``.

  Args:
    weights: a ``[K]`` vector of per-task weights (K is taken from it).

  Returns:
    A loss-space ``optax.GradientTransformationExtraArgs`` (stacked grads ->
    re-weighted stacked grads); ``update`` still requires ``task_losses`` of
    shape [K] (a non-finite loss gives a non-finite update). No state.

  Raises:
    ValueError: if ``weights`` is not a vector, or at trace time if the update's
      K differs from ``len(weights)`` (naming both).

  Cost: ``K P`` multiplies; one-backward path: ``Σ_k w_k L_k``.
  """
  fixed = jnp.asarray(weights)
  validation.check_vector(fixed, None, "weights")
  k = int(fixed.shape[0])

  def weight_fn(state, task_losses):
    return fixed.astype(base.compute_dtype(task_losses)), state

  return base.loss_weighting(weight_fn, num_tasks=k, name="fixed_weights")
