"""CR-MOGM (Zhou et al. 2022): EMA of a wrapped weighting, against the NumPy reference;
properties; convergence; the wrapped weighting by name; bad arguments.
"""

import numpy as np
import pytest
from hypothesis import given

import mtlx
from tests.aggregators.part_b_common import (
    to_tree, from_tree, rel_err, inv_norm_jax, inv_norm_np, mgda2_jax, N, random_jacs,
    run_steps, make_jacobian, problems, check_common,
    assert_reaches_pareto_stationarity)
from tests.reference import aggregators_b_ref as ref


def test_matches_reference():
  k = 3
  jacs = random_jacs(5, N, k, 5)
  outs, _ = run_steps(mtlx.crmogm(inv_norm_jax, beta=0.7, num_tasks=k), jacs)
  for i in range(N):
    want = ref.crmogm(list(jacs[:, i]), inv_norm_np, beta=0.7)
    assert np.max(rel_err(outs[:, i], np.stack(want))) <= 1e-5


@given(problems())
def test_properties(prob):
  fam = prob["family"]
  if fam in ("zero_row", "all_zero"):  # the wrapped inv-norm weighting divides by 0
    prob = dict(prob, family="normal")
  jac1, jac2, o1, o2, state = check_common("crmogm", prob, scale_linear=False, perm=True)
  g1 = jac1.astype(np.float64) @ jac1.astype(np.float64).T
  g2 = jac2.astype(np.float64) @ jac2.astype(np.float64).T
  want = 0.5 * inv_norm_np(g1) + 0.5 * inv_norm_np(g2)  # λ_2 = β f(G_1) + (1-β) f(G_2)
  np.testing.assert_allclose(np.asarray(state.weights, np.float64), want, rtol=1e-4)
  np.testing.assert_allclose(o1, inv_norm_np(g1) @ jac1.astype(np.float64),
                             rtol=1e-4, atol=1e-4 * prob["scale"])


def test_reaches_pareto_stationarity_on_two_quadratics():
  assert_reaches_pareto_stationarity(mtlx.crmogm(mgda2_jax, beta=0.9, num_tasks=2), noise=0.1)


def test_wraps_a_weighting_by_name():
  # crmogm wraps a weighting given by name (here pcd's).
  tx = mtlx.crmogm("pcd", beta=0.5, num_tasks=3)
  jac = make_jacobian("normal", 3, 0, 1.0)
  out, _ = tx.update(to_tree(jac), tx.init(None))
  want = ref.pcd(jac)
  np.testing.assert_allclose(from_tree(out), want, rtol=1e-6)


def test_bad_arguments():
  with pytest.raises(ValueError, match="weighting='nope' is not a function of mtlx.weightings"):
    mtlx.crmogm("nope", num_tasks=2)
  with pytest.raises(ValueError, match="beta=1.5"):
    mtlx.crmogm(beta=1.5, num_tasks=2)
