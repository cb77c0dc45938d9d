"""What each MTO engine costs on the transformers (``mtlx.models.vit`` / ``gpt``).

Two modes (a script, not a test; prints markdown tables, ``--out`` appends them):

``run``      step time (median of ``--repeats`` after one warm-up) and the compiled
             step's memory (``compiled.memory_analysis()``: arguments + temporaries)
             per engine and method, as ratios to the one-backward LS step timed in
             the same run, on the local devices::

               python benchmarks/transformers.py run --models vit,gpt --presets tiny \\
                   --ks 2,8,32 [--dtype bfloat16] [--devices 8]

             ``--devices N`` (N > 1): the same on N emulated CPU devices
             (``--xla_force_host_platform_device_count``): the batch split over them
             and the params, Adam state and method state FSDP-sharded over the same
             axis (leaves of at least 2¹⁰ scalars, largest divisible dimension).
             The emulated devices share this machine's cores: the ratios say what
             sharding adds to each engine, not what a pod would run at.

``compile``  compile only (no run) the UPGrad step of every engine, and the LS
             one-backward step, for large presets on meshes of emulated CPU devices
             (``--xla_force_host_platform_device_count``); reports per-device memory
             from ``memory_analysis()`` and the bytes moved by collectives in the HLO::

               python benchmarks/transformers.py compile --specs vit:B/16,gpt:small \\
                   --meshes 8,64,256 --ks 8,32 [--layout zero3 --model_axis 8]

             ``--layout zero3`` (default) / ``fsdp``: the trainer's layout with that
             ``param_rule``: ``mtlx.sharding``'s mesh ``(data = N / M, model = M,
             task = 1)`` with ``M = --model_axis``, params and Adam state stored with a
             leaf's last axis over ``model``; ``zero3`` gathers the params for the
             step and splits the batch over ``data × model``, ``fsdp`` computes with
             the split params and the batch over ``data`` (XLA then gathers
             activations over ``model``). ``--layout one_axis``: sessions 3-4's
             layout, one axis for both the batch and the params (largest divisible
             dimension): XLA's partitioner then gathers the tied LM head's logits for
             the global batch (GPT-2 small, 64 devices: 2 x 12.3 GiB of collectives
             per device), so that layout's memory grows with the device count.

Engines (the trainer's names): ``one_backward`` (weights from the losses, one VJP
of ``Σ w_k L_k``), ``jacobian`` (``mtlx.value_and_jacobian`` + the method on the
stacked grads), ``gramian`` (``mtlx.value_and_gramian`` → ``w = f(G)`` → one VJP of
``Σ w_k L_k``), ``representation`` (per-task grads w.r.t. the encoder output ``z``).
FAMO is a loss-space method: it only has the one-backward engine. The step
includes Adam. Models: ViT with K classification heads on CLS; GPT with per-task
heads on the last position (``run``) or, in ``compile``, the GPT-2 LM head tied to
the embedding with one loss mask per task (:func:`mtlx.models.lm_task_losses`).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time


def _parse():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("mode", choices=["run", "compile"])
  ap.add_argument("--models", default="vit,gpt")
  ap.add_argument("--presets", default="tiny")
  ap.add_argument("--ks", default="2,8,32")
  ap.add_argument("--methods", default="ls,upgrad,nash_mtl,famo")
  ap.add_argument("--engines", default="one_backward,jacobian,gramian,representation")
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--side", type=int, default=0,
                  help="ViT image side (default: 16 tiny, 32 mini, 224 otherwise)")
  ap.add_argument("--seq", type=int, default=0,
                  help="GPT tokens per example (default: 16 tiny, 64 mini, 1024 otherwise)")
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--dtype", default="float32")
  ap.add_argument("--specs", default="vit:B/16,gpt:small,gpt:xl")
  ap.add_argument("--meshes", default="8")
  ap.add_argument("--devices", type=int, default=1)
  ap.add_argument("--out", default="")
  ap.add_argument("--layout", choices=["fsdp", "zero3", "one_axis"], default="zero3",
                  help="compile: mtlx.sharding's param_rule on the (data, model) mesh, "
                       "or one FSDP axis for batch and params")
  ap.add_argument("--model_axis", type=int, default=8,
                  help="compile, --layout fsdp/zero3: size of the mesh's model axis")
  ap.add_argument("--max_mib", type=float, default=12000,
                  help="run: steps whose compiled memory exceeds this are reported, not run")
  return ap.parse_args()


ARGS = _parse() if __name__ == "__main__" else None
if ARGS is not None and ARGS.mode == "compile":
  n_dev = max(int(m) for m in ARGS.meshes.split(","))
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={n_dev}")
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
if ARGS is not None and ARGS.mode == "run" and ARGS.devices > 1:
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={ARGS.devices}")
  os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import mtlx  # noqa: E402
from mtlx import models  # noqa: E402
from mtlx import sharding  # noqa: E402
import importlib  # noqa: E402
nash_lib = importlib.import_module("mtlx.aggregators.nash_mtl")  # the modules, not the
upgrad_lib = importlib.import_module("mtlx.aggregators.upgrad")  # re-exported functions
from mtlx.data.specs import TaskSpec  # noqa: E402
from mtlx.loss_weighting import loss_weights  # noqa: E402
from mtlx.train import losses as losses_lib  # noqa: E402

CLASSES = 4


def make_problem(name, preset, k, batch, dtype, lm=False, side=0, seq=0, abstract=None):
  """(fns, params, batch dict, loss_fn(params, batch), heads_fn, input key).

  ``side`` / ``seq``: the ViT image side / GPT sequence length (0: the preset's
  default input, 224² images and 1024 tokens past ``mini``); the model's size is the
  preset's whatever the input. ``abstract``: shapes only (default: past ``mini``)."""
  if abstract is None:
    abstract = preset not in ("tiny", "mini")
  tasks = [TaskSpec(f"t{i}", "classification", CLASSES, (), (), f"t{i}") for i in range(k)]
  rng = np.random.default_rng(0)
  if name == "vit":
    side = side or {"tiny": 16, "mini": 32}.get(preset, 224)
    shape = (side, side, 3)
    build = lambda: models.get_model("vit", input_shape=shape, tasks=tasks, preset=preset,
                                     dtype=dtype)
    x = jax.ShapeDtypeStruct((batch,) + shape, jnp.float32)
  else:
    seq = seq or {"tiny": 16, "mini": 64}.get(preset, 1024)
    kw = dict(head="lm", tie_embeddings=True) if lm else {}
    build = lambda: models.get_model("gpt", input_shape=(seq,), tasks=tasks, preset=preset,
                                     dtype=dtype, **kw)
    x = jax.ShapeDtypeStruct((batch, seq), jnp.int32)
  if not abstract:
    fns, params = models.split(build())
  else:  # big presets: shapes only (nnx.eval_shape builds an abstract model)
    from flax import nnx  # pylint: disable=import-outside-toplevel
    fns, params = models.split(nnx.eval_shape(build))
  labels = {t.name: jax.ShapeDtypeStruct((batch,), jnp.int32) for t in tasks}
  if lm:
    labels = {"masks": jax.ShapeDtypeStruct((k,) + x.shape, jnp.float32)}
  batch_spec = {"x": x, **labels}

  def heads_fn(dec, z, b):
    out = fns.decode(dec, z, b["x"])
    if lm:
      return models.lm_task_losses(out["lm"][:, :-1], b["x"][:, 1:], b["masks"][:, :, 1:])
    return losses_lib.task_losses(tasks, out, b)

  def loss_fn(p, b):
    return heads_fn(p["decoder"], fns.encode(p["encoder"], b["x"]), b)

  return fns, params, batch_spec, loss_fn, heads_fn


