"""mtlx.models.vit / gpt: shapes, causality, LoRA, sparse MoE, bf16, dropout, the
Gramian-only engine against the Jacobian engine on both, the step's auxiliary loss and
dropout key (``make_step(has_aux=, takes_rng=)``) on every engine, and
``experiments/train.py`` runs.

Kept cheap: the tiniest shapes (depth 1, width 16, 8 tokens), every model built and
its ``apply`` jitted once per module (``_build`` is cached), one data set for the
trainer runs.
"""

import functools
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mtlx
from mtlx import autogram
from mtlx import models
from mtlx.data.specs import TaskSpec
from mtlx.models import sparse_moe
from mtlx.train import losses as losses_lib
from tests.reference import transformers_ref as ref

IMG = (8, 12, 1)
SEQ = (8,)
TINY = {"dim": 16, "depth": 1, "heads": 2}  # overrides of the tiny preset
D = TINY["dim"]
TASKS = (TaskSpec("a", "classification", 3, (), (), "a"),
         TaskSpec("b", "regression", 2, (), (), "b"),
         TaskSpec("c", "classification", 4, (), (), "c"))


def _batch(rng, n=4, tokens=False):
  x = (rng.integers(0, 64, (n,) + SEQ) if tokens
       else rng.normal(size=(n,) + IMG).astype(np.float32))
  return x, {"a": rng.integers(0, 3, n), "b": rng.normal(size=(n, 2)).astype(np.float32),
             "c": rng.integers(0, 4, n)}


def _build(name, dtype="float32", **kw):
  """(fns, params) of a tiny model; ``fns.apply`` is jitted (eager is slow). Cached:
  tests that build the same model share it and its compiled functions."""
  return _build_cached(name, dtype, tuple(sorted(kw.items())))


@functools.lru_cache(maxsize=None)
def _build_cached(name, dtype, kw):
  kw = dict(TINY, **dict(kw))
  shape = IMG if name == "vit" or kw.get("vocab_size") == 0 else SEQ
  fns, params = models.split(models.get_model(name, input_shape=shape, tasks=TASKS,
                                              dtype=dtype, **kw))
  if dtype == "float64":
    params = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), params)
  return fns._replace(apply=jax.jit(fns.apply), encode=jax.jit(fns.encode)), params


def _loss_fn(fns):
  def loss_fn(p, x, labels):
    out = fns.apply(p, x)
    total = losses_lib.task_losses(TASKS, out, labels)
    return total
  return loss_fn


@pytest.mark.parametrize("name,kw,z_shape", [
    ("vit", {}, (5, D)),
    ("vit", {"pool": "mean", "lora_rank": 2}, (3, 5, D)),
    ("gpt", {}, (5, D)),
    ("gpt", {"vocab_size": 0}, (5, D)),
    ("gpt", {"head": "lm"}, (5, 8, D)),
])
def test_forward_shapes(name, kw, z_shape):
  fns, p = _build(name, **kw)
  x, _ = _batch(np.random.default_rng(0), n=5, tokens=name == "gpt" and "vocab_size" not in kw)
  z = fns.encode(p["encoder"], x)
  assert z.shape == z_shape
  out = fns.apply(p, x)
  if kw.get("head") == "lm":
    assert out["lm"].shape == (5, 8, 64) and out["lm"].dtype == jnp.float32
  else:
    assert {k: v.shape for k, v in out.items()} == {"a": (5, 3), "b": (5, 2), "c": (5, 4)}


def test_gpt_is_causal():
  fns, p = _build("gpt", head="lm")
  x = np.random.default_rng(1).integers(0, 64, (2, 8))
  y = x.copy()
  y[:, 5] = (y[:, 5] + 7) % 64
  a, b = fns.apply(p, x)["lm"], fns.apply(p, y)["lm"]
  np.testing.assert_array_equal(a[:, :5], b[:, :5])  # earlier positions: bit-identical
  assert np.abs(a[:, 5:] - b[:, 5:]).max() > 1e-4
  # task heads read the last position: it sees the change
  fns_t, pt = _build("gpt")
  assert np.abs(fns_t.apply(pt, x)["a"] - fns_t.apply(pt, y)["a"]).max() > 1e-6


