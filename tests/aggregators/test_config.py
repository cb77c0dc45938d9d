"""ConFIG's relative guard (issue 14, item 4)."""

import jax
import jax.numpy as jnp
import numpy as np

import mtlx

_TX = mtlx.config()


def _config(jac, jit=True):
  update = jax.jit(_TX.update) if jit else _TX.update
  return np.asarray(update(jnp.asarray(jac), _TX.init(None))[0])


def test_cancelling_parallel_rows_give_zero():
  """Rows ±(1,3): the unit rows are s_k (1,3)/√10 with s = (1,-1,1,-1), so 1 ⊥ range
  and the ConFIG direction pinv(A) 1 is 0 (by hand), jitted and eager alike."""
  jac = np.array([[1.0, 3.0], [-2.0, -6.0], [3.0, 9.0], [-7.0, -21.0]])
  for jit in (True, False):
    for dtype in (np.float64, np.float32):
      np.testing.assert_array_equal(_config(jac.astype(dtype), jit), 0.0)


def test_torchjd_value():
  np.testing.assert_allclose(_config(np.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])),
                             [0.1588, 2.0706, 2.0706], atol=1e-4)


def test_linear_under_scaling_on_the_cancelling_case():
  """TorchJD's assert_linear_under_scaling (atol = rtol = 1e-4) on the issue's matrix."""
  jac = np.array([[1.0, 3.0], [-2.0, -6.0], [3.0, 9.0], [-7.0, -21.0]])
  rng = np.random.default_rng(0)
  for _ in range(5):
    c1, c2 = rng.uniform(size=4), rng.uniform(size=4)
    a, b = rng.uniform(), rng.uniform()
    x = _config((a * c1 + b * c2)[:, None] * jac)
    np.testing.assert_allclose(x, a * _config(c1[:, None] * jac) + b * _config(c2[:, None] * jac),
                               atol=1e-4, rtol=1e-4)