def concrete(spec, rng):
  def one(s):
    if jnp.issubdtype(s.dtype, jnp.integer):
      hi = CLASSES if s.ndim == 1 else 64
      return jnp.asarray(rng.integers(0, hi, s.shape), s.dtype)
    if s.ndim == 3 and s.shape[0] < 64:  # masks
      return jnp.asarray(rng.integers(0, 2, s.shape), s.dtype)
    return jnp.asarray(rng.normal(size=s.shape), s.dtype)
  return jax.tree_util.tree_map(one, spec)


def gramian_weights_fn(method, k):
  if method == "ls":
    return lambda g: jnp.ones((k,), g.dtype)
  if method == "upgrad":
    return upgrad_lib.upgrad_weights
  if method == "nash_mtl":
    return nash_lib.nash_mtl_weights
  raise ValueError(method)


def grad_tx(method, k):
  if method == "ls":
    return mtlx.linear_scalarization()
  if method == "upgrad":
    return mtlx.upgrad()
  if method == "nash_mtl":
    return mtlx.nash_mtl(num_tasks=k)
  raise ValueError(method)


def make_step(engine, method, k, fns, loss_fn, heads_fn, params):
  """``step(params, opt_state, mstate, batch) -> (params, opt_state, mstate, losses)``."""
  opt = optax.adam(1e-3)
  if engine == "one_backward":
    loss_tx = mtlx.famo(num_tasks=k) if method == "famo" else None
    mstate = loss_tx.init(params) if loss_tx is not None else optax.EmptyState()

    def step(p, o, ms, b):
      losses, vjp = jax.vjp(lambda q: loss_fn(q, b), p)
      if loss_tx is None:
        w = jnp.ones_like(losses)
      else:
        w, ms = loss_weights(loss_tx, ms, jax.lax.stop_gradient(losses))
      g = vjp(w.astype(losses.dtype))[0]
      u, o = opt.update(g, o, p)
      return optax.apply_updates(p, u), o, ms, losses
  elif engine == "jacobian":
    tx = grad_tx(method, k)
    mstate = tx.init(params)

    def step(p, o, ms, b):
      losses, tg = mtlx.value_and_jacobian(loss_fn)(p, b)
      g, ms = tx.update(tg, ms, p, task_losses=losses)
      u, o = opt.update(g, o, p)
      return optax.apply_updates(p, u), o, ms, losses
  elif engine == "gramian":
    wfn = gramian_weights_fn(method, k)
    mstate = optax.EmptyState()

    def step(p, o, ms, b):
      losses, gram = mtlx.value_and_gramian(loss_fn)(p, b)
      w = wfn(gram)
      g = mtlx.autogram.weighted_grad(loss_fn)(p, w.astype(losses.dtype), b)
      u, o = opt.update(g, o, p)
      return optax.apply_updates(p, u), o, ms, losses
  else:  # representation
    tx = grad_tx(method, k)
    mstate = None

    def step(p, o, ms, b):
      rj = mtlx.value_and_representation_jacobian(fns.encode, heads_fn)(
          p["encoder"], p["decoder"], b["x"], b)
      d_z, ms = tx.update(rj.rep_grads, ms, None, task_losses=rj.losses)
      g = {"encoder": rj.encoder_vjp(d_z), "decoder": rj.heads_vjp(jnp.ones_like(rj.losses))}
      u, o = opt.update(g, o, p)
      return optax.apply_updates(p, u), o, ms, rj.losses
  return step, opt, mstate


