"""Multi-device checks, run in ONE subprocess on 8 emulated CPU devices.

``tests/test_multidevice.py`` launches ``python tests/multidevice/_run_checks.py``
with ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (it must be set before
jax is imported, so these checks cannot share the main pytest process). The script
prints one JSON line ``RESULTS {...}`` with the numbers the test asserts on:

* ``equivalence``: 20 train steps of every method in ``METHOD_SPECS`` / ``CUSTOM``
  on meshes (data, model, task) = 1×1×1, 8×1×1, 4×2×1, 2×2×2 against one device
  without a mesh: max relative difference of the params;
* ``zero3``: ``param_rule='zero3'`` (params gathered for the step, the batch over
  data x model) on 4x2x1, Jacobian and Gramian engines, against one device;
* ``autogram``: the same for the Gramian engine of ``mtlx.train.make_step``
  (``value_and_gramian`` + one VJP) on 4×2×1;
* ``hlo``: all-gathers in the compiled FSDP step of a Gramian method (Jacobian and
  Gramian engines), of linear scalarization, and of a deliberately gathering control;
* ``checkpoint``: a train state written on 4×2 restored on 1 device and on 2×4,
  5 more steps on each against 5 more steps on 4×2;
* ``trainer``: ``experiments.train.train_and_evaluate`` on a tiny multi_digits
  config (FAMO + UPGrad, FSDP) on mesh 1×1×1 and 4×2×1: final params and eval
  numbers; the 4×2 run's step-2 checkpoint resumed on 2×4×1 to the end; and the
  error for a mesh whose size is not the device count;
* ``large_k_solver``: UPGrad's weights at K = 32 from a Jacobian split over the 8
  devices against one device, and the (target, batch, n) of every LAPACK call in
  the compiled 8-device program: a batch past jaxlib's threading threshold
  (2·10⁵ flop) deadlocks 8 emulated devices (see ``mtlx.solvers._per_matrix``);
* ``transformers``: vit-tiny (sparse MoE + balance loss + dropout) and gpt-tiny
  (dropout) built by ``experiments.train.build_trainer`` from ``configs/vit.py`` /
  ``configs/gpt.py`` at depth 1, width 16, every engine, 3 steps on mesh 4×2×1 (FSDP
  over the kernels, the batch over ``data``) against mesh 1×1×1 on one device; and
  ``TRANSFORMER_ZERO3`` with ``config.mesh.param_rule='zero3'``.

Run it directly for a readable report::

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/multidevice/_run_checks.py
"""

import os
import sys

# Cheaper CPU code generation: these checks compile ~45 small programs and run each
# for a few steps, so compile time dominates (the numbers compared are computed
# under the same flags on both sides).
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 " + FAST_COMPILE)
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import json  # noqa: E402
import re  # noqa: E402
import tempfile  # noqa: E402
from typing import Any, NamedTuple  # noqa: E402

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import mtlx  # noqa: E402
from tests.hlo_text import lapack_calls  # noqa: E402
from mtlx import sharding  # noqa: E402

K = 4
BATCH = 16
STEPS = 20
DIMS = (12, 40, 56)


def ema_diag_weights(gram, state):
  """A stateful Gramian weighting: softmax(-diag(G) / EMA of mean diag(G))."""
  diag = jnp.diag(gram)
  ema = 0.9 * state + 0.1 * jnp.mean(diag)
  return jax.nn.softmax(-diag / ema), ema


# Methods checked on every mesh. A registry spec ("method" or "weighting+method",
# see mtlx.registry.parse_method_spec) is a one-line addition here.
METHOD_SPECS = [
    "ls",          # linear scalarization
    "upgrad",      # a Gramian weighting (solver on the K x K Gramian)
    "nash_mtl",    # Nash bargaining (fixed-iteration solver, state: last weights)
    "graddrop",    # elementwise on the stacked grads, with a PRNG key in its state
    "famo",        # loss-space (FAMO's logits in its state), then LS
    "dwa+upgrad",  # chain: loss-space rescaling, then a Gramian method
]
# Methods built directly (not in the registry).
CUSTOM = {
    "gramian_ema": lambda: mtlx.gramian_weighting(
        ema_diag_weights, init=lambda k: jnp.ones((), jnp.float64), num_tasks=K),
}
MESHES = [(1, 1, 1), (8, 1, 1), (4, 2, 1), (2, 2, 2)]


