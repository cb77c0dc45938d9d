"""TorchJD-style test matrices (float64 NumPy, seeded), shared by the property tests.

The families of TorchJD's aggregation tests (tests/unit/aggregation/_inputs.py and
_matrix_samplers.py), re-written in NumPy: a ``K × P`` Jacobian of a given rank
``r`` is ``U[:, :r] S V[:r]`` with Haar-random orthonormal ``U``, ``V`` and
``|N(0,1)|`` singular values, where ``U``'s columns are chosen so that

- ``normal``:          nothing else (generic rank-``r`` rows);
- ``zero``:            the zero matrix;
- ``strong``:          ``vᵀ J = 0`` for some ``v > 0`` (0 is strictly inside the
                        cone of the rows: strongly Pareto-stationary);
- ``strictly_weak``:   ``vᵀ J = 0`` for some ``v ≥ 0, v ≠ 0`` but for no ``v > 0``;
- ``non_weak``:        ``vᵀ J ≠ 0`` for every ``v ≥ 0, v ≠ 0`` (a common descent
                        direction exists);
- ``rank_deficient``:  ``normal`` with ``r < min(K, P)``;
- ``scaled``:          ``normal`` matrices times ``0, 1e-10, 1e3, 1e5, 1e10, 1e15``.

``typical()`` and ``scaled()`` return ``(name, matrix)`` lists with TorchJD's
shapes; ``SMALL_*`` variants keep the tests fast (K ≤ 9).
"""

from __future__ import annotations

import numpy as np

NORMAL_DIMS = [(1, 1, 1), (4, 3, 1), (4, 3, 2), (4, 3, 3), (9, 11, 5), (9, 11, 9)]
ZERO_DIMS = [(1, 1, 0), (4, 3, 0), (9, 11, 0)]
STATIONARITY_DIMS = [(20, 10, 10), (20, 10, 5), (20, 10, 1), (20, 100, 1), (20, 100, 19)]
SMALL_STATIONARITY_DIMS = [(6, 4, 4), (6, 4, 2), (6, 4, 1), (6, 8, 5)]
SCALES = (0.0, 1e-10, 1e3, 1e5, 1e10, 1e15)
FAMILIES = ("zero", "normal", "rank_deficient", "strong", "strictly_weak", "non_weak", "scaled")


def _orthonormal_complement(q, rng):
  """A Haar-random ``[m, m-k]`` semi-orthonormal matrix orthogonal to ``q`` ([m, k])."""
  m, k = q.shape
  a = rng.normal(size=(m, m - k))
  a = a - q @ (q.T @ a)
  out, _ = np.linalg.qr(a)
  return out


def _orthonormal(dim, rng):
  return _orthonormal_complement(np.zeros((dim, 0)), rng)


def _compose(u, n, rank, rng):
  vt = _orthonormal(n, rng)
  s = np.abs(rng.normal(size=rank))
  return u[:, :rank] @ np.diag(s) @ vt[:rank]


def normal(m, n, rank, rng):
  return _compose(_orthonormal(m, rng), n, rank, rng)


def strong(m, n, rank, rng):
  assert m > 1 and 0 < rank <= min(m - 1, n)
  v = np.abs(rng.normal(size=m))
  u1 = (v / np.linalg.norm(v))[:, None]
  return _compose(_orthonormal_complement(u1, rng), n, rank, rng)


def strictly_weak(m, n, rank, rng):
  assert m > 1 and 0 < rank <= min(m - 1, n)
  u = np.abs(rng.normal(size=m))
  split = rng.integers(1, m)
  perm = rng.permutation(m)
  v, v_prime = np.zeros(m), np.zeros(m)
  v[perm[:split]] = u[perm[:split]] / np.linalg.norm(u[perm[:split]])
  v_prime[perm[split:]] = u[perm[split:]] / np.linalg.norm(u[perm[split:]])
  u1 = np.stack([v, v_prime], axis=1)
  full = np.hstack([u1, _orthonormal_complement(u1, rng)])
  return _compose(full[:, 1:], n, rank, rng)      # orthogonal to v, contains v'


def non_weak(m, n, rank, rng):
  assert rank > 0
  u = np.abs(rng.normal(size=m))
  u1 = (u / np.linalg.norm(u))[:, None]
  return _compose(np.hstack([u1, _orthonormal_complement(u1, rng)]), n, rank, rng)


def typical(seed=0, small=True):
  """``[(family, matrix)]``: zero, normal (incl. rank-deficient), strong,
  strictly weak and non-weak matrices with TorchJD's shapes (``small``: K ≤ 9)."""
  rng = np.random.default_rng(seed)
  stat = SMALL_STATIONARITY_DIMS if small else STATIONARITY_DIMS
  out = [("zero", np.zeros((m, n))) for m, n, _ in ZERO_DIMS]
  for m, n, r in NORMAL_DIMS:
    out.append(("normal" if r == min(m, n) else "rank_deficient", normal(m, n, r, rng)))
  for name, sampler in (("strong", strong), ("strictly_weak", strictly_weak),
                        ("non_weak", non_weak)):
    out += [(name, sampler(m, n, r, rng)) for m, n, r in stat]
  return out


def scaled(seed=1, scales=SCALES):
  """``[("scaled", s · J)]`` for TorchJD's normal matrices and scales 0 … 1e15."""
  rng = np.random.default_rng(seed)
  base = [normal(m, n, r, rng) for m, n, r in NORMAL_DIMS]
  return [("scaled", s * j) for s in scales for j in base]