def test_vit_is_not_causal():
  fns, p = _build("vit", pool="cls")
  x, _ = _batch(np.random.default_rng(2), n=2)
  y = x.copy()
  y[:, -4:, -4:] += 1.0  # the last patch changes the CLS output
  assert np.abs(fns.apply(p, x)["a"] - fns.apply(p, y)["a"]).max() > 1e-5


@pytest.mark.parametrize("name", ["vit", "gpt"])
def test_lora_zero_init_equals_base_and_adapters_are_per_task(name):
  fns_l, p_l = _build(name, lora_rank=2)
  fns_b, p_b = _build(name)

  def strip(tree):
    return {k: strip(v) for k, v in tree.items() if k not in ("lora_a", "lora_b")} \
        if isinstance(tree, dict) else tree

  base = strip(p_l)
  assert jax.tree_util.tree_structure(base) == jax.tree_util.tree_structure(p_b)
  x, _ = _batch(np.random.default_rng(3), tokens=name == "gpt")
  out_l, out_b = fns_l.apply(p_l, x), fns_b.apply(base, x)
  for t in "abc":
    np.testing.assert_allclose(out_l[t], out_b[t], rtol=1e-5, atol=1e-6)
  # adapter 0 moves task "a" only
  p2 = jax.tree_util.tree_map(lambda a: a, p_l)
  lb = p2["encoder"]["stack"]["blocks"][0]["mlp"]["fc2"]["lora_b"]
  bump = jax.random.normal(jax.random.key(0), lb.shape[1:], lb.dtype)  # not constant: LN removes those
  p2["encoder"]["stack"]["blocks"][0]["mlp"]["fc2"]["lora_b"] = lb.at[0].set(bump)
  out2 = fns_l.apply(p2, x)
  assert np.abs(out2["a"] - out_l["a"]).max() > 1e-3
  np.testing.assert_array_equal(out2["b"], out_l["b"])
  np.testing.assert_array_equal(out2["c"], out_l["c"])
  labels = models.param_labels(p_l)
  assert labels["encoder"]["stack"]["blocks"][0]["attn"]["q"]["lora_a"] == "adapter"
  assert labels["encoder"]["stack"]["blocks"][0]["attn"]["q"]["kernel"] == "base"
  assert labels["decoder"]["heads"]["heads"]["a"]["kernel"] == "head"
  mask = models.mto_mask(p_l, ("base",))
  assert mask["encoder"]["stack"]["ln_f"]["scale"] and not mask["decoder"]["heads"]["heads"]["a"]["kernel"]
  with pytest.raises(ValueError, match="act_on"):
    models.mto_mask(p_l, ("adapters",))


def test_moe_routes_top_k_and_balance_loss_matches_numpy():
  layer = sparse_moe.SparseMoEMLP(6, 10, num_experts=5, top_k=2, num_routers=1,
                                  dtype=jnp.float64, rngs=__import__("flax").nnx.Rngs(0))
  x = np.random.default_rng(4).normal(size=(1, 40, 6))
  probs, top, gates = layer.route(jnp.asarray(x))
  assert np.all(np.sum(np.asarray(gates[0]) > 0, axis=-1) == 2)  # exactly k experts
  np.testing.assert_allclose(np.sum(gates[0], -1), 1.0, rtol=1e-12)
  w_r = np.asarray(layer.router.value[0], np.float64)
  r_probs, r_top, r_gates = ref.moe_route(x[0], w_r, 2)
  np.testing.assert_allclose(probs[0], r_probs, rtol=1e-6)
  np.testing.assert_allclose(gates[0], r_gates, rtol=1e-6, atol=1e-12)
  y, aux = layer(jnp.asarray(x))
  np.testing.assert_allclose(aux, ref.balance_loss(r_probs, r_top), rtol=1e-6)
  w = {k: np.asarray(getattr(layer, k).value, np.float64) for k in ("w1", "b1", "w2", "b2")}
  np.testing.assert_allclose(y[0], ref.moe_forward(x[0], w_r, k=2, **w), rtol=1e-5, atol=1e-6)
  # a uniform router balances exactly: aux = 1
  uniform = jnp.full((8, 4), 0.25)
  np.testing.assert_allclose(sparse_moe.balance_loss(uniform, jnp.arange(8)[:, None] % 4), 1.0)
  with pytest.raises(ValueError, match="top_k"):
    sparse_moe.SparseMoEMLP(6, 10, num_experts=2, top_k=3, rngs=__import__("flax").nnx.Rngs(0))


