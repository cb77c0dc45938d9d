"""MGDA told which tasks are present (the optional extra ``task_mask``): the min-norm
point of the present tasks' rows, against the float64 NumPy support enumeration of
``tests/reference/aggregators_ref.py`` on the TorchJD-style families. (MGDA without
a mask is checked in ``test_aggregators_reference.py`` and the shared suites.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mtlx
from mtlx.aggregators.mgda import restricted_min_norm
from tests import matrix_families as fam
from tests.reference import aggregators_ref as ref


def _masks(k, rng, n=3):
  out = []
  for _ in range(n):
    m = rng.random(k) < 0.6
    m[rng.integers(k)] = True          # at least one task present
    out.append(m)
  return out


_weights = jax.jit(lambda g, m: mtlx.mgda_weights(g, task_mask=m))


@pytest.mark.parametrize("name_jac", fam.typical(seed=3) + fam.scaled(seed=4),
                         ids=lambda nj: f"{nj[0]}-{nj[1].shape[0]}x{nj[1].shape[1]}")
def test_direction_is_the_min_norm_point_of_the_present_rows(name_jac):
  _, jac = name_jac
  k = jac.shape[0]
  rng = np.random.default_rng(k)
  scale = max(np.abs(jac).max(), 1e-300)
  for mask in _masks(k, rng):
    for zero_absent in (True, False):  # the step hands zero rows; any row is ignored
      j = np.where(mask[:, None], jac, 0.0) if zero_absent else jac
      w = np.asarray(_weights(jnp.asarray(j @ j.T), jnp.asarray(mask)))
      assert np.all(w[~mask] == 0) and np.all(w >= -1e-12)
      np.testing.assert_allclose(w.sum(), 1.0, rtol=1e-9)
      expected = ref.min_norm_point(jac[mask] / scale) * scale
      np.testing.assert_allclose(w @ j, expected, rtol=0, atol=1e-8 * scale)


def test_every_task_present_is_the_unmasked_weighting_and_none_present_is_zero():
  jac = fam.normal(5, 7, 4, np.random.default_rng(0))
  g = jnp.asarray(jac @ jac.T)
  np.testing.assert_allclose(_weights(g, jnp.ones(5, bool)), mtlx.mgda_weights(g),
                             rtol=1e-10, atol=1e-12)
  np.testing.assert_array_equal(_weights(g, jnp.zeros(5, bool)), np.zeros(5))


def test_the_transform_reads_task_mask_and_errors_name_it():
  jac = fam.normal(3, 6, 3, np.random.default_rng(1))
  mask = np.array([True, False, True])
  tx = mtlx.mgda()
  d, _ = tx.update(jnp.asarray(np.where(mask[:, None], jac, 0)), tx.init(None),
                   task_mask=jnp.asarray(mask))
  np.testing.assert_allclose(d, ref.min_norm_point(jac[mask]), atol=1e-9)
  d0, _ = tx.update(jnp.asarray(np.where(mask[:, None], jac, 0)), tx.init(None))
  np.testing.assert_allclose(d0, 0.0, atol=1e-12)  # without the mask: the zero vertex
  with pytest.raises(ValueError, match="task_mask"):
    tx.update(jnp.asarray(jac), tx.init(None), task_mask=jnp.ones(4, bool))
  with pytest.raises(ValueError, match="task_mask"):
    restricted_min_norm(jnp.eye(3), jnp.ones((3, 1), bool))
