"""The wrapper of every Gramian method: ``mtlx.gramian_weighting`` (a pure weight
function ``w = f(G)`` carried by a typed optax transform) and its errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mtlx
from mtlx import train as T


def test_gramian_weighting_wraps_a_pure_function_and_checks_k():
  rng = np.random.default_rng(0)
  tg = {"a": rng.normal(size=(3, 4)), "b": rng.normal(size=(3, 2))}
  jac = np.concatenate([tg["a"], tg["b"]], 1)

  def inverse_norm(gramian, *, task_losses):
    return task_losses / jnp.sqrt(jnp.diag(gramian))

  tx = mtlx.gramian_weighting(inverse_norm, num_tasks=3, extras=("task_losses",))
  losses = jnp.array([1.0, 2.0, 3.0])
  out, _ = jax.jit(tx.update)(tg, tx.init(None), task_losses=losses)
  w = np.array([1.0, 2.0, 3.0]) / np.linalg.norm(jac, axis=1)
  np.testing.assert_allclose(np.concatenate([out["a"], out["b"]]), w @ jac, rtol=1e-10)
  with pytest.raises(ValueError, match="num_tasks=3 but the update received K=2"):
    tx.update({"a": tg["a"][:2], "b": tg["b"][:2]}, tx.init(None), task_losses=losses[:2])


def test_gramian_weighting_stateful():
  def counting(gramian, count):
    k = gramian.shape[0]
    return jnp.full((k,), count + 1.0), count + 1

  tx = mtlx.gramian_weighting(counting, init=lambda k: jnp.zeros((), jnp.int32))
  tg = {"a": jnp.eye(2)}
  s = tx.init(None)
  out, s = tx.update(tg, s)
  out, s = tx.update(tg, s)
  np.testing.assert_allclose(out["a"], [2.0, 2.0])
  assert int(s) == 2


def inverse_norm_times_losses(gramian, *, task_losses):
  return task_losses / jnp.sqrt(jnp.diag(gramian))


def needs_second_batch(gramian, *, task_grads_2):
  del task_grads_2
  return jnp.ones(gramian.shape[0])


def test_a_missing_extra_is_one_value_error_naming_method_extra_and_provider():
  """A weight function that reads an extra the caller did not pass: one ValueError
  (not a TypeError from inside the weight function) naming the method, the extra and
  what passes it, from ``update``, from ``weights`` (the engines' call) and from a
  Gramian-engine step."""
  tg = {"a": jnp.ones((3, 4))}
  tx = mtlx.gramian_weighting(inverse_norm_times_losses, num_tasks=3, name="inv_norm",
                              extras=("task_losses",))
  pattern = (r"inv_norm reads the keyword extra argument\(s\) \['task_losses'\], which the "
             r"caller did not pass \(`task_losses`: the \[K\] task losses; every engine of "
             r"mtlx.train.make_step passes them\).*task_losses=\.\.\.")
  with pytest.raises(ValueError, match=pattern):
    tx.update(tg, tx.init(None))
  with pytest.raises(ValueError, match=pattern):
    tx.weights(jnp.eye(3), tx.init(None))
  with pytest.raises(ValueError, match=pattern):  # None counts as not passed
    tx.update(tg, tx.init(None), task_losses=None)
  with pytest.raises(ValueError, match=r"mgda reads .*\['task_losses'\]"):
    mtlx.mgda("loss+").update(tg, optax.EmptyState())
  out, _ = mtlx.mgda().update(tg, optax.EmptyState())  # 'none' reads no losses
  np.testing.assert_allclose(out["a"], np.ones(4))

  second = mtlx.gramian_weighting(needs_second_batch, name="two_batch",
                                  extras=("task_grads_2",))
  want = (r"two_batch reads the keyword extra argument\(s\) \['task_grads_2'\].*only "
          r"mtlx.train.make_step\(engine='jacobian', extra_batches=1 or 2\) passes them")
  with pytest.raises(ValueError, match=want):
    second.update(tg, second.init(None))
  params = {"w": jnp.ones((2, 3))}
  loss_fn = lambda p, b: jnp.sum(p["w"] * b, axis=1)  # noqa: E731  two tasks
  st = T.make_step(loss_fn, grad_tx=second, optimizer=optax.sgd(0.1), engine="gramian",
                   params=params)
  with pytest.raises(ValueError, match=want):
    st.step(st.init(params, jnp.ones((2, 3))), jnp.ones((2, 3)))
