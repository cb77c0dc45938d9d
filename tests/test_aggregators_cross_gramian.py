"""mtlx.cross_gramian_weighting: the two-batch wrapper behind MoDo and SDMGrad.

Checked against float64 NumPy: C = J1 J2^T (orientation matters: the weightings
below are not symmetric in C), d = w^T J3 (or J1), extras forwarded, state kept.
"""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mtlx

K, P = 3, 7
RNG = np.random.default_rng(0)
J1, J2, J3 = (RNG.normal(size=(K, P)) for _ in range(3))
LOSSES = np.array([0.5, 2.0, 1.5])


def to_tree(jac):
  jac = jnp.asarray(jac)
  return {"a": jac[:, :3], "b": jac[:, 3:].reshape(K, 2, 2)}


def row0_times_losses(cross, *, task_losses):
  """Row 0 of C (``<g1_0, g2_l>``) scaled by the losses: asymmetric in C."""
  return cross[0] * task_losses


def test_stateless_matches_numpy_and_forwards_losses():
  tx = mtlx.cross_gramian_weighting(row0_times_losses, extras=("task_losses",))
  assert isinstance(tx, mtlx.CrossGramianWeighting) and tx.extras == ("task_losses",)
  state = tx.init(None)
  assert isinstance(state, optax.EmptyState)
  w_ref = (J1 @ J2.T)[0] * LOSSES
  upd, _ = tx.update(to_tree(J1), state, None, task_grads_2=to_tree(J2),
                     task_losses=jnp.asarray(LOSSES))
  np.testing.assert_allclose(np.concatenate([upd["a"], upd["b"].ravel()]), w_ref @ J1,
                             rtol=1e-12)
  upd3, _ = tx.update(to_tree(J1), state, None, task_grads_2=to_tree(J2),
                      task_grads_3=to_tree(J3), task_losses=jnp.asarray(LOSSES))
  np.testing.assert_allclose(np.concatenate([upd3["a"], upd3["b"].ravel()]), w_ref @ J3,
                             rtol=1e-12)


def test_stateful_steps_and_kwargs_get_no_batches():
  seen = []

  def counted(cross, count, **extras):
    seen.append(sorted(extras))
    return cross[:, 1] * (count + 1.0), count + 1

  # the extras the weighting declares reach it; the other batches never do
  tx = mtlx.cross_gramian_weighting(counted, init=lambda k: jnp.zeros((), jnp.float64),
                                    num_tasks=K, extras=("task_losses", "task_grads_2"))
  state = tx.init(None)
  c = J1 @ J2.T
  for step in range(2):
    upd, state = tx.update(to_tree(J1), state, None, task_grads_2=to_tree(J2),
                           task_grads_3=to_tree(J3), task_losses=jnp.asarray(LOSSES))
    np.testing.assert_allclose(np.concatenate([upd["a"], upd["b"].ravel()]),
                               (c[:, 1] * (step + 1)) @ J3, rtol=1e-12)
  assert float(state) == 2.0
  assert seen == [["task_losses"], ["task_losses"]]


def test_errors_name_the_method():
  tx = mtlx.cross_gramian_weighting(lambda cross: cross[0], num_tasks=K, name="mine")
  with pytest.raises(ValueError, match=r"mine needs a second.*`task_grads_2`"):
    tx.update(to_tree(J1), tx.init(None), None)
  with pytest.raises(ValueError, match=r"task_grads_3 has a leaf of shape"):
    tx.update(to_tree(J1), tx.init(None), None, task_grads_2=to_tree(J2),
              task_grads_3={"a": jnp.zeros((K, 3)), "b": jnp.zeros((K, 4, 1))})
  with pytest.raises(ValueError, match=r"mine was constructed with num_tasks=3 but the "
                                       r"update received K=2"):
    j = to_tree(J1)
    two = {n: v[:2] for n, v in j.items()}
    tx.update(two, tx.init(None), None, task_grads_2=two)
  bad = mtlx.cross_gramian_weighting(lambda cross: cross, name="square")
  with pytest.raises(ValueError, match=r"square returned weights of shape \(3, 3\); "
                                       r"expected shape \(3,\)"):
    bad.update(to_tree(J1), bad.init(None), None, task_grads_2=to_tree(J2))
