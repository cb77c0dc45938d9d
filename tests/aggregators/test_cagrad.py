"""CAGrad solves its problem exactly, also in degenerate cases (issue 14, item 2).

The primal ``max_{‖d - g0‖ ≤ c‖g0‖} min_k ⟨g_k, d⟩`` is evaluated exactly for
2-column Jacobians by ``tests/reference/fidelity_ref.cagrad_primal_value``
(enumeration of the candidate maximisers on the circle); mtlx's ``d`` (with
``rescale=False``) must lie in the ball and reach that value.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mtlx
from tests.reference import fidelity_ref as ref

_TX = {}


def _cagrad(jac, c, **kwargs):
  key = (c, tuple(sorted(kwargs.items())))
  if key not in _TX:
    tx = mtlx.cagrad(c=c, rescale=False, **kwargs)
    _TX[key] = (tx, jax.jit(tx.update))
  tx, update = _TX[key]
  return np.asarray(update(jnp.asarray(jac), tx.init(None))[0])


def test_issue_case_c1_is_non_conflicting():
  """J = [[1,0],[-2,0],[0,1]], c = 1: 0 is in the hull, the optimum is 0 and the
  optimal d closest to g0 = (-1/3, 1/3) in {J d >= 0} = {d_x = 0, d_y >= 0} is
  (0, 1/3) (by hand; TorchJD returns the other optimum 0)."""
  jac = np.array([[1.0, 0.0], [-2.0, 0.0], [0.0, 1.0]])
  d = _cagrad(jac, 1.0)
  np.testing.assert_allclose(d, [0.0, 1.0 / 3.0], atol=1e-12)
  assert ref.cagrad_primal_value(jac, 1.0) == pytest.approx(0.0, abs=1e-15)


def test_opposite_rows_give_zero():
  """[g, -g]: 0 is strictly inside the hull, {J d >= 0} = g's orthogonal
  complement, the projection of g0 = 0 is 0."""
  np.testing.assert_allclose(_cagrad(np.array([[1.0, 2.0], [-1.0, -2.0]]), 1.0), 0.0,
                             atol=1e-12)


def test_torchjd_value():
  """TorchJD's fixed value for CAGrad(c=0.5) on J_base (tests/unit/aggregation/test_values.py)."""
  jac = np.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
  np.testing.assert_allclose(_cagrad(jac, 0.5), [0.1835, 1.2041, 1.2041], atol=1e-4)


def _degenerate_jacobians(n=40, seed=0):
  """2-column Jacobians with K = 3..5 rows (always K > rank): random, with 0 in the
  hull (a row that cancels a combination of others), and rank-1 signed rows."""
  rng = np.random.default_rng(seed)
  out = [np.array([[1.0, 0.0], [-2.0, 0.0], [0.0, 1.0]]),
         np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])]
  for i in range(n):
    k = 3 + i % 3
    jac = rng.normal(size=(k, 2)) * rng.uniform(0.1, 3.0, size=(k, 1))
    if i % 3 == 1:   # 0 on the boundary of the hull: g_k = -t g_j
      jac[1] = -rng.uniform(0.2, 3.0) * jac[0]
    if i % 3 == 2:   # signed rank 1
      jac = rng.normal(size=(k, 1)) * rng.normal(size=(1, 2))
    out.append(jac)
  return out


def test_optimal_value_on_degenerate_cases():
  """c = 0.5, 1, 2 on every Jacobian: one vmapped call per K (c is traced)."""
  from mtlx.aggregators.cagrad import cagrad_weights
  weights = jax.jit(jax.vmap(lambda g, c: cagrad_weights(g, c, rescale=False)))
  by_k = {}
  for jac in _degenerate_jacobians():
    for c in (0.5, 1.0, 2.0):
      by_k.setdefault(len(jac), []).append((jac, c))
  for cases in by_k.values():
    grams = jnp.asarray(np.stack([j @ j.T for j, _ in cases]))
    ws = np.asarray(weights(grams, jnp.asarray([c for _, c in cases])))
    for (jac, c), w in zip(cases, ws):
      d = w @ jac
      g0 = jac.mean(0)
      m2 = np.max(np.sum(jac ** 2, axis=1))
      assert (np.linalg.norm(d - g0)
              <= c * np.linalg.norm(g0) * (1 + 1e-9) + 1e-12 * np.sqrt(m2)), (jac.tolist(), c)
      want = ref.cagrad_primal_value(jac, c)
      got = np.min(jac @ d)
      assert got >= want - 1e-9 * m2, (jac.tolist(), c, got, want)
      if c >= 1.0:   # 0 is in the ball: the optimum is >= 0, i.e. non-conflicting
        assert got >= -1e-9 * m2, (jac.tolist(), c, got)


def test_scale_by_num_tasks_is_the_official_times_k():
  jac = np.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
  np.testing.assert_allclose(_cagrad(jac, 0.5, scale_by_num_tasks=True),
                             2 * _cagrad(jac, 0.5), rtol=1e-12)
