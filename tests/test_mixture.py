"""Multi-source batches, masked per-task losses, and method states of absent tasks."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mtlx
from mtlx.data import mixture
from mtlx.data import samplers
from mtlx.data import sources
from mtlx.data.specs import classification_task, regression_task
from mtlx.train import task_mask as TM


def _srcs(split="train"):
  return sources.digits_mixture_sources(split, sizes={"digit": 40, "rotated": 24, "value": 12})


def test_digits_mixture_sources():
  train, test = _srcs(), sources.digits_mixture_sources("test")
  assert [s.num_examples for s in sources.digits_mixture_sources("train")] == [1000, 400, 150]
  assert [s.task.kind for s in train] == ["classification", "classification", "regression"]
  b = train[1].read(np.arange(3))
  assert b["image"].shape == (3, 8, 8, 1) and b["image"].dtype == np.float32
  # the rotated copy is the 90-degree rotation of a real digit of the train pool
  images, target, train_pool, test_pool = sources._digits_pools(0)
  assert not set(train_pool) & set(test_pool)
  hits = [j for j in train_pool if np.array_equal(np.rot90(images[j], 1, (0, 1)), b["image"][0])]
  assert hits and target[hits[0]] == b["rotated"][0]
  v = train[2].read(np.arange(12))["value"]
  assert v.shape == (12, 1) and v.min() >= 0 and v.max() <= 1
  assert test[0].num_examples == 359
  train_images = {train[0].read(np.arange(40))["image"][i].tobytes() for i in range(40)}
  test_images = {x.tobytes() for x in test[0].read(np.arange(359))["image"]}
  assert not train_images & test_images


def test_batch_layout():
  srcs = _srcs()
  it = mixture.MixtureIterator(srcs, samplers.uniform(3), batch_size=12, seed=0,
                               process_index=0, process_count=1)
  counts, tasks, examples = it.plan()
  batch = next(it)
  np.testing.assert_array_equal(batch["task_id"], tasks)
  assert np.all(np.diff(batch["task_id"]) >= 0)  # task-major rows
  for k, s in enumerate(srcs):
    rows = np.flatnonzero(tasks == k)
    ref = s.read(examples[rows])
    np.testing.assert_array_equal(batch["image"][rows], ref["image"])
    np.testing.assert_array_equal(batch[s.task.name][rows], ref[s.task.name])
    assert not np.any(batch[s.task.name][tasks != k])
  np.testing.assert_array_equal(it.last_counts, counts)
  np.testing.assert_array_equal(it.state.cursor, counts)
  assert int(it.state.step) == 1


def test_bad_sources():
  srcs = _srcs()
  other = sources.array_source(regression_task("r", 1), np.zeros((4, 3)), np.zeros((4, 1)))
  with pytest.raises(ValueError, match="expected the first source's 'image'"):
    mixture.check_sources([srcs[0], other])
  with pytest.raises(ValueError, match="distinct names"):
    mixture.check_sources([srcs[0], srcs[0]])
  with pytest.raises(ValueError, match="num_tasks=2"):
    mixture.MixtureIterator(srcs, samplers.uniform(2), batch_size=4, process_index=0,
                            process_count=1)
  it = mixture.MixtureIterator(srcs, samplers.bandit(3), batch_size=4, process_index=0,
                               process_count=1)
  next(it)
  with pytest.raises(RuntimeError, match="update"):
    next(it)
  with pytest.raises(ValueError, match="source"):
    sources.source_from_config({"source": "csv"}, "train")


def test_single_task_batches():
  srcs = _srcs("test")
  batches = list(mixture.single_task_batches(srcs, 2, batch_size=100))
  assert sum(len(b["task_id"]) for b in batches) == 359
  assert all(np.all(b["task_id"] == 2) and not np.any(b["digit"]) for b in batches)


def _np_masked_losses(logits0, labels0, preds2, labels2, task_id):
  out = []
  for k, (per_row) in enumerate([
      -np.log(np.exp(logits0 - logits0.max(1, keepdims=True))
              / np.exp(logits0 - logits0.max(1, keepdims=True)).sum(1, keepdims=True)
              )[np.arange(len(labels0)), labels0],
      np.zeros(len(task_id)),
      ((preds2 - labels2) ** 2).mean(1)]):
    rows = task_id == k
    out.append(per_row[rows].mean() if rows.any() else 0.0)
  return np.array(out)


def test_masked_task_losses_match_numpy():
  rng = np.random.default_rng(0)
  b = 7
  task_id = np.array([0, 0, 0, 2, 2, 2, 2])  # task 1 absent
  tasks = (classification_task("a", 4), classification_task("b", 3), regression_task("c", 2))
  outputs = {"a": rng.normal(size=(b, 4)), "b": rng.normal(size=(b, 3)),
             "c": rng.normal(size=(b, 2))}
  batch = {"a": rng.integers(0, 4, b), "b": np.zeros(b, np.int32), "c": rng.normal(size=(b, 2)),
           "task_id": task_id}
  losses, counts = TM.masked_task_losses(tasks, outputs, batch)
  np.testing.assert_array_equal(counts, [3, 0, 4])
  want = _np_masked_losses(outputs["a"], batch["a"], outputs["c"], batch["c"], task_id)
  np.testing.assert_allclose(np.asarray(losses), want, rtol=1e-10)
  # the absent task's gradient is exactly zero
  g = jax.grad(lambda o: TM.masked_task_losses(tasks, o, batch)[0][1])(
      {k: jnp.asarray(v) for k, v in outputs.items()})
  assert not np.any(np.asarray(g["b"]))
  _, mask = TM.task_presence(jnp.asarray(task_id), 3)
  np.testing.assert_array_equal(mask, [True, False, True])


# ---- a missing task leaves its method state unchanged --------------------------------


def _grads(k, seed):
  rng = np.random.default_rng(seed)
  return {"w": jnp.asarray(rng.normal(size=(k, 3, 2))), "b": jnp.asarray(rng.normal(size=(k, 2)))}


def _check_absent_task_state(make_tx, k=3, absent=1, steps=4):
  params = {"w": jnp.zeros((3, 2)), "b": jnp.zeros(2)}
  plain = make_tx()
  masked = TM.mask_absent_tasks(make_tx(), num_tasks=k)
  s_plain, s_masked = plain.init(params), masked.init(params)
  present = jnp.ones(k, bool)
  for t in range(steps):  # every task present: exactly the inner transform
    g, losses = _grads(k, t), jnp.asarray(np.random.default_rng(t).uniform(0.5, 2, k))
    u1, s_plain = plain.update(g, s_plain, params, task_losses=losses)
    u2, s_masked = masked.update(g, s_masked, params, task_losses=losses, task_mask=present)
    jax.tree_util.tree_map(np.testing.assert_array_equal, u1, u2)
    jax.tree_util.tree_map(np.testing.assert_array_equal, s_plain, s_masked)
  # task `absent` missing: masked loss 0, zero gradient row
  mask = jnp.arange(k) != absent
  g = jax.tree_util.tree_map(lambda x: x * mask.reshape((k,) + (1,) * (x.ndim - 1)),
                             _grads(k, 99))
  losses = jnp.where(mask, jnp.asarray([0.7, 0.9, 1.3][:k]), 0.0)
  before = s_masked
  updates, after = masked.update(g, before, params, task_losses=losses, task_mask=mask)
  assert all(np.all(np.isfinite(u)) for u in jax.tree_util.tree_leaves(updates))
  return before, after


def test_absent_task_keeps_dwa_state():
  before, after = _check_absent_task_state(lambda: mtlx.dwa(num_tasks=3))
  assert int(after.count) == int(before.count) + 1
  np.testing.assert_array_equal(after.prev[1], before.prev[1])
  np.testing.assert_array_equal(after.prev2[1], before.prev2[1])
  np.testing.assert_allclose(np.asarray(after.prev)[[0, 2]], [0.7, 1.3])  # present tasks move on
  np.testing.assert_array_equal(np.asarray(after.prev2)[[0, 2]], np.asarray(before.prev)[[0, 2]])


def test_absent_task_keeps_famo_state():
  before, after = _check_absent_task_state(lambda: mtlx.famo(num_tasks=3))
  changed = lambda a, b: not np.array_equal(np.asarray(a), np.asarray(b))
  for new, old in zip(jax.tree_util.tree_leaves(after), jax.tree_util.tree_leaves(before)):
    if np.ndim(new) >= 1 and np.shape(new)[0] == 3:
      np.testing.assert_array_equal(np.asarray(new)[1], np.asarray(old)[1])
  assert any(changed(np.asarray(n)[0], np.asarray(o)[0])
             for n, o in zip(jax.tree_util.tree_leaves(after), jax.tree_util.tree_leaves(before))
             if np.ndim(n) >= 1 and np.shape(n)[0] == 3)


def test_absent_task_keeps_gradvac_targets():
  before, after = _check_absent_task_state(lambda: mtlx.gradvac(beta=0.5, num_tasks=3))
  t_old, t_new = np.asarray(before.targets), np.asarray(after.targets)
  np.testing.assert_array_equal(t_new[1, :], t_old[1, :])
  np.testing.assert_array_equal(t_new[:, 1], t_old[:, 1])
  assert not np.array_equal(t_new[0, 2], t_old[0, 2])  # the present pair still updates


def test_keep_absent_axes_and_errors():
  new = {"v": jnp.ones(3), "m": jnp.ones((3, 3)), "c": jnp.ones(()), "p": jnp.ones((2, 5))}
  old = jax.tree_util.tree_map(jnp.zeros_like, new)
  out = TM.keep_absent(new, old, jnp.array([True, False, True]))
  np.testing.assert_array_equal(out["v"], [1, 0, 1])
  np.testing.assert_array_equal(out["m"], [[1, 0, 1], [0, 0, 0], [1, 0, 1]])
  assert out["c"] == 1 and np.all(out["p"] == 1)
  only_rows = TM.keep_absent(new, old, jnp.array([True, False, True]),
                             task_axes=lambda path, leaf: (0,) if leaf.shape == (3, 3) else ())
  np.testing.assert_array_equal(only_rows["m"][1], [0, 0, 0])
  np.testing.assert_array_equal(only_rows["m"][0], [1, 1, 1])
  np.testing.assert_array_equal(only_rows["v"], [1, 1, 1])
  with pytest.raises(ValueError, match="given task axis 0"):
    TM.keep_absent(new, old, jnp.array([True, False, True]), task_axes=lambda p, l: (0,))
  tx = TM.mask_absent_tasks(optax.identity(), num_tasks=3)
  with pytest.raises(ValueError, match="task_mask"):
    tx.update(_grads(3, 0), tx.init(None), None, task_mask=jnp.ones(2, bool))


def test_masked_loss_weights_equal_the_stacked_path():
  params = {"w": jnp.zeros((3, 2)), "b": jnp.zeros(2)}
  tx = mtlx.dwa(num_tasks=3)
  stacked = TM.mask_absent_tasks(mtlx.dwa(num_tasks=3), num_tasks=3)
  s1, s2 = tx.init(params), stacked.init(params)
  for t, mask in enumerate([[1, 1, 1], [1, 1, 1], [1, 0, 1], [0, 1, 1], [1, 1, 1]]):
    mask = jnp.asarray(mask, bool)
    losses = jnp.where(mask, jnp.asarray([0.5, 1.0, 2.0]) / (t + 1), 0.0)
    w1, s1 = TM.masked_loss_weights(tx, s1, losses, mask)
    g = _grads(3, t)
    u2, s2 = stacked.update(g, s2, params, task_losses=losses, task_mask=mask)
    jax.tree_util.tree_map(np.testing.assert_allclose, s1, s2)
    np.testing.assert_allclose(u2["b"], np.asarray(w1)[:, None] * np.asarray(g["b"]), rtol=1e-12)


def test_builder_source_reads_one_task_of_an_mtlx_dataset(tmp_path):
  kw = {"num_train": 24, "num_validation": 8, "num_test": 8}
  left = sources.source_from_config({"source": "builder", "dataset": "multi_digits",
                                     "task": "left", "builder_kwargs": kw,
                                     "data_dir": str(tmp_path)}, "train")
  right = sources.builder_source("multi_digits", "train", "right", data_dir=str(tmp_path),
                                 builder_kwargs=kw, rename="right_digit")
  assert left.num_examples == 24 and left.task.name == "left"
  assert right.task.name == right.task.label_key == "right_digit"
  b = left.read(np.array([3, 1]))
  from mtlx import data as mdata
  full = mdata.load_split("multi_digits", "train", data_dir=str(tmp_path), builder_kwargs=kw)
  np.testing.assert_array_equal(b["image"], full["image"][[3, 1]])
  np.testing.assert_array_equal(b["left"], full["left"][[3, 1]])
  np.testing.assert_array_equal(right.read(np.array([5]))["right_digit"], full["right"][[5]])
  with pytest.raises(ValueError, match="expected one of \\['left', 'right'\\]"):
    sources.builder_source("multi_digits", "train", data_dir=str(tmp_path), builder_kwargs=kw)