def build(name):
  if name in CUSTOM:
    return CUSTOM[name]()
  method, weighting = mtlx.registry.parse_method_spec(name)
  return mtlx.registry.mto_transform(method, weighting, num_tasks=K)


def init_params():
  keys = jax.random.split(jax.random.key(0), 4)
  d_in, d_h, d_h2 = DIMS
  return {
      "w1": jax.random.normal(keys[0], (d_in, d_h), jnp.float64) / np.sqrt(d_in),
      "b1": jnp.zeros((d_h,), jnp.float64),
      "w2": jax.random.normal(keys[1], (d_h, d_h2), jnp.float64) / np.sqrt(d_h),
      "heads": jax.random.normal(keys[2], (d_h2, K), jnp.float64) / np.sqrt(d_h2),
  }


def loss_fn(p, batch):
  h = jnp.tanh(batch["x"] @ p["w1"] + p["b1"])
  h = jnp.tanh(h @ p["w2"])
  return jnp.mean((h @ p["heads"] - batch["y"]) ** 2, axis=0)


def batches(n, seed=0):
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    x = rng.normal(size=(BATCH, DIMS[0]))
    y = np.stack([np.sin(x[:, k]) + 0.1 * rng.normal(size=BATCH) for k in range(K)], 1)
    out.append({"x": x, "y": y})
  return out


def optimizer():
  return optax.adam(1e-2)


def reference_run(tx, params, data):
  """One device, no mesh, no shardings."""
  vj = mtlx.value_and_jacobian(loss_fn)

  @jax.jit
  def step(p, s, b):
    losses, tg = vj(p, b)
    u, s = tx.update(tg, s, p, task_losses=losses)
    return optax.apply_updates(p, u), s

  state = tx.init(params)
  for b in data:
    params, state = step(params, state, b)
  return params


def max_rel(a, b):
  worst = 0.0
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    x, y = np.asarray(x), np.asarray(y)
    worst = max(worst, float(np.abs(x - y).max() / max(np.abs(y).max(), 1e-30)))
  return worst


class ShardedStep(NamedTuple):
  """``mtlx.train.make_step`` on a mesh, seen as ``(params, state, batch) -> (params,
  state, losses)`` (``state`` = the gradient-space and optimizer states)."""
  step: Any
  init: Any
  shard_batch: Any
  param_shardings: Any
  state_shardings: Any


def make_sharded_step(tx, mesh, params, *, param_rule, shard_tasks=False, min_size=64,
                      engine="jacobian", optimizer=None):
  """The trainer's step on ``mesh``: ``engine='jacobian'`` with ``tx`` the full chain
  (optimizer included), or ``engine='gramian'`` with ``tx`` the Gramian method and
  ``optimizer`` the optimizer."""
  opt = optax.identity() if optimizer is None else optimizer
  st = mtlx.train.make_step(loss_fn, grad_tx=tx, optimizer=opt, engine=engine,
                            params=params, mesh=mesh, param_rule=param_rule,
                            shard_tasks=shard_tasks, min_size=min_size)
  example = batches(1)[0]

  def train_state(p, s):
    return mtlx.train.TrainState(jnp.zeros((), jnp.int32), p, (), s[0], s[1],
                                 jax.random.PRNGKey(0))

  @jax.jit
  def step(p, s, b):
    ts, info = st.step(train_state(p, s), b)
    return ts.params, (ts.grad_state, ts.opt_state), info["losses"]

  def init(p):
    ts = st.init(jax.tree.map(jnp.copy, p), example)
    return ts.params, (ts.grad_state, ts.opt_state)

  abstract = jax.eval_shape(lambda p: (tx.init(p), opt.init(p)), params)
  return ShardedStep(step, init, st.shard_batch, st.shardings.params,
                     st.shardings.state(abstract, params))


