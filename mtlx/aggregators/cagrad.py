"""CAGrad: conflict-averse gradient descent (Liu et al., NeurIPS 2021)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from mtlx import jacobian
from mtlx import validation
from mtlx import solvers
from mtlx.aggregators.gramian_weighting import gramian_weighting


def _objective(gramian, b, r, w):
  return b @ w + r * jnp.sqrt(jnp.maximum(w @ gramian @ w, 0.0))


def _face_closed_form(gramian, b, r, mask):
  """Exact minimiser of ``bᵀw + r‖J^T w‖`` on the face ``{w_S, Σ w = 1}``.

  Stationarity ``b_S + r G_SS w_S/s = μ 1`` with ``s = ‖Jᵀw‖`` gives
  ``w = (μ x - y)/(μ a - β)`` with ``x = G_SS⁻¹ 1``, ``y = G_SS⁻¹ b_S``,
  ``a = 1ᵀx``, ``β = 1ᵀy``, ``γ = bᵀy`` and ``μ a - β = (β² - aγ + a r²)^{1/2}``.
  """
  m = mask.astype(gramian.dtype)
  a_mat = gramian * m[:, None] * m[None, :] + jnp.diag(1.0 - m)
  sol = jnp.linalg.lstsq(a_mat, jnp.stack([m, b * m], axis=1))[0] * m[:, None]
  x, y = sol[:, 0], sol[:, 1]
  a, beta, gamma = jnp.sum(x), jnp.sum(y), b @ y
  root = jnp.sqrt(jnp.maximum(beta * beta - a * gamma + a * r * r, 0.0))
  mu = (beta + root) / a
  return (mu * x - y) / root


def _min_row_gain(gramian, w, present=None):
  """``min_k ⟨g_k, d⟩`` for ``d = Jᵀw`` (``J d = G w``): the CAGrad primal objective
  (over the present tasks ``k`` when ``present`` is given)."""
  gains = gramian @ w
  return jnp.min(gains if present is None else jnp.where(present, gains, jnp.inf))


def _present_problem(gramian, task_mask, dtype):
  """CAGrad's data for the present tasks, embedded in ``K × K`` with phantom tasks.

  Returns ``(g, b, g0_sq, uniform, count, present, mf)``: ``g`` is the present
  block of the Gramian divided by its mean diagonal, the absent rows and columns
  replaced by those of ``I`` (decoupled orthogonal unit tasks); ``b = g m/n`` (0
  on absent tasks), ``g0_sq = ‖g_0‖²`` and ``uniform = m/n`` for the ``n``
  present tasks.
  """
  k = gramian.shape[-1]
  validation.check_vector(task_mask, k, "task_mask")
  present = jnp.asarray(task_mask).astype(bool)
  mf = present.astype(dtype)
  count = jnp.sum(mf)
  n_safe = jnp.maximum(count, 1.0)
  block = gramian.astype(dtype) * (mf[:, None] * mf[None, :])
  s = jnp.trace(block) / n_safe
  g = block / jnp.where(s > 0, s, jnp.ones_like(s)) + jnp.diag(1.0 - mf)
  b = (g @ mf) / n_safe
  return g, b, jnp.sum(b) / n_safe, mf / n_safe, count, present, mf


def cagrad_weights(gramian: jax.Array, c: float = 0.4, *, rescale: bool = True,
                   num_iters: int = 30, qp_iters: int = 30,
                   scale_by_num_tasks: bool = False,
                   task_mask: jax.Array | None = None) -> jax.Array:
  """CAGrad weights of the Gramian.

  With ``g_0 = (1/K) Σ g_k``, ``b = J g_0 = G 1/K`` and ``r = c ‖g_0‖``, the
  primal ``max_{‖d - g_0‖ ≤ r} min_k ⟨g_k, d⟩`` has the dual

  .. math::  w^* = \\arg\\min_{w ∈ Δ_K} F(w) = bᵀ w + r \\|Jᵀ w\\|,\\qquad
             d = g_0 + \\frac{r}{\\|Jᵀ w^*\\|} Jᵀ w^*

  so the weights are ``1/K + r w*/‖Jᵀw*‖`` (divided by ``1 + c²`` with
  ``rescale``, as in the authors' code; times K with ``scale_by_num_tasks``, as
  the authors' ``overwrite_grad`` does "to match the sum loss"). ``G`` is first
  divided by its mean diagonal (the weights are scale-free).

  When the dual optimum has ``Jᵀw* = 0`` (0 in the convex hull of the rows and
  ``F* = 0``: always so for ``c ≥ 1`` when 0 is in the hull) the formula is
  undefined and the primal optimum is not unique: every ``d`` in the ball with
  ``J d ≥ 0`` is optimal. Then ``d`` is the optimal point closest to ``g_0``, the
  projection of ``g_0`` on ``{d : J d ≥ 0}``: ``d = g_0 + Jᵀμ`` with
  ``μ = argmin_{μ ≥ 0} ½ μᵀGμ + bᵀμ`` (:func:`mtlx.solvers.nonneg_qp`), which is
  non-conflicting (0 when 0 is strictly inside the hull, e.g.
  ``J = [[1,0],[-1,0]]``; TorchJD returns 0 in all such cases). It is taken
  whenever it lies in the ball (``‖Jᵀμ‖ ≤ r``) and its primal value is not
  below that of the dual formula's ``d``.

  Solver (fixed cost, jittable): the dual minimiser lies on the path
  ``w(τ) = argmin_{w∈Δ} ½ wᵀGw + τ bᵀw`` at the root of
  ``h(τ) = r τ - ‖Jᵀ w(τ)‖`` (stationarity of ``F``), and ``h`` is increasing;
  ``num_iters`` geometric bisection steps on ``τ ∈ [‖Jᵀw_mn‖/r, max_k‖g_k‖/r]``
  (``w_mn`` the min-norm point) with warm-started simplex QPs
  (:func:`mtlx.solvers.simplex_qp`, ``qp_iters`` FISTA steps and 4 active-set
  steps each) bracket the root to a relative ``2^{-num_iters}`` of the log-range;
  the QP at the final bracket end is solved with the full active-set phase, and
  the exact minimiser on its support (:func:`_face_closed_form`) replaces it when
  feasible and not worse. The primal value ``min_k ⟨g_k, d⟩`` then reaches the
  optimum to within ``1e-9 max_k ‖g_k‖²`` in float64 (tested against an exact
  enumeration on degenerate 2-D cases, K = 2…5, c = 0.5, 1, 2).

  ``task_mask`` ([K] bool, optional; the tasks present in the step): the weights
  are exactly CAGrad of the ``n`` present tasks' rows alone (``g_0`` their mean,
  ``r = c‖g_0‖``, the simplex ``Δ_n``, the degenerate branch, ``1/(1 + c²)`` and
  ``× n`` with ``scale_by_num_tasks``), 0 on the absent tasks, whatever their
  (finite) rows; no present task: all-zero weights. Static shapes; exactness:

  * the absent rows and columns of ``G`` are replaced by those of ``I`` (orthogonal
    unit "phantom" tasks, after the present block is divided by its own mean
    diagonal) and ``b = G m/n``, ``‖g_0‖² = mᵀb/n``, the uniform weights ``m/n``,
    ``max_k ‖g_k‖`` are taken over the present tasks: every quantity of the
    ``n``-task problem, embedded with zeros;
  * each path QP ``min_{w∈Δ_K} ½wᵀGw + τbᵀw + Σ_{absent j} M(τ) w_j`` with
    ``M(τ) = 1 + 2(max_{present} G_kk + τ max_k |b_k|)``: if ``u`` solves the
    ``n``-task QP with multiplier ``μ = uᵀGu + τbᵀu ≤ max G_kk + τ max |b_k|``,
    then ``(u, 0)`` meets the KKT conditions of the K-task QP, the absent
    coordinates with the strict margin ``M(τ) - μ ≥ 1 + max G_kk + τ max|b_k|``
    (their rows of ``G`` are 0 off the diagonal). ``Gw`` is the same at every
    minimiser of a convex QP, so ``G_jj w_j = 0``, i.e. ``w_j = 0``, at all of
    them: the path (hence the bisection, the root and the face polish, done on
    the present support) is the ``n``-task one;
  * the projection QP ``min_{μ≥0} ½μᵀGμ + (b + 1 - m)ᵀμ`` decouples into the
    ``n``-task one and ``½μ_j² + μ_j`` (minimum at ``μ_j = 0``), and the primal
    values compared are ``min_k`` over the present tasks.

  With every task present the numbers match the unmasked ones to rounding
  (tested); ``task_mask=None`` runs the unmasked computation unchanged.
  """
  k = gramian.shape[-1]
  dtype = jnp.promote_types(gramian.dtype, jnp.float32)
  eps = jnp.finfo(dtype).eps
  if task_mask is None:
    present = None
    n = k
    s = jnp.trace(gramian).astype(dtype) / k
    g = gramian.astype(dtype) / jnp.where(s > 0, s, jnp.ones_like(s))
    b = jnp.mean(g, axis=1)
    g0_sq = jnp.mean(b)
  else:
    g, b, g0_sq, uniform, n, present, mf = _present_problem(gramian, task_mask, dtype)
  r = c * jnp.sqrt(jnp.maximum(g0_sq, 0.0))
  r_safe = jnp.where(r > 0, r, jnp.ones_like(r))
  if present is None:  # (here: the unmasked path traces exactly as before the mask)
    uniform = jnp.full((k,), 1.0 / k, dtype)

  lip = solvers._lipschitz(g)  # pylint: disable=protected-access
  norms = jacobian.task_norms(g)
  if present is None:
    n_max = jnp.max(norms)
    linear = lambda tau: tau * b
    b_nonneg = b
  else:
    n_max = jnp.max(jnp.where(present, norms, 0.0))
    # Absent vertices are never optimal: their linear term exceeds the multiplier
    # μ(τ) = uᵀGu + τ bᵀu ≤ max_k G_kk + τ max_k |b_k| of the present solution u.
    d_max = jnp.max(jnp.where(present, jnp.diagonal(g), 0.0))
    b_max = jnp.max(jnp.abs(b))
    linear = lambda tau: tau * b + (1.0 - mf) * (1.0 + 2.0 * (d_max + tau * b_max))
    b_nonneg = b + (1.0 - mf)
  full = k + solvers.QP_REFINE

  # One loop, one QP call site (compiles once): step 0 is the min-norm point
  # (τ = 0) that sets the lower end of the bracket, steps 1..num_iters bisect,
  # the last step solves at the upper end with the full active-set phase.
  def body(i, carry):
    lo, hi, w = carry
    first, last = i == 0, i == num_iters + 1
    log_tau = jnp.where(last, hi, 0.5 * (lo + hi))
    tau = jnp.where(first, 0.0, jnp.exp(log_tau))
    # The active-set phase stops as soon as the KKT conditions hold, so the static
    # cap ``full`` costs only the face solves each step needs.
    w = solvers.simplex_qp(g, linear(tau), num_iters=qp_iters, num_refine=full,
                           init=w, lipschitz=lip)
    norm = jnp.sqrt(jnp.maximum(w @ g @ w, 0.0))
    below = r * tau < norm
    lo_new = jnp.where(first, jnp.log(jnp.maximum(norm, eps) / r_safe),
                       jnp.where(below & ~last, log_tau, lo))
    hi_new = jnp.where(first | below | last, hi, log_tau)
    return lo_new, hi_new, w

  log_hi = jnp.log((n_max + eps) / r_safe)
  _, _, w = jax.lax.fori_loop(0, num_iters + 2, body, (log_hi, log_hi, uniform))
  support = w > 0 if present is None else (w > 0) & present
  polished = _face_closed_form(g, b, r, support)
  f_w, f_p = _objective(g, b, r, w), _objective(g, b, r, polished)
  ok = (jnp.all(jnp.isfinite(polished)) & jnp.all(polished >= 0)
        & (jnp.abs(jnp.sum(polished) - 1.0) <= 64 * n * eps)
        & (f_p <= f_w + 16 * eps * (jnp.abs(f_w) + 1.0)))
  w = jnp.where(ok, polished, w)
  norm = jnp.sqrt(jnp.maximum(w @ g @ w, 0.0))
  lam = jnp.where((norm > 0) & (r > 0), r / jnp.where(norm > 0, norm, 1.0), 0.0)
  dual_weights = uniform + lam * w

  # The projection of g_0 on {d : J d >= 0} (optimal when it lies in the ball).
  mu = solvers.nonneg_qp(g, b_nonneg, lipschitz=lip)
  proj_weights = uniform + mu
  in_ball = mu @ g @ mu <= (r * r) * (1.0 + 64 * n * eps) + 64 * n * eps * g0_sq
  better = (_min_row_gain(g, proj_weights, present)
            >= _min_row_gain(g, dual_weights, present) - 64 * n * eps * (1.0 + g0_sq))
  weights = jnp.where(in_ball & better & (r > 0), proj_weights, dual_weights)
  if present is not None:
    weights = jnp.where(present, weights, 0.0)
  # Propagate non-finite Gramians (the guards above would otherwise hide them).
  weights = weights + 0.0 * jnp.sum(gramian)
  if rescale:
    weights = weights / (1.0 + c * c)
  return weights * n if scale_by_num_tasks else weights


def cagrad(c: float = 0.4, *, rescale: bool = True, num_iters: int = 30,
           qp_iters: int = 30,
           scale_by_num_tasks: bool = False) -> optax.GradientTransformationExtraArgs:
  """CAGrad as a gradient-space transform.

  .. math::  \\max_d \\min_k ⟨g_k, d⟩ \\ \\text{s.t.}\\ \\|d - g_0\\| ≤ c\\|g_0\\|
             \\;\\Rightarrow\\; d = g_0 + \\frac{c\\|g_0\\|}{\\|g_w\\|} g_w,\\quad
             w = \\arg\\min_{w∈Δ} g_wᵀ g_0 + c\\|g_0\\|\\|g_w\\|

  (Liu et al., "Conflict-Averse Gradient Descent for Multi-task Learning",
  NeurIPS 2021). A Gramian weighting: ``d`` is a combination of the rows plus
  their mean (:func:`cagrad_weights`). The problem is solved exactly (to
  rounding), including the degenerate cases where 0 is in the convex hull of the
  gradients: then, for ``c ≥ 1`` (and whenever the dual optimum is 0), ``d`` is
  the optimal update closest to ``g_0``, the projection of ``g_0`` on
  ``{d : ⟨g_k, d⟩ ≥ 0 ∀k}`` (non-conflicting; TorchJD returns 0 there).

  Given the keyword extra ``task_mask`` ([K] bool; `mtlx.train.make_step` passes
  it when built with ``task_mask=``), the update is exactly CAGrad on the present
  tasks' rows (``g_0`` their mean, the simplex over them; absent tasks: weight 0;
  see :func:`cagrad_weights` for the construction and its exactness). Without it
  an absent task's zero row counts in ``g_0`` and its vertex of the simplex (where
  ``⟨g_0, g_w⟩ + r‖g_w‖ = 0``) may be the dual optimum.

  Conventions: the authors' code multiplies the update by K
  (``scale_by_num_tasks=True``) and divides by ``1 + c²`` (``rescale=True``, the
  default here); TorchJD does neither.

  Args:
    c: radius of the ball around the mean gradient, in units of ``‖g_0‖``
      (paper: 0.4 on the toy and NYUv2, 0.2 on CityScapes). ``c = 0`` gives the
      mean gradient.
    rescale: divide by ``1 + c²`` as the authors' code does (``rescale=1``).
    num_iters, qp_iters: bisection steps and FISTA steps per QP of the solver
      (see :func:`cagrad_weights`).
    scale_by_num_tasks: multiply the update by K, as the authors' code does
      (``overwrite_grad``: "to match the sum loss"); default off, so ``c = 0``
      gives the mean gradient. TorchJD's ``CAGrad`` neither rescales nor
      multiplies by K (``rescale=False`` matches it).

  Properties: linear under scaling; permutation-invariant; K=1 gives ``g_1``
  (``(1+c)/(1+c²) g_1`` with ``rescale``, as the code); converges to a stationary
  point of the mean loss for ``c < 1`` (Thm. 3.2); non-conflicting for
  ``c ≥ 1`` (0 is then in the ball); not for ``c < 1`` in general
  (``min_k ⟨g_k, d⟩`` is maximised inside the ball, it may stay negative);
  finite for zero or duplicated rows; non-finite rows propagate.

  Raises:
    ValueError: ``c < 0``; a ``task_mask`` that is not of shape ``[K]`` (at trace
      time).

  Cost: the Gramian (``K² P``); on ``K×K``: one eigenvalue, ``num_iters + 2``
  simplex QPs (``qp_iters`` FISTA steps and 4, or ``K + 8`` for the first and
  the last, active-set steps of ``O(K³)``) and one non-negative QP; the combination
  ``K P``; no extra backward pass.
  """
  validation.check_number(c, "c", low=0, method="cagrad")
  validation.check_number(num_iters, "num_iters", low=1, integer=True, method="cagrad")
  validation.check_number(qp_iters, "qp_iters", low=1, integer=True, method="cagrad")
  if not c >= 0:
    raise ValueError(f"c={c!r}; expected a number >= 0.")
  def weighting(gramian, *, task_mask=None):
    return cagrad_weights(gramian, c, rescale=rescale, num_iters=num_iters,
                          qp_iters=qp_iters, scale_by_num_tasks=scale_by_num_tasks,
                          task_mask=task_mask)

  return gramian_weighting(weighting, name="cagrad", extras=("task_mask",),
                           scale_invariant=True)
