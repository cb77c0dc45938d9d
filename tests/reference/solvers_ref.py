"""Float64 NumPy references for the shared QPs, robust to singular Gramians.

Convex QPs: any KKT point is a minimiser. These enumerate the free sets S (all
2^K of them, so K stays small), solve the face system by least squares (the
minimum-norm solution, so singular faces from duplicated, zero or dependent
rows are handled) and return the first point satisfying every KKT condition to
``1e-10`` (relative). Independent of mtlx.
"""

import itertools

import numpy as np


def _supports(k, empty=True):
  for r in range(0 if empty else 1, k + 1):
    yield from (list(s) for s in itertools.combinations(range(k), r))


def nonneg_qp(q_mat, q, tol=1e-10):
  """A KKT point of ``min_{x >= 0} 0.5 x^T Q x + q^T x`` (``q`` in range(Q))."""
  k = len(q)
  scale = 1.0 + np.abs(q_mat).max() + np.abs(q).max()
  for s in _supports(k):
    x = np.zeros(k)
    if s:
      x[s] = np.linalg.lstsq(q_mat[np.ix_(s, s)], -q[s], rcond=None)[0]
    grad = q_mat @ x + q
    if (np.all(x >= -tol * scale) and np.all(np.abs(grad[s]) <= tol * scale)
        and np.all(grad >= -tol * scale)):
      return np.maximum(x, 0.0)
  raise RuntimeError("no KKT point found")


def simplex_qp(q_mat, q, tol=1e-10):
  """A KKT point of ``min_{w in simplex} 0.5 w^T Q w + q^T w``."""
  k = len(q)
  scale = 1.0 + np.abs(q_mat).max() + np.abs(q).max()
  for s in _supports(k, empty=False):
    m = len(s)
    a = np.zeros((m + 1, m + 1))
    a[:m, :m] = q_mat[np.ix_(s, s)]
    a[:m, m] = -1.0
    a[m, :m] = 1.0
    sol = np.linalg.lstsq(a, np.concatenate([-q[s], [1.0]]), rcond=None)[0]
    w = np.zeros(k)
    w[s] = sol[:m]
    nu = sol[m]
    grad = q_mat @ w + q - nu
    if (abs(w.sum() - 1) <= tol and np.all(w >= -tol) and np.all(np.abs(grad[s]) <= tol * scale)
        and np.all(grad >= -tol * scale)):
      return np.maximum(w, 0.0)
  raise RuntimeError("no KKT point found")


def upgrad(jac, pref=None):
  """``sum_i p_i Pi(g_i)``, ``Pi`` the projection onto ``{x : J x >= 0}`` by its dual."""
  k = len(jac)
  p = np.full(k, 1.0 / k) if pref is None else np.asarray(pref, float)
  g = jac @ jac.T
  return sum(p[i] * (jac[i] + nonneg_qp(g, g[i]) @ jac) for i in range(k))


def dualproj(jac):
  g = jac @ jac.T
  u = np.full(len(jac), 1.0 / len(jac))
  return (u + nonneg_qp(g, g @ u)) @ jac


def mgda(jac):
  return simplex_qp(jac @ jac.T, np.zeros(len(jac))) @ jac