def mesh_of(shape):
  n = int(np.prod(shape))
  return sharding.make_mesh(*shape, devices=jax.devices()[:n])


def run_mesh(tx, shape, params, data, rule=None, **kw):
  mesh = mesh_of(shape)
  rule = rule or ("fsdp" if shape[1] > 1 else "replicated")
  st = make_sharded_step(tx, mesh, params, param_rule=rule,
                         shard_tasks=shape[2] > 1, min_size=64, **kw)
  p, s = st.init(params)
  for b in data:
    p, s, _ = st.step(p, s, st.shard_batch(b))
  return p, st


def check_equivalence(params, data):
  out = {}
  for name in METHOD_SPECS + list(CUSTOM):
    ref = reference_run(optax.chain(build(name), optimizer()), params, data)
    for shape in MESHES:
      p, st = run_mesh(optax.chain(build(name), optimizer()), shape, params, data)
      sharded = [str(s.spec) for s in jax.tree.leaves(
          jax.tree.map(lambda x: x.sharding, p))]
      out[f"{name}@{'x'.join(map(str, shape))}"] = {
          "max_rel": max_rel(p, ref), "param_specs": sharded}
  return out


def check_zero3(params, data):
  """``param_rule='zero3'`` on 4x2x1 (params stored split over ``model``, gathered
  for the step; the batch over data x model) against one device, on the Jacobian
  engine (UPGrad) and the Gramian engine (gramian_ema)."""
  out = {}
  for name, kw in (("upgrad", {}), ("gramian_ema", {"engine": "gramian"})):
    ref = reference_run(optax.chain(build(name), optimizer()), params, data)
    if kw:
      p, st = run_mesh(build(name), (4, 2, 1), params, data, rule="zero3",
                       optimizer=optimizer(), **kw)
    else:
      p, st = run_mesh(optax.chain(build(name), optimizer()), (4, 2, 1), params, data,
                       rule="zero3")
    out[name] = {
        "max_rel": max_rel(p, ref),
        "param_specs": [str(x.sharding.spec) for x in jax.tree.leaves(p)],
        "batch_spec": str(jax.tree.leaves(st.shard_batch(data[0]))[0].sharding.spec)}
  return out


def check_autogram(params, data):
  name = "gramian_ema"
  ref = reference_run(optax.chain(build(name), optimizer()), params, data)
  p, _ = run_mesh(build(name), (4, 2, 1), params, data, engine="gramian",
                  optimizer=optimizer())
  return {"max_rel": max_rel(p, ref)}


_ALL_GATHER = re.compile(r"=\s*(\w+)\[([\d,]*)\][^=]*?\s(all-gather(?:-start)?)\(")


def all_gathers(hlo_text):
  """(dtype, shape) of every all-gather result in compiled HLO text."""
  found = []
  for m in _ALL_GATHER.finditer(hlo_text):
    dims = tuple(int(d) for d in m.group(2).split(",") if d)
    found.append((m.group(1), dims))
  # Tuple-shaped (combined) all-gathers: "(f64[..], f64[..]) all-gather(".
  for m in re.finditer(r"=\s*\(([^)]*)\)\s*all-gather(?:-start)?\(", hlo_text):
    for t, d in re.findall(r"(\w+)\[([\d,]*)\]", m.group(1)):
      found.append((t, tuple(int(x) for x in d.split(",") if x)))
  return found


