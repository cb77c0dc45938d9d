"""Front metrics: non-dominated filtering, hypervolume, IGD, IGD+, spread.

Conventions: a front is an array ``points[N, M]`` of objective vectors, every
objective minimised. These are evaluation metrics, computed on the host in
float64 NumPy (exact hypervolume through the ``moocore`` library); they are not
meant to run inside a jitted step.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _points(points: Any, name: str = "points", m: int | None = None) -> np.ndarray:
  p = np.asarray(points, dtype=np.float64)
  if p.ndim == 1 and p.size == 0:
    p = p.reshape(0, m or 0)
  if p.ndim != 2 or (m is not None and p.shape[1] != m):
    want = f"[N, {m}]" if m is not None else "[N, M]"
    raise ValueError(f"{name} has shape {p.shape}; expected a 2-D array {want} "
                     "(N points, M objectives).")
  if not np.all(np.isfinite(p)):
    raise ValueError(f"{name} holds non-finite values; expected finite objective values.")
  return p


def non_dominated_mask(points: Any) -> np.ndarray:
  """``mask[N]``: True where no other point dominates the point.

  ``a`` dominates ``b`` when ``a ≤ b`` in every objective and ``a < b`` in one.
  Duplicates do not dominate each other (all copies are kept). Cost ``O(N² M)``.
  """
  p = _points(points)
  le = np.all(p[:, None, :] <= p[None, :, :], axis=-1)
  lt = np.any(p[:, None, :] < p[None, :, :], axis=-1)
  dominated = np.any(le & lt, axis=0)
  return ~dominated


def non_dominated(points: Any) -> np.ndarray:
  """The non-dominated points, duplicates removed, sorted by the first objective."""
  p = _points(points)
  front = np.unique(p[non_dominated_mask(p)], axis=0)
  return front[np.lexsort(front.T[::-1])]


def hypervolume(points: Any, reference_point: Any) -> float:
  """The hypervolume dominated by ``points`` and bounded by ``reference_point``.

  .. math::  HV(P; ρ) = λ\\Big(\\bigcup_{p ∈ P,\\ p < ρ} [p, ρ]\\Big)

  (Zitzler & Thiele 1998; ``λ`` the Lebesgue measure). Points that do not
  strictly dominate ``ρ`` in every objective contribute nothing; dominated and
  duplicated points change nothing. Exact, by ``moocore.hypervolume``
  (Fonseca et al. 2006 in 2-D, HV3D⁺/HV4D⁺ in 3-D/4-D, exact higher-dimensional
  algorithms beyond). An empty
  set has hypervolume 0. Larger is better; only values with the same ``ρ`` are
  comparable, so always report ``ρ`` with the number.
  """
  ref = np.asarray(reference_point, dtype=np.float64)
  if ref.ndim != 1 or not np.all(np.isfinite(ref)):
    raise ValueError(f"reference_point has shape {ref.shape}; expected a finite 1-D "
                     "vector with one entry per objective.")
  p = _points(points, m=ref.shape[0])
  p = p[np.all(p < ref, axis=1)]
  if p.shape[0] == 0:
    return 0.0
  import moocore  # pylint: disable=import-outside-toplevel
  return float(moocore.hypervolume(p, ref=ref))


def igd(points: Any, reference_front: Any) -> float:
  """Inverted generational distance: ``(1/|Z|) Σ_{z ∈ Z} min_{p ∈ P} ‖p - z‖₂``.

  The mean distance from each point of the reference front ``Z`` to the
  nearest found point (Coello & Cortés 2005). Lower is better; 0 when ``P``
  covers ``Z``. Not Pareto-compliant (see :func:`igd_plus`).
  """
  z = _points(reference_front, "reference_front")
  p = _points(points, m=z.shape[1])
  if p.shape[0] == 0:
    return float("inf")
  d = np.linalg.norm(p[None, :, :] - z[:, None, :], axis=-1)
  return float(np.mean(np.min(d, axis=1)))


def igd_plus(points: Any, reference_front: Any) -> float:
  """IGD⁺ (Ishibuchi et al., EMO 2015): ``(1/|Z|) Σ_z min_p ‖max(p - z, 0)‖₂``.

  Only the amount by which ``p`` is worse than ``z`` counts, which makes it
  weakly Pareto-compliant. Lower is better.
  """
  z = _points(reference_front, "reference_front")
  p = _points(points, m=z.shape[1])
  if p.shape[0] == 0:
    return float("inf")
  d = np.linalg.norm(np.maximum(p[None, :, :] - z[:, None, :], 0.0), axis=-1)
  return float(np.mean(np.min(d, axis=1)))


def spread(points: Any, reference_front: Any | None = None) -> float:
  """Generalized spread Δ (Zhou, Jin, Zhang, Sendhoff & Tsang, CEC 2006).

  .. math::  Δ = \\frac{\\sum_m d(e_m, P) + \\sum_{p ∈ P} |d(p, P) - \\bar d|}
                    {\\sum_m d(e_m, P) + |P|\\, \\bar d}

  ``d(p, P)`` is the distance from ``p`` to its nearest other point of ``P``,
  ``\\bar d`` their mean, ``e_m`` the extreme points (minimum of objective
  ``m``) of the reference front (without one, the extremes of ``P`` itself, so
  the first sum is 0; for M = 2 this is Deb et al.'s Δ with ``d_f = d_l`` the
  gaps to the front's ends). 0 for evenly spread points reaching the
  extremes; lower is better. Needs at least 2 distinct points (else ``nan``).
  """
  p = np.unique(_points(points), axis=0)
  if p.shape[0] < 2:
    return float("nan")
  d = np.linalg.norm(p[:, None, :] - p[None, :, :], axis=-1)
  np.fill_diagonal(d, np.inf)
  nearest = d.min(axis=1)
  mean = nearest.mean()
  extremes = 0.0
  if reference_front is not None:
    z = _points(reference_front, "reference_front", m=p.shape[1])
    e = z[np.argmin(z, axis=0)]
    extremes = float(np.sum(np.min(np.linalg.norm(e[:, None, :] - p[None, :, :], axis=-1),
                                   axis=1)))
  denom = extremes + p.shape[0] * mean
  return float((extremes + np.sum(np.abs(nearest - mean))) / denom) if denom > 0 else 0.0
