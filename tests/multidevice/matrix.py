"""Every mesh x every engine x two models: the same params as one device.

``tests/test_multidevice_matrix.py`` runs this file ONCE in a fresh interpreter
with 8 emulated CPU devices and asserts on the ``RESULTS {...}`` JSON line it
prints. What it measures:

* ``matrix``: for each model (``MODELS``: the ``multi_digits`` hps CNN at the
  sizes of ``configs/multi_digits.py``, and an MLP on the same flattened images),
  each engine (``ENGINES``) and each mesh (``MESHES``: every factorisation of 8
  devices into data x model x task, and 1 x 1 x 1), ``STEPS`` float32 train steps
  of ``mtlx.train.make_trainer(..., mesh=)`` with the default FSDP rule, against the
  same steps without a mesh on one device: the largest relative difference of
  any parameter leaf (``max|a - b| / max|b|`` per leaf), and how many leaves FSDP
  split.
* ``xla_repro``: ``tests/multidevice/xla_repro.py`` with the dense kernel split
  along its input axis (the XLA bug) and along its output axis (mtlx's rule).
* ``guard``: ``mtlx.sharding.check`` on a tiny ``configs/multi_digits.py`` run
  (DWA + UPGrad, 2 x 4 x 1): the real rule passes; with the FSDP rule that splits
  the largest axis (the old, bug-triggering layout) ``config.mesh.verify=True``
  stops ``experiments/train.py`` before it writes anything.

Adding an engine is one entry in ``ENGINES`` (make_trainer keyword arguments);
adding a model one entry in ``MODELS``. Run directly for a readable report::

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/multidevice/matrix.py
"""

import os
import sys
import time

FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 " + FAST_COMPILE)
os.environ.setdefault("JAX_PLATFORMS", "cpu")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests", "multidevice"))

import json  # noqa: E402
import re  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from mtlx import models as mmodels  # noqa: E402
from mtlx import sharding  # noqa: E402
from mtlx import train as mtrain  # noqa: E402
from mtlx.data.specs import TaskSpec  # noqa: E402
from mtlx.sharding import check as check_lib  # noqa: E402

STEPS = 3
BATCH = 16
IMAGE = (8, 12, 1)   # multi_digits' canvas at its default config
TASKS = tuple(TaskSpec(n, "classification", 10, ("accuracy",), (True,), n)
              for n in ("left", "right"))
K = len(TASKS)

