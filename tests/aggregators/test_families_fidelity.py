"""TorchJD's property tests on TorchJD's matrix families, for the methods of issue 14.

Matrices: tests/matrix_families.py (zero, normal, rank-deficient, strong,
strictly weak, non-weak; scaled by 0 … 1e15), float64. Assertions and
tolerances are TorchJD's (tests/unit/aggregation/_asserts.py):

- structure: a finite update of the right shape, on every typical and scaled matrix
  (float64), and on the scaled ones in float32;
- permutation-invariant: ``atol = rtol = 1e-4`` (5 random row permutations);
- linear under scaling: ``A(diag(αc₁+βc₂)J) = αA(diag(c₁)J) + βA(diag(c₂)J)``,
  ``atol = rtol = 1e-4`` (5 draws of ``c₁, c₂ ∈ U(0,1)^K``, ``α, β ∈ U(0,1)``);
- non-conflicting: ``‖(Jd)₊‖ = ‖Jd‖`` to ``atol = rtol = 4e-4``;
- strongly stationary: ``‖d‖ > 5e-3`` on matrices that are not strongly stationary.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mtlx
from mtlx.aggregators.cagrad import cagrad_weights
from tests import matrix_families as mf

TYPICAL = mf.typical()
SCALED = mf.scaled()
NON_STRONG = [(n, m) for n, m in TYPICAL if n in ("strictly_weak", "non_weak")]

STATELESS = {
    "mean": mtlx.mean,
    "imtl_g": mtlx.imtl_g,
    "config": mtlx.config,
    "aligned_mtl": mtlx.aligned_mtl,
    "cagrad": None,       # c = 0.5 (TorchJD's tests), through _CAGRAD
    "cagrad_c1": None,
    "cagrad_c2": None,
}
STATEFUL = {
    "nash_mtl": lambda k: mtlx.nash_mtl(num_tasks=k),
    "fairgrad": lambda k: mtlx.fairgrad(num_tasks=k),
}
_JIT = {}


CAGRAD_C = {"cagrad": 0.5, "cagrad_c1": 1.0, "cagrad_c2": 2.0}
# CAGrad's weighting with c traced: one compilation per K serves every c.
_CAGRAD = jax.jit(lambda g, c: cagrad_weights(g, c))


def _aggregate(name, matrix):
  if name in CAGRAD_C:
    w = _CAGRAD(jnp.asarray(matrix @ matrix.T), CAGRAD_C[name])
    return np.asarray(w) @ matrix
  k = matrix.shape[0]
  key = (name, k)
  if key not in _JIT:
    tx = STATELESS[name]() if name in STATELESS else STATEFUL[name](k)
    _JIT[key] = (tx, jax.jit(tx.update))
  tx, update = _JIT[key]
  return np.asarray(update(jnp.asarray(matrix), tx.init(None))[0])


@pytest.mark.parametrize("name", sorted(STATELESS) + sorted(STATEFUL))
def test_expected_structure(name):
  for family, matrix in TYPICAL + SCALED:
    d = _aggregate(name, matrix)
    assert d.shape == matrix.shape[1:], (family, matrix.shape)
    assert np.all(np.isfinite(d)), (name, family, matrix.shape, np.abs(matrix).max())


@pytest.mark.parametrize("name", sorted(STATELESS) + sorted(STATEFUL))
def test_expected_structure_float32_scaled(name):
  """float32 inputs scaled by 0 … 1e15 (Gramian entries up to 1e30) stay finite."""
  for family, matrix in SCALED:
    if matrix.shape[0] == 1:
      continue
    d = _aggregate(name, matrix.astype(np.float32))
    assert np.all(np.isfinite(d)), (name, family, matrix.shape, np.abs(matrix).max())


@pytest.mark.parametrize("name", ["mean", "imtl_g", "config", "aligned_mtl", "cagrad",
                                  "fairgrad"])
def test_permutation_invariant(name):
  rng = np.random.default_rng(0)
  for family, matrix in TYPICAL:
    d = _aggregate(name, matrix)
    for _ in range(5):
      perm = rng.permutation(matrix.shape[0])
      np.testing.assert_allclose(_aggregate(name, matrix[perm]), d, atol=1e-4, rtol=1e-4,
                                 err_msg=f"{name} {family} {matrix.shape}")


@pytest.mark.parametrize("name", ["mean", "config"])
def test_linear_under_scaling(name):
  rng = np.random.default_rng(1)
  for family, matrix in TYPICAL:
    k = matrix.shape[0]
    for _ in range(5):
      c1, c2 = rng.uniform(size=k), rng.uniform(size=k)
      a, b = rng.uniform(), rng.uniform()
      x1 = _aggregate(name, c1[:, None] * matrix)
      x2 = _aggregate(name, c2[:, None] * matrix)
      x = _aggregate(name, (a * c1 + b * c2)[:, None] * matrix)
      np.testing.assert_allclose(x, a * x1 + b * x2, atol=1e-4, rtol=1e-4,
                                 err_msg=f"{name} {family} {matrix.shape}")


@pytest.mark.parametrize("name", ["cagrad_c1", "cagrad_c2"])
def test_cagrad_non_conflicting_for_c_at_least_one(name):
  """TorchJD: CAGrad is non-conflicting for c ≥ 1 (0 is then inside the ball)."""
  for family, matrix in TYPICAL:
    jd = matrix @ _aggregate(name, matrix)
    np.testing.assert_allclose(np.linalg.norm(jd[jd >= 0]), np.linalg.norm(jd),
                               atol=4e-4, rtol=4e-4, err_msg=f"{family} {matrix.shape}")


def test_mean_strongly_stationary():
  for family, matrix in NON_STRONG:
    assert np.linalg.norm(_aggregate("mean", matrix)) > 5e-3, (family, matrix.shape)


def test_imtl_g_zero():
  """TorchJD: IMTL-G of a zero matrix is 0."""
  for k, p in ((1, 1), (4, 3), (9, 11)):
    np.testing.assert_array_equal(_aggregate("imtl_g", np.zeros((k, p))), 0.0)
