"""MoDo: multi-objective gradient with double sampling (Chen et al., NeurIPS 2023)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from mtlx import solvers
from mtlx import validation
from mtlx.aggregators.gramian_weighting import cross_gramian_weighting


class MoDoState(NamedTuple):
  """``weights``: λ on the simplex (``[K]``)."""
  weights: jax.Array


def modo_weights(cross, weights, *, gamma: float = 1e-3, rho: float = 0.1):
  """MoDo weights (Chen et al., NeurIPS 2023): one projected step with double sampling.

  .. math:: λ ← Π_Δ\\big(λ - γ (J_1 J_2^T λ + ρ λ)\\big)

  ``J₁ J₂ᵀ λ`` is an unbiased estimate of ``∇_λ ½‖Jᵀλ‖²`` when the batches are
  independent. Returns the new ``[K]`` weights.
  """
  lam_ = jnp.asarray(weights, cross.dtype)
  return solvers.project_simplex(lam_ - gamma * (cross @ lam_ + rho * lam_))


def modo(gamma: float = 1e-3, rho: float = 0.1, *,
         num_tasks: int | None = None) -> optax.GradientTransformationExtraArgs:
  """MoDo as a gradient-space transform over two (or three) mini-batches.

  .. math::
     λ_{t+1} = Π_Δ\\big(λ_t - γ (J_1 J_2^T λ_t + ρ λ_t)\\big),\\qquad
     d_t = J_3^T λ_{t+1} = \\sum_k λ_{t+1,k}\\, g^{(3)}_k

  One projected-gradient step per training step on the MGDA dual
  ``min_{λ∈Δ} ½‖Jᵀλ‖² + ρ/2 ‖λ‖²``, whose gradient is estimated without bias by
  the cross matrix of two independent batches ("double sampling"). The paper
  (and LibMTL) build the direction from a third batch; here ``task_grads_3`` is
  used when given, otherwise the first batch ``task_grads``.

  Extra arguments of ``update``:
    task_grads_2: per-task grads of a second, independent mini-batch (same
      pytree as ``task_grads``). Required: a missing one raises a ``ValueError``
      that says what to pass.
    task_grads_3: optional third batch for the direction.

  Properties: weights stay on the simplex; permutation-equivariant; K = 1
  returns the gradient; not linear under scaling (the λ step scales with
  ``‖g‖²``); non-conflicting only in the limit (λ tracks the MGDA weights slowly).

  Args:
    gamma: step size γ of λ (LibMTL default 1e-3).
    rho: ℓ2 regularisation ρ of λ (LibMTL default 0.1).
    num_tasks: K (λ is ``[K]``); required.

  Cost: two (three) Jacobians, i.e. 2K (3K) backward passes; the cross matrix
  (``K² P``), one simplex projection, the combination (``K P``); state ``K``.

  Reference: L. Chen, H. Fernando, Y. Ying, T. Chen. Three-Way Trade-Off in
  Multi-Objective Learning: Optimization, Generalization and Conflict-Avoidance.
  NeurIPS 2023.
  """
  validation.check_number(gamma, "gamma", low=0, method="modo")
  validation.check_number(rho, "rho", low=0, method="modo")

  def init(k):
    k = validation.require_num_tasks(k, "modo")
    return MoDoState(jnp.ones((k,)) / k)

  def weighting(cross, state):
    lam = modo_weights(cross, state.weights.astype(cross.dtype), gamma=gamma, rho=rho)
    return lam, MoDoState(lam.astype(state.weights.dtype))

  return cross_gramian_weighting(weighting, init=init, num_tasks=num_tasks, name="modo")