def combos(methods, engines):
  for engine in engines:
    for method in methods:
      if method == "famo" and engine != "one_backward":
        continue
      if engine == "one_backward" and method not in ("ls", "famo"):
        continue
      yield engine, method


def mib(n):
  return n / 2 ** 20


def run_mode(args):
  lines = [f"\n### Step time and memory per engine ({jax.devices()[0].device_kind}, "
           f"{jax.device_count()} device(s), dtype {args.dtype}, batch {args.batch}, "
           f"median of {args.repeats})\n",
           "| model | preset | K | engine | method | ms/step | × LS 1-bwd | MiB (args+temp) | × LS 1-bwd |",
           "|---|---|---|---|---|---|---|---|---|"]
  print("\n".join(lines), flush=True)
  methods, engines = args.methods.split(","), args.engines.split(",")
  for name in args.models.split(","):
    for preset in args.presets.split(","):
      for k in map(int, args.ks.split(",")):
        fns, params, spec, loss_fn, heads_fn = make_problem(
            name, preset, k, args.batch, args.dtype, side=args.side, seq=args.seq,
            abstract=False)
        batch = concrete(spec, np.random.default_rng(1))
        place = lambda tree: tree  # noqa: E731
        if args.devices > 1:  # FSDP over all devices, the batch split over them
          mesh = Mesh(np.asarray(jax.devices()[:args.devices]), ("fsdp",))
          place = lambda tree: jax.tree_util.tree_map(  # noqa: E731
              lambda a: jax.device_put(a, NamedSharding(
                  mesh, fsdp_spec(a.shape, args.devices, 2 ** 10))), tree)
          params = place(params)
          batch = jax.tree_util.tree_map(lambda a: jax.device_put(a, NamedSharding(
              mesh, P("fsdp", *([None] * (a.ndim - 1))))), batch)
        base_t = base_m = None
        for engine, method in combos(methods, engines):
          step, opt, ms = make_step(engine, method, k, fns, loss_fn, heads_fn, params)
          o = place(opt.init(params))
          if ms is None:
            z = jax.eval_shape(fns.encode, params["encoder"], batch["x"])
            ms = grad_tx(method, k).init(jax.tree_util.tree_map(
                lambda s: jnp.zeros(s.shape, s.dtype), z))
          ms = place(ms)
          compiled = jax.jit(step).lower(params, o, ms, batch).compile()
          mem = compiled.memory_analysis()
          m = mem.argument_size_in_bytes + mem.temp_size_in_bytes
          if mib(m) > args.max_mib:
            row = (f"| {name} | {preset} | {k} | {engine} | {method} | not run (> --max_mib "
                   f"{args.max_mib:.0f}) | | {mib(m):.1f} | "
                   f"{'' if base_m is None else f'{m / base_m:.2f}'} |")
            lines.append(row)
            print(row, flush=True)
            continue
          out = compiled(params, o, ms, batch)
          jax.block_until_ready(out)
          ts = []
          for _ in range(args.repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(compiled(params, o, ms, batch))
            ts.append(time.perf_counter() - t0)
          t = float(np.median(ts))
          if engine == "one_backward" and method == "ls":
            base_t, base_m = t, m
          row = (f"| {name} | {preset} | {k} | {engine} | {method} | {1e3 * t:.1f} | "
                 f"{t / base_t:.2f} | {mib(m):.1f} | {m / base_m:.2f} |")
          lines.append(row)
          print(row, flush=True)
  return lines


COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all",
               "collective-permute")
