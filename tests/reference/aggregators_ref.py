"""Float64 NumPy references for the gradient-space methods, from the papers' equations.

Independent of mtlx: every function takes the K x P Jacobian ``jac`` (rows = task
gradients) and returns the update direction (a P-vector), computed in parameter
space where the paper does. The QP-type methods use exhaustive active-set
enumeration (exact for the small K used in the tests) instead of mtlx's
projected-gradient + refinement solvers.
"""

import itertools

import numpy as np


def mean(jac):
  return jac.mean(0)


def _supports(k):
  for r in range(1, k + 1):
    yield from (list(s) for s in itertools.combinations(range(k), r))


def min_norm_point(jac):
  """Min-norm point of the convex hull of the rows: ``w* = argmin_{w ∈ Δ} ½ wᵀGw``
  (support enumeration, :func:`simplex_qp`), then ``d = w*ᵀ J`` (the point is unique)."""
  return simplex_qp(jac @ jac.T, np.zeros(jac.shape[0])) @ jac


def mgda(jac, normalization="none", losses=None):
  norms = np.linalg.norm(jac, axis=1)
  n = {"none": np.ones(len(jac)), "l2": norms, "loss": losses,
       "loss+": None if losses is None else losses * norms}[normalization]
  return min_norm_point(jac / n[:, None])


def pcgrad(jac, orders):
  """Yu et al. 2020, Alg. 1, with the visiting order of every task given."""
  out = []
  for i in range(len(jac)):
    gi = jac[i].copy()
    for j in orders[i]:
      if j == i:
        continue
      dot = gi @ jac[j]
      if dot < 0 and jac[j] @ jac[j] > 0:
        gi = gi - dot / (jac[j] @ jac[j]) * jac[j]
    out.append(gi)
  return np.sum(out, 0)


def gradvac(jac, targets, orders, beta):
  """Wang et al. 2021, Alg. 1 (LibMTL's ordering of the EMA update)."""
  targets = targets.copy()
  out = []
  for i in range(len(jac)):
    gi = jac[i].copy()
    for j in orders[i]:
      if j == i:
        continue
      nj = np.linalg.norm(jac[j])
      phi = gi @ jac[j] / (np.linalg.norm(gi) * nj)
      t = targets[i, j]
      if phi < t:
        gi = gi + (np.linalg.norm(gi) * (t * np.sqrt(1 - phi ** 2) - phi * np.sqrt(1 - t ** 2))
                   / (nj * np.sqrt(1 - t ** 2))) * jac[j]
      targets[i, j] = (1 - beta) * t + beta * phi
    out.append(gi)
  return np.sum(out, 0), targets


def graddrop(jac, u, leak):
  """Chen et al. 2020, Eq. 1-3, elementwise with given uniforms u (P,)."""
  purity = 0.5 * (1 + jac.sum(0) / np.abs(jac).sum(0))
  out = np.zeros(jac.shape[1])
  for k in range(len(jac)):
    m = ((purity > u) & (jac[k] > 0)) | ((purity < u) & (jac[k] < 0))
    out += (leak[k] + (1 - leak[k]) * m) * jac[k]
  return out


def cagrad(jac, c, rescale=True):
  """Liu et al. 2021: d = g0 + c|g0| g_w/|g_w|, w = argmin_{simplex} g_w.g0 + c|g0||g_w|.

  Exhaustive over supports S; on each face the stationarity
  b_S + (r/s) G_SS w_S = mu 1, sum w = 1, s = |J^T w| is solved by bisection on s
  (for fixed s it is a linear KKT system); the feasible candidate of least
  objective wins (the vertices are candidates too).
  """
  k = len(jac)
  g0 = jac.mean(0)
  r = c * np.linalg.norm(g0)
  g = jac @ jac.T
  b = jac @ g0
  obj = lambda w: b @ w + r * np.linalg.norm(w @ jac)
  cands = [np.eye(k)[i] for i in range(k)]
  for s_idx in _supports(k):
    m = len(s_idx)
    if m == 1:
      continue

    def w_of(s):
      a = np.zeros((m + 1, m + 1))
      a[:m, :m] = (r / s) * g[np.ix_(s_idx, s_idx)]
      a[:m, m] = -1
      a[m, :m] = 1
      rhs = np.concatenate([-b[s_idx], [1.0]])
      w = np.zeros(k)
      w[s_idx] = np.linalg.solve(a, rhs)[:m]
      return w

    lo, hi = 1e-12, np.sqrt(g.diagonal().max()) * 2
    try:
      for _ in range(60):
        mid = np.sqrt(lo * hi)
        if np.linalg.norm(w_of(mid) @ jac) > mid:
          lo = mid
        else:
          hi = mid
      w = w_of(np.sqrt(lo * hi))
    except np.linalg.LinAlgError:
      continue
    if np.all(w >= -1e-10):
      cands.append(np.maximum(w, 0))
  w = min(cands, key=obj)
  gw = w @ jac
  d = g0 + r / np.linalg.norm(gw) * gw
  return d / (1 + c * c) if rescale else d


