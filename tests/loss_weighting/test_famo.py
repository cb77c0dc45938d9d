"""FAMO (Liu et al. 2023): the logit step uses the previous update's losses.
"""

import jax.numpy as jnp
import numpy as np

import mtlx


def test_uses_the_previous_updates_losses_for_its_logit_step():
  # Update 0 stores L(0) and uses uniform z; update 1 first moves the logits with
  # δ = log L(0) - log L(1) (task 0 improved 4x, task 1 not at all), so the
  # task that improved less (1) gains logit mass before its weights are formed.
  tx = mtlx.famo(gamma=0.0, learning_rate=0.1, num_tasks=2)
  s = tx.init(None)
  w0, s = mtlx.loss_weights(tx, s, jnp.array([1.0, 1.0]))
  np.testing.assert_allclose(w0, [0.5, 0.5], rtol=1e-12)
  np.testing.assert_array_equal(s.logits, 0.0)
  np.testing.assert_array_equal(s.prev_losses, [1.0, 1.0])
  w1, s = mtlx.loss_weights(tx, s, jnp.array([0.25, 1.0]))
  # the first Adam step moves each logit by lr·sign(grad): ξ = (-0.1, +0.1)
  np.testing.assert_allclose(s.logits, [-0.1, 0.1], rtol=1e-6)
  z = np.exp([-0.1, 0.1]) / np.exp([-0.1, 0.1]).sum()
  want = (z / np.array([0.25, 1.0])) / np.sum(z / np.array([0.25, 1.0]))
  np.testing.assert_allclose(w1, want, rtol=1e-6)
  np.testing.assert_array_equal(s.prev_losses, [0.25, 1.0])
