"""Repro (not a test): a K = 32 UPGrad train step on 8 emulated CPU devices stalled.

  python benchmarks/repro/mesh_k32_stall.py K DATAxMODELxTASK METHOD ENGINE
  python benchmarks/repro/mesh_k32_stall.py 32 8x1x1 upgrad gramian   # stalled before session 5
  python benchmarks/repro/mesh_k32_stall.py 32 2x1x1 upgrad gramian   # ok
  python benchmarks/repro/mesh_k32_stall.py 32 8x1x1 ls jacobian      # ok
  python benchmarks/repro/mesh_k32_stall.py 8 2x4x1 upgrad jacobian   # ok

Seen on the 2-core CPU box (2026-12-06, jax 0.10.2): with 8 emulated devices and
K = 32, the UPGrad step (gramian and jacobian engines) stopped using CPU after
compiling and never returned; 2 emulated devices, K <= 8, or LS at K = 32 ran.

Cause (session 5, from the native stacks with ``gdb -p PID -batch -ex 'thread apply
all bt'``): all 8 ``tf_XLAEigen`` threads (XLA:CPU's intra-op pool has
``max(cores, devices)`` threads) were in ``lapack_spotrf_ffi`` ->
``jax::ParallelBatchMap`` -> ``BlockingCounter::Wait``. jaxlib's LAPACK kernels
split a batch whose work passes 2e5 flop (UPGrad's 32 face factorisations of
32 x 32: 3.5e5) over that same pool and wait from inside a pool thread; with
every thread running one device's program, nobody runs the pieces. Fixed in
``mtlx.solvers._per_matrix`` (on a multi-device CPU backend the batch is cut into
chunks that jaxlib factorises inline): this script now prints ``ok`` (3 steps,
compile included, in 71 s), and ``tests/test_multidevice.py`` checks the batch of
every LAPACK call of the compiled 8-device program.
"""

import os
import sys
import time

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from mtlx import models as mmodels  # noqa: E402
from mtlx import sharding  # noqa: E402
from mtlx import train as mtrain  # noqa: E402
from mtlx.data.specs import TaskSpec  # noqa: E402


def main(k, shape, method, engine):
  tasks = tuple(TaskSpec(f"t{i}", "classification", 4, ("accuracy",), (True,), f"t{i}")
                for i in range(k))
  fns, params = mmodels.split(mmodels.get_model(
      "hps", input_shape=(32,), tasks=tasks, seed=0, widths=(64,), hidden=64, head_hidden=16))
  mesh = sharding.make_mesh(*shape, devices=jax.devices()[:int(np.prod(shape))])
  trainer = mtrain.make_trainer(fns, tasks, "x", params, optimizer=optax.adam(1e-3),
                                mesh=mesh, method=method, engine=engine)
  rng = np.random.default_rng(0)
  batch = {"x": rng.normal(size=(16, 32)).astype(np.float32),
           **{t.name: rng.integers(0, 4, 16).astype(np.int32) for t in tasks}}
  state = trainer.init(params, trainer.shard_batch(batch), 0)
  t0 = time.time()
  for _ in range(3):
    state, info = trainer.step(state, trainer.shard_batch(batch))
    jax.block_until_ready(info)
  print("ok", k, shape, method, engine, f"{time.time() - t0:.1f} s", flush=True)


if __name__ == "__main__":
  main(int(sys.argv[1]), tuple(map(int, sys.argv[2].split("x"))), sys.argv[3], sys.argv[4])
