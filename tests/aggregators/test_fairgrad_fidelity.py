"""FairGrad stays finite with capped weights where G w = w^{-1/α} has no positive
solution (issue 14, item 3): exactly opposite or signed rank-1 rows."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mtlx

G = np.array([1.0, 2.0, 3.0])
H = np.array([0.0, 1.0, -1.0])
CASES = [
    ("opposite_alpha0.1_f64", [[1.0, 0.0], [-1.0, 0.0]], 0.1, np.float64),
    ("opposite_alpha0.1_f32", [[1.0, 0.0], [-1.0, 0.0]], 0.1, np.float32),
    ("opposite_default_f32", [[1.0, 2.0, 3.0], [-1.0, -2.0, -3.0]], 1.0, np.float32),
    ("g_minus2g_f32", np.stack([G, -2 * G]), 1.0, np.float32),
    ("g_minus2g_f64", np.stack([G, -2 * G]), 1.0, np.float64),
    ("g_minusg_h_f32", np.stack([G, -G, H]), 1.0, np.float32),
    ("signed_rank1_f64", np.outer([1.0, -2.0, 0.5, 3.0], G), 1.0, np.float64),
    ("signed_rank1_alpha0.1_f32", np.outer([1.0, -2.0, 0.5, 3.0], G), 0.1, np.float32),
]


@pytest.mark.parametrize("name,jac,alpha,dtype", CASES, ids=[c[0] for c in CASES])
def test_finite_capped_weights(name, jac, alpha, dtype):
  jac = jnp.asarray(np.asarray(jac), dtype)
  k = jac.shape[0]
  max_weight = 1e4
  tx = mtlx.fairgrad(alpha=alpha, num_tasks=k, max_weight=max_weight)
  update = jax.jit(tx.update)
  state = tx.init(None)
  for _ in range(3):   # warm-started steps stay finite too
    d, state = update(jac, state)
    assert np.all(np.isfinite(np.asarray(d))), name
    wt = np.asarray(state.warm_start)
    assert np.all(np.isfinite(wt)) and np.all(wt > 0) and np.all(wt <= max_weight), (name, wt)
  # The weights are symmetric in exactly opposite equal-norm rows, so d = 0 there.
  if name.startswith("opposite"):
    np.testing.assert_allclose(np.asarray(d), 0.0, atol=1e-3 * float(jnp.abs(jac).max()))


def test_solvable_case_unchanged():
  """Orthogonal unit rows, α = 1: G = I, w = 1/w gives w = 1, d = g1 + g2 (by hand)."""
  tx = mtlx.fairgrad(num_tasks=2)
  d, _ = tx.update(jnp.eye(2), tx.init(None))
  np.testing.assert_allclose(np.asarray(d), [1.0, 1.0], rtol=1e-10)
