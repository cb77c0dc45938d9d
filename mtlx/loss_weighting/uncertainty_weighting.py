"""Homoscedastic uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from mtlx import validation
from mtlx.loss_weighting import base


class UncertaintyState(NamedTuple):
  """``log_var``: the per-task log-variances ``s_k = log σ_k²``."""
  log_var: jax.Array


def uncertainty_weighting(learning_rate: float = 0.025, *,
                          num_tasks: int | None = None,
                          ) -> optax.GradientTransformationExtraArgs:
  """Uncertainty weighting: learned per-task homoscedastic noise scales.

  The joint objective (Kendall et al. Eq. 7, Gaussian likelihood) with
  ``s_k = log σ_k²``:

  .. math::

     \\mathcal L(θ, s) = \\sum_k \\tfrac12 e^{-s_k} L_k(θ) + \\tfrac12 s_k,\\qquad
     w_k = \\tfrac12 e^{-s_k},\\qquad
     \\frac{\\partial \\mathcal L}{\\partial s_k} = \\tfrac12 - \\tfrac12 e^{-s_k} L_k .

  Update ``t`` weights the grads with the current ``s`` and then takes the
  closed-form gradient step ``s ← s - η (½ - ½ e^{-s} L_k(t))`` (plain SGD at
  learning rate ``η``, the joint simultaneous step of the paper). The fixed
  point is ``s_k = log L_k``, i.e. ``w_k L_k → ½``. Weights are positive.

  Args:
    learning_rate: ``η`` for the log-variances. The paper trains ``s`` with the
      network's optimizer and gives no separate rate; 0.025 is mtlx's default
      (the rate FAMO and GradNorm use for their weight parameters).
    num_tasks: K (required: the state holds ``s ∈ R^K``, initialised to 0,
      i.e. ``w = ½``, as the paper's ``σ = 1``; LibMTL starts at
      ``s_k = -0.5``, i.e. ``w = ½ e^{0.5} ≈ 0.82``).

  Returns:
    A loss-space ``optax.GradientTransformationExtraArgs``; state
    :class:`UncertaintyState`.

  Reference: A. Kendall, Y. Gal, R. Cipolla, "Multi-Task Learning Using
  Uncertainty to Weigh Losses for Scene Geometry and Semantics", CVPR 2018.

  Cost: O(K); works on the one-backward path (``mtlx.loss_weights``).
  """
  validation.check_number(learning_rate, "learning_rate", low=0, low_open=True,
                          method="uncertainty_weighting")
  k = validation.require_num_tasks(num_tasks, "uncertainty_weighting")

  def init_fn(k):
    return UncertaintyState(base.state_zeros(k))

  def weight_fn(state, task_losses):
    s = state.log_var.astype(base.compute_dtype(task_losses))
    weights = 0.5 * jnp.exp(-s)
    grad_s = 0.5 - weights * task_losses
    return weights, UncertaintyState(base.like(s - learning_rate * grad_s, state.log_var))

  return base.loss_weighting(weight_fn, init_fn=init_fn, num_tasks=k,
                             name="uncertainty_weighting")
