"""mtlx.partition (one method per parameter group) and mtlx.calibrate_magnitudes."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mtlx

K = 3


def _tree(seed, k=K):
  rng = np.random.default_rng(seed)
  return {"encoder": {"w": jnp.asarray(rng.normal(size=(k, 4, 3))),
                      "b": jnp.asarray(rng.normal(size=(k, 3)))},
          "decoder": {"w": jnp.asarray(rng.normal(size=(k, 3, 2)))}}


def _params():
  return jax.tree_util.tree_map(lambda g: jnp.zeros(g.shape[1:]), _tree(0))


def by_part(p):
  return {"encoder": jax.tree_util.tree_map(lambda _: "shared", p["encoder"]),
          "decoder": jax.tree_util.tree_map(lambda _: "heads", p["decoder"])}


@pytest.mark.parametrize("make", [mtlx.upgrad, mtlx.mgda, lambda: mtlx.nash_mtl(num_tasks=K)])
def test_one_group_equals_plain_method(make):
  tg, params = _tree(1), _params()
  labels = jax.tree_util.tree_map(lambda _: "all", params)
  plain, part = make(), mtlx.partition({"all": make()}, labels)
  s1, s2 = plain.init(params), part.init(params)
  for step in range(2):
    u1, s1 = plain.update(tg, s1, params)
    u2, s2 = part.update(tg, s2, params)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
                           u1, u2)


def test_groups_read_only_their_sub_jacobian():
  tg, params = _tree(2), _params()
  tx = mtlx.partition({"shared": mtlx.upgrad(), "heads": mtlx.linear_scalarization()}, by_part)
  upd, _ = tx.update(tg, tx.init(params), params)
  enc, _ = mtlx.upgrad().update(tg["encoder"], optax.EmptyState())
  np.testing.assert_allclose(upd["encoder"]["w"], enc["w"], rtol=1e-6)
  np.testing.assert_allclose(upd["encoder"]["b"], enc["b"], rtol=1e-6)
  np.testing.assert_allclose(upd["decoder"]["w"], np.sum(np.asarray(tg["decoder"]["w"]), 0),
                             rtol=1e-6)
  # the encoder's update is non-conflicting w.r.t. the encoder's own task grads
  jenc = np.concatenate([np.asarray(tg["encoder"]["w"]).reshape(K, -1),
                         np.asarray(tg["encoder"]["b"]).reshape(K, -1)], 1)
  denc = np.concatenate([np.asarray(upd["encoder"]["w"]).ravel(),
                         np.asarray(upd["encoder"]["b"]).ravel()])
  assert np.all(jenc @ denc >= -1e-5)


def test_extras_reach_groups_and_second_batch_is_masked():
  tg, tg2, params = _tree(3), _tree(4), _params()
  tx = mtlx.partition({"shared": mtlx.modo(num_tasks=K), "heads": mtlx.linear_scalarization()},
                      by_part)
  upd, state = jax.jit(lambda a, b, s: tx.update(a, s, params, task_grads_2=b,
                                                 task_losses=jnp.ones(K)))(tg, tg2, tx.init(params))
  ref, _ = mtlx.modo(num_tasks=K).update(tg["encoder"], mtlx.modo(num_tasks=K).init(
      params["encoder"]), params["encoder"], task_grads_2=tg2["encoder"], task_losses=jnp.ones(K))
  np.testing.assert_allclose(upd["encoder"]["w"], ref["w"], rtol=1e-5)
  assert set(state) == {"shared", "heads"}


def test_partition_errors():
  params = _params()
  with pytest.raises(ValueError, match="'other'"):
    mtlx.partition({"shared": mtlx.upgrad()},
                   lambda p: jax.tree_util.tree_map(lambda _: "other", p)).init(params)
  with pytest.raises(ValueError, match="structure"):
    mtlx.partition({"a": mtlx.upgrad()}, {"encoder": "a"}).init(params)
  with pytest.raises(ValueError, match="empty"):
    mtlx.partition({}, {})


def test_calibrate_magnitudes_matches_numpy_and_equalises_branches():
  tg = _tree(5)
  tg["decoder"]["w"] = tg["decoder"]["w"].at[1].set(0.0)  # a zero branch gradient stays zero
  labels = {"encoder": {"w": "left", "b": "left"}, "decoder": {"w": "right"}}
  out, _ = mtlx.calibrate_magnitudes(labels).update(tg, optax.EmptyState())
  enc = np.concatenate([np.asarray(tg["encoder"]["w"]).reshape(K, -1),
                        np.asarray(tg["encoder"]["b"]).reshape(K, -1)], 1)
  dec = np.asarray(tg["decoder"]["w"]).reshape(K, -1)
  n_l, n_r = np.linalg.norm(enc, axis=1), np.linalg.norm(dec, axis=1)
  c = (n_l + n_r) / 2
  np.testing.assert_allclose(out["encoder"]["w"],
                             np.asarray(tg["encoder"]["w"]) * (c / n_l)[:, None, None], rtol=1e-6)
  r_scale = np.where(n_r > 0, c / np.where(n_r > 0, n_r, 1), 0.0)
  np.testing.assert_allclose(out["decoder"]["w"],
                             np.asarray(tg["decoder"]["w"]) * r_scale[:, None, None], rtol=1e-6)
  new_l = np.linalg.norm(np.concatenate([np.asarray(out["encoder"]["w"]).reshape(K, -1),
                                         np.asarray(out["encoder"]["b"]).reshape(K, -1)], 1), axis=1)
  new_r = np.linalg.norm(np.asarray(out["decoder"]["w"]).reshape(K, -1), axis=1)
  for k in (0, 2):
    np.testing.assert_allclose(new_l[k], new_r[k], rtol=1e-6)
  bad = dict(tg, decoder={"w": tg["decoder"]["w"].at[0, 0, 0].set(jnp.nan)})
  out_bad, _ = mtlx.calibrate_magnitudes(labels).update(bad, optax.EmptyState())
  assert not np.all(np.isfinite(out_bad["decoder"]["w"][0]))


def test_calibrate_only_the_named_branches():
  tg = _tree(6)
  labels = {"encoder": {"w": "a", "b": "b"}, "decoder": {"w": "heads"}}
  out, _ = mtlx.calibrate_magnitudes(labels, branches=["a", "b"]).update(tg, optax.EmptyState())
  np.testing.assert_array_equal(out["decoder"]["w"], tg["decoder"]["w"])
  na = np.linalg.norm(np.asarray(out["encoder"]["w"]).reshape(K, -1), axis=1)
  nb = np.linalg.norm(np.asarray(out["encoder"]["b"]).reshape(K, -1), axis=1)
  np.testing.assert_allclose(na, nb, rtol=1e-6)
  with pytest.raises(ValueError, match="'c'"):
    mtlx.calibrate_magnitudes(labels, branches=["a", "c"]).update(tg, optax.EmptyState())


def test_trainer_method_groups_by_path_prefix():
  from mtlx.train.step import grouped_methods
  tg, params = _tree(7), _params()
  tx = grouped_methods(mtlx.linear_scalarization(), {"upgrad": "encoder/w"}, params, K)
  upd, _ = tx.update(tg, tx.init(params), params)
  ref, _ = mtlx.upgrad().update({"w": tg["encoder"]["w"]}, optax.EmptyState())
  np.testing.assert_allclose(upd["encoder"]["w"], ref["w"], rtol=1e-6)
  np.testing.assert_allclose(upd["encoder"]["b"], np.sum(np.asarray(tg["encoder"]["b"]), 0),
                             rtol=1e-6)
  with pytest.raises(ValueError, match="'encoder/nope'"):
    grouped_methods(mtlx.linear_scalarization(), {"upgrad": "encoder/nope"}, params, K)
