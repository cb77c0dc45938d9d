"""Preference vectors: checks, grids on the simplex, and random draws.

A preference ``r`` is a point of the simplex ``Δ_K = {r ≥ 0, Σ r = 1}``. Peers
read it differently, and every method here says which reading it uses:

* weights of the scalarization (linear, Tchebycheff, smooth Tchebycheff,
  PaMaL, PHN with LS, COSMOS): small ``r_k`` means task k matters little;
* the ray ``r_1 L_1 = … = r_K L_K`` (EPO, Mahapatra & Rajan 2020: the loss
  vector ends up proportional to ``1/r``);
* a direction in loss space (PBI, COSMOS's cosine term, Pareto MTL's
  reference vectors: the loss vector ends up near the ray ``t·r``).
"""

from __future__ import annotations

import itertools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def check_preference(preference: Any, method: str, num_tasks: int | None = None) -> np.ndarray:
  """Validates a concrete preference vector and returns it normalised to sum 1.

  Raises a ``ValueError`` naming ``preference``, what was given and what was
  expected, unless it is a 1-D vector (of ``num_tasks`` entries when given) of
  finite, non-negative numbers with a positive sum.
  """
  try:
    r = np.asarray(preference, dtype=np.float64)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{method}: preference={preference!r} is not a vector of numbers; "
                     "expected a 1-D vector of K non-negative numbers.") from e
  if r.ndim != 1 or (num_tasks is not None and r.shape[0] != num_tasks) or r.shape[0] < 1:
    want = f"shape ({num_tasks},)" if num_tasks is not None else "a 1-D vector"
    raise ValueError(f"{method}: preference has shape {r.shape}; expected {want}.")
  if not np.all(np.isfinite(r)) or np.any(r < 0) or r.sum() <= 0:
    raise ValueError(f"{method}: preference={r.tolist()} is not valid; expected finite, "
                     "non-negative entries with a positive sum (a point of the simplex "
                     "up to scale).")
  return r / r.sum()


def simplex_grid(num_tasks: int, num_points: int) -> np.ndarray:
  """Evenly spaced preferences on the simplex (Das & Dennis lattice), float64.

  For ``K = 2``: ``num_points`` vectors ``(t, 1 - t)``, ``t`` from 1 to 0.
  For ``K > 2``: every ``r`` with ``r_k = n_k / H``, ``Σ n_k = H``, for the
  largest ``H`` whose lattice has at most ``num_points`` points (at least H=1).
  """
  if num_tasks < 2 or num_points < 1:
    raise ValueError(f"simplex_grid: num_tasks={num_tasks}, num_points={num_points}; "
                     "expected num_tasks >= 2 and num_points >= 1.")
  if num_tasks == 2:
    t = np.linspace(1.0, 0.0, num_points) if num_points > 1 else np.array([0.5])
    return np.stack([t, 1.0 - t], axis=1)
  h = 1
  from math import comb
  while comb(h + 1 + num_tasks - 1, num_tasks - 1) <= num_points:
    h += 1
  pts = [np.array(c) for c in itertools.product(range(h + 1), repeat=num_tasks)
         if sum(c) == h]
  return np.stack(pts).astype(np.float64)[::-1] / h


def circle_points(num_points: int) -> np.ndarray:
  """Pareto MTL's reference vectors for two tasks: ``(cos θ, sin θ)``, θ evenly
  spaced on ``[0, π/2]`` (Lin et al. 2019's ``circle_points``), float64."""
  theta = np.linspace(0.0, np.pi / 2, num_points)
  return np.stack([np.cos(theta), np.sin(theta)], axis=1)


def sample_preferences(key: jax.Array, num_tasks: int, num_samples: int | None = None,
                       alpha: float = 1.0) -> jax.Array:
  """Draws preferences from ``Dirichlet(alpha · 1)`` (shape ``[K]`` or ``[N, K]``).

  ``alpha = 1`` is the uniform distribution on the simplex (PHN, PaMaL);
  COSMOS draws with ``alpha = 1.2``.
  """
  shape = () if num_samples is None else (num_samples,)
  return jax.random.dirichlet(key, jnp.full((num_tasks,), alpha), shape)
