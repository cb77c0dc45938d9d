"""float64 NumPy references for the in-context baselines (Garg et al., 2022), written
from the definitions; they never call mtlx."""

import numpy as np


def least_squares(xs, ys):
  """Minimum-norm least squares on the first i pairs, predicted at x_i (0 for i = 0)."""
  n = len(xs)
  out = np.zeros(n)
  for i in range(1, n):
    w = np.linalg.lstsq(xs[:i], ys[:i], rcond=None)[0]
    out[i] = xs[i] @ w
  return out


def lasso_coordinate_descent(a, b, alpha, sweeps=3000):
  """argmin ½‖a w − b‖² + α‖w‖₁ by cyclic coordinate descent."""
  w = np.zeros(a.shape[1])
  col = (a ** 2).sum(0)
  r = b - a @ w
  for _ in range(sweeps):
    for j in range(a.shape[1]):
      if col[j] == 0:
        continue
      r += a[:, j] * w[j]
      rho = a[:, j] @ r
      w[j] = np.sign(rho) * max(abs(rho) - alpha, 0.0) / col[j]
      r -= a[:, j] * w[j]
  return w


def lasso(xs, ys, alpha):
  n = len(xs)
  out = np.zeros(n)
  for i in range(1, n):
    out[i] = xs[i] @ lasso_coordinate_descent(xs[:i], ys[:i], alpha)
  return out


def nearest_neighbours(xs, ys, k=3):
  n = len(xs)
  out = np.zeros(n)
  for i in range(1, n):
    d = ((xs[:i] - xs[i]) ** 2).sum(1)
    out[i] = ys[:i][np.argsort(d, kind="stable")[:k]].mean()
  return out


def averaging(xs, ys):
  n = len(xs)
  out = np.zeros(n)
  for i in range(1, n):
    out[i] = xs[i] @ (ys[:i, None] * xs[:i]).mean(0)
  return out