def test_moe_model_returns_aux_outside_task_losses():
  fns, p = _build("vit", moe_experts=4, moe_top_k=2, moe_every=1, moe_task_routers=True)
  x, labels = _batch(np.random.default_rng(5))
  out = fns.apply(p, x)
  aux = models.aux_losses(out)
  assert set(aux) == {"aux/moe_balance"} and float(aux["aux/moe_balance"]) >= 1.0 - 1e-6
  assert losses_lib.task_losses(TASKS, out, labels).shape == (3,)
  assert p["encoder"]["stack"]["blocks"][0]["mlp"]["router"].shape == (3, D, 4)


def test_lm_task_losses_matches_numpy():
  rng = np.random.default_rng(6)
  logits, targets = rng.normal(size=(3, 7, 11)), rng.integers(0, 11, (3, 7))
  masks = rng.integers(0, 2, (2, 3, 7)).astype(np.float64)
  masks[1] = 0  # a task with no scored position: loss 0, not nan
  got = models.lm_task_losses(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(masks))
  np.testing.assert_allclose(got, ref.lm_task_losses(logits, targets, masks), rtol=1e-10)
  with pytest.raises(ValueError, match="task_masks"):
    models.lm_task_losses(jnp.asarray(logits), jnp.asarray(targets), jnp.ones((2, 3)))


@pytest.mark.parametrize("name", ["vit", "gpt"])
def test_bf16_finite_and_close_to_f32(name):
  fns32, p = _build(name)
  fns16, p16 = _build(name, dtype="bfloat16")
  x, labels = _batch(np.random.default_rng(7), tokens=name == "gpt")
  l32, g32 = jax.jit(jax.value_and_grad(lambda q: jnp.sum(_loss_fn(fns32)(q, x, labels))))(p)
  l16, g16 = jax.jit(jax.value_and_grad(lambda q: jnp.sum(_loss_fn(fns16)(q, x, labels))))(p)
  assert l16.dtype == jnp.float32
  assert all(g.dtype == jnp.float32 and np.all(np.isfinite(g))
             for g in jax.tree_util.tree_leaves(g16))
  np.testing.assert_allclose(l16, l32, rtol=3e-2)
  flat32 = np.concatenate([np.ravel(g) for g in jax.tree_util.tree_leaves(g32)])
  flat16 = np.concatenate([np.ravel(g) for g in jax.tree_util.tree_leaves(g16)])
  cos = flat16 @ flat32 / np.linalg.norm(flat16) / np.linalg.norm(flat32)
  assert cos > 0.99


def test_dropout_key_and_remat():
  fns, p = _build("vit", dropout=0.3)
  fns_r, _ = _build("vit", dropout=0.3, remat=True)
  x, labels = _batch(np.random.default_rng(8))
  k0, k1 = jax.random.key(0), jax.random.key(1)
  det = fns.apply(p, x)["a"]
  np.testing.assert_array_equal(det, fns.apply(p, x)["a"])  # no key: deterministic
  a0, a0b, a1 = (fns.apply(p, x, dropout_key=k)["a"] for k in (k0, k0, k1))
  np.testing.assert_array_equal(a0, a0b)
  assert np.abs(a0 - a1).max() > 1e-4 and np.abs(a0 - det).max() > 1e-4
  g = jax.jit(jax.grad(lambda q: jnp.sum(_loss_fn(fns)(q, x, labels))))(p)
  g_r = jax.jit(jax.grad(lambda q: jnp.sum(_loss_fn(fns_r)(q, x, labels))))(p)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                         g, g_r)


