"""ExcessMTL (He et al. 2024): against the NumPy reference; properties; convergence.
"""

import numpy as np
from hypothesis import given

import mtlx
from tests.aggregators.part_b_common import (
    rel_err, N, random_jacs, run_steps, problems, check_common,
    assert_reaches_pareto_stationarity)
from tests.reference import aggregators_b_ref as ref


def test_matches_reference():
  k = 3
  jacs = random_jacs(4, N, k, 6)
  outs, _ = run_steps(mtlx.excess_mtl(step_size=0.5, num_tasks=k), jacs)
  for i in range(N):
    want = ref.excess_mtl(list(jacs[:, i]), step_size=0.5)
    assert np.max(rel_err(outs[:, i], np.stack(want))) <= 1e-5


@given(problems())
def test_properties(prob):
  # Linear under scaling the whole sequence while Σ g² ≫ ε = 1e-7 (checked there).
  jac1, _, o1, o2, state = check_common("excess_mtl", prob,
                                        scale_linear=prob["scale"] >= 1e4, perm=True)
  np.testing.assert_allclose(o1, jac1.astype(np.float64).sum(0), rtol=1e-5,
                             atol=1e-5 * prob["scale"])  # step 1: the plain sum
  w = np.exp(np.asarray(state.log_weights, np.float64))
  assert np.all(w > 0) and abs(w.sum() - prob["k"]) < 1e-4 * prob["k"]


def test_reaches_pareto_stationarity_on_two_quadratics():
  assert_reaches_pareto_stationarity(mtlx.excess_mtl(num_tasks=2))