def check_hlo(params, data):
  """Compiled FSDP step (mesh 2x4): all-gathers of the Gramian method vs LS.

  Returns the shapes of every all-gather, whether a K x K all-reduce exists, and
  the shapes of the FSDP-sharded params (the test forbids gathering any of them,
  with or without a leading K axis).
  """
  mesh = mesh_of((2, 4, 1))
  res = {}
  for name in ["ls", "gramian_ema"]:
    tx = optax.chain(build(name), optimizer())
    st = make_sharded_step(tx, mesh, params, param_rule="fsdp", min_size=64)
    p, s = st.init(params)
    text = st.step.lower(p, s, st.shard_batch(data[0])).compile().as_text()
    reduces = re.findall(r"=\s*\(?([^=]*?)\)?\s*all-reduce(?:-start)?\(", text)
    res[name] = {
        "all_gathers": [list(g[1]) for g in all_gathers(text)],
        "kk_all_reduce": any(f"[{K},{K}]" in r for r in reduces),
    }
  # The autogram step (value_and_gramian + one VJP) on the same FSDP mesh.
  st = make_sharded_step(build("gramian_ema"), mesh, params, param_rule="fsdp",
                         min_size=64, engine="gramian", optimizer=optimizer())
  p, s = st.init(params)
  text = st.step.lower(p, s, st.shard_batch(data[0])).compile().as_text()
  res["autogram"] = {"all_gathers": [list(g[1]) for g in all_gathers(text)]}
  # Negative control: a Gramian method that gathers the task grads (replicated
  # constraint) before contracting them; the test's detector must flag it.
  def gathering_tx():
    inner = build("gramian_ema")
    rep = sharding.replicated(mesh)

    def update(tg, state, params=None, **extra):
      tg = jax.lax.with_sharding_constraint(tg, jax.tree.map(lambda _: rep, tg))
      return inner.update(tg, state, params, **extra)
    return optax.GradientTransformationExtraArgs(inner.init, update)

  st = make_sharded_step(optax.chain(gathering_tx(), optimizer()), mesh, params,
                         param_rule="fsdp", min_size=64)
  p, s = st.init(params)
  text = st.step.lower(p, s, st.shard_batch(data[0])).compile().as_text()
  res["negative_control"] = {"all_gathers": [list(g[1]) for g in all_gathers(text)]}
  res["sharded_param_shapes"] = [
      list(x.shape) for x in jax.tree.leaves(p) if any(a is not None for a in x.sharding.spec)]
  return res


def check_checkpoint(params, data):
  name = "gramian_ema"
  first, rest = data[:5], data[5:10]
  mesh42 = mesh_of((4, 2, 1))
  tx = optax.chain(build(name), optimizer())
  st42 = make_sharded_step(tx, mesh42, params, param_rule="fsdp", min_size=64)
  p, s = st42.init(params)
  for b in first:
    p, s, _ = st42.step(p, s, st42.shard_batch(b))
  out = {}
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "ckpt")
    sharding.save_checkpoint(path, {"params": p, "opt_state": s})
    like = {"params": params, "opt_state": jax.eval_shape(
        lambda q: (tx.init(q), optax.identity().init(q)), params)}
    saved = jax.tree.map(np.asarray, {"params": p, "opt_state": s})
    # Continue on 4x2 (the reference; the step donates p and s).
    pc, sc = p, s
    for b in rest:
      pc, sc, _ = st42.step(pc, sc, st42.shard_batch(b))
    for shape in [(1, 1, 1), (2, 4, 1)]:
      mesh = mesh_of(shape)
      stn = make_sharded_step(tx, mesh, params,
                              param_rule="fsdp" if shape[1] > 1 else "replicated",
                              min_size=64)
      restored = sharding.restore_checkpoint(
          path, like, {"params": stn.param_shardings, "opt_state": stn.state_shardings})
      rp, rs = restored["params"], restored["opt_state"]
      on_target = all(
          x.sharding == t for x, t in zip(
              jax.tree.leaves(restored),
              jax.tree.leaves({"params": stn.param_shardings,
                               "opt_state": stn.state_shardings},
                              is_leaf=lambda z: isinstance(z, jax.sharding.Sharding))))
      restore_rel = max_rel({"params": rp, "opt_state": rs}, saved)
      for b in rest:
        rp, rs, _ = stn.step(rp, rs, stn.shard_batch(b))
      out["x".join(map(str, shape))] = {
          "restore_rel": restore_rel, "continue_rel": max_rel((rp, rs), (pc, sc)),
          "on_target_shardings": on_target,
          "devices": len(jax.tree.leaves(rp)[0].sharding.device_set)}
  return out


