"""Linear scalarization: the sum (or a fixed weighted sum) of the task gradients."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import optax

from mtlx import validation
from mtlx.aggregators._extras import fixed_weighting


def linear_scalarization(weights: Any = None) -> optax.GradientTransformationExtraArgs:
  """Linear scalarization as a gradient-space transform: stacked grads -> one update.

  .. math::  d = \\sum_k w_k\\, g_k = w^T J, \\qquad w = \\mathbf{1} \\text{ by default.}

  The baseline every MTO method is compared with (the gradient of ``Σ_k w_k L_k``).
  Non-conflicting only when the task gradients do not conflict; linear under
  scaling; permutation-invariant for uniform weights; K=1 returns ``w_1 g_1``.

  Args:
    weights: ``None`` for the plain sum, or a fixed ``[K]`` vector of weights.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update(task_grads, state,
    params=None, **extra)`` maps per-task grads (leading K axis on every leaf) to
    one params-shaped update. Extra arguments (``task_losses`` ...) are ignored.

  Raises:
    ValueError: at trace time, if ``weights`` is not a vector of length K.

  Cost: ``K P`` multiply-adds; no state. Equals one backward pass of the weighted
  loss, which is how a trainer should compute it when nothing else needs the
  per-task grads.
  """
  fixed = None if weights is None else jnp.asarray(weights)
  if fixed is not None:
    validation.check_vector(fixed, None, "weights")

  def weights_for(k):
    if fixed is None:
      return jnp.ones((k,), jnp.float32)
    validation.check_vector(fixed, k, "weights")
    return fixed

  return fixed_weighting(weights_for, name="linear_scalarization")
