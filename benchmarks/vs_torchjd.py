"""mtlx vs TorchJD, side by side in one run: full training steps, same model, batch and threads.

  python benchmarks/vs_torchjd.py [--ks 2,8,32,128] [--models mlp,cnn] [--methods ls,upgrad,mgda,nash_mtl]
                                  [--repeats 10] [--threads N] [--out FILE]

Needs the optional ``bench`` extra (``pip install -e .[bench]``: torch CPU and
torchjd); without them the TorchJD columns are skipped with a message.

Models (float32, K tasks with softmax cross-entropy on 10 classes each):

* ``mlp``: 784 -> 256 -> 256 (ReLU) shared trunk, K linear heads 256 -> 10, batch 256;
* ``cnn``: conv 3x3 1->16, conv 3x3 stride 2 16->32 (ReLU), dense -> 128 shared,
  K linear heads 128 -> 10, 28x28 inputs, batch 64.

Steps timed (each a full step: losses, gradients, the method, Adam):

* ``grad``: one backward of the summed loss (linear scalarisation's cheap path);
* ``jac``: the K per-task gradients, then the aggregator
  (mtlx: ``value_and_jacobian`` + the transform; TorchJD: ``autojac.backward`` +
  ``jac_to_grad(aggregator)``);
* ``gram``: the Gramian only, the pure weighting, one VJP of ``Σ w_k L_k``
  (mtlx: ``value_and_gramian`` + ``mtlx.weightings.<m>`` + ``weighted_grad``;
  TorchJD: ``autogram.Engine.compute_gramian`` + ``<M>Weighting`` +
  ``losses.backward(w)``).

LS on the ``jac`` path combines the Jacobian with weights 1 (TorchJD: ``Sum``).
Nash-MTL has no Gramian weighting in TorchJD (and needs cvxpy there): its TorchJD
columns are skipped when unavailable. Medians of ``--repeats`` runs after two
warm-ups; ratios are TorchJD time / mtlx time (> 1: mtlx faster). Both libraries
use ``--threads`` CPU threads (default: all cores).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import mtlx
from mtlx import autogram, weightings

CLASSES = 10


# ----------------------------------------------------------------------------- mtlx side

def _dense(key, i, o):
  return {"w": jax.random.normal(key, (i, o)) / np.sqrt(i), "b": jnp.zeros(o)}


def jax_model(name, k, key):
  ks = jax.random.split(key, 4)
  if name == "mlp":
    trunk = {"l1": _dense(ks[0], 784, 256), "l2": _dense(ks[1], 256, 256)}
    feat = 256
  else:
    trunk = {"c1": jax.random.normal(ks[0], (3, 3, 1, 16)) / 3.0,
             "c2": jax.random.normal(ks[1], (3, 3, 16, 32)) / 12.0,
             "l": _dense(ks[2], 12 * 12 * 32, 128)}
    feat = 128
  heads = {"w": jax.random.normal(ks[3], (k, feat, CLASSES)) / np.sqrt(feat),
           "b": jnp.zeros((k, CLASSES))}
  return {"trunk": trunk, "heads": heads}


def jax_features(name, trunk, x):
  if name == "mlp":
    h = jax.nn.relu(x @ trunk["l1"]["w"] + trunk["l1"]["b"])
    return jax.nn.relu(h @ trunk["l2"]["w"] + trunk["l2"]["b"])
  dn = ("NHWC", "HWIO", "NHWC")
  h = jax.nn.relu(jax.lax.conv_general_dilated(x, trunk["c1"], (1, 1), "VALID", dimension_numbers=dn))
  h = jax.nn.relu(jax.lax.conv_general_dilated(h, trunk["c2"], (2, 2), "VALID", dimension_numbers=dn))
  h = h.reshape(h.shape[0], -1)
  return jax.nn.relu(h @ trunk["l"]["w"] + trunk["l"]["b"])


def jax_losses(name):
  def loss_fn(params, x, y):
    z = jax_features(name, params["trunk"], x)
    logits = jnp.einsum("bd,kdc->kbc", z, params["heads"]["w"]) + params["heads"]["b"][:, None]
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, y.T[..., None], -1)[..., 0], axis=1)
  return loss_fn


JAX_METHODS = {
    "ls": (lambda k: mtlx.linear_scalarization(), None),
    "upgrad": (lambda k: mtlx.upgrad(), weightings.upgrad),
    "mgda": (lambda k: mtlx.mgda(), weightings.mgda),
    "nash_mtl": (lambda k: mtlx.nash_mtl(num_tasks=k), None),
}


def jax_steps(name, k, method, data):
  loss_fn = jax_losses(name)
  params = jax_model(name, k, jax.random.PRNGKey(0))
  adam = optax.adam(1e-3)
  steps = {}

  @jax.jit
  def grad_step(params, opt, x, y):
    g = jax.grad(lambda p: jnp.sum(loss_fn(p, x, y)))(params)
    upd, opt = adam.update(g, opt, params)
    return optax.apply_updates(params, upd), opt

  if method == "ls":
    steps["grad"] = (grad_step, (params, adam.init(params)), data)

  tx = optax.chain(JAX_METHODS[method][0](k), adam)

  @jax.jit
  def jac_step(params, opt, x, y):
    losses, tg = mtlx.value_and_jacobian(loss_fn)(params, x, y)
    upd, opt = tx.update(tg, opt, params, task_losses=losses)
    return optax.apply_updates(params, upd), opt

  steps["jac"] = (jac_step, (params, tx.init(params)), data)
  weight_fn = JAX_METHODS[method][1]
  if weight_fn is not None:
    vg = mtlx.value_and_gramian(loss_fn)
    wgrad = autogram.weighted_grad(loss_fn)

    @jax.jit
    def gram_step(params, opt, x, y):
      _, g = vg(params, x, y)
      w = weight_fn(g)
      upd, opt = adam.update(wgrad(params, w, x, y), opt, params)
      return optax.apply_updates(params, upd), opt

    steps["gram"] = (gram_step, (params, adam.init(params)), data)
  return steps


def time_jax(step, state, data, repeats):
  for _ in range(2):
    state = jax.block_until_ready(step(*state, *data))
  ts = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    state = jax.block_until_ready(step(*state, *data))
    ts.append(time.perf_counter() - t0)
  return statistics.median(ts)


# ----------------------------------------------------------------------------- TorchJD side

def torch_available():
  try:
    import torch  # noqa: F401
    import torchjd  # noqa: F401
    return None
  except ImportError as e:  # pragma: no cover
    return f"TorchJD columns skipped: {e} (pip install -e .[bench])"


def torch_steps(name, k, method, data):
  import torch
  from torch import nn
  from torchjd import aggregation as agg
  from torchjd.autogram import Engine
  from torchjd.autojac import backward, jac_to_grad

  x = torch.from_numpy(np.asarray(data[0]))
  if name == "cnn":
    x = x.permute(0, 3, 1, 2).contiguous()
  y = torch.from_numpy(np.asarray(data[1])).long()
  ce = nn.CrossEntropyLoss()

  def build():
    """A fresh model and Adam per path (autogram's hooks stay on their model)."""
    torch.manual_seed(0)
    if name == "mlp":
      trunk = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU())
      feat = 256
    else:
      trunk = nn.Sequential(nn.Conv2d(1, 16, 3), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2),
                            nn.ReLU(), nn.Flatten(), nn.Linear(12 * 12 * 32, 128), nn.ReLU())
      feat = 128
    heads = nn.ModuleList([nn.Linear(feat, CLASSES) for _ in range(k)])
    params = list(trunk.parameters()) + list(heads.parameters())
    opt = torch.optim.Adam(params, lr=1e-3)

    def losses():
      z = trunk(x)
      return torch.stack([ce(h(z), y[:, i]) for i, h in enumerate(heads)])

    return trunk, heads, params, opt, losses

  aggregators = {"ls": lambda: agg.Sum(), "upgrad": lambda: agg.UPGrad(),
                 "mgda": lambda: agg.MGDA(), "nash_mtl": lambda: agg.NashMTL(n_tasks=k)}
  weighting = {"ls": None, "upgrad": agg.UPGradWeighting, "mgda": agg.MGDAWeighting,
               "nash_mtl": None}[method]
  steps = {}

  if method == "ls":
    _, _, _, opt_g, losses_g = build()

    def grad_step():
      opt_g.zero_grad()
      losses_g().sum().backward()
      opt_g.step()

    steps["grad"] = grad_step
  try:
    aggregator = aggregators[method]()
    _, _, params_j, opt_j, losses_j = build()

    def jac_step():
      opt_j.zero_grad()
      backward(losses_j(), inputs=params_j)
      jac_to_grad(params_j, aggregator)
      opt_j.step()

    steps["jac"] = jac_step
  except Exception as e:  # noqa: BLE001 - e.g. NashMTL without cvxpy
    print(f"  TorchJD {method} jac skipped: {type(e).__name__}: {e}")
  if weighting is not None:
    trunk_w, heads_w, _, opt_w, losses_w = build()
    engine = Engine(trunk_w, *heads_w, batch_dim=None)
    w_fn = weighting()

    def gram_step():
      opt_w.zero_grad()
      ls = losses_w()
      w = w_fn(engine.compute_gramian(ls))
      ls.backward(w)
      opt_w.step()

    steps["gram"] = gram_step
  return steps


