"""Nash-MTL solves G α = 1/α on the raw Gramian (issue 14, item 1), as the paper,
the authors' code (AvivNavon/nash-mtl), LibMTL and TorchJD do.

Expected numbers: by hand for the smallest case, otherwise from the float64
reference ``tests/reference/fidelity_ref.nash_mtl_run`` (Newton in log-coordinates
on the raw Gramian, cold start every solve; the authors' reuse/clipping rules).
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mtlx
from tests.reference import fidelity_ref as ref


def _run(tx, jacs):
  update = jax.jit(tx.update)
  state = tx.init(None)
  out = []
  for j in jacs:
    d, state = update(jnp.asarray(j), state)
    out.append(np.asarray(d))
  return np.array(out), state


@pytest.mark.parametrize("max_norm,expected_d", [(1.0, [0.5 ** 0.5] * 2), (0.0, [1.0, 1.0])])
def test_smallest_case_by_hand(max_norm, expected_d):
  """g1 = (0.01, 0), g2 = (0, 0.01): G = 1e-4 I, so α_k² 1e-4 = 1 gives α = (100, 100),
  d = (1, 1) (norm √2 = √K), clipped to norm 1: (0.7071, 0.7071)."""
  tx = mtlx.nash_mtl(max_norm=max_norm, num_tasks=2)
  d, state = _run(tx, [np.array([[0.01, 0.0], [0.0, 0.01]])])
  np.testing.assert_allclose(state.alpha, [100.0, 100.0], rtol=1e-12)
  np.testing.assert_allclose(d[0], expected_d, rtol=1e-12)


@pytest.mark.parametrize("max_norm,every", list(itertools.product((0.0, 1.0), (1, 2))))
def test_against_reference_over_scales(max_norm, every):
  """Four steps of K=3 tasks, gradients of size 1e-4 ... 1e4 (the scale also jumps
  between steps): the updates of the authors' rules (solve / reuse / clip) agree
  with the float64 reference."""
  rng = np.random.default_rng(7)
  tx = mtlx.nash_mtl(max_norm=max_norm, update_weights_every=every, num_tasks=3)
  for scale in (1e-4, 1e-2, 1.0, 1e2, 1e4, "mixed"):
    jacs = rng.normal(size=(4, 3, 5)) + 0.5
    jacs = jacs * (np.array([1e-3, 1e3, 1.0, 1e-2])[:, None, None] if scale == "mixed" else scale)
    want = ref.nash_mtl_run(jacs, max_norm=max_norm, update_weights_every=every)
    got, _ = _run(tx, jacs)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12 * np.abs(want).max())
    if max_norm == 0.0:  # a solve step's update has norm √K whatever the scale
      np.testing.assert_allclose(np.linalg.norm(got[::every], axis=1), np.sqrt(3.0), rtol=1e-9)


def test_reuse_step_is_not_clipped_when_shorter():
  """update_weights_every=2: step 1 reuses step 0's α with the new gradients and
  is only clipped when longer than max_norm (the authors' clip_grad_norm_)."""
  j0 = np.array([[1.0, 0.0], [0.0, 1.0]])       # α = (1, 1), d = (1, 1) -> clipped
  j1 = np.array([[0.6, 0.0], [0.0, 0.6]])       # reused α: d = (0.6, 0.6), |d| = 0.85
  got, state = _run(mtlx.nash_mtl(max_norm=1.0, update_weights_every=2, num_tasks=2), [j0, j1])
  np.testing.assert_allclose(got[0], [0.5 ** 0.5] * 2, rtol=1e-12)
  np.testing.assert_allclose(got[1], [0.6, 0.6], rtol=1e-12)
  np.testing.assert_allclose(state.alpha, [1.0, 1.0], rtol=1e-12)


def test_state_follows_float64_and_float32_inputs_solve_in_float32():
  """Under x64 the warm-start α is float64 (issue 14, item 6); float32 inputs give
  a float32 update whose α agrees with the float64 solution to float32 accuracy."""
  tx = mtlx.nash_mtl(max_norm=0.0, num_tasks=2)
  assert tx.init(None).alpha.dtype == jnp.float64
  j = np.array([[0.3, 0.1], [-0.05, 0.2]])
  d64, s64 = _run(tx, [j])
  d32, s32 = _run(tx, [j.astype(np.float32)])
  assert s64.alpha.dtype == jnp.float64 and s32.alpha.dtype == jnp.float64
  assert d32.dtype == np.float32
  want = ref.nash_alpha(j @ j.T)
  np.testing.assert_allclose(s64.alpha, want, rtol=1e-12)
  np.testing.assert_allclose(s32.alpha, want, rtol=1e-5)


def test_non_finite_step_leaves_state():
  tx = mtlx.nash_mtl(num_tasks=2)
  _, s1 = _run(tx, [np.array([[1.0, 0.0], [0.0, 2.0]])])
  d, s2 = jax.jit(tx.update)(jnp.array([[np.nan, 0.0], [0.0, 1.0]]), s1)
  assert not np.all(np.isfinite(d))
  np.testing.assert_array_equal(s2.alpha, s1.alpha)
  assert int(s2.step) == int(s1.step)
