"""Scale-invariant loss: the sum of log losses."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from mtlx import validation
from mtlx.loss_weighting import base


def positive_losses(task_losses: jax.Array, eps: float) -> jax.Array:
  """``max(L, eps)`` for ``L >= 0``; NaN for a negative loss (its log is
  undefined); NaN/inf propagate. Shared by the log-loss methods."""
  clamped = jnp.maximum(task_losses, eps)
  return jnp.where(task_losses < 0, jnp.nan, clamped)


def scale_invariant(eps: float = 1e-8) -> optax.GradientTransformationExtraArgs:
  """Scale-invariant loss ``Σ_k log L_k``: weights ``1 / L_k``.

  .. math::  \\nabla_θ \\sum_k \\log L_k = \\sum_k \\frac{1}{L_k} \\nabla_θ L_k,
             \\qquad w_k = 1 / \\max(L_k, ε)

  Invariant to a rescaling ``L_k -> c_k L_k`` of any task. Also the loss part of
  DB-MTL (Lin et al. 2023), whose gradient part is ``mtlx.db_mtl``.

  Args:
    eps: ``ε``, a floor for tiny/zero losses (losses must be ``>= 0``; a
      negative loss gives NaN weights, non-finite losses propagate).

  Returns:
    A stateless loss-space ``optax.GradientTransformationExtraArgs``.

  Reference: the "SI" baseline of A. Navon et al., "Multi-Task Learning as a
  Bargaining Game" (Nash-MTL), ICML 2022.

  Cost: O(K); works on the one-backward path.
  """
  validation.check_number(eps, "eps", low=0, method="scale_invariant")

  def weight_fn(state, task_losses):
    losses = positive_losses(task_losses.astype(base.compute_dtype(task_losses)), eps)
    return 1.0 / losses, state

  return base.loss_weighting(weight_fn, name="scale_invariant")
