"""Small jittable solvers shared by the MTO methods.

Every solver is pure JAX with a fixed iteration count (or a ``lax.while_loop``
with a tolerance and an iteration cap), documented in its docstring, so an update
that calls one traces once and runs under ``jit``, ``vmap`` and sharding.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def project_simplex(v: jax.Array) -> jax.Array:
  """Euclidean projection of ``v ∈ R^K`` onto the simplex ``{w ≥ 0, Σ w = 1}``.

  Exact, by sorting (Held et al. 1974; Duchi et al., ICML 2008):
  ``w = max(v - τ, 0)`` with ``τ = (Σ_{i≤ρ} u_i - 1)/ρ`` for ``u`` sorted
  descending and ``ρ`` the largest index with ``u_ρ - (Σ_{i≤ρ} u_i - 1)/ρ > 0``.
  Cost: ``O(K log K)``. Non-finite input gives non-finite output.
  """
  k = v.shape[-1]
  # The projection commutes with shifts by a constant; shifting by max(v) keeps
  # ``cumsum(u) - 1`` exact when |v| >> 1 in float32 (else rho can be 0).
  v = v - jnp.max(v, axis=-1, keepdims=True)
  u = jnp.sort(v, axis=-1)[..., ::-1]
  css = jnp.cumsum(u, axis=-1) - 1.0
  idx = jnp.arange(1, k + 1, dtype=v.dtype)
  cond = u - css / idx > 0
  rho = jnp.sum(cond, axis=-1, keepdims=True)
  tau = jnp.take_along_axis(css, rho - 1, axis=-1) / rho.astype(v.dtype)
  return jnp.maximum(v - tau, 0.0)


# ---------------------------------------------------------------------------
# Quadratic programs on the simplex and on the non-negative orthant, and the
# Nash bargaining system (gradient-space methods, issue 4 part A).
# ---------------------------------------------------------------------------

#: Default accelerated-projected-gradient iterations of the QP solvers.
def default_tol(dtype) -> float:
  """The default stopping tolerance of an iterative solver working in ``dtype``.

  ``1e-6`` for float32 and narrower floats, ``1e-12`` for float64: about
  ``√eps`` of the precision, so a ``while_loop`` with this tolerance stops on
  round-off rather than running to its iteration cap.
  """
  return 1e-6 if jnp.finfo(dtype).bits <= 32 else 1e-12


QP_ITERS = 100
#: Extra active-set iterations after the projected-gradient phase, beyond K
#: (the default cap is ``K + QP_REFINE``).
QP_REFINE = 8


def _lipschitz(q_mat: jax.Array) -> jax.Array:
  """``λ_max(Q)`` (the gradient's Lipschitz constant), floored to stay positive."""
  lmax = jnp.linalg.eigvalsh(q_mat)[-1]
  tiny = jnp.finfo(q_mat.dtype).tiny
  return jnp.where(lmax > tiny, lmax, jnp.ones_like(lmax))


def _quad(q_mat, q, w):
  return 0.5 * w @ q_mat @ w + q @ w


def _fista(q_mat, q, x0, project, num_iters, lipschitz):
  """Accelerated projected gradient (FISTA, Beck & Teboulle 2009) with the
  adaptive gradient restart of O'Donoghue & Candès (2015), step ``1/L``."""
  step = 1.0 / lipschitz

  def body(_, carry):
    x, y, t = carry
    x_new = project(y - step * (q_mat @ y + q))
    t_new = 0.5 * (1.0 + jnp.sqrt(1.0 + 4.0 * t * t))
    restart = jnp.vdot(y - x_new, x_new - x) > 0
    y_new = jnp.where(restart, x_new, x_new + ((t - 1.0) / t_new) * (x_new - x))
    t_new = jnp.where(restart, jnp.ones_like(t_new), t_new)
    return x_new, y_new, t_new

  one = jnp.ones((), x0.dtype)
  x, _, _ = jax.lax.fori_loop(0, num_iters, body, (x0, x0, one))
  return x


#: Exact active-set solvers (batched Cholesky face solves) up to this K (and
#: single QPs up to ``K = DIRECT_MAX_K^(4/3)`` = 256, see :func:`_direct`); above
#: it the batched QPs are solved by ADMM on one eigendecomposition of ``Q``
#: (XLA:CPU factorises a batch of large matrices one at a time: a batch of 128
#: Cholesky factorisations of 128×128 takes ~45 ms, of 256×256 over a second).
DIRECT_MAX_K = 64
#: Block-principal-pivoting iterations before the monotone active-set phase.
PIVOT_ITERS = 6
#: ADMM iterations of the large-K solvers (``K > DIRECT_MAX_K``) and how often
#: the penalty is re-balanced.
ADMM_ITERS = 200
ADMM_RHO_EVERY = 20


def _ridge(dtype, k):
  """The ridge on the face block of a scaled (``tr Q = K``) PSD system."""
  return jnp.sqrt(jnp.finfo(dtype).eps) * 1e-2 * k


#: Work (flop) of one LAPACK call that jaxlib's CPU kernels always run inline:
#: they split a batch over the intra-op thread pool past 2·10⁵ flop.
_INLINE_FLOP = 2e4


def _several_cpu_devices() -> bool:
  """Whether this process has a CPU backend with more than one device (False when
  no CPU backend is available, e.g. ``JAX_PLATFORMS=cuda``)."""
  try:
    return jax.local_device_count("cpu") > 1
  except RuntimeError:
    return False


def _per_matrix(fn, k):
  """``jax.vmap(fn)`` over the leading axis (a batch of ``K × K`` systems), except
  on a CPU backend with several devices, where the batch is cut into chunks of
  at most ``_INLINE_FLOP / (K³/3)`` matrices, run one after another
  (``lax.map(..., batch_size=)``).

  Why: jaxlib's CPU LAPACK kernels split a batch whose work passes about
  2·10⁵ flop over XLA:CPU's intra-op thread pool and wait for the pieces from
  inside a thread of that same pool. That pool has ``max(cores, devices)``
  threads; when every one is running a device's program (emulated devices,
  ``--xla_force_host_platform_device_count``, the usual way to try a mesh on a
  laptop or in CI), no thread is left to run the pieces and the step hangs:
  UPGrad at K = 32 on 8 emulated devices of a 2-core host did
  (``benchmarks/repro/mesh_k32_stall.py``). One device, GPUs and TPUs keep
  the batched call. UPGrad's K faces are chunked from K = 16 and factorised one
  per call from K = 32; that costs (forced on one device of the 2-core box)
  1.9 ms instead of 1.0 ms for its weights at K = 32, 9.5 instead of 8.2 ms at
  K = 64.
  """
  batched = jax.vmap(fn)
  chunk = max(1, int(_INLINE_FLOP // (k ** 3 / 3)))

  def per_matrix(*args):
    if chunk >= args[0].shape[0] or not _several_cpu_devices():
      return batched(*args)
    chunked = lambda *a: jax.lax.map(lambda xs: fn(*xs), a, batch_size=chunk)
    return jax.lax.platform_dependent(*args, cpu=chunked, default=batched)

  return per_matrix


def _face_solver(q_mat, masks):
  """Solver of the batch of face systems ``A_m z = b`` with
  ``A_m = M Q M + (I - M)`` (``M = diag(mask_m)``), one per row of ``masks``:
  a Cholesky factorisation of ``A_m + δ M`` (``δ = 0.01 K √ε`` keeps faces with
  duplicated or zero gradients factorisable) and two steps of iterative
  refinement against the unregularised ``A_m`` (the ridge's bias drops to
  third order). Returns ``solve(b) -> z`` for ``b`` of shape ``[M, K]`` or
  ``[M, K, R]``.
  """
  k = q_mat.shape[-1]
  dtype = q_mat.dtype
  m = masks.astype(dtype)

  def apply(z):  # A_m z, batched: z [M, K, R]
    return m[..., None] * jnp.einsum("kl,mlr->mkr", q_mat, m[..., None] * z) + (1 - m)[..., None] * z

  a = q_mat[None] * m[:, :, None] * m[:, None, :] + jax.vmap(jnp.diag)(1.0 - m)
  chol = _per_matrix(jnp.linalg.cholesky, k)(a + jax.vmap(jnp.diag)(_ridge(dtype, k) * m))
  sol = _per_matrix(lambda c, r: jax.scipy.linalg.cho_solve((c, True), r), k)

  def solve3(b):
    z = sol(chol, b)
    for _ in range(2):
      z = z + sol(chol, b - apply(z))
    return z

  def solve(b):
    return solve3(b[..., None])[..., 0] if b.ndim == 2 else solve3(b)

  return solve


def _admm(q_mat, q, x0, project, num_iters):
  """ADMM (Boyd et al. 2011, §5; OSQP's splitting, Stellato et al. 2020) for
  ``min ½xᵀQx + qᵀx`` over a set with a cheap projection, all rows of ``q``
  at once: ``x ← (Q + ρI)⁻¹(ρ(z - u) - q)``, over-relaxation 1.6,
  ``z ← Π(x̂ + u)``, ``u ← u + x̂ - z``. One eigendecomposition of ``Q``
  serves every ``ρ``: ``(Q + ρI)⁻¹ = V diag(1/(λ+ρ)) Vᵀ``; ``ρ`` starts at
  ``tr(Q)/K = 1`` and every ``ADMM_RHO_EVERY`` iterations is multiplied by
  ``√(‖r_primal‖/‖r_dual‖)`` (clipped to [1e-6, 1e6]). Returns ``z``
  (feasible). Each iteration: one ``[K,K] × [K,M]`` product."""
  lam, vecs = jnp.linalg.eigh(q_mat)
  lam = jnp.maximum(lam, 0.0)

  def inverse(rho):
    return (vecs / (lam + rho)) @ vecs.T

  def block(carry, _):
    z, u, rho = carry
    h = inverse(rho)

    def step(c, _):
      z, u, _, _ = c
      x = (rho * (z - u) - q) @ h
      xh = 1.6 * x + (1 - 1.6) * z
      z_new = project(xh + u)
      u = u + xh - z_new
      return (z_new, u, x - z_new, z_new - z), None

    (z, u, r_p, dz), _ = jax.lax.scan(step, (z, u, z, z), None, length=ADMM_RHO_EVERY)
    rp = jnp.linalg.norm(r_p)
    rd = rho * jnp.linalg.norm(dz)
    ratio = jnp.where((rp > 0) & (rd > 0), jnp.sqrt(rp / jnp.where(rd > 0, rd, 1.0)), 1.0)
    rho_new = jnp.clip(rho * ratio, 1e-6, 1e6)
    u = u * (rho / rho_new)
    return (z, u, rho_new.astype(rho.dtype)), None

  rho = jnp.ones((), q_mat.dtype)
  n_blocks = max(1, num_iters // ADMM_RHO_EVERY)
  (z, _, _), _ = jax.lax.scan(block, (x0, jnp.zeros_like(x0), rho), None, length=n_blocks)
  return z


def _primal_active_set(q_mat, q, w, face_min, max_iters, simplex):
  """Monotone primal active-set iterations (Lawson & Hanson 1974 for NNLS;
  Wolfe 1976 for the min-norm point), all rows at once, from the feasible
  ``w``. Each iteration minimises exactly on the face of the free set ``S``
  (``face_min``). If that minimiser is feasible it is taken and the most
  violated KKT condition outside ``S`` (gradient below the multiplier by more
  than ``64 ε (1 + max|∇|)``) enters ``S``; otherwise the iterate moves towards
  it until coordinates hit zero, and those leave ``S``. A move is kept only if
  the objective does not rise by more than ``16 ε (|f| + 1)``. Stops when every
  row is at a KKT point, or after ``max_iters`` face solves."""
  eps = jnp.finfo(w.dtype).eps
  k = w.shape[-1]
  quad = lambda v: 0.5 * jnp.sum((v @ q_mat) * v, -1) + jnp.sum(q * v, -1)

  def body(c):
    i, w, free, _ = c
    target, _ = face_min(free)
    d = target - w
    feasible = jnp.all(jnp.where(free, target >= 0, True), -1, keepdims=True)
    neg = free & (d < 0)
    ratios = jnp.where(neg, w / jnp.where(neg, -d, 1.0), jnp.inf)
    tau = jnp.where(feasible, 1.0, jnp.minimum(1.0, jnp.min(ratios, -1, keepdims=True)))
    blocked = neg & (ratios <= tau) & ~feasible
    cand = jnp.where(blocked | ~free, 0.0, jnp.maximum(w + tau * d, 0.0))
    f_old, f_new = quad(w)[:, None], quad(cand)[:, None]
    ok = (jnp.all(jnp.isfinite(cand), -1, keepdims=True)
          & (f_new <= f_old + 16 * eps * (jnp.abs(f_old) + 1.0)))
    w_new = jnp.where(ok, cand, w)
    grad = w_new @ q_mat + q
    nu = jnp.sum(w_new * grad, -1, keepdims=True) if simplex else 0.0
    tol = 64 * eps * (1.0 + jnp.max(jnp.abs(grad), -1, keepdims=True))
    viol = jnp.where(free, jnp.inf, grad - nu)
    j = jnp.argmin(viol, -1)
    enter = feasible & ok & (jnp.min(viol, -1, keepdims=True) < -tol)
    free_new = jnp.where(feasible, free, free & ~blocked)
    free_new = free_new | (enter & (jnp.arange(k) == j[:, None]))
    free_new = jnp.where(ok, free_new, free)
    moving = jnp.any(free_new != free) | jnp.any(~ok)
    return i + 1, w_new, free_new, moving

  def cond(c):
    i, _, _, moving = c
    return (i < max_iters) & moving

  _, w, _, _ = jax.lax.while_loop(cond, body, (0, w, w > 0, jnp.array(True)))
  return w


def _pivot(free, infeasible, state):
  """Block principal pivoting's exchange rule (Júdice & Pires 1994; Kim & Park
  2011): exchange every infeasible index while their number falls (or for 3
  more tries), else only the largest one (Murty's rule, finite)."""
  best, tries = state
  count = jnp.sum(infeasible, axis=-1, dtype=best.dtype)
  k = free.shape[-1]
  better = count < best
  block = better | (tries > 0)
  last = (k - 1) - jnp.argmax(infeasible[..., ::-1], axis=-1)
  single = jnp.arange(k) == last[..., None]
  flip = jnp.where(block[..., None], infeasible, single & infeasible)
  new_best = jnp.where(better, count, best)
  new_tries = jnp.where(better, 3, jnp.where(block, tries - 1, tries)).astype(tries.dtype)
  return free ^ flip, (new_best, new_tries)


def _active_set(q_mat, q, free, face_min, kkt, max_iters, simplex):
  """Batched active-set solver shared by the QPs: block principal pivoting,
  then monotone primal active-set iterations.

  ``free``: ``[M, K]`` the initial free sets; ``face_min(free) -> (x, y)``
  the exact minimisers on the faces and the KKT residuals (gradient minus the
  multiplier of the equality constraint); ``kkt`` the tolerance. Block
  principal pivoting (at most ``min(PIVOT_ITERS, max_iters)`` face solves)
  finds the solution of non-degenerate problems in a few solves; if some
  problem of the batch is still not at a KKT point (degenerate problems:
  rank-deficient Gramians, where pivoting can cycle), its clipped iterate
  seeds :func:`_primal_active_set` (monotone, robust) for the rest of the
  ``max_iters`` budget. Returns the solutions and the number of pivoting
  iterations taken.
  """
  k = q_mat.shape[-1]
  x, y = face_min(free)

  def infeasible_of(free, x, y):
    tol_x, tol_y = kkt(x, y)
    return (free & (x < -tol_x)) | (~free & (y < -tol_y))

  pivots = min(PIVOT_ITERS, max_iters)

  def cond(c):
    i, _, x, y, _ = c
    return (i < pivots) & jnp.any(infeasible_of(c[1], x, y))

  def body(c):
    i, free, x, y, state = c
    free, state = _pivot(free, infeasible_of(free, x, y), state)
    x, y = face_min(free)
    return i + 1, free, x, y, state

  m = free.shape[0]
  state = (jnp.full((m,), k + 1, jnp.int32), jnp.full((m,), 3, jnp.int32))
  iters, free, x, y, _ = jax.lax.while_loop(cond, body, (1, free, x, y, state))
  solved = ~jnp.any(infeasible_of(free, x, y), -1, keepdims=True)
  x = jnp.where(free, jnp.maximum(x, 0.0), 0.0)
  if simplex:
    total = jnp.sum(x, -1, keepdims=True)
    x = jnp.where(total > 0, x / jnp.where(total > 0, total, 1.0), 1.0 / k)

  def fallback(x):
    return _primal_active_set(q_mat, q, x, face_min, max_iters - iters, simplex)

  x = jax.lax.cond(jnp.all(solved), lambda x: x, fallback, x)
  return x, iters


def _kkt_tol(dtype):
  eps = jnp.finfo(dtype).eps

  def kkt(x, y):
    tol_x = 64 * eps * (1.0 + jnp.max(jnp.abs(x), axis=-1, keepdims=True))
    tol_y = 64 * eps * (1.0 + jnp.max(jnp.abs(y), axis=-1, keepdims=True))
    return tol_x, tol_y

  return kkt


def _trace_scale(q_mat):
  """``tr(Q)/K`` (1 where it is zero): QPs are solved on ``Q/s`` so tolerances are
  relative. Non-finite values pass through."""
  s = jnp.trace(q_mat) / q_mat.shape[-1]
  return jnp.where(s > 0, s, jnp.ones_like(s))


def _batched(q):
  return (q[None], lambda x: x[0]) if q.ndim == 1 else (q, lambda x: x)


def _direct(m, k):
  """Whether the exact active-set path is used for ``m`` problems of size ``k``:
  ``K ≤ DIRECT_MAX_K``, or a batch whose factorisations cost no more than
  those of ``DIRECT_MAX_K`` problems of that size (``m K³ ≤ DIRECT_MAX_K⁴``:
  a single QP up to K = 256)."""
  return k <= DIRECT_MAX_K or m * k ** 3 <= DIRECT_MAX_K ** 4


def simplex_qp(q_mat: jax.Array, q: jax.Array | None = None, *,
               num_iters: int = 0, num_refine: int | None = None,
               init: jax.Array | None = None,
               lipschitz: jax.Array | None = None) -> jax.Array:
  """``argmin_{w ∈ Δ_K} ½ wᵀ Q w + qᵀ w`` for a PSD ``Q`` (``Δ_K`` the simplex).

  With ``q = 0`` and ``Q = G`` the Gramian this is the min-norm point of the
  convex hull of the task gradients (MGDA, Sener & Koltun 2018; CAGrad's inner
  problem). ``q`` may be ``[K]`` or a batch ``[M, K]`` of linear terms sharing
  ``Q`` (one call solves all M problems). Both ``Q`` and ``q`` are divided by
  ``tr(Q)/K`` first (the minimiser does not change), so tolerances are relative.

  Algorithm (jittable, no host callback, fixed bounds):
    1. optional warm start: ``num_iters`` (default 0) steps of accelerated
       projected gradient (FISTA with adaptive restart, step ``1/λ_max(Q)``,
       exact projection :func:`project_simplex`) from ``init`` (default uniform);
    2. exact active set by block principal pivoting (Júdice & Pires 1994;
       Kim & Park 2011), all M problems at once: on the free set ``F`` solve
       the face KKT system ``Q_FF w_F + q_F = ν 1``, ``1ᵀw_F = 1`` (two
       right-hand sides of one factorisation of ``Q_FF``, see
       :func:`_face_solver`: Cholesky with a ``0.01 K √ε`` ridge and two
       refinement steps for ``K ≤ 96``, conjugate gradients above); exchange
       the indices with ``w_j < 0`` in ``F`` or ``(Qw + q)_j < ν`` outside
       it (tolerance ``64 ε (1 + max|·|)``), all at once while their count
       falls, else one at a time (Murty's rule, finite). It starts from the
       support of the warm start (or of the best vertex and every index with a
       negative reduced gradient there) and stops when every problem satisfies
       the KKT conditions, after at most ``num_refine`` face solves (default
       ``K + 8``; a few in practice). The result is the exact minimiser up to
       rounding; if the cap is hit first it is the last face minimiser clipped
       to the simplex. ``num_refine=0`` returns the FISTA iterate.
  Cost: ``O(M K³)`` per face solve (direct) or ``O(K² M)`` per CG step, and
  ``num_iters`` matrix products ``[K,K] × [K,M]``; no dependence on P.

  ``lipschitz`` (``λ_max`` of ``Q/s``) may be passed to reuse one eigenvalue
  computation across repeated solves with the same ``Q`` (FISTA only).
  Non-finite ``Q`` or ``q`` give non-finite weights.
  """
  k = q_mat.shape[-1]
  s = _trace_scale(q_mat)
  q_mat = q_mat / s
  q = jnp.zeros((k,), q_mat.dtype) if q is None else jnp.asarray(q, q_mat.dtype) / s
  q, unbatch = _batched(q)
  m = q.shape[0]
  dtype = q_mat.dtype
  if num_iters > 0:
    w0 = jnp.full((m, k), 1.0 / k, dtype) if init is None else jnp.broadcast_to(init, (m, k))
    lip = _lipschitz(q_mat) if lipschitz is None else lipschitz
    w = jax.vmap(lambda qq, ww: _fista(q_mat, qq, ww, project_simplex, num_iters, lip))(q, w0)
    free = w > 0
  else:
    # The best vertex and every index whose reduced gradient there is negative.
    vertex = jnp.argmin(0.5 * jnp.diag(q_mat)[None] + q, axis=-1)
    grad = q_mat[vertex] + q
    nu = jnp.take_along_axis(grad, vertex[:, None], axis=-1)
    free = (jnp.arange(k) == vertex[:, None]) | (grad < nu)
    w = jnp.where(free, 1.0 / jnp.sum(free, -1, keepdims=True), 0.0).astype(dtype)
  cap = k + QP_REFINE if num_refine is None else num_refine
  if cap == 0:
    return unbatch(w)
  if not _direct(m, k):
    w0 = w if num_iters > 0 else jnp.full((m, k), 1.0 / k, dtype)
    return unbatch(_admm(q_mat, q, w0, project_simplex, ADMM_ITERS))

  def face_min(free):
    free = jnp.where(jnp.any(free, -1, keepdims=True), free,
                     jnp.arange(k) == jnp.argmin(q, -1)[:, None])
    solve = _face_solver(q_mat, free)
    mf = free.astype(dtype)
    z = solve(jnp.stack([mf, -q * mf], axis=-1))
    z1, z2 = z[..., 0] * mf, z[..., 1] * mf
    den = jnp.sum(z1, -1, keepdims=True)
    den = jnp.where(den != 0, den, 1.0)
    nu = (1.0 - jnp.sum(z2, -1, keepdims=True)) / den
    w = z2 + nu * z1
    # Iterative refinement on the bordered KKT system [Q_FF -1; 1ᵀ 0], which is
    # non-singular even where Q_FF is not (e.g. 0 in the hull).
    for _ in range(2):
      r1 = -(q + w @ q_mat - nu) * mf
      r2 = 1.0 - jnp.sum(w, -1, keepdims=True)
      zr = solve(r1) * mf
      dnu = (r2 - jnp.sum(zr, -1, keepdims=True)) / den
      w, nu = w + zr + dnu * z1, nu + dnu
    y = w @ q_mat + q - nu
    return w, y

  w, _ = _active_set(q_mat, q, free, face_min, _kkt_tol(dtype), cap, simplex=True)
  w = w / jnp.sum(w, -1, keepdims=True)
  return unbatch(w)


def min_norm_simplex(gramian: jax.Array, **kwargs) -> jax.Array:
  """Weights of the min-norm point of the convex hull of the rows of ``J``:
  ``argmin_{w ∈ Δ_K} wᵀ G w``. See :func:`simplex_qp` for the algorithm, its
  iteration bound and its tolerance."""
  return simplex_qp(gramian, None, **kwargs)


def nonneg_qp(q_mat: jax.Array, q: jax.Array, *, num_iters: int = 0,
              num_refine: int | None = None, lipschitz: jax.Array | None = None) -> jax.Array:
  """``argmin_{x ≥ 0} ½ xᵀ Q x + qᵀ x`` for a PSD ``Q`` with ``q ∈ range(Q)``.

  The box QP of UPGrad and DualProj (projection onto the dual cone
  ``{v : G v ≥ 0}`` written on the weights: ``min_{v ≥ u} vᵀ G v`` is this with
  ``x = v - u``, ``q = G u``). ``q`` may be ``[K]`` or a batch ``[M, K]`` of
  linear terms sharing ``Q``: UPGrad's K problems are one call. ``Q`` and
  ``q`` are divided by ``tr(Q)/K``.

  Algorithm: optional ``num_iters`` (default 0) FISTA steps from 0 (step
  ``1/λ_max(Q)``, projection ``max(·, 0)``), then block principal pivoting
  on all M problems at once (see :func:`simplex_qp`): on the free set ``F``
  solve ``Q_FF x_F = -q_F`` (:func:`_face_solver`), exchange the indices with
  ``x_j < 0`` in ``F`` or ``(Qx + q)_j < 0`` outside it; from ``F = {j : q_j
  < 0}`` (or the warm start's support), at most ``num_refine`` face solves
  (default ``K + 8``; a few in practice). Same guarantees as
  :func:`simplex_qp`. ``lipschitz`` serves the FISTA warm start only.
  """
  k = q_mat.shape[-1]
  s = _trace_scale(q_mat)
  q_mat = q_mat / s
  q, unbatch = _batched(jnp.asarray(q, q_mat.dtype) / s)
  dtype = q_mat.dtype
  if num_iters > 0:
    lip = _lipschitz(q_mat) if lipschitz is None else lipschitz
    x = jax.vmap(lambda qq: _fista(q_mat, qq, jnp.zeros((k,), dtype),
                                   lambda v: jnp.maximum(v, 0.0), num_iters, lip))(q)
    free = x > 0
  else:
    x = jnp.zeros_like(q)
    free = q < 0
  cap = k + QP_REFINE if num_refine is None else num_refine
  if cap == 0:
    return unbatch(x)
  if not _direct(q.shape[0], k):
    return unbatch(_admm(q_mat, q, x, lambda v: jnp.maximum(v, 0.0), ADMM_ITERS))

  def face_min(free):
    mf = free.astype(dtype)
    x = _face_solver(q_mat, free)(-q * mf) * mf
    return x, x @ q_mat + q

  x, _ = _active_set(q_mat, q, free, face_min, _kkt_tol(dtype), cap, simplex=False)
  return unbatch(x)


def nash_bargaining(gramian: jax.Array, init: jax.Array, *, num_iters: int = 20) -> jax.Array:
  """Solves the Nash bargaining system ``G α = 1/α``, ``α > 0`` (Navon et al. 2022).

  The system is the stationarity condition of the strictly convex (for PD ``G``),
  self-concordant function ``φ(α) = ½ αᵀ G α - Σ_k log α_k``, so it is solved by
  ``num_iters`` damped Newton steps (Nesterov 2004, §4.1.5): with the Newton
  step ``Δ = -(G + diag(α⁻²))⁻¹ ∇φ`` and decrement ``λ = (-∇φᵀΔ)^{1/2}``,
  ``α ← α + Δ/(1+λ)`` while ``λ ≥ 1/4`` and the full step afterwards. Every
  iterate stays positive (the step stays inside the Dikin ellipsoid) and the
  convergence is quadratic once ``λ < 1/4``; ``init`` (the previous step's α, a
  warm start) usually puts it there at once. No tolerance: the count is fixed.

  A zero gradient (zero row of ``G``) or a cone of gradients containing 0
  (a Pareto-stationary point) has no solution: the α concerned grow (for
  nearly cancelling gradients, along the near-null vector of ``G``). Every
  iterate whose largest entry exceeds ``α_max = ε^{-0.4}`` (about 590 in
  float32, 1.9e6 in float64, for a ``G`` scaled to ``‖G‖_F = 1`` as Nash-MTL
  does) is therefore rescaled to ``max α = α_max``, keeping the ratios of the
  α (hence the direction of ``Σ α_k g_k``), the Hessian invertible and the
  result finite. Non-finite ``G`` gives non-finite α.
  """
  cap = jnp.finfo(gramian.dtype).eps ** -0.4

  def body(_, a):
    grad = gramian @ a - 1.0 / a
    hess = gramian + jnp.diag(1.0 / (a * a))
    delta = -jnp.linalg.solve(hess, grad)
    lam = jnp.sqrt(jnp.maximum(-grad @ delta, 0.0))
    t = jnp.where(lam < 0.25, 1.0, 1.0 / (1.0 + lam))
    return _cap(a + t * delta, cap)

  return jax.lax.fori_loop(0, num_iters, body, _cap(init.astype(gramian.dtype), cap))


def _cap(a, cap):
  return a * jnp.minimum(1.0, cap / jnp.max(a))
