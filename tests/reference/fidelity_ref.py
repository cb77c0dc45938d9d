"""Float64 NumPy references for issue 14 (agreement with the reference implementations).

Independent of mtlx: written from the papers' equations and, where users compare
numbers against them, the authors' code (nash-mtl, CAGrad) and TorchJD. Every
function takes plain NumPy arrays.
"""

import itertools

import numpy as np


# ---------------------------------------------------------------------------
# Nash-MTL (Navon et al., ICML 2022): G α = 1/α on the raw Gramian.
# ---------------------------------------------------------------------------

def nash_alpha(gram, tol=1e-14, max_iters=500):
  """``α > 0`` with ``α ∘ (G α) = 1`` (raw Gramian), by Newton's method on
  ``F(x) = e^x ∘ (G e^x) - 1`` in log-coordinates ``x = log α`` with
  backtracking on ``‖F‖`` (independent of mtlx's damped Newton on the convex
  potential of the normalised Gramian). Start: ``α_k = 1/‖g_k‖`` (each task
  alone)."""
  gram = np.asarray(gram, np.float64)
  x = -0.5 * np.log(np.diag(gram))

  def resid(x):
    a = np.exp(x)
    return a * (gram @ a) - 1.0

  f = resid(x)
  for _ in range(max_iters):
    if np.linalg.norm(f) < tol:
      break
    a = np.exp(x)
    jac = np.diag(a * (gram @ a)) + a[:, None] * gram * a[None, :]
    step = np.linalg.solve(jac, -f)
    t = 1.0
    while t > 1e-12:
      f_new = resid(x + t * step)
      if np.linalg.norm(f_new) < (1 - 1e-4 * t) * np.linalg.norm(f):
        break
      t *= 0.5
    x, f = x + t * step, f_new
  return np.exp(x)


def nash_mtl_run(jacs, max_norm=1.0, update_weights_every=1):
  """The authors' ``NashMTL`` step by step (and TorchJD's): on steps
  ``t % update_weights_every == 0`` α is solved for and stored, otherwise the
  stored α is reused with the new gradients; ``d = Σ α_k g_k`` is then clipped to
  ``max_norm`` when longer (``max_norm = 0``: no clipping). Returns the updates."""
  prev = np.ones(jacs[0].shape[0])
  out = []
  for t, jac in enumerate(jacs):
    if t % update_weights_every == 0:
      prev = nash_alpha(jac @ jac.T)
    d = prev @ jac
    n = np.linalg.norm(d)
    if max_norm > 0 and n > max_norm:
      d = d * max_norm / n
    out.append(d)
  return np.array(out)


# ---------------------------------------------------------------------------
# CAGrad (Liu et al., NeurIPS 2021): the optimal value of the primal problem
#   V* = max_{‖d - g0‖ ≤ r} min_k ⟨g_k, d⟩,  g0 = mean of the rows, r = c ‖g0‖,
# exactly, for Jacobians with two columns (rows in the plane).
# ---------------------------------------------------------------------------

def cagrad_primal_value(jac, c):
  """``V*`` for a ``K × 2`` Jacobian, by exact enumeration.

  ``f(d) = min_k ⟨g_k, d⟩`` is concave and positively homogeneous, so its
  maximum over the disk is ``f(0) = 0`` when 0 is in the disk and no point of
  the disk does better, and otherwise lies on the circle
  ``d = g0 + r (cos θ, sin θ)``, where ``f`` is a minimum of sinusoids
  ``a_k + r(x_k cos θ + y_k sin θ)``; the maximum of such a minimum is at the
  peak of one sinusoid or at a crossing of two, all enumerated in closed form.
  """
  jac = np.asarray(jac, np.float64)
  assert jac.shape[1] == 2
  g0 = jac.mean(0)
  r = c * np.linalg.norm(g0)
  f = lambda d: np.min(jac @ d)
  cands = [0.0] if np.linalg.norm(g0) <= r else []
  if r == 0:
    return max(cands + [f(g0)])
  a = jac @ g0
  thetas = [np.arctan2(y, x) for x, y in jac]
  for i, j in itertools.combinations(range(len(jac)), 2):
    dx, dy = r * (jac[i] - jac[j])
    da = a[i] - a[j]
    rad = np.hypot(dx, dy)
    if rad == 0 or abs(da) > rad:
      continue
    phi = np.arctan2(dy, dx)
    delta = np.arccos(np.clip(-da / rad, -1.0, 1.0))
    thetas += [phi + delta, phi - delta]
  for t in thetas:
    cands.append(f(g0 + r * np.array([np.cos(t), np.sin(t)])))
  return max(cands)


# ---------------------------------------------------------------------------
# IMTL-G (Liu et al., ICLR 2021) in the pseudo-inverse form of Quinton & Rey
# (2024) / TorchJD: w ∝ G⁺ n, n_k = ‖g_k‖, Σ w = 1.
# ---------------------------------------------------------------------------

def imtl_g(jac):
  gram = jac @ jac.T
  v = np.linalg.pinv(gram, rcond=1e-10, hermitian=True) @ np.linalg.norm(jac, axis=1)
  return (v / v.sum()) @ jac if abs(v.sum()) > 1e-10 * np.abs(v).sum() else np.zeros(jac.shape[1])


# ---------------------------------------------------------------------------
# Aligned-MTL (Senushkin et al., CVPR 2023) with pre-defined task weights p:
# J = U S Vᵀ (rank R), aligned rows σ_R U_R V_Rᵀ, d = pᵀ (aligned rows).
# ---------------------------------------------------------------------------

def aligned_mtl(jac, pref):
  u, s, vt = np.linalg.svd(jac, full_matrices=False)
  keep = s ** 2 > s[0] ** 2 * len(jac) * np.finfo(float).eps
  u, s, vt = u[:, keep], s[keep], vt[keep]
  return np.asarray(pref, float) @ (s.min() * u @ vt)