TRAINER_STEPS = 4


def trainer_config(workdir, data_dir, mesh, resume=False):
  from configs import multi_digits
  c = multi_digits.get_config()
  c.update(dict(workdir=workdir, data_dir=data_dir, num_steps=TRAINER_STEPS,
                batch_size=16, eval_batch_size=40, eval_every=TRAINER_STEPS,
                checkpoint_every=2, keep_checkpoints=5, log_every=2, progress=False,
                tensorboard=False, val_split="", method="upgrad", weighting="famo",
                resume=resume))
  c.builder_kwargs.update(dict(num_train=128, num_validation=8, num_test=50))
  c.model_kwargs.update(dict(widths=(4, 8), hidden=64, head_hidden=16))
  c.mesh.update(dict(zip(("data", "model", "task"), mesh)), min_size=64)
  return c


def final_params(workdir, step=TRAINER_STEPS):
  import orbax.checkpoint as ocp
  with ocp.StandardCheckpointer() as ckptr:
    state = ckptr.restore(os.path.join(workdir, "checkpoints", str(step), "default"))
  return state["params"]


def check_trainer():
  """The experiment trainer on a mesh: same params as on one device; resumes on
  another mesh shape; a wrong mesh fails before training."""
  import shutil
  from experiments import train as train_exp
  out = {}
  with tempfile.TemporaryDirectory() as tmp:
    data_dir = os.path.join(tmp, "data")
    runs = {}
    for shape in [(1, 1, 1), (4, 2, 1)]:
      wd = os.path.join(tmp, "x".join(map(str, shape)))
      n = int(np.prod(shape))
      runs[shape] = train_exp.train_and_evaluate(
          trainer_config(wd, data_dir, shape), devices=jax.devices()[:n])
    one, mesh42 = (final_params(os.path.join(tmp, s)) for s in ("1x1x1", "4x2x1"))
    out["params_rel_4x2_vs_1"] = max_rel(mesh42, one)
    out["eval_4x2"], out["eval_1"] = runs[(4, 2, 1)], runs[(1, 1, 1)]
    # What FSDP shards in this model (the rule the trainer applied on 4x2).
    out["fsdp_sharded_leaves"] = sum(
        any(a is not None for a in s.spec) for s in jax.tree.leaves(
            sharding.param_shardings(one, mesh_of((4, 2, 1)), "fsdp", min_size=64),
            is_leaf=lambda z: isinstance(z, jax.sharding.Sharding)))
    # Resume the 4x2 run's step-2 checkpoint on 2x4.
    wd = os.path.join(tmp, "resumed")
    shutil.copytree(os.path.join(tmp, "4x2x1"), wd)
    shutil.rmtree(os.path.join(wd, "checkpoints", str(TRAINER_STEPS)))
    train_exp.train_and_evaluate(trainer_config(wd, data_dir, (2, 4, 1), resume=True))
    out["resume_2x4_rel"] = max_rel(final_params(wd), mesh42)
    rows = [r for r in mtlx.train.read_jsonl(os.path.join(wd, "metrics.jsonl"))
            if r["split"] == "train"]
    out["resume_logged_steps"] = [r["step"] for r in rows]
    try:
      train_exp.train_and_evaluate(trainer_config(os.path.join(tmp, "bad"), data_dir,
                                                  (2, 2, 1)))
      out["bad_mesh_error"] = None
    except ValueError as e:
      out["bad_mesh_error"] = str(e)
    out["bad_mesh_wrote_nothing"] = not os.path.exists(os.path.join(tmp, "bad"))
  return out


