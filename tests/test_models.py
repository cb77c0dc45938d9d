"""Every architecture: output shapes, gradient shapes, and the encoder/decoder split
(the representation-level Jacobian recombines to the parameter gradient)."""

from collections import namedtuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mtlx
from mtlx import models
from mtlx.train import losses

Task = namedtuple("Task", "name kind num_outputs label_key")

IMAGE_TASKS = (Task("cls", "classification", 4, "cls"), Task("seg", "segmentation", 3, "seg"),
               Task("depth", "depth", 1, "depth"), Task("normal", "normal", 3, "normal"))
FEATURE_TASKS = (Task("reg", "regression", 2, "reg"), Task("bin", "binary", 1, "bin"))
SMALL = dict(widths=(4, 8), hidden=8, head_hidden=8)
EXTRA = {"mmoe": dict(num_experts=2), "dselect_k": dict(num_experts=3, k=2),
         "cgc": dict(num_shared_experts=2, num_task_experts=1),
         "ple": dict(num_levels=2, num_shared_experts=1, num_task_experts=1)}


def _batch(input_shape, tasks, b=3, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(b,) + input_shape).astype(np.float32)
  batch = {"x": x}
  h, w = input_shape[:2] if len(input_shape) == 3 else (None, None)
  for t in tasks:
    if t.kind == "classification":
      batch[t.label_key] = rng.integers(0, t.num_outputs, b).astype(np.int32)
    elif t.kind == "binary":
      batch[t.label_key] = rng.integers(0, 2, b).astype(np.int32)
    elif t.kind == "regression":
      batch[t.label_key] = rng.normal(size=(b, t.num_outputs)).astype(np.float32)
    elif t.kind == "segmentation":
      batch[t.label_key] = rng.integers(-1, t.num_outputs, (b, h, w)).astype(np.int32)
    elif t.kind == "depth":
      batch[t.label_key] = np.abs(rng.normal(size=(b, h, w, 1))).astype(np.float32)
    else:
      n = rng.normal(size=(b, h, w, 3))
      batch[t.label_key] = (n / np.linalg.norm(n, axis=-1, keepdims=True)).astype(np.float32)
  return batch


def _out_shape(t, b, input_shape):
  if t.kind == "segmentation":
    return (b, *input_shape[:2], t.num_outputs)
  if t.kind == "depth":
    return (b, *input_shape[:2], 1)
  if t.kind == "normal":
    return (b, *input_shape[:2], 3)
  return (b, t.num_outputs)


# Every model on images (a per-example and a dense task); on feature vectors the
# models whose vector path has code of its own (MLP trunk, dense attention, dense
# level experts; the gates read the flattened input either way); hps also on all
# four image task kinds (the heads do not depend on the model).
# Models that take per-example tasks only (no dense decoder) get the first task alone;
# the transformers (sized by presets, not widths) are tested in tests/test_transformers.py.
PER_EXAMPLE_ONLY = ("two_branch",)
TRANSFORMERS = ("gpt", "vit")
CASES = ([(name, (6, 8, 1), IMAGE_TASKS[:1] if name in PER_EXAMPLE_ONLY else IMAGE_TASKS[:2])
          for name in sorted(models.REGISTRY) if name not in TRANSFORMERS] +
         [(name, (6,), FEATURE_TASKS) for name in ("hps", "mtan", "ple", "dselect_k")] +
         [("hps", (6, 8, 1), IMAGE_TASKS)])


@pytest.mark.parametrize("name,input_shape,tasks", CASES,
                         ids=[f"{c[0]}-{'image' if len(c[1]) == 3 else 'features'}-{len(c[2])}"
                              for c in CASES])