# name -> (input shape, hps keyword arguments). The CNN is configs/multi_digits.py's.
MODELS = {
    "cnn": (IMAGE, dict(widths=(16, 32), hidden=64, head_hidden=32)),
    "mlp": ((int(np.prod(IMAGE)),), dict(widths=(64,), hidden=64, head_hidden=32)),
}
# engine -> make_trainer keyword arguments (DWA then the gradient-space method).
# DWA + UPGrad is the chain of the issue that found the bug. (IMTL-G compiles
# faster, but its (D Uᵀ)⁻¹ amplifies float32 rounding: 4e-5 on the MLP's
# representation engine at 4 x 2 x 1, a conditioning effect, not a sharding one.)
ENGINES = {
    "one_backward": dict(method="ls", weighting="dwa"),
    "jacobian": dict(method="upgrad", weighting="dwa", engine="jacobian"),
    "gramian": dict(method="upgrad", weighting="dwa", engine="gramian"),
    "representation": dict(method="upgrad", weighting="dwa", rep_grad=True),
}
# Every factorisation of 8 devices into data x model x task, and one device.
MESHES = [(1, 1, 1)] + [(d, m, 8 // (d * m)) for d in (1, 2, 4, 8) for m in (1, 2, 4, 8)
                        if 8 % (d * m) == 0]


def batches(input_shape, n=STEPS, seed=0):
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    b = {"image": rng.random((BATCH,) + tuple(input_shape)).astype(np.float32)}
    for t in TASKS:
      b[t.label_key] = rng.integers(0, t.num_outputs, size=(BATCH,)).astype(np.int32)
    out.append(b)
  return out


def build(model, engine, mesh=None):
  shape, kw = MODELS[model]
  fns, params = mmodels.split(mmodels.get_model("hps", input_shape=shape, tasks=TASKS,
                                                seed=0, **kw))
  shard_tasks = mesh is not None and K % mesh.shape["task"] == 0
  trainer = mtrain.make_trainer(fns, TASKS, "image", params,
                                optimizer=mtrain.make_optimizer("adam", 1e-3), mesh=mesh,
                                shard_tasks=shard_tasks, **ENGINES[engine])
  return trainer, params


def run(model, engine, shape):
  mesh = None if shape is None else sharding.make_mesh(
      *shape, devices=jax.devices()[:int(np.prod(shape))])
  trainer, params = build(model, engine, mesh)
  data = batches(MODELS[model][0])
  state = trainer.init(params, trainer.shard_batch(data[0]), 0)
  for b in data:
    state, _ = trainer.step(state, trainer.shard_batch(b))
  split = 0 if mesh is None else sum(
      any(a is not None for a in x.sharding.spec) for x in jax.tree.leaves(state.params))
  return jax.tree.map(np.asarray, state.params), split


def check_matrix(workers=2):
  """Compile time dominates (66 small programs), and XLA compiles without the GIL:
  the runs go through ``workers`` threads."""
  from concurrent.futures import ThreadPoolExecutor
  cases = [(model, engine, shape) for model in MODELS for engine in ENGINES
           for shape in [None] + MESHES]

  def timed(case):
    t0 = time.time()
    return run(*case), round(time.time() - t0, 2)

  with ThreadPoolExecutor(workers) as pool:
    done = dict(zip(cases, pool.map(timed, cases)))
  out = {}
  for (model, engine, shape), ((params, split), seconds) in done.items():
    if shape is None:
      continue
    ref = done[(model, engine, None)][0][0]
    diffs = check_lib.relative_differences(params, ref)
    key = f"{model}/{engine}/{'x'.join(map(str, shape))}"
    out[key] = {"max_rel": max(diffs.values()), "fsdp_leaves": split, "seconds": seconds}
    print(key, out[key], flush=True)
  return out


def check_xla_repro():
  import xla_repro  # tests/multidevice/xla_repro.py
  from jax.sharding import PartitionSpec as P
  return {"input_axis": xla_repro.run(P("model", None)),
          "output_axis": xla_repro.run(P(None, "model"))}


def guard_config(data_dir, workdir, mesh=(2, 4, 1), **overrides):
  from configs import multi_digits
  c = multi_digits.get_config()
  c.update(dict(workdir=workdir, data_dir=data_dir, num_steps=2, batch_size=16,
                eval_batch_size=40, eval_every=2, checkpoint_every=2, log_every=1,
                progress=False, tensorboard=False, val_split="", method="upgrad",
                weighting="dwa"), **overrides)
  c.builder_kwargs.update(dict(num_train=128, num_validation=8, num_test=40))
  c.mesh.update(dict(zip(("data", "model", "task"), mesh)))
  return c


def _largest_axis_spec(shape, n, min_size):
  """The FSDP rule before the fix: the largest divisible axis (can be an input axis)."""
  from jax.sharding import PartitionSpec as P
  if n == 1 or int(np.prod(shape)) < min_size:
    return P()
  candidates = [(size, axis) for axis, size in enumerate(shape) if size % n == 0]
  if not candidates:
    return P()
  spec = [None] * len(shape)
  spec[max(candidates)[1]] = "model"
  return P(*spec)


def check_guard():
  """mtlx.sharding.check passes the real rule and catches the old one; the
  trainer's mesh.verify stops a run on the old rule before writing anything."""
  import tempfile
  from experiments import train as train_exp
  out = {}
  with tempfile.TemporaryDirectory() as tmp:
    data_dir = os.path.join(tmp, "data")
    good = check_lib.check_config(guard_config(data_dir, os.path.join(tmp, "a")))
    out["clean"] = {"ok": good.ok, "worst": good.worst, "leaves": len(good.differences)}
    fixed_rule = sharding._fsdp_spec  # noqa: SLF001
    sharding._fsdp_spec = _largest_axis_spec  # noqa: SLF001
    try:  # config.mesh.verify runs check_config before training
      workdir = os.path.join(tmp, "verify")
      config = guard_config(data_dir, workdir)
      config.mesh.verify = True
      try:
        train_exp.train_and_evaluate(config)
        out["verify_error"] = None
      except ValueError as e:
        out["verify_error"] = str(e)
        worst = re.search(r"FAILED: worst ([0-9.e+-]+)", str(e))
        out["old_rule_worst"] = float(worst.group(1)) if worst else None
      out["verify_wrote_nothing"] = not os.path.exists(workdir)
    finally:
      sharding._fsdp_spec = fixed_rule  # noqa: SLF001
  return out


def main():
  assert jax.device_count() == 8, jax.devices()
  t0 = time.time()
  results = {"device_count": jax.device_count(), "steps": STEPS, "batch": BATCH,
             "meshes": ["x".join(map(str, s)) for s in MESHES],
             "engines": list(ENGINES), "models": list(MODELS),
             "xla_repro": check_xla_repro(), "guard": check_guard(),
             "matrix": check_matrix()}
  results["seconds"] = round(time.time() - t0, 1)
  results["cpu_seconds"] = round(time.process_time(), 1)
  print("RESULTS " + json.dumps(results))


if __name__ == "__main__":
  main()
