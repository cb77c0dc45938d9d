"""Float64 NumPy references for mtlx.pareto, from the papers' equations.

Independent of mtlx. EPO's LPs are solved by scipy's HiGHS (the authors use
cvxpy + GLPK); Pareto MTL's min-norm points by support enumeration on the
active constraints only (as the authors' code builds them); hypervolume in 2-D
by a sweep over the sorted non-dominated points.
"""

import numpy as np
from scipy.optimize import linprog

from tests.reference.aggregators_ref import simplex_qp


# -- scalarizations: the values s(L; r) (the tests differentiate them numerically)

def linear(l, r):
  return r @ l


def tchebycheff(l, r, z):
  return np.max(r * (l - z))


def smooth_tchebycheff(l, r, z, mu):
  v = r * (l - z) / mu
  return mu * (np.max(v) + np.log(np.sum(np.exp(v - np.max(v)))))


def pbi(l, r, z, theta):
  u = r / np.linalg.norm(r)
  d1 = (l - z) @ u
  d2 = np.linalg.norm(l - z - d1 * u)
  return d1 + theta * d2


def cosine_penalty(l, r, lam):
  return r @ l - lam * (r @ l) / (np.linalg.norm(r) * np.linalg.norm(l))


def numeric_grad(f, l, h=1e-6):
  g = np.zeros_like(l)
  for k in range(len(l)):
    e = np.zeros_like(l)
    e[k] = h
    g[k] = (f(l + e) - f(l - e)) / (2 * h)
  return g


# -- EPO (Mahapatra & Rajan 2020; the authors' epo_lp.py)

def _lp_max(c, a_ub=None, b_ub=None):
  """argmax c^T x over the simplex with A x >= b (HiGHS)."""
  k = len(c)
  res = linprog(-c, A_ub=None if a_ub is None else -a_ub,
                b_ub=None if b_ub is None else -b_ub,
                A_eq=np.ones((1, k)), b_eq=[1.0], bounds=[(0, None)] * k, method="highs")
  return res.x if res.status == 0 else None


def epo_mode_and_lp(gram, losses, r, eps=1e-4, relax=False):
  """Returns (mode, c, A, b): the LP EPO solves at this point."""
  m = len(losses)
  rl = r * losses
  l_hat = rl / rl.sum()
  mu = np.sum(l_hat * np.log(l_hat * m))
  a = r * (np.log(l_hat * m) - mu)
  ca = gram @ a
  if mu > eps:
    j = ca > 0
    if j.any():
      rhs = ca.copy()
      rhs[j] = -np.inf
      rhs[rl == rl.max()] = 0
    else:
      rhs = np.zeros(m)
    keep = np.isfinite(rhs)
    return "bal", ca, gram[keep], rhs[keep]
  a_ub, b_ub = gram, np.zeros(m)
  if not relax:
    a_ub = np.vstack([gram, ca[None]])
    b_ub = np.concatenate([b_ub, [min(ca.max(), 0.0)]])
  return "dom", gram.sum(0), a_ub, b_ub


def epo_alpha(gram, losses, r, eps=1e-4, relax=False):
  _, c, a, b = epo_mode_and_lp(gram, losses, r, eps, relax)
  return _lp_max(c, a, b)


# -- Pareto MTL (Lin et al. 2019; the authors' get_d_paretomtl[_init])

def pmtl_weights(jac, losses, refs, i):
  refs = refs / np.linalg.norm(refs, axis=1, keepdims=True)
  w = refs - refs[i]
  active = w @ (losses / np.linalg.norm(losses)) > 0
  vec = np.vstack([jac, w[active] @ jac])
  sol = simplex_qp(vec @ vec.T, np.zeros(len(vec)))
  weights = sol[:len(jac)] + sol[len(jac):] @ w[active]
  return weights * len(jac) / np.abs(weights).sum()


def pmtl_init_weights(jac, losses, refs, i):
  refs = refs / np.linalg.norm(refs, axis=1, keepdims=True)
  w = refs - refs[i]
  active = w @ (losses / np.linalg.norm(losses)) > 0
  if not active.any():
    return np.zeros(len(jac))
  vec = w[active] @ jac
  sol = simplex_qp(vec @ vec.T, np.zeros(len(vec)))
  return sol @ w[active]


# -- hypervolume in 2-D (a sweep)

def hypervolume_2d(points, ref):
  p = np.asarray(points, float)
  p = p[np.all(p < ref, axis=1)]
  if len(p) == 0:
    return 0.0
  p = p[np.lexsort((p[:, 1], p[:, 0]))]
  area, best_f2 = 0.0, ref[1]
  for f1, f2 in p:
    if f2 < best_f2:
      area += (ref[0] - f1) * (best_f2 - f2)
      best_f2 = f2
  return area