_DT = {"f32": 4, "bf16": 2, "f16": 2, "f64": 8, "s32": 4, "u32": 4, "pred": 1, "s8": 1,
       "u8": 1, "s64": 8, "u64": 8}


def collective_bytes(hlo: str) -> dict:
  """Bytes of the results of each collective in an HLO module's text.

  Comments are dropped first: XLA prints long result tuples (a combined
  all-reduce of many gradients) with ``/*index=5*/`` markers, whose ``=`` cut
  the result off the match before session 5 (those tuples were undercounted)."""
  out = {c: 0 for c in COLLECTIVES}
  for line in hlo.splitlines():
    line = re.sub(r"/\*.*?\*/", "", line)
    m = re.search(r"=\s*(\(?[^=]*?\)?)\s+(all-reduce|all-gather|reduce-scatter|all-to-all|"
                  r"collective-permute)(-start)?\(", line)
    if not m:
      continue
    for dt, dims in re.findall(r"(\w+)\[([\d,]*)\]", m.group(1)):
      if dt in _DT:
        n = int(np.prod([int(d) for d in dims.split(",") if d])) if dims else 1
        out[m.group(2)] += n * _DT[dt]
  return out


def fsdp_spec(shape, n, min_size=2 ** 14):
  """Shard the largest dim divisible by ``n`` over 'fsdp' (replicate small leaves)."""
  if int(np.prod(shape)) < min_size:
    return P()
  dims = sorted(range(len(shape)), key=lambda a: -shape[a])
  for a in dims:
    if shape[a] % n == 0:
      spec = [None] * len(shape)
      spec[a] = "fsdp"
      return P(*spec)
  return P()


class _Layout:
  """Shardings of the compiled step's params / optimizer state and batch, and
  ``gather``: what the step applies to the params before computing with them."""

  def __init__(self, params, batch, gather=lambda tree: tree):
    self.params, self.batch, self.gather = params, batch, gather


def gathered(gather, loss_fn, heads_fn, fns):
  """The problem's functions computing with ``gather(params)``."""
  encode = fns.encode
  return (lambda p, b: loss_fn(gather(p), b),
          lambda dec, z, b: heads_fn(gather(dec), z, b),
          fns._replace(encode=lambda enc, x, **kw: encode(gather(enc), x, **kw)))