def check_mixture():
  """A multi-dataset run (3 digits datasets, unmixed slices, FAMO + UPGrad) on 4x2 =
  on one device; the data axis holds disjoint contiguous row blocks of the batch."""
  from configs import digits_mixture
  from experiments import train_mixture
  out = {}
  with tempfile.TemporaryDirectory() as tmp:
    finals = {}
    for shape in [(1, 1, 1), (4, 2, 1)]:
      c = digits_mixture.get_config()
      c.update(dict(workdir=os.path.join(tmp, "x".join(map(str, shape))), num_steps=3,
                    batch_size=16, eval_batch_size=64, eval_every=3, checkpoint_every=3,
                    log_every=3, method="upgrad", weighting="famo"))
      for t, n in zip(c.tasks, (48, 32, 16)):
        t.num_examples = n
      c.sampler.name, c.sampler.num_slices = "unmixed", 2   # absent tasks every step
      c.model_kwargs.update(dict(widths=(4,), hidden=16, head_hidden=8))
      c.mesh.update(dict(zip(("data", "model", "task"), shape)))
      n = int(np.prod(shape))
      _, (state, _, _) = train_mixture.train(c, return_state=True, devices=jax.devices()[:n])
      finals[shape] = jax.device_get(state.params)
      if shape != (1, 1, 1):
        srcs = train_mixture.make_sources(c, "train")
        it = train_mixture.make_mixture_iterator(c, srcs)
        mesh = train_mixture.make_mesh(c, jax.devices()[:n])
        tid = sharding.global_batch(next(it), mesh)["task_id"]  # what the step's shard_batch does
        out["data_row_blocks"] = sorted({(s.index[0].start, s.index[0].stop)
                                         for s in tid.addressable_shards})
    out["params_rel_4x2_vs_1"] = max_rel(finals[(4, 2, 1)], finals[(1, 1, 1)])
  return out


def tree_rel(a, b):
  """``max |a - b| / max |b|`` over the whole pytree. Per-leaf ratios do not suit a
  transformer: the attention key bias has a zero gradient (the softmax ignores it),
  so it stays at its zero init up to rounding noise (~1e-9) and any ratio to it is
  noise."""
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  diff = max(float(np.abs(np.asarray(x) - np.asarray(y)).max()) for x, y in zip(la, lb))
  return diff / max(float(np.abs(np.asarray(y)).max()) for y in lb)


TRANSFORMER_ENGINES = (("one_backward", "ls"), ("gramian", "upgrad"),
                       ("jacobian", "upgrad"), ("representation", "upgrad"))
#: (model, engine, method) also run with ``config.mesh.param_rule='zero3'``.
TRANSFORMER_ZERO3 = (("gpt", "gramian", "upgrad"), ("vit", "jacobian", "upgrad"))


def transformer_config(model, method, mesh, data_dir, param_rule="fsdp"):
  import importlib
  c = importlib.import_module(f"configs.{model}").get_config()
  c.update(dict(workdir="", data_dir=data_dir, batch_size=8, method=method,
                weighting="none", optimizer="sgd", learning_rate=0.1))
  # SGD, not Adam: Adam turns the attention key bias's rounding-noise gradient
  # (its true gradient is 0) into +-learning_rate steps whose signs differ by mesh.
  c.builder_kwargs.update(dict(num_train=32, num_validation=8, num_test=8))
  c.model_kwargs.update(dict(dim=16, depth=1, heads=2, dropout=0.1))
  if model == "vit":  # the MoE MLP and its balance loss (config.moe_aux_weight)
    c.model_kwargs.update(dict(moe_experts=2, moe_every=1, moe_top_k=1))
  c.mesh.update(dict(zip(("data", "model", "task"), mesh)), min_size=64,
                param_rule=param_rule)
  return c