def time_torch(step, repeats):
  for _ in range(2):
    step()
  ts = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    step()
    ts.append(time.perf_counter() - t0)
  return statistics.median(ts)


# ----------------------------------------------------------------------------- solvers alone

def solver_rows(ks, repeats, skip):
  """The weighting alone on a K×K float32 Gramian (rows: a shared component
  plus noise, P = 2K + 50, so some pairs conflict): mtlx's batched exact QPs
  vs TorchJD's Weightings (quadprog, one QP per task)."""
  rows = []
  for k in ks:
    rng = np.random.default_rng(k)
    jac = (rng.normal(size=(k, 2 * k + 50)) + rng.normal(size=(1, 2 * k + 50))).astype(np.float32)
    g = jac @ jac.T
    for method, fn in (("upgrad", weightings.upgrad), ("dualproj", weightings.dualproj),
                       ("mgda", weightings.mgda)):
      f = jax.jit(fn)
      gj = jnp.asarray(g)
      jax.block_until_ready(f(gj))
      ts = []
      for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(f(gj))
        ts.append(time.perf_counter() - t0)
      tj = statistics.median(ts) * 1e3
      tt = float("nan")
      if not skip:
        import torch
        from torchjd import aggregation as agg
        w_fn = {"upgrad": agg.UPGradWeighting, "dualproj": agg.DualProjWeighting,
                "mgda": agg.MGDAWeighting}[method]()
        gt = torch.from_numpy(g)
        tt = time_torch(lambda: w_fn(gt), repeats) * 1e3
      rows.append(f"| weights only | {k} | {method} | G → w | {tj:.3f} | "
                  f"{'—' if tt != tt else f'{tt:.3f}'} | {'—' if tt != tt else f'{tt / tj:.2f}'} |")
      print(rows[-1], flush=True)
  return rows


