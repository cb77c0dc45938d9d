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
  """``alpha``: the last bargaining weights of the raw Gramian (``G α = 1/α``; the
  warm start, and the weights reused between solves when ``update_weights_every > 1``),
  in the default float dtype (float64 under ``jax_enable_x64``, else float32);
  ``step``: updates done."""
  alpha: jax.Array
  step: jax.Array


def nash_mtl_weights(gramian: jax.Array, init: jax.Array | None = None, *,
                     optim_niter: int = 20, max_norm: float = 1.0) -> jax.Array:
  """Nash-MTL weights of the Gramian.

  ``α > 0`` solves ``G α = 1/α`` on the raw Gramian (the paper's system, which the
  authors' code, LibMTL and TorchJD solve too), so every task gets
  ``⟨g_k, d⟩ = 1/α_k`` and the unclipped update ``d = Σ α_k g_k`` has
  ``‖d‖² = αᵀGα = K``, whatever the scale of the gradients. Numerically the
  system is solved on ``Ĝ = G/‖G‖_F`` (:func:`mtlx.solvers.nash_bargaining`,
  ``optim_niter`` damped Newton steps from ``init`` (default ``1``) rescaled to
  ``α̂₀ = init·(K/initᵀĜ init)^{1/2}``, which satisfies the system on average) and mapped back by ``α = α̂/√‖G‖_F``, the exact solution of the raw
  system (if ``Ĝα̂ = 1/α̂`` then ``G(α̂/√n) = √n/α̂``). This is the authors'
  normalisation: their CCP divides ``G`` by ``n = ‖G‖_F`` and multiplies ``n``
  back into the constraint ``-log(α_k n) - log((Ĝα)_k) ≤ 0``. With
  ``max_norm > 0`` the weights are scaled so that ``‖Σ α_k g_k‖ ≤ max_norm``
  (the authors clip the gradient norm of the shared parameters; TorchJD scales
  the weights the same way).
  """
  return _clip(gramian, _solve(gramian, init, optim_niter), max_norm)


def _solve(gramian, init, optim_niter):
  """``α`` with ``G α = 1/α`` (raw Gramian), warm-started from a raw ``init``."""
  k = gramian.shape[-1]
  nf = _frobenius(gramian)
  g = gramian / nf
  a0 = jnp.ones((k,), gramian.dtype) if init is None else init.astype(gramian.dtype)
  # The start keeps the ratios of ``init`` and takes the scale that satisfies the
  # system on average (``Σ_k α_k (Ĝα)_k = K``), so a change of the gradients'
  # scale between steps costs no Newton steps.
  quad = a0 @ g @ a0
  a0 = a0 * jnp.where(quad > 0, jnp.sqrt(k / jnp.where(quad > 0, quad, 1.0)), 1.0)
  return solvers.nash_bargaining(g, a0, num_iters=optim_niter) / jnp.sqrt(nf)


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
  task gets ``⟨g_k, d⟩ = 1/α_k`` and the unclipped update has ``‖d‖ = √K`` for
  gradients of any scale (``G`` is the raw Gramian, as in the paper and in the
  authors' code, LibMTL and TorchJD; see :func:`nash_mtl_weights` for how it is
  normalised inside the solver). The authors solve the system by a
  convex-concave procedure with cvxpy; mtlx solves the equivalent convex
  problem ``min ½α̂ᵀĜα̂ - Σ log α̂`` (``Ĝ = G/‖G‖_F``) by damped Newton steps,
  warm-started from the previous step's α kept in the state (as the authors
  warm-start their CCP). Afterwards ``d`` is scaled down to ``max_norm`` when
  longer (the authors' ``clip_grad_norm_``; TorchJD's weight scaling).

  ``update_weights_every = m > 1``: on steps ``0, m, 2m, …`` α is solved for and
  stored; on the other steps the stored α is reused with the new gradients and
  the result clipped to ``max_norm`` (as the authors' code and TorchJD do: a
  reuse step's ``‖Σ α_k g_k‖`` may then be below ``max_norm``).

  Args:
    max_norm: clip ``‖d‖`` to this value (paper code default 1.0; ``0`` disables).
    update_weights_every: solve for α every this many updates and reuse the last
      α in between (paper: 1; larger values save the solve, not the Gramian).
    optim_niter: Newton steps per solve, a fixed count (paper: 20 CCP
      iterations). Measured in float64 (K ≤ 8, gradient scales 1e-4 … 1e4):
      the residual ``max_k |α_k (Gα)_k - 1|`` is below ``1e-15`` after 10 steps
      from the first step's start and after 6 steps warm-started from the
      previous solution (gradients changed by 5 %); 20 leaves a margin for
      ill-conditioned Gramians.
    num_tasks: K (the state holds ``α ∈ R^K``).

  Properties: non-conflicting (``⟨g_k, d⟩ = 1/α_k > 0`` at the solution,
  before clipping, which only rescales); the update is scale-invariant (α scales
  as ``1/s`` when the gradients scale by ``s``: ``d`` does not change), so NOT
  linear under scaling; permutation-invariant (with permuted state); K=1 gives
  ``g_1/‖g_1‖`` (``α = 1/‖g_1‖``), clipped to ``max_norm``. No solution exists
  for a zero gradient or when 0 is in the cone of the gradients
  (Pareto-stationary): the weights then grow but stay finite (the solver caps
  ``max α̂``). Non-finite rows propagate and leave the state as it was.

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
    # The default float dtype: float64 under jax_enable_x64 (so a float64 run
    # warm-starts in float64), float32 otherwise. Inputs of another dtype are
    # solved in their own dtype (float32 or wider) and stored here.
    dtype = jnp.result_type(float)
    return NashMTLState(jnp.ones((k,), dtype), jnp.zeros((), jnp.int32))

  def weighting(gramian, state):
    dtype = jnp.promote_types(gramian.dtype, jnp.float32)
    gramian = gramian.astype(dtype)
    prev = state.alpha.astype(dtype)
    # A previous solve that failed (non-finite) must not poison the warm start.
    prev = jnp.where(jnp.all(jnp.isfinite(prev) & (prev > 0)), prev, jnp.ones_like(prev))
    solve = lambda: _solve(gramian, prev, optim_niter)
    if update_weights_every == 1:
      alpha = solve()
    else:
      alpha = jax.lax.cond(state.step % update_weights_every == 0, solve, lambda: prev)
    finite = jnp.all(jnp.isfinite(alpha)) & jnp.all(jnp.isfinite(gramian))
    new_state = NashMTLState(jnp.where(finite, alpha.astype(state.alpha.dtype), state.alpha),
                             jnp.where(finite, state.step + 1, state.step))
    return _clip(gramian, alpha, max_norm), new_state

  return gramian_weighting(weighting, init=init, num_tasks=num_tasks, name="nash_mtl")
