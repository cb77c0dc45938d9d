"""MoDo (Chen et al. 2023): two-batch updates against the NumPy reference; properties;
convergence with two noisy batches; a missing second batch says what to pass.
"""

import functools

import numpy as np
import pytest
from hypothesis import given

import mtlx
from tests.aggregators.part_b_common import (
    problems, check_common, assert_two_batch_reference,
    assert_missing_second_batch_says_what_to_pass, assert_reaches_pareto_stationarity)
from tests.reference import aggregators_b_ref as ref


@pytest.mark.parametrize("third", [False, True])
def test_matches_reference(third):
  assert_two_batch_reference(mtlx.modo(gamma=0.05, rho=0.1, num_tasks=3), functools.partial(ref.modo, gamma=0.05, rho=0.1), third)


@given(problems())
def test_properties(prob):
  jac1, _, o1, _, state = check_common("modo", prob, scale_linear=False, perm=True)
  lam = np.asarray(state.weights, np.float64)
  assert np.all(lam >= 0) and abs(lam.sum() - 1) < 1e-5
  if prob["k"] == 1:
    np.testing.assert_allclose(o1, jac1[0], rtol=1e-5, atol=1e-30)


def test_reaches_pareto_stationarity_on_two_quadratics():
  assert_reaches_pareto_stationarity(mtlx.modo(num_tasks=2), noise=0.1, two_batch=True)


def test_missing_second_batch_says_what_to_pass():
  assert_missing_second_batch_says_what_to_pass('modo')
