"""IMTL-G in the permutation-invariant pseudo-inverse form (issue 14, item 5)."""

import jax
import jax.numpy as jnp
import numpy as np

import mtlx
from tests import matrix_families as mf
from tests.reference import fidelity_ref as ref

_TX = mtlx.imtl_g()
_UPDATE = jax.jit(_TX.update)


def _imtl_g(jac):
  return np.asarray(_UPDATE(jnp.asarray(jac), _TX.init(None))[0])


def test_parallel_rows_of_one_sign_in_both_orders():
  """J = [[1,0],[2,0]]: G = [[1,2],[2,4]], n = (1,2), G⁺ = G/25, v = G⁺n = (1/5, 2/5),
  w = (1/3, 2/3), d = (5/3, 0) (by hand; TorchJD's result) in either order."""
  np.testing.assert_allclose(_imtl_g(np.array([[1.0, 0.0], [2.0, 0.0]])), [5 / 3, 0.0],
                             rtol=1e-12)
  np.testing.assert_allclose(_imtl_g(np.array([[2.0, 0.0], [1.0, 0.0]])), [5 / 3, 0.0],
                             rtol=1e-12)
  np.testing.assert_allclose(_imtl_g(np.array([[2.0, 0.0], [1.0, 0.0]], np.float32)),
                             [5 / 3, 0.0], rtol=1e-6)


def test_opposite_rows_give_zero_and_torchjd_value():
  np.testing.assert_array_equal(_imtl_g(np.array([[1.0, 0.0], [-1.0, 0.0]])), 0.0)
  # TorchJD's fixed value (tests/unit/aggregation/test_values.py).
  np.testing.assert_allclose(_imtl_g(np.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])),
                             [0.0767, 1.0, 1.0], atol=1e-4)


def test_dependent_rows_match_reference_and_are_not_zero():
  """Every rank-deficient / stationarity family matrix: the float64 pinv reference,
  and a non-zero update wherever the reference's is non-zero."""
  for family, jac in mf.typical(seed=3):
    want = ref.imtl_g(jac)
    got = _imtl_g(jac)
    scale = max(1.0, np.linalg.norm(want))
    np.testing.assert_allclose(got, want, atol=1e-8 * scale, err_msg=f"{family} {jac.shape}")
