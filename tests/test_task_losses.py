"""MFTCoder-style per-task losses: NumPy reference, duplication invariance, focal limits."""

import jax.numpy as jnp
import numpy as np
import pytest

from mtlx import task_losses as tl

ELL = np.array([0.5, 1.5, 2.0, 0.1, 0.3, 4.0])
IDS = np.array([0, 0, 1, 1, 1, 2])
MASK = np.array([1, 1, 1, 1, 0, 0])


def test_token_normalized_matches_numpy_and_masks_missing_tasks():
  losses, present = tl.token_normalized_losses(jnp.asarray(ELL), jnp.asarray(IDS), num_tasks=4,
                                               mask=jnp.asarray(MASK))
  np.testing.assert_allclose(losses, [1.0, 1.05, 0.0, 0.0], rtol=1e-12)
  np.testing.assert_array_equal(present, [True, True, False, False])


def test_duplicating_a_tasks_examples_changes_nothing():
  base, _ = tl.token_normalized_losses(jnp.asarray(ELL), jnp.asarray(IDS), num_tasks=3)
  dup_l = np.concatenate([ELL, ELL[IDS == 1], ELL[IDS == 1]])
  dup_i = np.concatenate([IDS, IDS[IDS == 1], IDS[IDS == 1]])
  again, _ = tl.token_normalized_losses(jnp.asarray(dup_l), jnp.asarray(dup_i), num_tasks=3)
  np.testing.assert_allclose(again, base, rtol=1e-12)
  # whereas the plain token mean moves towards the duplicated task
  assert not np.isclose(np.mean(dup_l), np.mean(ELL))


def test_focal_variants():
  plain, _ = tl.token_normalized_losses(jnp.asarray(ELL), jnp.asarray(IDS), num_tasks=3)
  for level in ("token", "task"):
    g0, _ = tl.focal_task_losses(jnp.asarray(ELL), jnp.asarray(IDS), num_tasks=3, gamma=0.0,
                                 level=level)
    np.testing.assert_allclose(g0, plain, rtol=1e-12)
  tok, _ = tl.focal_task_losses(jnp.asarray(ELL), jnp.asarray(IDS), num_tasks=3, gamma=2.0)
  want = [np.mean([(1 - np.exp(-l)) ** 2 * l for l in ELL[IDS == k]]) for k in range(3)]
  np.testing.assert_allclose(tok, want, rtol=1e-12)
  task, _ = tl.focal_task_losses(jnp.asarray(ELL), jnp.asarray(IDS), num_tasks=3, gamma=2.0,
                                 level="task")
  p = np.asarray(plain)
  np.testing.assert_allclose(task, (1 - np.exp(-p)) ** 2 * p, rtol=1e-12)
  with pytest.raises(ValueError, match="gamma=-1"):
    tl.focal_task_losses(ELL, IDS, num_tasks=3, gamma=-1)
  with pytest.raises(ValueError, match="level='bogus'"):
    tl.focal_task_losses(ELL, IDS, num_tasks=3, level="bogus")
