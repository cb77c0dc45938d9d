"""DB-MTL (Lin et al. 2023): against the NumPy reference; balanced rows.
"""

import numpy as np

import mtlx
from tests.loss_weighting.sequences import K, T, flat, run, sequence
from tests.reference import loss_weighting_ref as ref


def test_matches_reference():
  losses, grads = sequence(seed=5)
  params = {"a": np.zeros(3), "b": np.zeros((2, 2))}
  outs, state = run(mtlx.db_mtl(num_tasks=K), losses, grads, params)
  want = ref.db_mtl(losses, [flat(g) for g in grads])
  np.testing.assert_allclose(outs, want, rtol=1e-6, atol=1e-12)
  # the balanced rows all have the largest EMA norm
  np.testing.assert_allclose(np.linalg.norm(outs[-1], axis=1),
                             np.linalg.norm(outs[-1], axis=1).max(), rtol=1e-6)
  assert int(state.count) == T
