"""Claimed properties of the gradient-space methods, with hypothesis over matrix families.

Each method has one hypothesis test that checks every property it claims on each
drawn matrix (see the table CLAIMS and each docstring), using the public
helpers of mtlx.testing. Transforms are jitted once per (K, dtype).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import mtlx
from mtlx import testing
from tests import registry_lines

KS = (1, 2, 5, 64)
P = 16
ALL = testing.FAMILIES
FULL_RANK = ("normal", "duplicated", "zero_row", "conflicting")  # K <= P below

# Claimed properties per method: nc (non-conflicting), lin (linear under scaling),
# perm (permutation-invariant), k1 (K=1 gives g1 times K1_SCALE). "full_rank_only":
# nc/lin/perm are claimed only for Jacobians whose non-zero rows are linearly
# independent up to duplicates (ConFIG: a rank cutoff in a pseudo-inverse; IMTL-G: the
# equal-projection system is then singular and its least-squares solution is not
# unique). A registry line missing here joins with no claims: the finite-iff-finite
# check on every drawn matrix.
CLAIMS = {
    "mean": {"lin", "perm", "k1"},
    "mgda": {"nc", "lin", "perm", "k1"},
    "pcgrad": {"lin", "k1"},
    "graddrop": {"lin", "k1"},
    "cagrad": {"lin", "perm", "k1"},
    "imtl_g": {"lin", "perm", "k1", "full_rank_only"},
    "aligned_mtl": {"lin", "perm", "k1"},
    "upgrad": {"nc", "lin", "perm", "k1"},
    "dualproj": {"nc", "lin", "perm", "k1"},
    "config": {"nc", "lin", "perm", "k1", "full_rank_only"},
    "krum": {"lin"},
    "trimmed_mean": {"lin", "perm"},
}
# The smallest K a registry default accepts (krum n_byzantine=1, trimmed_mean trim 1).
MIN_K = {"krum": 4, "trimmed_mean": 3}
# Variants beyond the registry defaults: name -> (constructor, claims).
VARIANTS = {"mgda_l2": (lambda: mtlx.mgda("l2"), {"nc"})}
# Registry lines with their own property suites, left out here (explicitly):
OWN_SUITE = {
    "ls": "linear_scalarization: exact weighted sum, tests/aggregators/test_linear_scalarization.py",
    "gradvac": "K-sized state, one transform per K: test_gradvac_properties below",
    "nash_mtl": "K-sized state; non-linear by design: test_nash_mtl_properties below",
    # K-sized states and two-step properties (tests/aggregators/test_<name>.py):
    "moco": "", "sdmgrad": "", "modo": "", "fairgrad": "", "excess_mtl": "", "pcd": "",
    "crmogm": "",
}


METHODS = sorted(set(registry_lines.names("gradient")) - set(OWN_SUITE)) + sorted(VARIANTS)
K1_SCALE = {"cagrad": (1 + 0.4) / (1 + 0.4 ** 2)}
_TRANSFORMS = {}


def _claims(name):
  return VARIANTS[name][1] if name in VARIANTS else CLAIMS.get(name, set())


def _transform(name, k):
  key = (name, k)
  if key not in _TRANSFORMS:
    if name == "nash_mtl":
      _TRANSFORMS[key] = mtlx.nash_mtl(max_norm=0.0, num_tasks=k, optim_niter=30)
    elif name in VARIANTS:
      _TRANSFORMS[key] = VARIANTS[name][0]()
    else:
      _TRANSFORMS[key] = registry_lines.build(name, k)
  return _TRANSFORMS[key]


def _tol(dtype):
  return 2e-3 if dtype == np.float32 else 1e-6


def check_properties(name, props, family, matrix):
  k = matrix.shape[0]
  tx = _transform(name, k)
  tol = _tol(matrix.dtype)
  # Directions much shorter than the rows are rounding noise at this level.
  floor = 1e-2 if matrix.dtype == np.float32 else 1e-8
  testing.assert_finite_iff_finite(tx, matrix)
  nc_tol = 1e-5 if matrix.dtype == np.float32 else 1e-9
  if "full_rank_only" in props and (k > P or family == "rank_deficient"):
    props = props & {"k1"}
  if "nc" in props:
    testing.assert_non_conflicting(tx, matrix, rtol=nc_tol)
  if "lin" in props:
    testing.assert_scale_linear(tx, matrix, scales=(1e-3, 1e3), rtol=tol, floor=floor)
  if "perm" in props and k > 1:
    testing.assert_permutation_invariant(tx, matrix, rtol=tol, floor=floor)
  if "k1" in props and k == 1:
    d = testing.aggregate(tx, matrix)
    np.testing.assert_allclose(d, K1_SCALE.get(name, 1.0) * matrix[0], rtol=tol,
                               atol=tol * np.abs(matrix).max())


@pytest.mark.parametrize("name", METHODS)
@settings(max_examples=15)
@given(data=st.data())
def test_properties(name, data):
  props, min_k = _claims(name), MIN_K.get(name, 1)
  family = data.draw(st.sampled_from(ALL))
  matrix = data.draw(testing.matrices((family,), ks=[k for k in KS if k >= min_k], p=P))
  check_properties(name, props, family, matrix)


@settings(max_examples=20)
@given(data=st.data())
def test_nash_mtl_properties(data):
  """Nash-MTL (max_norm=0: no clipping) is non-conflicting where the bargaining
  system has a solution: non-zero, linearly independent gradients (K <= P). Its
  update is scale-invariant (‖d‖ = √K), not linear: see
  tests/aggregators/test_nash_mtl.py."""
  family = data.draw(st.sampled_from(("normal", "conflicting")))
  matrix = data.draw(testing.matrices((family,), ks=(1, 2, 5), p=P))
  check_properties("nash_mtl", {"nc", "perm"}, family, matrix)


@settings(max_examples=15)
@given(data=st.data())
def test_gradvac_properties(data):
  family = data.draw(st.sampled_from(ALL))
  matrix = data.draw(testing.matrices((family,), ks=(1, 5), p=P))
  check_properties("gradvac", {"lin", "k1"}, family, matrix)


@settings(max_examples=15)
@given(data=st.data())
def test_pcgrad_two_tasks_is_non_conflicting_and_symmetric(data):
  """For K=2 PCGrad is deterministic: non-conflicting and order-free."""
  matrix = data.draw(testing.matrices(ALL, ks=(2,), p=P))
  tx = _transform("pcgrad", 2)
  testing.assert_non_conflicting(tx, matrix, rtol=1e-5)
  testing.assert_permutation_invariant(tx, matrix, rtol=_tol(matrix.dtype))


def test_zero_and_duplicated_rows_are_finite_for_every_method():
  """The degenerate families explicitly, at K=4, for every method (incl. the stateful ones)."""
  for family in ("zero_row", "duplicated", "all_zero", "rank_deficient"):
    m = testing.make_matrix(family, 4, 3, seed=1, dtype=np.float32)
    for name in METHODS + ["gradvac", "nash_mtl"]:
      d = testing.aggregate(_transform(name, 4), m)
      assert np.all(np.isfinite(d)), (name, family)
