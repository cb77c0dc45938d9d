"""Nash-MTL: multi-task learning as a bargaining game (Navon et al., ICML 2022)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from mtlx import solvers
from mtlx import validation
from mtlx.aggregators.gramian_weighting import gramian_weighting


class NashMTLState(NamedTuple):
  """``alpha``: the last bargaining weights (warm start, and reused between
  updates when ``update_weights_every > 1``); ``step``: updates done."""
  alpha: jax.Array
  step: jax.Array


def nash_mtl_weights(gramian: jax.Array, init: jax.Array | None = None, *,
                     optim_niter: int = 20, max_norm: float = 1.0) -> jax.Array:
  """Nash-MTL weights of the Gramian.

  ``Ĝ = G/‖G‖_F`` (the authors' normalisation, which makes ``α`` scale-free);
  ``α`` solves ``Ĝ α = 1/α`` (:func:`mtlx.solvers.nash_bargaining`,
  ``optim_niter`` damped Newton steps from ``init``, default ``1``). With
  ``max_norm > 0`` the weights are scaled so that ``‖Σ α_k g_k‖ ≤ max_norm``
  (the authors clip the gradient norm of the shared parameters).
  """
  k = gramian.shape[-1]
  nf = _frobenius(gramian)
  a0 = jnp.ones((k,), gramian.dtype) if init is None else init
  alpha = solvers.nash_bargaining(gramian / nf, a0, num_iters=optim_niter)
  return _clip(gramian, alpha, max_norm)


def _frobenius(gramian):
  """``‖G‖_F`` without overflow (float32 Gramians of entries ~1e19), 1 for ``G = 0``."""
  m = jnp.max(jnp.abs(gramian))
  m = jnp.where(m > 0, m, jnp.ones_like(m))
  f = m * jnp.sqrt(jnp.sum(jnp.square(gramian / m)))
  return jnp.where(f > 0, f, jnp.ones_like(f))


def _clip(gramian, alpha, max_norm):
  if not max_norm or max_norm <= 0:
    return alpha
  norm = jnp.sqrt(jnp.maximum(alpha @ gramian @ alpha, 0.0))
  return alpha * jnp.minimum(1.0, max_norm / jnp.where(norm > 0, norm, 1.0))


def nash_mtl(max_norm: float = 1.0, update_weights_every: int = 1, optim_niter: int = 20,
             *, num_tasks: int) -> optax.GradientTransformationExtraArgs:
  """Nash-MTL as a gradient-space transform.

  .. math::  d = \\sum_k α_k g_k,\\qquad G α = 1/α,\\ α > 0

  the Nash bargaining solution of the tasks' utilities ``⟨g_k, d⟩`` in the ball
  (Navon et al., "Multi-Task Learning as a Bargaining Game", ICML 2022): every
  task gets ``⟨g_k, d⟩ = 1/α_k``. The authors solve the system by a
  convex-concave procedure with cvxpy; mtlx solves the equivalent convex
  problem ``min ½αᵀĜα - Σ log α`` by damped Newton steps, warm-started from the
  previous step's α kept in the state (as the authors warm-start their CCP).

  Args:
    max_norm: clip ``‖d‖`` to this value (paper code default 1.0; ``0`` disables).
    update_weights_every: solve for α every this many updates and reuse the last
      α in between (paper: 1; larger values save the solve, not the Gramian).
    optim_niter: Newton steps per solve (paper: 20 CCP iterations).
    num_tasks: K (the state holds ``α ∈ R^K``).

  Properties: non-conflicting (``⟨g_k, d⟩ = ‖G‖_F/α_k > 0`` at the solution,
  before clipping, which only rescales); scale-invariant weights, so linear
  under scaling while ``‖d‖ < max_norm``; permutation-invariant (with permuted
  state); K=1 gives ``g_1`` (``Ĝ = 1``, ``α = 1``), clipped to ``max_norm``. No solution exists for a zero
  gradient or when 0 is in the cone of the gradients (Pareto-stationary): the
  weights then grow but stay finite. Non-finite rows propagate.

  Raises:
    ValueError: bad hyperparameters; an update whose K differs from ``num_tasks``.

  Cost: the Gramian (``K² P``), ``optim_niter`` ``K×K`` solves, the combination
  ``K P``; no extra backward pass. State: ``K + 1`` numbers.
  """
  validation.check_number(max_norm, "max_norm", low=0, method="nash_mtl")
  validation.check_number(update_weights_every, "update_weights_every", low=1, integer=True,
                          method="nash_mtl")
  validation.check_number(optim_niter, "optim_niter", low=1, integer=True, method="nash_mtl")
  if not (isinstance(update_weights_every, int) and update_weights_every >= 1):
    raise ValueError(f"update_weights_every={update_weights_every!r}; expected an int >= 1.")
  if not (isinstance(optim_niter, int) and optim_niter >= 1):
    raise ValueError(f"optim_niter={optim_niter!r}; expected an int >= 1.")
  validation.require_num_tasks(num_tasks, "nash_mtl")

  def init(k):
    return NashMTLState(jnp.ones((k,), jnp.float32), jnp.zeros((), jnp.int32))

  def weighting(gramian, state):
    prev = state.alpha.astype(gramian.dtype)
    # A previous solve that failed (non-finite) must not poison the warm start.
    prev = jnp.where(jnp.all(jnp.isfinite(prev) & (prev > 0)), prev, jnp.ones_like(prev))
    nf = _frobenius(gramian)
    solve = lambda: solvers.nash_bargaining(gramian / nf, prev, num_iters=optim_niter)
    if update_weights_every == 1:
      alpha = solve()
    else:
      alpha = jax.lax.cond(state.step % update_weights_every == 0, solve, lambda: prev)
    new_state = NashMTLState(alpha.astype(state.alpha.dtype), state.step + 1)
    return _clip(gramian, alpha, max_norm), new_state

  return gramian_weighting(weighting, init=init, num_tasks=num_tasks, name="nash_mtl")
