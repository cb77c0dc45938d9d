"""mean() weights follow the grads' dtype (issue 14, item 6)."""

import jax.numpy as jnp
import numpy as np

import mtlx


def test_mean_of_equal_float64_rows_is_exact():
  """Under x64, three rows of ones average to exactly 1 (float32 weights 1/3 gave
  1.00000003)."""
  tx = mtlx.mean()
  d = tx.update(jnp.ones((3, 4), jnp.float64), tx.init(None))[0]
  assert d.dtype == jnp.float64
  np.testing.assert_array_equal(np.asarray(d), 1.0)


def test_mean_keeps_narrow_dtypes():
  tx = mtlx.mean()
  grads = {"a": jnp.ones((3, 2), jnp.float32), "b": jnp.ones((3,), jnp.bfloat16)}
  d = tx.update(grads, tx.init(None))[0]
  assert d["a"].dtype == jnp.float32 and d["b"].dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(d["a"]), 1.0, rtol=1e-7)
