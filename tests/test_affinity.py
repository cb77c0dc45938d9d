"""mtlx.affinity: lookahead affinity on quadratics (exact value) and the grouping search."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtlx import affinity
import mtlx

K, D = 3, 4


def _quadratics(seed):
  rng = np.random.default_rng(seed)
  a = np.stack([m @ m.T + np.eye(D) for m in rng.normal(size=(K, D, D))])
  c = rng.normal(size=(K, D))
  b = np.abs(rng.normal(size=K)) + 1.0
  return a, c, b


def test_lookahead_affinity_exact_on_quadratics():
  a, c, b = _quadratics(0)

  def loss_fn(theta):
    d = theta[None, :] - jnp.asarray(c)
    return 0.5 * jnp.einsum("ki,kij,kj->k", d, jnp.asarray(a), d) + jnp.asarray(b)

  theta = jnp.asarray(np.random.default_rng(1).normal(size=D))  # float64 (tests/conftest.py)
  losses, tg = mtlx.value_and_jacobian(loss_fn)(theta)
  eta = 0.01
  z = np.asarray(affinity.lookahead_affinity(loss_fn, theta, tg, learning_rate=eta))
  g = np.asarray(tg)
  l0 = np.asarray(losses)
  # exact on a quadratic: L_j(θ-ηg_i) = L_j - η g_j·g_i + ½ η² g_iᵀ A_j g_i
  exact = np.array([[1 - (l0[j] - eta * g[j] @ g[i] + 0.5 * eta ** 2 * g[i] @ a[j] @ g[i]) / l0[j]
                     for j in range(K)] for i in range(K)])
  np.testing.assert_allclose(z, exact, rtol=1e-9, atol=1e-12)
  first_order = eta * (g @ g.T) / l0[None, :]
  np.testing.assert_allclose(np.diag(z), np.diag(first_order), rtol=0.1)  # self-affinity ≈ η‖g‖²/L
  assert np.all(np.diag(z) > 0)


def _brute(z, max_groups):
  k = z.shape[0]
  best = -np.inf
  for labels in itertools.product(range(k), repeat=k):
    groups = [[i for i in range(k) if labels[i] == g] for g in set(labels)]
    if len(groups) > max_groups:
      continue
    s = sum(np.mean([z[i, j] for i in g if i != j]) for g in groups if len(g) > 1 for j in g)
    best = max(best, s)
  return best


@pytest.mark.parametrize("max_groups", [1, 2, 5])
def test_group_tasks_exhaustive_matches_brute_force(max_groups):
  z = np.random.default_rng(2).normal(size=(5, 5))
  groups, score = affinity.group_tasks(z, max_groups)
  assert len(groups) <= max_groups and sorted(sum(groups, [])) == list(range(5))
  np.testing.assert_allclose(score, _brute(z, max_groups), rtol=1e-12)


def test_group_tasks_finds_planted_blocks_greedy_and_exhaustive():
  z = -np.ones((12, 12))
  blocks = [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9, 10, 11]]
  for blk in blocks:
    for i in blk:
      for j in blk:
        z[i, j] = 1.0
  groups, _ = affinity.group_tasks(z, 3)  # K=12 > 10: greedy
  assert groups == blocks
  groups, _ = affinity.group_tasks(z[:7, :7], 2)
  assert groups == [[0, 1, 2, 3], [4, 5, 6]]
  with pytest.raises(ValueError, match="square"):
    affinity.group_tasks(np.ones((2, 3)))
