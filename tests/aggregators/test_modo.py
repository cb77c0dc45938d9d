"""MoDo (Chen et al. 2023): two-batch updates against the NumPy reference; properties;
convergence with two noisy batches; a missing second batch says what to pass.
"""

import functools

import numpy as np
import pytest
from hypothesis import given

import mtlx
from tests.aggregators.part_b_common import (
    P, to_tree, PARAMS, rel_err, N, STEPS, run_steps, make_jacobian, problems,
    check_common, X0, pareto_stationarity, train)
from tests.reference import aggregators_b_ref as ref


@pytest.mark.parametrize("third", [False, True])
def test_matches_reference(third):
  k = 3
  rng = np.random.default_rng(1)
  j1, j2, j3 = (rng.normal(size=(STEPS, N, k, P)) for _ in range(3))
  j2 = j1 + 0.5 * j2  # correlated batches, like two samples of the same tasks
  extras = {"task_grads_2": j2}
  if third:
    extras["task_grads_3"] = j3
  tx, fn = mtlx.modo(gamma=0.05, rho=0.1, num_tasks=k), functools.partial(
      ref.modo, gamma=0.05, rho=0.1)
  outs, _ = run_steps(tx, j1, extras)
  for i in range(N):
    batches = [(j1[t, i], j2[t, i], (j3 if third else j1)[t, i]) for t in range(STEPS)]
    assert np.max(rel_err(outs[:, i], np.stack(fn(batches)))) <= 1e-5


@given(problems())
def test_properties(prob):
  jac1, _, o1, _, state = check_common("modo", prob, scale_linear=False, perm=True)
  lam = np.asarray(state.weights, np.float64)
  assert np.all(lam >= 0) and abs(lam.sum() - 1) < 1e-5
  if prob["k"] == 1:
    np.testing.assert_allclose(o1, jac1[0], rtol=1e-5, atol=1e-30)


def test_reaches_pareto_stationarity_on_two_quadratics():
  kwargs = dict(noise=0.1, two_batch=True)
  start = pareto_stationarity(X0)
  final = pareto_stationarity(train(mtlx.modo(num_tasks=2), **kwargs))
  assert start > 1.0
  assert final < (3e-2 if kwargs.get("noise") else 1e-2), final


def test_missing_second_batch_says_what_to_pass():
  tx = mtlx.registry.get_gradient_method('modo', num_tasks=2)
  tg = to_tree(make_jacobian("normal", 2, 0, 1.0))
  with pytest.raises(ValueError, match=r"keyword extra argument `task_grads_2`"):
    tx.update(tg, tx.init(PARAMS), PARAMS)
  bad = to_tree(make_jacobian("normal", 3, 0, 1.0))
  with pytest.raises(ValueError, match=r"task_grads_2 has K=3 tasks but task_grads has K=2"):
    tx.update(tg, tx.init(PARAMS), PARAMS, task_grads_2=bad)