def test_forward_grad_and_split(name, input_shape, tasks):
  model = models.get_model(name, input_shape=input_shape, tasks=tasks, seed=1,
                           **SMALL, **EXTRA.get(name, {}))
  fns, params = models.split(model)
  assert set(params) == {"encoder", "decoder"}
  assert fns.task_names == tuple(t.name for t in tasks)
  batch = _batch(input_shape, tasks)

  def loss_fn(p):
    return losses.task_losses(tasks, fns.apply(p, batch["x"]), batch)

  def heads_fn(dp, z):
    return losses.task_losses(tasks, fns.decode(dp, z, batch["x"]), batch)

  @jax.jit
  def run(p):
    out = fns.apply(p, batch["x"])
    split_out = fns.decode(p["decoder"], fns.encode(p["encoder"], batch["x"]), batch["x"])
    grads = jax.grad(lambda q: jnp.sum(loss_fn(q)))(p)
    rj = mtlx.value_and_representation_jacobian(
        lambda ep, x: fns.encode(ep, x), heads_fn)(p["encoder"], p["decoder"], batch["x"])
    k = len(tasks)
    d_z = jax.tree_util.tree_map(lambda g: jnp.sum(g, axis=0), rj.rep_grads)
    rep = {"encoder": rj.encoder_vjp(d_z), "decoder": rj.heads_vjp(jnp.ones((k,), rj.losses.dtype))}
    return out, split_out, grads, rep, rj.losses

  out, split_out, grads, rep, task_losses = run(params)
  b = batch["x"].shape[0]
  for t in tasks:
    assert out[t.name].shape == _out_shape(t, b, input_shape)
    np.testing.assert_allclose(out[t.name], split_out[t.name], rtol=1e-6, atol=1e-6)
  if "normal" in out:
    norm = np.linalg.norm(out["normal"], axis=-1)  # unit, or 0 where the raw output is 0
    assert np.all(np.isclose(norm, 1.0, rtol=1e-5) | (norm == 0)) and np.mean(norm > 0) > 0.5
  assert task_losses.shape == (len(tasks),)
  assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(params)
  for g, p in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(params)):
    assert g.shape == p.shape and np.all(np.isfinite(g))
  assert any(np.any(g != 0) for g in jax.tree_util.tree_leaves(grads["encoder"]))
  assert any(np.any(g != 0) for g in jax.tree_util.tree_leaves(grads["decoder"]))
  # Σ_k of the representation rows, pulled back, is the parameter gradient of Σ_k L_k.
  for a, r in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(rep)):
    np.testing.assert_allclose(a, r, rtol=2e-4, atol=1e-6)


def test_unknown_model_and_argument_list_valid_names():
  with pytest.raises(ValueError, match=r"unknown model 'resnet'.*'hps'.*'mmoe'"):
    models.get_model("resnet", input_shape=(6,), tasks=FEATURE_TASKS)
  with pytest.raises(ValueError, match=r"unknown arguments \['num_experts'\].*widths"):
    models.get_model("hps", input_shape=(6,), tasks=FEATURE_TASKS, num_experts=3)


def test_bad_tasks_fail_with_clear_errors():
  with pytest.raises(ValueError, match="dense.*expected an \\[H, W, C\\] image"):
    models.get_model("hps", input_shape=(6,), tasks=(IMAGE_TASKS[1],))
  with pytest.raises(ValueError, match="kind 'ranking'"):
    models.get_model("hps", input_shape=(6,), tasks=(Task("r", "ranking", 1, "r"),))


def test_dselect_k_gate_is_a_distribution_and_cross_stitch_init():
  from mtlx.models import moe
  from flax import nnx
  gate = moe.DSelectKGate(5, 3, k=2, rngs=nnx.Rngs(0))
  w = gate(jnp.asarray(np.random.default_rng(0).normal(size=(4, 5)), jnp.float32))
  assert w.shape == (4, 3)
  np.testing.assert_allclose(np.sum(w, -1), 1.0, rtol=1e-5)
  assert np.all(w >= 0)
  t = jnp.linspace(-1, 1, 9)
  s = np.asarray(moe.smooth_step(t, 1.0))
  np.testing.assert_allclose(s[[0, 1, -2, -1]], [0, 0, 1, 1])
  assert s[4] == pytest.approx(0.5)
  model = models.cross_stitch((6,), FEATURE_TASKS, **SMALL)
  a = np.asarray(model.decoder.alpha["l0"][...])
  np.testing.assert_allclose(a, [[0.9, 0.1], [0.1, 0.9]], rtol=1e-6)
