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
