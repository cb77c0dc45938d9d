"""Aligned-MTL's pre-defined task weights ``pref_vector`` (issue 14, item 7)."""

import jax.numpy as jnp
import numpy as np
import pytest

import mtlx
from tests.reference import fidelity_ref as ref

J_BASE = np.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])


def _aligned(jac, pref=None):
  tx = mtlx.aligned_mtl(pref)
  return np.asarray(tx.update(jnp.asarray(jac), tx.init(None))[0])


def test_pref_vector_against_reference():
  rng = np.random.default_rng(0)
  for jac, pref in ((J_BASE, [1.0, 2.0]), (rng.normal(size=(4, 6)), [0.1, 0.5, 2.0, 1.0]),
                    (rng.normal(size=(4, 1)) @ rng.normal(size=(1, 6)), [1.0, 0.0, 3.0, 2.0])):
    np.testing.assert_allclose(_aligned(jac, pref), ref.aligned_mtl(jac, pref), rtol=1e-10,
                               atol=1e-12)


def test_default_sums_and_torchjd_mean_convention():
  """Default p = 1 (the authors' sum); p = 1/K gives TorchJD's fixed value."""
  np.testing.assert_allclose(_aligned(J_BASE), ref.aligned_mtl(J_BASE, [1.0, 1.0]), rtol=1e-12)
  np.testing.assert_allclose(_aligned(J_BASE, [0.5, 0.5]), [0.2133, 0.9673, 0.9673], atol=1e-4)


def test_bad_pref_vector():
  with pytest.raises(ValueError, match="pref_vector"):
    mtlx.aligned_mtl([[1.0, 2.0]])
  with pytest.raises(ValueError, match="pref_vector"):
    mtlx.aligned_mtl([1.0, float("nan")])
  with pytest.raises(ValueError, match=r"shape \(3,\); expected shape \(2,\)"):
    _aligned(J_BASE, [1.0, 2.0, 3.0])
