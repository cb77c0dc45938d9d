"""Scale-invariant loss: the sum of log losses."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from mtlx import validation
from mtlx.loss_weighting import base


def positive_losses(task_losses: jax.Array, eps: float) -> jax.Array:
  """``max(L, ε)``: the floor of the log-loss methods (their ``log L`` needs ``L > 0``).

  A zero, tiny or NEGATIVE finite loss (a Gaussian NLL, a loss with a constant
  subtracted) counts as ``ε``: the weights stay finite and positive, and the task
  gets the largest weight (``1/ε``-like), as a loss at its floor would. Shift such
  losses to be positive for the methods' intended behaviour. NaN propagates
  (``jnp.maximum``); ``+inf`` stays ``+inf``; either way the transform's guard
  makes the update non-finite (:func:`mtlx.validation.guard_step`)."""
  return jnp.maximum(task_losses, eps)


def scale_invariant(eps: float = 1e-8) -> optax.GradientTransformationExtraArgs:
  """Scale-invariant loss ``Σ_k log L_k``: weights ``1 / L_k``.

  .. math::  \\nabla_θ \\sum_k \\log L_k = \\sum_k \\frac{1}{L_k} \\nabla_θ L_k,
             \\qquad w_k = 1 / \\max(L_k, ε)

  Invariant to a rescaling ``L_k -> c_k L_k`` of any task. Also the loss part of
  DB-MTL (Lin et al. 2023), whose gradient part is ``mtlx.db_mtl``.

  Args:
    eps: ``ε > 0``, the floor of the losses: a zero, tiny or negative finite
      loss counts as ``ε`` (finite weights; see
      :func:`mtlx.loss_weighting.scale_invariant.positive_losses`); a non-finite
      loss gives a non-finite update.

  Returns:
    A stateless loss-space ``optax.GradientTransformationExtraArgs``.

  Reference: the "SI" baseline of A. Navon et al., "Multi-Task Learning as a
  Bargaining Game" (Nash-MTL), ICML 2022.

  Cost: O(K); works on the one-backward path.
  """
  validation.check_number(eps, "eps", low=0, low_open=True, method="scale_invariant")

  def weight_fn(state, task_losses):
    losses = positive_losses(task_losses.astype(base.compute_dtype(task_losses)), eps)
    return 1.0 / losses, state

  return base.loss_weighting(weight_fn, name="scale_invariant")