def test_bad_arguments():
  with pytest.raises(ValueError, match="preset='huge'"):
    _build("vit", preset="huge")
  with pytest.raises(ValueError, match="dtype='float16'"):
    _build("gpt", dtype="float16")
  with pytest.raises(ValueError, match="patch_size=5"):
    _build("vit", patch_size=5)
  with pytest.raises(ValueError, match="max_len=4"):
    _build("gpt", max_len=4)
  with pytest.raises(ValueError, match="not divisible by heads=3"):
    _build("vit", heads=3)
  with pytest.raises(ValueError, match="tie_embeddings"):
    _build("gpt", tie_embeddings=True)


LORA_MOE = {"lora_rank": 2, "moe_experts": 4, "moe_every": 1, "moe_task_routers": True,
            "remat": True}
# vit float64 with LoRA + MoE + remat (its plain kernels are those of the plain vit).
CASES = [("gpt", {}, "float64", 1e-9), ("vit", LORA_MOE, "float64", 1e-9),
         ("gpt", {}, "float32", 1e-4)]

LAYER_LEAVES = ("kernel", "lora_a", "lora_b", "w1", "w2", "router", "wte")


@pytest.mark.parametrize("name,kw,dtype,tol", CASES)
def test_gramian_engine_equals_jacobian_engine(name, kw, dtype, tol):
  fns, p = _build(name, dtype=dtype, **kw)
  x, labels = _batch(np.random.default_rng(9), tokens=name == "gpt")
  if dtype == "float64":
    x = x if name == "gpt" else x.astype(np.float64)
    labels["b"] = labels["b"].astype(np.float64)
  loss_fn = _loss_fn(fns)
  losses, gram = jax.jit(mtlx.value_and_gramian(loss_fn))(p, x, labels)
  ref_losses, jac = jax.jit(mtlx.value_and_jacobian(loss_fn))(p, x, labels)
  ref_gram = mtlx.gramian(jac)
  np.testing.assert_allclose(losses, ref_losses, rtol=tol)
  scale = np.abs(ref_gram).max()
  np.testing.assert_allclose(gram, ref_gram, rtol=tol, atol=tol * scale)
  plan = autogram.autogram_plan(loss_fn, p, x, labels)
  assert set(plan.fallback) == set(plan.reasons)  # no silent fallback
  assert set(plan.methods) == set(plan.layers) == set(plan.costs)
  for path in plan.fallback:  # only biases, norms, position / CLS embeddings fall back
    assert not path.endswith(tuple(f"['{leaf}']" for leaf in LAYER_LEAVES)), path
  assert all(m in ("ghost", "direct") for m in plan.methods.values())


def test_gramian_engine_tied_lm_and_forced_ghost():
  fns, p = _build("gpt", dtype="float64", head="lm", tie_embeddings=True)
  rng = np.random.default_rng(10)
  x = rng.integers(0, 64, (3, 8))
  masks = rng.integers(0, 2, (3, 3, 8))

  def loss_fn(q, x, masks):
    return models.lm_task_losses(fns.apply(q, x)["lm"][:, :-1], x[:, 1:], masks[:, :, 1:])

  ref_gram = mtlx.gramian(jax.jit(mtlx.value_and_jacobian(loss_fn))(p, x, masks)[1])
  for method in ("auto", "ghost"):
    gram = jax.jit(mtlx.value_and_gramian(loss_fn, method=method))(p, x, masks)[1]
    np.testing.assert_allclose(gram, ref_gram, rtol=1e-9, atol=1e-9 * np.abs(ref_gram).max())
  plan = autogram.autogram_plan(loss_fn, p, x, masks, method="ghost")
  assert plan.reasons["['encoder']['wte']"].startswith("tied: used by 2 layers (gather, dot)")
  assert set(plan.methods.values()) == {"ghost"}


# --- the step's auxiliary loss and dropout key (make_step(has_aux=, takes_rng=)) -------

HOOK_MODEL = {"moe_experts": 4, "moe_every": 1, "moe_task_routers": True, "dropout": 0.2}
HOOK_ENGINES = {"one_backward": "ls", "gramian": "upgrad", "jacobian": "upgrad",
                "representation": "upgrad"}
# The optimizer keeps the step's gradient as its state (and leaves the params alone):
# the gradient is read exactly, not through params - lr * grad.
KEEP_GRADS = optax.GradientTransformation(
    lambda p: jax.tree_util.tree_map(jnp.zeros_like, p),
    lambda g, s, p=None: (jax.tree_util.tree_map(jnp.zeros_like, g), g))


