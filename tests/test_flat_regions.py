"""Task-based flat regions: ρ = 0 is the plain step; the SAM gradient by hand; K = 1 is SAM."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mtlx
from mtlx import sharpness as fr

K = 3


def loss_fn(params, x, y):
  h = jnp.tanh(x @ params["w1"])
  out = h @ params["w2"]  # [B, K]
  return jnp.mean((out - y) ** 2, axis=0)


def _problem(seed=0):
  rng = np.random.default_rng(seed)
  params = {"w1": jnp.asarray(rng.normal(size=(4, 5))), "w2": jnp.asarray(rng.normal(size=(5, K)))}
  return params, jnp.asarray(rng.normal(size=(8, 4))), jnp.asarray(rng.normal(size=(8, K)))


def test_sharp_rows_match_a_by_hand_sam_gradient():
  params, x, y = _problem()
  rho = 0.1
  losses, tg, sharp = fr.value_and_sharpness_jacobian(loss_fn, rho)(params, x, y)
  for k in range(K):
    g = {n: np.asarray(v[k]) for n, v in tg.items()}
    norm = np.sqrt(sum(np.sum(v ** 2) for v in g.values()))
    moved = {n: params[n] + rho * g[n] / norm for n in params}
    want = jax.grad(lambda p: loss_fn(p, x, y)[k])(moved)
    for n in params:
      np.testing.assert_allclose(sharp[n][k], want[n], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("make", [mtlx.upgrad, mtlx.mgda, mtlx.linear_scalarization])
def test_rho_zero_equals_plain_method(make):
  params, x, y = _problem(1)
  losses, tg, sharp = fr.value_and_sharpness_jacobian(loss_fn, 0.0)(params, x, y)
  tx = fr.flat_regions(make())
  upd, _ = tx.update(tg, tx.init(params), params, task_grads_sharp=sharp, task_losses=losses)
  plain, _ = make().update(tg, make().init(params), params, task_losses=losses)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12),
                         upd, plain)


def test_single_task_ls_is_sam():
  params, x, y = _problem(2)
  single = lambda p, x, y: loss_fn(p, x, y)[:1]
  _, tg, sharp = fr.value_and_sharpness_jacobian(single, 0.05)(params, x, y)
  tx = fr.flat_regions(mtlx.linear_scalarization())
  upd, _ = tx.update(tg, tx.init(params), params, task_grads_sharp=sharp)
  g = jax.grad(lambda p: single(p, x, y)[0])(params)
  norm = optax.global_norm(g)
  want = jax.grad(lambda p: single(p, x, y)[0])(
      jax.tree_util.tree_map(lambda p, gg: p + 0.05 * gg / norm, params, g))
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-9), upd, want)


def test_errors():
  params, x, y = _problem()
  _, tg, _ = fr.value_and_sharpness_jacobian(loss_fn, 0.1)(params, x, y)
  tx = fr.flat_regions(mtlx.upgrad())
  with pytest.raises(ValueError, match="task_grads_sharp"):
    tx.update(tg, tx.init(params), params)
  with pytest.raises(ValueError, match="rho=-1"):
    fr.value_and_sharpness_jacobian(loss_fn, -1)


def test_single_task_step_equals_optax_contrib_sam():
  """K = 1, LS, SGD: the flat-regions step θ - η ∇L(θ + ρ g/‖g‖) is one outer step of
  ``optax.contrib.sam(sgd(η), chain(normalize(), sgd(ρ)), sync_period=2)`` (optax's
  documented SAM: it negates the adversarial optimizer's update, so it ascends)."""
  from optax import contrib  # noqa: PLC0415
  params, x, y = _problem(3)
  single = lambda p, x, y: loss_fn(p, x, y)[:1]
  lr, rho = 0.1, 0.05
  _, tg, sharp = fr.value_and_sharpness_jacobian(single, rho)(params, x, y)
  tx = fr.flat_regions(mtlx.linear_scalarization())
  d, _ = tx.update(tg, tx.init(params), params, task_grads_sharp=sharp)
  ours = optax.apply_updates(params, jax.tree_util.tree_map(lambda g: -lr * g, d))

  grad = jax.grad(lambda p: single(p, x, y)[0])
  sam = contrib.sam(optax.sgd(lr), optax.chain(contrib.normalize(), optax.sgd(rho)),
                    sync_period=2)
  state, p = sam.init(params), params
  for _ in range(2):  # the adversarial step, then the outer step from the cached θ
    upd, state = sam.update(grad(p), state, p)
    p = optax.apply_updates(p, upd)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9),
                         ours, p)
