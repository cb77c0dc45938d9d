"""MoCo: stochastic multi-objective gradient correction (Fernando et al., ICLR 2023)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from mtlx import jacobian
from mtlx import validation
from mtlx import solvers
from mtlx.aggregators._extras import stacked_zeros


class MoCoState(NamedTuple):
  """``count``: steps taken; ``y``: tracked task grads (params-shaped, leading K);
  ``weights``: λ on the simplex (``[K]``)."""
  count: jax.Array
  y: Any
  weights: jax.Array


def moco(beta: float = 0.5, gamma: float = 0.1, rho: float = 0.0, *,
         beta_sigma: float = 0.5, gamma_sigma: float = 0.5,
         num_tasks: int | None = None) -> optax.GradientTransformationExtraArgs:
  """MoCo as a gradient-space transform: tracked gradients, then a λ step.

  .. math::
     β_t = β / t^{σ_β},\\quad γ_t = γ / t^{σ_γ}\\\\
     y_{t,k} = y_{t-1,k} - β_t (y_{t-1,k} - g_{t,k})\\\\
     λ_t = Π_Δ\\big(λ_{t-1} - γ_t (Y_t Y_t^T + ρ I) λ_{t-1}\\big)\\\\
     d_t = Y_t^T λ_t = \\sum_k λ_{t,k}\\, y_{t,k}

  (``t = 1, 2, …``; ``y_0 = 0``, ``λ_0 = 1/K``). The tracking variables ``y_k``
  average the stochastic task gradients, so the MGDA-like weights are computed
  from a less biased Gramian ``Y Yᵀ``; λ takes one projected-gradient step per
  training step (the paper's Algorithm 1; LibMTL uses a softmax in place of the
  projection and normalises each ``g_k`` to ``L_k g_k/‖g_k‖`` — not done here:
  compose with a loss-space transform for that). ``y`` is kept leaf by leaf,
  with the params' structure, never flattened.

  Properties: weights on the simplex; permutation-equivariant; K = 1 returns the
  tracked gradient ``y`` (an EMA of ``g``, so ``β_1 g`` at the first step);
  not linear under scaling (the λ step scales with ``‖g‖²``); not
  non-conflicting w.r.t. the current gradients (it is w.r.t. the tracked ones
  only asymptotically).

  Args:
    beta, beta_sigma: step size of ``y`` and its decay exponent (paper/LibMTL
      defaults 0.5, 0.5).
    gamma, gamma_sigma: step size of λ and its decay exponent (0.1, 0.5).
    rho: ℓ2 regularisation of the λ subproblem (0).
    num_tasks: K; required (``y`` has a leading K axis, sized at ``init``).

  Cost: the Gramian of ``Y`` (``K² P``), a simplex projection, the combination
  (``K P``); memory: state ``K × P`` (one extra Jacobian). No extra backward pass.

  Reference: H. D. Fernando et al. Mitigating Gradient Bias in Multi-objective
  Learning: A Provably Convergent Approach. ICLR 2023.
  """
  validation.check_number(beta, "beta", low=0, high=1, low_open=True, method="moco")
  validation.check_number(gamma, "gamma", low=0, method="moco")
  validation.check_number(rho, "rho", low=0, method="moco")
  validation.check_number(beta_sigma, "beta_sigma", low=0, method="moco")
  validation.check_number(gamma_sigma, "gamma_sigma", low=0, method="moco")

  def init_fn(params):
    k = validation.require_num_tasks(num_tasks, "moco")
    return MoCoState(jnp.zeros((), jnp.int32), stacked_zeros(params, k), jnp.ones((k,)) / k)

  def update_fn(task_grads, state, params=None, **extra):
    del params, extra
    k = validation.num_tasks(task_grads)
    validation.check_num_tasks(k, num_tasks, "moco")
    validation.check_state_structure(task_grads, state.y, "moco")
    t = (state.count + 1).astype(jnp.float32)
    beta_t = beta / t ** beta_sigma
    gamma_t = gamma / t ** gamma_sigma
    y = jax.tree_util.tree_map(
        lambda yk, g: (yk - beta_t.astype(yk.dtype) * (yk - g.astype(yk.dtype))),
        state.y, task_grads)
    gy = jacobian.gramian(y)
    lam = state.weights.astype(gy.dtype)
    lam = solvers.project_simplex(lam - gamma_t.astype(gy.dtype) * (gy @ lam + rho * lam))
    update = jacobian.combine(lam, y)
    update = jax.tree_util.tree_map(lambda u, g: u.astype(g.dtype), update, task_grads)
    return update, MoCoState(state.count + 1, y, lam.astype(state.weights.dtype))

  return optax.GradientTransformationExtraArgs(
      init_fn, validation.guarded_update(update_fn, "moco"))
