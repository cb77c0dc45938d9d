"""mtlx.pareto front metrics: hand-computed values, an independent 2-D sweep, and errors."""

import numpy as np
import pytest

from mtlx import pareto
from tests.reference import pareto_ref


REF = np.array([1.0, 1.0])


@pytest.mark.parametrize("points, expected", [
    ([[0.5, 0.5]], 0.25),
    ([[0.2, 0.8], [0.8, 0.2]], 0.28),                  # 0.16 + 0.16 - 0.04 overlap
    ([[0.2, 0.8], [0.8, 0.2], [0.9, 0.9]], 0.28),      # dominated point adds nothing
    ([[0.2, 0.8], [0.2, 0.8], [0.8, 0.2]], 0.28),      # duplicate adds nothing
    ([[0.2, 0.8], [0.8, 0.2], [1.5, 0.1], [0.1, 1.0]], 0.28),  # outside / on the box
    ([], 0.0),
    ([[2.0, 2.0]], 0.0),
    ([[0.0, 0.0]], 1.0),
])
def test_hypervolume_hand_computed(points, expected):
  assert pareto.hypervolume(np.asarray(points, float).reshape(-1, 2), REF) == pytest.approx(
      expected, abs=1e-12)


def test_hypervolume_3d_hand_computed():
  # Two boxes [0.5,1]^3 (0.125) and [0,1]x[0,1]x[0.9,1] (0.1), overlap 0.5*0.5*0.1.
  pts = np.array([[0.5, 0.5, 0.5], [0.0, 0.0, 0.9]])
  assert pareto.hypervolume(pts, np.ones(3)) == pytest.approx(0.125 + 0.1 - 0.025, abs=1e-12)


def test_hypervolume_matches_sweep_on_random_sets():
  rng = np.random.default_rng(0)
  for _ in range(20):
    pts = rng.uniform(-0.2, 1.3, size=(rng.integers(1, 40), 2))
    ref = rng.uniform(0.5, 1.5, size=2)
    assert pareto.hypervolume(pts, ref) == pytest.approx(
        pareto_ref.hypervolume_2d(pts, ref), rel=1e-12, abs=1e-12)


def test_hypervolume_of_dense_analytic_front():
  # Two-quadratics front with D = 1: HV with reference (1, 1) is 5/6.
  front = pareto.problems.quadratics_front(1.0, num=20001)
  assert pareto.hypervolume(front, REF) == pytest.approx(5 / 6, abs=1e-4)


def test_non_dominated():
  pts = np.array([[0.2, 0.8], [0.8, 0.2], [0.9, 0.9], [0.2, 0.8], [0.2, 0.9]])
  np.testing.assert_array_equal(pareto.non_dominated_mask(pts), [True, True, False, True, False])
  np.testing.assert_array_equal(pareto.non_dominated(pts), [[0.2, 0.8], [0.8, 0.2]])


def test_igd_and_igd_plus_hand_computed():
  z = np.array([[0.0, 1.0], [1.0, 0.0]])
  p = np.array([[0.0, 1.0], [1.0, 0.5]])
  assert pareto.igd(p, z) == pytest.approx((0.0 + 0.5) / 2)
  assert pareto.igd_plus(p, z) == pytest.approx((0.0 + 0.5) / 2)
  # A point better than the reference costs nothing in IGD+, but does in IGD.
  p2 = np.array([[-0.1, 0.9], [0.9, -0.1]])
  assert pareto.igd_plus(p2, z) == 0.0
  assert pareto.igd(p2, z) == pytest.approx(np.sqrt(0.02))


def test_spread():
  even = np.stack([np.linspace(0, 1, 5), 1 - np.linspace(0, 1, 5)], 1)
  assert pareto.spread(even) == pytest.approx(0.0, abs=1e-12)
  assert pareto.spread(even, even) == pytest.approx(0.0, abs=1e-12)
  # Hand-computed: nearest distances (d, d, 2d)·√2 with d = 0.25 ... points 0, .25, .5, 1.
  t = np.array([0.0, 0.25, 0.5, 1.0])
  pts = np.stack([t, 1 - t], 1)
  nn = np.sqrt(2) * np.array([0.25, 0.25, 0.25, 0.5])
  assert pareto.spread(pts) == pytest.approx(np.abs(nn - nn.mean()).sum() / (4 * nn.mean()))
  # Missing the extreme (1, 0) of the reference front adds its distance on both sides.
  ref = np.stack([np.linspace(0, 1, 11), 1 - np.linspace(0, 1, 11)], 1)
  part = even[:-1]
  e = np.sqrt(2) * 0.25
  assert pareto.spread(part, ref) == pytest.approx(e / (e + 4 * e))


@pytest.mark.parametrize("call, match", [
    (lambda: pareto.hypervolume(np.ones((3, 2)), np.ones(3)), "points has shape"),
    (lambda: pareto.hypervolume(np.ones((3, 2)), [1.0, np.nan]), "reference_point"),
    (lambda: pareto.hypervolume([[np.nan, 1.0]], REF), "non-finite"),
    (lambda: pareto.igd(np.ones((3, 2)), np.ones(4)), "reference_front has shape"),
])
def test_bad_input(call, match):
  with pytest.raises(ValueError, match=match):
    call()
