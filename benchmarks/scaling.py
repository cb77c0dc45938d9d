"""Scaling benchmark: many tasks (K up to 256) and many devices.

Part 1, step time and memory vs K for four ways of computing a Gramian method's
step on an MLP with a shared trunk and K linear heads (one jitted train step each):

* ``full``: ``value_and_jacobian`` (K × P per-task grads), Gramian, combination;
* ``chunked``: the same with ``chunk_size`` tasks at a time (``lax.map``);
* ``autogram``: ``mtlx.value_and_gramian`` (no K × P Jacobian) + one VJP of
  ``Σ w_k L_k``;
* ``representation``: per-task grads w.r.t. the trunk output ``z`` only (K × |z|),
  then one VJP through the trunk and one through the heads.

Memory is XLA's compiled plan (``compiled.memory_analysis()``: temporaries +
arguments + outputs), the same measure on every backend. Times are medians of
``--repeats`` calls after ``--warmup`` calls; ratios are to ``full`` at the same K,
measured in the same run, the modes timed round-robin.

Part 2, one step of the same method on 1 vs 8 devices: on this machine's own devices
when it has several, and always on 8 emulated CPU devices in a subprocess
(``XLA_FLAGS=--xla_force_host_platform_device_count=8``), where it is a
correctness/overhead figure (the 8 "devices" share the host's cores), with the
largest parameter difference to the 1-device run.

  python benchmarks/scaling.py                      # writes benchmarks/results_scaling.md
  python benchmarks/scaling.py --repeats 3 --ks 2,8,32
Runs unchanged on CPU, GPU and TPU.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def parse_args(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--ks", default="2,8,32,128,256")
  ap.add_argument("--modes", default="full,chunked,autogram,representation")
  ap.add_argument("--chunk", type=int, default=8)
  ap.add_argument("--batch", type=int, default=64)
  ap.add_argument("--d_in", type=int, default=64)
  ap.add_argument("--hidden", type=int, default=256)
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--warmup", type=int, default=2)
  ap.add_argument("--mesh_k", type=int, default=8, help="K for the device part")
  ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results_scaling.md"))
  ap.add_argument("--mesh_only", action="store_true", help=argparse.SUPPRESS)
  ap.add_argument("--skip_emulated", action="store_true")
  return ap.parse_args(argv)


def build(args, k):
  import jax
  import jax.numpy as jnp

  keys = jax.random.split(jax.random.key(0), 4)
  enc = {"w1": jax.random.normal(keys[0], (args.d_in, args.hidden)) / args.d_in ** 0.5,
         "b1": jnp.zeros((args.hidden,)),
         "w2": jax.random.normal(keys[1], (args.hidden, args.hidden)) / args.hidden ** 0.5,
         "b2": jnp.zeros((args.hidden,))}
  heads = {"w": jax.random.normal(keys[2], (args.hidden, k)) / args.hidden ** 0.5,
           "b": jnp.zeros((k,))}
  x = jax.random.normal(keys[3], (args.batch, args.d_in))
  y = jnp.sin(x[:, :1] * jnp.arange(1, k + 1) / k)
  return enc, heads, {"x": x, "y": y}


def encoder(enc, x):
  import jax.numpy as jnp
  h = jnp.tanh(x @ enc["w1"] + enc["b1"])
  return jnp.tanh(h @ enc["w2"] + enc["b2"])


def heads_loss(heads, z, y):
  import jax.numpy as jnp
  return jnp.mean((z @ heads["w"] + heads["b"] - y) ** 2, axis=0)


def loss_fn(params, batch):
  return heads_loss(params["heads"], encoder(params["enc"], batch["x"]), batch["y"])


def weighting(gram):
  """Softmax of the negated, normalised squared gradient norms (a Gramian weighting)."""
  import jax
  import jax.numpy as jnp
  d = jnp.diag(gram)
  return jax.nn.softmax(-d / (jnp.mean(d) + 1e-12))


def step_fns(args):
  """mode -> (params, batch) -> new params, each one jitted train step (SGD)."""
  import jax
  import optax
  import mtlx
  from mtlx import autogram

  lr = 1e-2
  method = mtlx.gramian_weighting(weighting)

  def sgd(params, grads):
    return optax.apply_updates(params, jax.tree.map(lambda g: -lr * g, grads))

  def jacobian_step(chunk):
    vj = mtlx.value_and_jacobian(loss_fn, chunk_size=chunk)

    def step(params, batch):
      losses, tg = vj(params, batch)
      upd, _ = method.update(tg, method.init(params), params, task_losses=losses)
      return sgd(params, upd)
    return step

  def autogram_step(params, batch):
    losses, gram = mtlx.value_and_gramian(loss_fn)(params, batch)
    w, _ = method.weights(gram, method.init(params))
    return sgd(params, autogram.weighted_grad(loss_fn)(params, w, batch))

  rep = mtlx.value_and_representation_jacobian(encoder, heads_loss)

  def representation_step(params, batch):
    r = rep(params["enc"], params["heads"], batch["x"], batch["y"])
    w = weighting(mtlx.gramian(r.rep_grads))
    d_z = mtlx.combine(w, r.rep_grads)
    grads = {"enc": r.encoder_vjp(d_z), "heads": r.heads_vjp(w)}
    return sgd(params, grads)

  return {"full": jacobian_step(None), "chunked": jacobian_step(args.chunk),
          "autogram": autogram_step, "representation": representation_step}


def time_fn(fn, *a, warmup, repeats):
  import jax
  import numpy as np
  for _ in range(warmup):
    jax.block_until_ready(fn(*a))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*a))
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def memory_mib(compiled):
  m = compiled.memory_analysis()
  if m is None:
    return float("nan")
  total = m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes
  return total / 2 ** 20


def part_k(args):
  """Per K: compile every mode, warm up, then time the modes round-robin (one call
  of each per round) so that load changes on a shared machine hit all modes alike."""
  import jax
  import numpy as np
  rows = []
  fns = step_fns(args)
  modes = args.modes.split(",")
  for k in [int(s) for s in args.ks.split(",")]:
    enc, heads, batch = build(args, k)
    params = {"enc": enc, "heads": heads}
    n_params = sum(x.size for x in jax.tree.leaves(params))
    compiled = {m: jax.jit(fns[m]).lower(params, batch).compile() for m in modes}
    for m in modes:
      for _ in range(args.warmup):
        jax.block_until_ready(compiled[m](params, batch))
    times = {m: [] for m in modes}
    for _ in range(args.repeats):
      for m in modes:
        t0 = time.perf_counter()
        jax.block_until_ready(compiled[m](params, batch))
        times[m].append(time.perf_counter() - t0)
    med = {m: float(np.median(times[m])) for m in modes}
    mem = {m: memory_mib(compiled[m]) for m in modes}
    base = modes[0]
    for m in modes:
      rows.append({"K": k, "mode": m, "P": n_params, "ms": 1e3 * med[m], "mib": mem[m],
                   "t_ratio": med[m] / med[base], "m_ratio": mem[m] / mem[base]})
      print(f"K={k:4d} {m:15s} {1e3 * med[m]:9.2f} ms  {mem[m]:9.2f} MiB", flush=True)
  return rows


def part_mesh(args, devices):
  """One Gramian-method step (FSDP when model > 1) on meshes of ``devices``."""
  import jax
  import numpy as np
  import optax
  import mtlx
  from mtlx import sharding

  k = args.mesh_k
  enc, heads, batch = build(args, k)
  params = {"enc": enc, "heads": heads}
  n = len(devices)
  shapes = [(1, 1, 1), (n, 1, 1)]
  if n % 2 == 0 and n > 2:
    shapes.append((n // 2, 2, 1))
  out, ref = [], None
  for shape in shapes:
    devs = devices[:int(np.prod(shape))]
    mesh = sharding.make_mesh(*shape, devices=devs)
    st = mtlx.train.make_step(loss_fn, grad_tx=mtlx.gramian_weighting(weighting),
                              optimizer=optax.sgd(1e-2), engine="jacobian", params=params,
                              mesh=mesh, shard_tasks=False,
                              param_rule="fsdp" if shape[1] > 1 else "replicated")
    b = st.shard_batch(batch)
    state = st.init(params, b)
    t = time_fn(lambda s, b: st.step(s, b)[0].params, state, b, warmup=args.warmup,
                repeats=args.repeats)
    new = st.step(state, b)[0].params
    flat = np.concatenate([np.asarray(x).ravel() for x in jax.tree.leaves(new)])
    if ref is None:
      ref, t_ref = flat, t
    out.append({"mesh": "x".join(map(str, shape)), "ms": 1e3 * t, "ratio": t / t_ref,
                "max_rel_diff": float(np.abs(flat - ref).max() / np.abs(ref).max()),
                "platform": devs[0].platform})
    print(f"mesh {out[-1]['mesh']:8s} {1e3 * t:9.2f} ms", flush=True)
  return out


def emulated_mesh(args):
  env = dict(os.environ, XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") +
                                    " --xla_force_host_platform_device_count=8").strip(),
             JAX_PLATFORMS="cpu")
  cmd = [sys.executable, os.path.abspath(__file__), "--mesh_only",
         "--repeats", str(args.repeats), "--warmup", str(args.warmup),
         "--batch", str(args.batch), "--d_in", str(args.d_in), "--hidden", str(args.hidden),
         "--mesh_k", str(args.mesh_k)]
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
  if proc.returncode:
    raise RuntimeError(proc.stderr[-3000:])
  line = [l for l in proc.stdout.splitlines() if l.startswith("MESH ")][-1]
  return json.loads(line[5:])


def device_name(devices):
  d = devices[0]
  return f"{len(devices)} x {d.platform} ({getattr(d, 'device_kind', '?')})"


def write(args, rows, real_mesh, emu_mesh, devices):
  import jax
  lines = [
      "# Scaling benchmark (benchmarks/scaling.py)",
      "",
      f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
      f"- device: {device_name(devices)}; jax {jax.__version__}; "
      f"{os.cpu_count()} host CPU cores",
      f"- model: MLP trunk {args.d_in}->{args.hidden}->{args.hidden} (tanh) + K linear "
      f"heads, batch {args.batch}, float32; a Gramian weighting + SGD",
      f"- median of {args.repeats} calls after {args.warmup} warm-up calls (modes timed "
      "round-robin); memory = XLA compiled plan (temporaries + arguments + outputs); "
      "ratios to `full` at the same K",
      "",
      "## Step time and memory vs K",
      "",
      "| K | mode | params | step (ms) | time / full | memory (MiB) | memory / full |",
      "|---:|---|---:|---:|---:|---:|---:|",
  ]
  for r in rows:
    lines.append(f"| {r['K']} | {r['mode']} | {r['P']} | {r['ms']:.2f} | "
                 f"{r['t_ratio']:.2f} | {r['mib']:.2f} | {r['m_ratio']:.2f} |")
  for title, mesh in (("this machine's devices", real_mesh),
                      ("8 emulated CPU devices (correctness / overhead, shared cores)",
                       emu_mesh)):
    if not mesh:
      continue
    lines += ["", f"## One step on 1 vs N devices: {title}", "",
              f"K = {args.mesh_k}; mesh = data x model x task (model > 1: FSDP).", "",
              "| mesh | platform | step (ms) | time / 1 device | max rel. param diff |",
              "|---|---|---:|---:|---:|"]
    for r in mesh:
      lines.append(f"| {r['mesh']} | {r['platform']} | {r['ms']:.2f} | {r['ratio']:.2f} | "
                   f"{r['max_rel_diff']:.1e} |")
  lines += ["", "Reading the numbers: `chunked` bounds the backward pass's peak (c × P) but "
            "still returns the K × P per-task grads, so its total stays near `full`; "
            "`autogram` never holds K × P (K × layer outputs instead); `representation` "
            "holds K × |z| but its weights come from the representation Gramian (MGDA-UB "
            "style), a different method. Emulated devices share the host's cores: the "
            "device table is a correctness/overhead figure, not a speed-up."]
  with open(args.out, "w") as f:
    f.write("\n".join(lines) + "\n")
  print("wrote", args.out)


def main(argv=None):
  args = parse_args(argv)
  import jax
  if args.mesh_only:
    print("MESH " + json.dumps(part_mesh(args, jax.devices())))
    return
  devices = jax.devices()
  print("device:", device_name(devices))
  rows = part_k(args)
  real_mesh = part_mesh(args, devices) if len(devices) > 1 else None
  emu_mesh = None if args.skip_emulated else emulated_mesh(args)
  write(args, rows, real_mesh, emu_mesh, devices)


if __name__ == "__main__":
  main()