# ----------------------------------------------------------------------------- driver

def data_for(name, rng):
  if name == "mlp":
    return rng.normal(size=(256, 784)).astype(np.float32), rng.integers(0, CLASSES, (256, 256))
  return rng.normal(size=(64, 28, 28, 1)).astype(np.float32), rng.integers(0, CLASSES, (64, 256))


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--ks", default="2,8,32,128")
  ap.add_argument("--models", default="mlp,cnn")
  ap.add_argument("--methods", default="ls,upgrad,mgda,nash_mtl")
  ap.add_argument("--repeats", type=int, default=10)
  ap.add_argument("--threads", type=int, default=os.cpu_count())
  ap.add_argument("--out", default=None)
  ap.add_argument("--solver-ks", default="32,128,256",
                  help="K of the weights-only rows (empty: none)")
  args = ap.parse_args()
  skip = torch_available()
  if skip:
    print(skip)
  else:
    import torch
    torch.set_num_threads(args.threads)
  lines = [f"device: {jax.devices()[0].device_kind} ({platform.processor() or platform.machine()}, "
           f"{os.cpu_count()} cores), threads {args.threads}, jax {jax.__version__}"
           + ("" if skip else f", torch {__import__('torch').__version__}, "
              f"torchjd {__import__('importlib.metadata').metadata.version('torchjd')}"),
           "",
           "| model | K | method | path | mtlx ms | TorchJD ms | TorchJD/mtlx |",
           "|---|---|---|---|---|---|---|"]
  print("\n".join(lines), flush=True)
  if args.solver_ks:
    lines += solver_rows([int(v) for v in args.solver_ks.split(",")], args.repeats, skip)
  rng = np.random.default_rng(0)
  for name in [m for m in args.models.split(",") if m]:
    for k in [int(v) for v in args.ks.split(",")]:
      x, y = data_for(name, rng)
      y = y[:, :k]
      for method in args.methods.split(","):
        js = jax_steps(name, k, method, (jnp.asarray(x), jnp.asarray(y)))
        ts = {} if skip else torch_steps(name, k, method, (x, y))
        for path in ("grad", "jac", "gram"):
          if path not in js and path not in ts:
            continue
          tj = time_jax(*js[path], args.repeats) * 1e3 if path in js else float("nan")
          tt = time_torch(ts[path], args.repeats) * 1e3 if path in ts else float("nan")
          row = (f"| {name} | {k} | {method} | {path} | {tj:.2f} | "
                 f"{'—' if tt != tt else f'{tt:.2f}'} | {'—' if tt != tt else f'{tt / tj:.2f}'} |")
          lines.append(row)
          print(row, flush=True)
  if args.out:
    with open(args.out, "w") as f:
      f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
  main()