def compile_layout(args, n):
  """The ``--layout`` on ``n`` devices (see the module docstring)."""
  devices = jax.devices()[:n]

  def with_shardings(tree, shardings):
    return jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shardings)

  if args.layout == "one_axis":
    mesh = Mesh(np.asarray(devices), ("fsdp",))
    spec_of = lambda s: NamedSharding(mesh, fsdp_spec(s.shape, n))
    batch_axis = "fsdp"
    params = lambda t: with_shardings(t, jax.tree_util.tree_map(spec_of, t))
    gather = lambda t: t
  else:  # the trainer's mesh and rule (mtlx.sharding)
    m = min(args.model_axis, n)
    mesh = sharding.make_mesh(n // m, m, 1, devices=devices)
    batch_axis = sharding.batch_axes(args.layout)
    params = lambda t: with_shardings(t, sharding.param_shardings(t, mesh, args.layout))
    gather = sharding.StepShardings(mesh, None, None, False, args.layout).compute_params

  def batch(spec):  # examples over the batch axes; the LM masks [K, B, T] on axis 1
    def leaf(path, s):
      lead = (None,) if jax.tree_util.keystr(path) == "['masks']" else ()
      return NamedSharding(mesh, P(*lead, batch_axis, *([None] * (s.ndim - 1 - len(lead)))))
    return with_shardings(spec, jax.tree_util.tree_map_with_path(leaf, spec))

  return _Layout(params, batch, gather)


def compile_mode(args):
  where = (f"the trainer's mesh (data, model = {args.model_axis}), param_rule={args.layout}"
           if args.layout != "one_axis" else "one FSDP axis over all devices")
  lines = [f"\n### Compiled (not run) steps on emulated CPU meshes, {where}\n",
           "| model | params | devices | K | engine | method | compile s | MiB/device (args+temp) "
           "| × LS 1-bwd | collective MiB/device | × LS 1-bwd |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
  print("\n".join(lines), flush=True)
  engines = args.engines.split(",")
  for spec_s in args.specs.split(","):
    name, preset = spec_s.split(":")
    for n in map(int, args.meshes.split(",")):
      layout = compile_layout(args, n)
      for k in map(int, args.ks.split(",")):
        per_dev = 8 if name == "vit" else 1
        fns, params, spec, loss_fn, heads_fn = make_problem(
            name, preset, k, per_dev * n, args.dtype, lm=name == "gpt")
        loss_fn, heads_fn, fns = gathered(layout.gather, loss_fn, heads_fn, fns)
        n_params = models.count_params(params)
        abstract = layout.params(params)
        batch = layout.batch(spec)
        del params
        base = None
        todo = [("one_backward", "ls")] + [(e, "upgrad") for e in engines if e != "one_backward"]
        for engine, method in todo:
          step, opt, ms = make_step(engine, method, k, fns, loss_fn, heads_fn, abstract)
          o = layout.params(jax.eval_shape(opt.init, abstract))
          if ms is None:
            z = jax.eval_shape(fns.encode, abstract["encoder"], batch["x"])
            ms = jax.eval_shape(grad_tx(method, k).init, z)
          else:
            ms = jax.eval_shape(lambda: ms) if not isinstance(ms, optax.EmptyState) else ms
          t0 = time.perf_counter()
          try:
            compiled = jax.jit(step, out_shardings=None).lower(abstract, o, ms, batch).compile()
          except Exception as e:  # noqa: BLE001 - report and go on
            row = f"| {name}:{preset} | {n_params / 1e6:.0f}M | {n} | {k} | {engine} | {method} | failed: {type(e).__name__} | | | | |"
            lines.append(row)
            print(row, str(e)[:300], flush=True)
            continue
          tc = time.perf_counter() - t0
          mem = compiled.memory_analysis()
          m = mem.argument_size_in_bytes + mem.temp_size_in_bytes
          coll = sum(collective_bytes(compiled.as_text()).values())
          if base is None:
            base = (m, max(coll, 1))
          row = (f"| {name}:{preset} | {n_params / 1e6:.0f}M | {n} | {k} | {engine} | {method} "
                 f"| {tc:.0f} | {mib(m):.0f} | {m / base[0]:.2f} | {mib(coll):.0f} | "
                 f"{coll / base[1]:.2f} |")
          lines.append(row)
          print(row, flush=True)
  return lines


def main(args):
  lines = run_mode(args) if args.mode == "run" else compile_mode(args)
  if args.out:
    with open(args.out, "a") as f:
      f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
  main(ARGS)
