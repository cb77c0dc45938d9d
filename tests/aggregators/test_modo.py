"""MoDo (Chen et al. 2023): two-batch updates against the NumPy reference; properties;
convergence with two noisy batches; a missing second batch says what to pass.
"""

import functools

import pytest
from hypothesis import given

import mtlx
from tests.aggregators.part_b_common import (
    problems, check_common, assert_simplex_state_and_single_task, assert_two_batch_reference,
    assert_missing_second_batch_says_what_to_pass, assert_reaches_pareto_stationarity)
from tests.reference import aggregators_b_ref as ref


@pytest.mark.parametrize("third", [False, True])
def test_matches_reference(third):
  assert_two_batch_reference(mtlx.modo(gamma=0.05, rho=0.1, num_tasks=3), functools.partial(ref.modo, gamma=0.05, rho=0.1), third)


@given(problems())
def test_properties(prob):
  jac1, _, o1, _, state = check_common("modo", prob, scale_linear=False, perm=True)
  assert_simplex_state_and_single_task(prob, jac1, o1, state.weights)


def test_reaches_pareto_stationarity_on_two_quadratics():
  assert_reaches_pareto_stationarity(mtlx.modo(num_tasks=2), noise=0.1, two_batch=True)


def test_missing_second_batch_says_what_to_pass():
  assert_missing_second_batch_says_what_to_pass('modo')
