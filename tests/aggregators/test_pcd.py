"""PCD (preference-constrained descent): against the active-set NumPy reference; properties;
convergence, the ε margin in training; bad ε.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given

import mtlx
from tests.aggregators.part_b_common import (
    to_tree, from_tree, rel_err, N, random_jacs, make_jacobian, problems,
    check_common, B, train, assert_reaches_pareto_stationarity)
from tests.reference import aggregators_b_ref as ref


@pytest.mark.parametrize("epsilon", [0.0, 0.2, "vector"])
def test_matches_active_set_reference(epsilon):
  # Stopping rule: projected-gradient step <= 1e-12 or 1000 FISTA iterations;
  # the reference enumerates active sets (exact).
  k = 4
  eps = np.array([0.0, 0.3, 0.1]) if epsilon == "vector" else epsilon
  jacs = random_jacs(3, N, k, 1)[0]
  tx = mtlx.pcd(eps)
  outs = from_tree(jax.jit(jax.vmap(lambda tg: tx.update(tg, tx.init(None))[0]))(to_tree(jacs)))
  for i in range(N):
    want = ref.pcd(jacs[i], eps)
    assert rel_err(outs[i], want) <= 1e-3
    e = np.broadcast_to(eps, (k - 1,))
    assert np.all(jacs[i, 1:] @ outs[i] >= e * np.sum(jacs[i, 1:] ** 2, 1) - 1e-6)


@given(problems())
def test_properties(prob):
  jac1, _, o1, o2, _ = check_common("pcd", prob, scale_linear=True, perm=True, loose=100.0)
  j = jac1.astype(np.float64)
  norms = np.linalg.norm(j, axis=1)
  # Non-conflicting with every secondary task (ε = 0), up to the solver accuracy:
  # 2e-4 ‖g_k‖ max_l ‖g_l‖ covers the degenerate worst case (63 nearly opposite
  # gradients in 7 dimensions), where FISTA + 16 active-set steps stop short.
  slack = 2e-4 * norms[1:] * norms.max()
  assert np.all(j[1:] @ o1 >= -slack - 1e-300), prob
  if prob["k"] == 1:
    np.testing.assert_allclose(o1, j[0], rtol=1e-6, atol=1e-30)


def test_reaches_pareto_stationarity_on_two_quadratics():
  assert_reaches_pareto_stationarity(mtlx.pcd())


def test_with_epsilon_keeps_secondary_progress_in_training():
  # ε > 0: task 1 always gets at least 30% of its own first-order progress, so it
  # ends at its minimum b (the fixed point of the constrained dynamics).
  params = train(mtlx.pcd(0.3), steps=300)
  x = np.concatenate([np.asarray(params["u"]), np.asarray(params["v"])])
  assert np.linalg.norm(x - np.asarray(B)) < 0.1


def test_bad_epsilon_shape():
  with pytest.raises(ValueError, match=r"epsilon has shape \(2,\); expected shape \(3,\)"):
    tx = mtlx.pcd(jnp.array([0.1, 0.2]))
    tx.update(to_tree(make_jacobian("normal", 4, 0, 1.0)), tx.init(None))
