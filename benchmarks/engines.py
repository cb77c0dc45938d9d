"""Step time and peak memory of each engine of ``mtlx.train.make_step``.

For an MLP and the ``multi_digits`` CNN (``mtlx.models`` ``hps``, K classification
heads on the dataset's input shape, random inputs and labels) at K ∈ {2, 8, 32}:
the median time of one jitted train step (after warm-up) and XLA's temporary-buffer
size of the compiled step (``compiled.memory_analysis().temp_size_in_bytes``, the
peak scratch memory, without params and state) for

  LS           one_backward (the baseline), jacobian
  UPGrad       gramian, jacobian
  Nash-MTL     gramian, jacobian
  DWA+UPGrad   gramian, jacobian

each as a ratio to the one-backward LS step of the same model and K, timed in the same
run. Prints a markdown table (``--out`` writes it to a file) and the device.

  python benchmarks/engines.py [--ks 2,8,32] [--repeats 20] [--out benchmarks/results_engines.md]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import mtlx
from mtlx import models
from mtlx import train as T
from mtlx.data.specs import TaskSpec

CASES = [  # label, method, weighting, engines
    ("LS", "ls", "none", ("one_backward", "jacobian")),
    ("UPGrad", "upgrad", "none", ("gramian", "jacobian")),
    ("Nash-MTL", "nash_mtl", "none", ("gramian", "jacobian")),
    ("DWA+UPGrad", "upgrad", "dwa", ("gramian", "jacobian")),
]
CNN_INPUT = (8, 12, 1)  # multi_digits' input shape (mtlx.data.get_info("multi_digits"))


def problem(model: str, k: int, batch: int, seed: int = 0):
  """``(loss_fn, params, batch)`` of the MLP or the multi_digits CNN with K tasks."""
  tasks = [TaskSpec(f"t{i}", "classification", 10, ("accuracy",), (True,), f"y{i}")
           for i in range(k)]
  shape = CNN_INPUT if model == "cnn" else (64,)
  widths = (16, 32) if model == "cnn" else (256, 256)
  net = models.get_model("hps", input_shape=shape, tasks=tasks, widths=widths, hidden=64,
                         head_hidden=32, seed=seed)
  fns, params = models.split(net)
  rng = np.random.default_rng(seed)
  data = {"image": jnp.asarray(rng.normal(size=(batch,) + shape), jnp.float32)}
  data.update({t.label_key: jnp.asarray(rng.integers(0, 10, batch)) for t in tasks})

  def loss_fn(p, b):
    return mtlx.train.task_losses(tasks, fns.apply(p, b["image"]), b)

  return loss_fn, params, data


def measure(loss_fn, params, batch, method, weighting, engine, k, repeats):
  loss_tx, grad_tx = mtlx.registry.build(method, weighting, k)
  st = T.make_step(loss_fn, loss_tx=loss_tx, grad_tx=grad_tx, optimizer=optax.adam(1e-3),
                   engine=engine, params=params)
  state = st.init(params, batch)
  compiled = st.step.lower(state, batch).compile()
  mem = compiled.memory_analysis()
  temp = getattr(mem, "temp_size_in_bytes", float("nan")) if mem is not None else float("nan")
  for _ in range(3):
    jax.block_until_ready(compiled(state, batch))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(state, batch))
    times.append(time.perf_counter() - t0)
  return float(np.median(times)), float(temp)


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--ks", default="2,8,32")
  ap.add_argument("--models", default="mlp,cnn")
  ap.add_argument("--batch", type=int, default=64)
  ap.add_argument("--repeats", type=int, default=20)
  ap.add_argument("--out", default="")
  args = ap.parse_args()
  dev = jax.devices()[0]
  lines = [f"Device: {dev.platform} ({dev.device_kind}), batch {args.batch}, "
           f"median of {args.repeats} steps after warm-up; ratios to the one-backward LS "
           "step of the same model and K in the same run. Memory: XLA temporary buffers "
           "of the compiled step.", "",
           "| model | K | method | engine | ms/step | × LS 1-bwd | temp MiB | × LS 1-bwd |",
           "|---|---|---|---|---|---|---|---|"]
  for model in args.models.split(","):
    for k in (int(x) for x in args.ks.split(",")):
      loss_fn, params, batch = problem(model, k, args.batch)
      base = None
      for label, method, weighting, engines in CASES:
        for engine in engines:
          t, mem = measure(loss_fn, params, batch, method, weighting, engine, k, args.repeats)
          base = base or (t, mem)
          lines.append(f"| {model} | {k} | {label} | {engine} | {1e3 * t:.2f} | "
                       f"{t / base[0]:.2f} | {mem / 2 ** 20:.2f} | "
                       f"{mem / max(base[1], 1.0):.2f} |")
          print(lines[-1], flush=True)
  table = "\n".join(lines)
  print(table)
  if args.out:
    with open(args.out, "w") as f:
      f.write(table + "\n")


if __name__ == "__main__":
  main()