@functools.lru_cache(maxsize=None)
def _hook_model(dtype):
  """(loss_fn, representation, hooks, params, batch, reference) of the MoE + dropout
  ViT through make_trainer's loss function (aux weight 0.5); ``reference(params, w,
  aux_weight, key)`` is the jitted ∇(Σ_k w_k L_k + aux_weight · aux) (one compile per
  dtype, shared by the engines)."""
  from mtlx.train import step_hooks
  fns, params = _build("vit", dtype=dtype, **HOOK_MODEL)
  loss_fn, rep, hooks = step_hooks.trainer_loss_fns(TASKS, fns, "x", aux_loss_weight=0.5,
                                                    dropout_rng=True)
  assert hooks == {"has_aux": True, "takes_rng": True}
  x, labels = _batch(np.random.default_rng(11))
  batch = dict(labels, x=x.astype(dtype))
  batch["b"] = batch["b"].astype(dtype)

  @jax.jit
  def reference(q, w, aux_weight, key):
    def objective(q):
      losses, aux = loss_fn(q, batch, key)
      return jnp.dot(w, losses) + aux_weight * aux["aux_loss"]
    return jax.grad(objective)(q), loss_fn(q, batch, key)

  return loss_fn, rep, hooks, params, batch, reference


@functools.lru_cache(maxsize=None)
def _hook_step(engine, dtype):
  """(step, loss_fn, params, batch, reference) on ``engine`` (:func:`_hook_model`)."""
  loss_fn, rep, hooks, params, batch, reference = _hook_model(dtype)
  loss_tx, grad_tx = mtlx.train.build_mto(HOOK_ENGINES[engine], "none", len(TASKS))
  st = mtlx.train.make_step(loss_fn, loss_tx=loss_tx, grad_tx=grad_tx, optimizer=KEEP_GRADS,
                            engine=engine, representation=rep, **hooks)
  return st, loss_fn, params, batch, reference


def _rel(a, b):
  """max |a - b| / max |b| over the whole pytree."""
  la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(la, lb)) / \
      max(float(np.max(np.abs(np.asarray(y)))) for y in lb)


# float64 on every engine; float32 on the Jacobian engine, whose update sums K
# per-task rows (the others take one VJP of the same objective as the reference).
@pytest.mark.parametrize("engine,dtype,tol", [(e, "float64", 1e-10) for e in HOOK_ENGINES]
                         + [("jacobian", "float32", 1e-6)])
def test_aux_loss_gradient_is_in_the_update_on_every_engine(engine, dtype, tol):
  """update = ∇(Σ_k w_k L_k + aux) with the step's weights and dropout key (the
  representation engine's heads get ∇ Σ_k L_k + aux, LibMTL's rep_grad)."""
  from mtlx.train import step_hooks
  st, loss_fn, params, batch, reference = _hook_step(engine, dtype)
  state = st.init(params, batch, 3)
  new, info = st.step(state, batch)
  key = step_hooks.dropout_key(state.rng)
  w = jnp.asarray(info["weights"], dtype)
  assert bool(info["weights_exact"])

  want, (losses, aux) = reference(params, w, 1.0, key)
  if engine == "representation":
    want["decoder"] = reference(params, jnp.ones_like(w), 1.0, key)[0]["decoder"]
  assert _rel(new.opt_state, want) <= tol
  # the aux term's gradient is not negligible: without it the update is far off
  assert _rel(reference(params, w, 0.0, key)[0], want) > 1e-3
  np.testing.assert_allclose(info["losses"], losses, rtol=tol)
  np.testing.assert_allclose(info["aux_loss"], aux["aux_loss"], rtol=tol)
  assert float(info["aux_loss"]) >= 0.5 * (1.0 - 1e-6)  # 0.5 x balance loss >= 0.5


