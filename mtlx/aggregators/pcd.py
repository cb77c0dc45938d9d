"""PCD: priority-constrained descent (task 0 first, the others keep a share of progress)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from mtlx import jacobian
from mtlx import solvers
from mtlx import validation
from mtlx.aggregators.gramian_weighting import gramian_weighting


def pcd_weights(gramian, *, epsilon=0.0, max_multiplier: float = 100.0,
                max_iters: int = 1000, tol: float | None = None,
                polish_iters: int = 16):
  """Priority-constrained descent weights: follow task 0 under progress constraints.

  .. math::
     d^* = \\arg\\min_d \\tfrac12 \\|d - g_0\\|^2
     \\quad \\text{s.t.}\\quad ⟨g_k, d⟩ \\ge ε_k \\|g_k\\|^2, \\ k = 1..K-1.

  ``ε_k ‖g_k‖²`` is the fraction ``ε_k`` of the first-order progress task ``k``
  would make following its own gradient. By duality ``d* = g_0 + Σ_{k≥1} μ_k g_k``
  with multipliers ``μ ≥ 0`` solving a non-negative QP that lives in the Gramian:
  with ``n_k = ‖g_k‖``, ``M = max_k ‖g_k‖`` and ``μ_k = M ν_k / n_k``,

  .. math::
     \\min_{0 \\le ν \\le C}\\ \\tfrac12 ν^T Q ν + c^T ν,\\quad
     Q_{kl} = \\frac{G_{kl}}{n_k n_l},\\ c_k = \\frac{G_{k0}/n_k - ε_k n_k}{M}

  (dimensionless, so the weights are invariant to scaling all gradients). The cap
  ``C = max_multiplier`` makes every problem solvable: when the constraints are
  infeasible (two secondary tasks with opposite gradients and ``ε > 0``) it
  returns the exact-penalty solution ``min ½‖d-g_0‖² + C M Σ_k max(0, ε_k n_k -
  ⟨u_k, d⟩)``; when they are feasible and ``ν* ≤ C`` it is the constrained
  solution. Zero gradients get ``μ_k = 0`` (their constraint ``0 ≥ 0`` holds).

  Solver: FISTA with adaptive restart (O'Donoghue & Candès 2015), step
  ``1/λ_max(Q)``; stops when the projected-gradient step ``‖ν - Π(ν - ∇/L)‖_∞ ≤
  tol`` (1e-12 float64 / 1e-6 float32 by default) or after ``max_iters``; then
  ``polish_iters`` (16) steps of the primal active-set method (KKT solve on the
  free set by least squares, ratio test) find the active set exactly; the
  polished point is kept when it lowers the dual objective or the
  projected-gradient step.

  Returns:
    ``[K]`` weights ``(1, μ_1, …, μ_{K-1})``.
  """
  k = gramian.shape[0]
  dtype = gramian.dtype
  if k == 1:
    return jnp.ones((1,), dtype)
  tol = solvers.default_tol(dtype) if tol is None else tol
  eps = jnp.broadcast_to(jnp.asarray(epsilon, dtype), (k - 1,))
  n_all = jacobian.task_norms(gramian)
  big_m = jnp.max(n_all)
  safe_m = jnp.where(big_m > 0, big_m, jnp.ones_like(big_m))
  n = n_all[1:]
  pos = n > 0
  inv_n = jnp.where(pos, 1.0 / jnp.where(pos, n, 1.0), 0.0)
  q = gramian[1:, 1:] * inv_n[:, None] * inv_n[None, :]
  c = (gramian[1:, 0] * inv_n - eps * n) / safe_m
  lip = jnp.max(jnp.linalg.eigvalsh(q))
  lip = jnp.where(lip > 1e-12, lip, 1.0)
  proj = lambda v: jnp.clip(v, 0.0, max_multiplier)

  def pg_step(v):
    return proj(v - (q @ v + c) / lip)

  def body(carry):
    i, v, y, t, _ = carry
    v_new = pg_step(y)
    restart = jnp.dot(y - v_new, v_new - v) > 0
    t_new = jnp.where(restart, 1.0, 0.5 * (1.0 + jnp.sqrt(1.0 + 4.0 * t * t)))
    y_new = jnp.where(restart, v_new, v_new + ((t - 1.0) / t_new) * (v_new - v))
    gap = jnp.max(jnp.abs(v_new - pg_step(v_new)))
    return i + 1, v_new, y_new, t_new.astype(dtype), gap

  def cond(carry):
    i, _, _, _, gap = carry
    return (i < max_iters) & ~(gap <= tol)

  v0 = jnp.zeros((k - 1,), dtype)
  gap0 = jnp.max(jnp.abs(v0 - pg_step(v0)))
  _, v, _, _, gap = lax.while_loop(cond, body, (0, v0, v0, jnp.ones((), dtype), gap0))
  # Polish: a few steps of the primal active-set method from FISTA's point. Each
  # step frees the bound variable whose gradient most violates optimality, solves
  # the KKT system on the free set exactly (least squares, so a singular Q is
  # fine) and moves towards it until a bound blocks (ratio test): the dual
  # objective decreases monotonically and the active set is found exactly, which
  # FISTA's slow tail on nearly opposite gradients does not reach.
  def active_set_step(_, v):
    grad = q @ v + c
    at_lo, at_hi = v <= 0, v >= max_multiplier
    viol = jnp.where(at_lo, -grad, 0.0) + jnp.where(at_hi, grad, 0.0)
    enter = (jnp.arange(k - 1) == jnp.argmax(viol)) & (jnp.max(viol) > 0)

    def face_step(free):  # minimum-norm Newton step on the face (Q may be singular)
      q_ff = (jnp.where(free[:, None] & free[None, :], q, 0.0)
              + jnp.diag(jnp.where(free, 0.0, 1.0)))
      return jnp.linalg.lstsq(q_ff, jnp.where(free, -grad, 0.0))[0]

    # Minimise on the current face first; free a variable only once there.
    free = ~at_lo & ~at_hi
    on_face_min = jnp.max(jnp.where(free, jnp.abs(grad), 0.0)) <= face_tol
    free = jnp.where(on_face_min, free | enter, free)
    step = face_step(free)
    z = v + step
    lo_ratio = jnp.where(free & (z < 0), v / jnp.where(step < 0, -step, 1.0), jnp.inf)
    hi_ratio = jnp.where(free & (z > max_multiplier),
                          (max_multiplier - v) / jnp.where(step > 0, step, 1.0), jnp.inf)
    ratio = jnp.minimum(lo_ratio, hi_ratio)
    alpha = jnp.minimum(1.0, jnp.min(ratio))
    v_new = proj(v + alpha * step)
    blocked = ratio <= alpha
    v_new = jnp.where(blocked & (lo_ratio <= hi_ratio), 0.0, v_new)
    v_new = jnp.where(blocked & (hi_ratio < lo_ratio), max_multiplier, v_new)
    return v_new

  face_tol = float(jnp.finfo(dtype).eps) ** 0.5 * (1.0 + jnp.max(jnp.abs(c)))
  polished = lax.fori_loop(0, polish_iters, active_set_step, v)
  gap_p = jnp.max(jnp.abs(polished - pg_step(polished)))
  obj = lambda x: 0.5 * x @ (q @ x) + c @ x
  keep = (gap_p <= gap) | (obj(polished) < obj(v))
  v = jnp.where(keep, polished, v)
  gap = jnp.where(keep, gap_p, gap)
  v = jnp.where(jnp.isfinite(gap), v, jnp.nan)
  mu = v * big_m * inv_n
  return jnp.concatenate([jnp.ones((1,), dtype), mu])


def pcd(epsilon=0.0, *, max_multiplier: float = 100.0, max_iters: int = 1000,
        tol: float | None = None,
        polish_iters: int = 16) -> optax.GradientTransformationExtraArgs:
  """Priority-constrained descent as a gradient-space transform.

  Task 0 is the primary task; every other task ``k`` must keep at least the
  fraction ``ε_k`` of the progress it would make along its own gradient:

  .. math::
     d = \\arg\\min_d \\tfrac12\\|d - g_0\\|^2 \\ \\text{s.t.}\\
     ⟨g_k, d⟩ \\ge ε_k \\|g_k\\|^2 \\ (k = 1..K-1)
     \\ = g_0 + \\sum_{k \\ge 1} μ_k g_k

  with ``μ ≥ 0`` the dual multipliers, a Gramian weighting
  ``w = (1, μ_1, …, μ_{K-1})`` computed by :func:`mtlx.weightings.pcd` (a box QP
  in the ``K-1`` scaled multipliers: FISTA with restart, ``≤ max_iters``
  iterations, then ``polish_iters`` exact active-set steps). With the default
  ``ε = 0`` it is the projection of ``g_0`` onto the cone of directions that
  conflict with no other task, and its fixed points
  (``d = 0``) are Pareto-stationary points ``g_0 = -Σ μ_k g_k``. With ``ε > 0``
  every secondary task always makes progress, so on conflicting problems the
  iteration has no fixed point until the secondary tasks reach a stationary point.
  If the constraints are infeasible (``ε > 0`` and opposite secondary
  gradients), multipliers stop at ``max_multiplier`` (in units
  ``max_k ‖g_k‖ / ‖g_k‖``): an exact-penalty solution.

  Properties: non-conflicting with tasks ``1..K-1`` (``⟨g_k, d⟩ ≥ ε_k‖g_k‖²``,
  up to the solver tolerance; not with task 0, which it follows); linear under
  scaling; permutation-equivariant among tasks ``1..K-1`` only (task 0 is
  special by design); K = 1 returns ``g_0``; a zero secondary gradient gets
  weight 0.

  Args:
    epsilon: ``ε``, a float or a ``[K-1]`` vector of fractions in ``[0, 1)``
      (default 0: non-conflicting projection).
    max_multiplier, max_iters, tol, polish_iters: solver settings (see
      :func:`mtlx.weightings.pcd`). Accuracy: exact (to rounding) on
      well-posed inputs; on degenerate ones (many nearly opposite gradients in
      few dimensions) constraint violations up to ~1e-4 ``‖g_k‖ max_l ‖g_l‖``
      were measured.

  Cost: the Gramian (``K² P``), one ``(K-1)`` eigenvalue problem, ``≤ max_iters``
  ``(K-1)²`` matrix-vector products and ``polish_iters`` ``(K-1)³`` least-squares
  solves, the combination (``K P``). Stateless.
  """
  validation.check_number(max_multiplier, "max_multiplier", low=0, low_open=True, method="pcd")
  validation.check_number(max_iters, "max_iters", low=1, integer=True, method="pcd")
  validation.check_number(polish_iters, "polish_iters", low=0, integer=True, method="pcd")
  eps = jnp.asarray(epsilon)
  if eps.ndim > 1:
    raise ValueError(f"epsilon has shape {eps.shape}; expected a float or a [K-1] vector.")
  for value in np.ravel(np.asarray(epsilon, dtype=float)):
    validation.check_number(float(value), "epsilon", low=0, high=1, high_open=True,
                            method="pcd")
  if tol is not None:
    validation.check_number(tol, "tol", low=0, low_open=True, method="pcd")

  def weighting(gramian):
    k = gramian.shape[0]
    if eps.ndim == 1:
      validation.check_vector(eps, k - 1, "epsilon")
    return pcd_weights(gramian, epsilon=eps, max_multiplier=max_multiplier,
                          max_iters=max_iters, tol=tol, polish_iters=polish_iters)

  return gramian_weighting(weighting, name="pcd")