def imtl_g(jac):
  """Liu et al. 2021 (ICLR), Eq. in §3.2, with explicit vectors and an inverse."""
  u = jac / np.linalg.norm(jac, axis=1, keepdims=True)
  d_mat = jac[0] - jac[1:]
  u_mat = u[0] - u[1:]
  alpha = jac[0] @ u_mat.T @ np.linalg.inv(d_mat @ u_mat.T)
  w = np.concatenate([[1 - alpha.sum()], alpha])
  return w @ jac


def nash_mtl(jacs, max_norm=1.0, sweeps=2000):
  """Navon et al. 2022: alpha with G alpha = 1/alpha (raw Gramian, as the paper and
  the authors' code), by exact coordinate descent on 0.5 a^T Gn a - sum log a
  (closed-form scalar minimiser) for Gn = G/|G|_F, then alpha = a/sqrt(|G|_F);
  d = sum alpha_k g_k with |d| clipped to max_norm. ``jacs``: [N, K, P] (batched
  over N for speed) or one [K, P]."""
  single = jacs.ndim == 2
  jacs = jacs[None] if single else jacs
  g = np.einsum("nkp,nlp->nkl", jacs, jacs)
  nf = np.linalg.norm(g, axis=(1, 2))
  g = g / nf[:, None, None]
  a = np.ones(g.shape[:2])
  for _ in range(sweeps):
    for i in range(g.shape[1]):
      gii = g[:, i, i]
      bi = np.einsum("nk,nk->n", g[:, i], a) - gii * a[:, i]
      a[:, i] = (-bi + np.sqrt(bi * bi + 4 * gii)) / (2 * gii)
  a = a / np.sqrt(nf)[:, None]
  d = np.einsum("nk,nkp->np", a, jacs)
  if max_norm:
    n = np.linalg.norm(d, axis=1, keepdims=True)
    d = d * np.minimum(1.0, max_norm / n)
  return d[0] if single else d


def aligned_mtl(jac):
  """Senushkin et al. 2023: SVD J = U S V^T (rank-truncated), aligned rows
  sigma_min U V^T, summed."""
  u, s, vt = np.linalg.svd(jac, full_matrices=False)
  keep = s ** 2 > s[0] ** 2 * len(jac) * np.finfo(float).eps
  u, s, vt = u[:, keep], s[keep], vt[keep]
  return (s.min() * u @ vt).sum(0)


def _nonneg_qp_enum(q_mat, q):
  """argmin_{x>=0} 0.5 x^T Q x + q^T x by enumerating the free sets (KKT)."""
  k = len(q)
  best, best_f = np.zeros(k), 0.0
  for s in _supports(k):
    x = np.zeros(k)
    try:
      x[s] = np.linalg.solve(q_mat[np.ix_(s, s)], -q[s])
    except np.linalg.LinAlgError:
      continue
    if np.all(x >= -1e-12):
      f = 0.5 * x @ q_mat @ x + q @ x
      if f < best_f - 1e-15:
        best, best_f = x, f
  return best


def project_dual_cone(jac, g):
  """argmin_{x: J x >= 0} |x - g|: x = g + J^T mu, mu = argmin_{mu>=0} 0.5 mu^T G mu + (J g)^T mu."""
  mu = _nonneg_qp_enum(jac @ jac.T, jac @ g)
  return g + mu @ jac


def upgrad(jac):
  return np.mean([project_dual_cone(jac, gi) for gi in jac], 0)


def dualproj(jac):
  return project_dual_cone(jac, jac.mean(0))


def config(jac):
  """Liu et al. 2024: g_c = pinv(unit rows) 1, length = sum of projections."""
  u = jac / np.linalg.norm(jac, axis=1, keepdims=True)
  gc = np.linalg.pinv(u) @ np.ones(len(jac))
  gu = gc / np.linalg.norm(gc)
  return (jac @ gu).sum() * gu


def krum(jac, n_byzantine, n_selected=1):
  """Blanchard et al. 2017: score = sum of squared distances to the K-f-2 nearest."""
  k = len(jac)
  dist = ((jac[:, None, :] - jac[None, :, :]) ** 2).sum(-1)
  scores = [np.sort(np.delete(dist[i], i))[:k - n_byzantine - 2].sum() for i in range(k)]
  sel = np.argsort(scores, kind="stable")[:n_selected]
  return jac[sel].mean(0)


def trimmed_mean(jac, trim):
  s = np.sort(jac, axis=0)
  return s[trim:len(jac) - trim].mean(0)


def simplex_qp(q_mat, q):
  """argmin_{w in simplex} 0.5 w^T Q w + q^T w by enumerating supports (KKT)."""
  k = len(q)
  best, best_f = None, np.inf
  for s in _supports(k):
    m = len(s)
    a = np.zeros((m + 1, m + 1))
    a[:m, :m] = q_mat[np.ix_(s, s)]
    a[:m, m] = 1
    a[m, :m] = 1
    try:
      sol = np.linalg.solve(a, np.concatenate([-q[s], [1.0]]))
    except np.linalg.LinAlgError:
      continue
    w = np.zeros(k)
    w[s] = sol[:m]
    if np.all(w >= -1e-12):
      f = 0.5 * w @ q_mat @ w + q @ w
      if f < best_f:
        best, best_f = w, f
  return best


def nonneg_qp(q_mat, q):
  return _nonneg_qp_enum(q_mat, q)