def test_dropout_masks_differ_across_steps_and_repeat_from_the_same_state():
  st, loss_fn, params, batch, _ = _hook_step("jacobian", "float64")
  s0 = st.init(params, batch, 0)
  s1, i1 = st.step(s0, batch)   # KEEP_GRADS: the params do not move
  s2, i2 = st.step(s1, batch)
  assert np.abs(np.asarray(i1["losses"]) - np.asarray(i2["losses"])).max() > 1e-4
  # the same state (a restored checkpoint) gives the same masks, bit for bit
  restored = jax.tree_util.tree_map(lambda a: jnp.asarray(np.asarray(a)), s1)
  _, i2b = st.step(restored, batch)
  np.testing.assert_array_equal(i2b["losses"], i2["losses"])
  np.testing.assert_array_equal(i2b["aux_loss"], i2["aux_loss"])
  # the next state key is split(rng)[0], as without the hook
  np.testing.assert_array_equal(s1.rng, jax.random.split(s0.rng)[0])


def test_no_hooks_is_the_plain_step():
  """has_aux / takes_rng off: make_trainer's loss function is untouched."""
  from mtlx.train import step_hooks
  fns, _ = _build("vit")
  default = (object(), object())
  fn, rep, hooks = step_hooks.trainer_loss_fns(TASKS, fns, "x", default=default)
  assert (fn, rep, hooks) == (default[0], default[1], {})
  with pytest.raises(ValueError, match="aux dict"):
    step_hooks.bind(lambda p, b: p, jax.random.PRNGKey(0), jnp.ones(2), None, has_aux=True)


# --- experiments/train.py at the tiny preset ---------------------------------------

TRAIN_MODEL = dict(TINY, moe_every=1)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("data"))


def _train_config(config_name, data_dir, workdir, **overrides):
  import importlib
  config = importlib.import_module(f"configs.{config_name}").get_config()
  config.update(dict(dict(num_steps=4, eval_every=4, log_every=2, checkpoint_every=2,
                          batch_size=8, eval_batch_size=64, data_dir=data_dir,
                          workdir=str(workdir), progress=False, tensorboard=False,
                          val_split=""), **overrides))
  config.builder_kwargs.update(dict(num_train=32, num_validation=8, num_test=32))
  config.model_kwargs.update(TRAIN_MODEL)
  return config


def _final_params(workdir, step=4):
  import orbax.checkpoint as ocp
  with ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(str(workdir / "checkpoints" / str(step) / "default"))["params"]


def _check_run(result, workdir):
  assert set(result) >= {"loss/left", "loss/right", "accuracy/left", "accuracy/right"}
  assert all(np.isfinite(v) for v in result.values())
  rows = [r for r in mtlx.train.read_jsonl(str(workdir / "metrics.jsonl"))
          if r["split"] == "train"]
  assert rows and all(np.isfinite(r["loss/left"]) for r in rows)
  return rows


def test_experiments_train_vit_moe_dropout_resumes_exactly(tmp_path, data_dir):
  """ViT, FAMO (one backward), sparse MoE (balance loss weighted by
  config.moe_aux_weight) and dropout: trains; killed after step 2 and resumed, it
  ends with the uninterrupted run's params, bit for bit (the dropout key is in the
  checkpoint). (bf16 steps: test_bf16_finite_and_close_to_f32.)"""
  from experiments import train as train_exp
  over = dict(method="ls", weighting="famo", moe_aux_weight=0.01)
  run = tmp_path / "run"
  config = _train_config("vit", data_dir, run, **over)
  config.model_kwargs.update(dict(moe_experts=2, moe_top_k=1, dropout=0.1))
  rows = _check_run(train_exp.train_and_evaluate(config), run)
  assert all(r["aux_loss"] >= 0.01 * (1 - 1e-3) for r in rows)  # 0.01 x balance >= 0.01
  resumed = tmp_path / "resumed"
  shutil.copytree(run, resumed)
  shutil.rmtree(resumed / "checkpoints" / "4")
  config.workdir, config.resume = str(resumed), True
  train_exp.train_and_evaluate(config)
  jax.tree_util.tree_map(np.testing.assert_array_equal, _final_params(resumed),
                         _final_params(run))


def test_experiments_train_gpt_representation_engine(tmp_path, data_dir):
  from experiments import train as train_exp
  run = tmp_path / "run"
  config = _train_config("gpt", data_dir, run, method="upgrad", rep_grad=True, remat=True,
                         log_every=1)
  _check_run(train_exp.train_and_evaluate(config), run)