def check_transformers(steps=3, mesh=(4, 2, 1)):
  """vit / gpt through experiments.train's build_trainer, every engine, mesh 4x2x1
  against one device: params after ``steps`` steps (see the module docstring)."""
  import itertools
  from experiments import train as train_exp
  from mtlx import data as mdata
  out = {}
  with tempfile.TemporaryDirectory() as tmp:
    models = os.environ.get("MTLX_TRANSFORMER_MODELS", "vit,gpt").split(",")
    runs = [(m, e, meth, "fsdp") for m in models for e, meth in TRANSFORMER_ENGINES]
    runs += [(m, e, meth, "zero3") for m, e, meth in TRANSFORMER_ZERO3 if m in models]
    for model, engine, method, rule in runs:
      final = {}
      for shape in ((1, 1, 1), mesh):
        config = transformer_config(model, method, shape, os.path.join(tmp, "data"),
                                    param_rule=rule)
        config.engine = engine
        info, tasks = train_exp.validate(config)
        device_mesh = train_exp.make_mesh(config, jax.devices()[:int(np.prod(shape))])
        data = list(itertools.islice(mdata.make_iterator(
            config.dataset, config.train_split, batch_size=config.batch_size, seed=0,
            shuffle=True, **train_exp._data_kwargs(config)), steps))
        trainer, params = train_exp.build_trainer(config, info, tasks, device_mesh,
                                                  example_batch=data[0])
        state = trainer.init(params, trainer.shard_batch(data[0]), config.seed)
        for b in data:
          state, info_ = trainer.step(state, trainer.shard_batch(b))
        final[shape] = state.params
      p = final[mesh]
      out[f"{model}/{engine}" + ("/zero3" if rule == "zero3" else "")] = {
          "max_rel": tree_rel(p, final[(1, 1, 1)]), "engine": trainer.engine,
          "aux_loss": float(info_["aux_loss"]) if "aux_loss" in info_ else None,
          "fsdp_leaves": sum(any(a is not None for a in x.sharding.spec)
                             for x in jax.tree.leaves(p)),
          "finite": bool(all(np.all(np.isfinite(np.asarray(x)))
                             for x in jax.tree.leaves(p)))}
  return out


def check_large_k_solver(k=32, width=4096):
  rng = np.random.default_rng(7)
  jac = jnp.asarray(rng.normal(size=(k, width)).astype(np.float32))
  weights = jax.jit(lambda j: mtlx.upgrad_weights(j @ j.T / width))
  one = np.asarray(weights(jac))
  split = jax.device_put(jac, jax.sharding.NamedSharding(mesh_of((8, 1, 1)),
                                                         jax.sharding.PartitionSpec(None, "data")))
  calls = lapack_calls(weights.lower(split).compile().as_text())
  eight = np.asarray(weights(split))
  return {"num_tasks": k, "lapack_calls": calls, "max_abs": float(np.max(np.abs(eight - one))),
          "scale": float(np.max(np.abs(one)))}


def main():
  assert jax.device_count() == 8, jax.devices()
  if os.environ.get("MTLX_ONLY") == "transformers":  # a quick look at this part alone
    print("RESULTS " + json.dumps({"transformers": check_transformers()}))
    return
  params = init_params()
  data = batches(STEPS)
  results = {
      "device_count": jax.device_count(),
      "num_tasks": K,
      "equivalence": check_equivalence(params, data),
      "autogram": check_autogram(params, data),
      "zero3": check_zero3(params, data),
      "hlo": check_hlo(params, data),
      "checkpoint": check_checkpoint(params, data),
      "trainer": check_trainer(),
      "mixture": check_mixture(),
      "transformers": check_transformers(),
      "large_k_solver": check_large_k_solver(),
  }
  print("RESULTS " + json.dumps(results))


if __name__ == "__main__":
  main()
