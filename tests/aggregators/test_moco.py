"""MoCo (Fernando et al. 2023): tracked gradients and weights, against the NumPy reference;
properties on matrix families; convergence on two noisy quadratics.
"""

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given

import mtlx
from tests.aggregators.part_b_common import (
    PARAMS, rel_err, N, STEPS, random_jacs, run_steps, problems, check_common,
    assert_reaches_pareto_stationarity)
from tests.reference import aggregators_b_ref as ref


@pytest.mark.parametrize("k", [1, 3])
def test_matches_reference(k):
  jacs = random_jacs(0, N, k, STEPS)
  outs, _ = run_steps(mtlx.moco(beta=0.5, gamma=0.1, rho=0.05, num_tasks=k), jacs)
  for i in range(N):
    want = ref.moco(list(jacs[:, i]), beta=0.5, gamma=0.1, rho=0.05)
    assert np.max(rel_err(outs[:, i], np.stack(want))) <= 1e-5


@given(problems())
def test_properties(prob):
  jac1, jac2, o1, o2, state = check_common("moco", prob, scale_linear=False, perm=True)
  lam = np.asarray(state.weights, np.float64)
  assert np.all(lam >= 0) and abs(lam.sum() - 1) < 1e-5
  if prob["k"] == 1:  # K = 1: the tracked gradient, y_1 = β_1 g_1 = g_1 / 2
    np.testing.assert_allclose(o1, 0.5 * jac1[0], rtol=1e-5, atol=1e-30)


def test_reaches_pareto_stationarity_on_two_quadratics():
  assert_reaches_pareto_stationarity(mtlx.moco(num_tasks=2), noise=0.1)


def test_bad_task_grads_structure():
  tx = mtlx.moco(num_tasks=2)
  with pytest.raises(ValueError, match="moco: task_grads has pytree structure"):
    tx.update({"z": jnp.ones((2, 3))}, tx.init(PARAMS))
