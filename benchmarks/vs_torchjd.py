"""mtlx vs TorchJD, side by side in one run: full training steps, same model, batch and threads.

  python benchmarks/vs_torchjd.py [--quick] [--ks 2,8,32,128] [--models mlp,cnn,block]
                                  [--methods ls,upgrad,mgda,nash_mtl] [--repeats 10]
                                  [--threads N] [--out FILE]

``--quick`` (K = 2, 8, 32; LS and UPGrad; 5 repeats; the weights-only rows at K = 32
and 128) is meant to finish in about 3 minutes on an idle 2-core CPU (an
estimate: it was run only under load 12, where it took 35 min). Needs the optional
``bench`` extra (``pip install -e .[bench]``: torch CPU and torchjd); without them
the TorchJD columns are skipped with a message.

Models (float32, K tasks with softmax cross-entropy on 10 classes each):

* ``mlp``: 784 -> 256 -> 256 (ReLU) shared trunk, K linear heads 256 -> 10, batch 256;
* ``cnn``: conv 3x3 1->16, conv 3x3 stride 2 16->32 (ReLU), dense -> 128 shared,
  K linear heads 128 -> 10, 28x28 inputs, batch 64;
* ``block``: one pre-LayerNorm transformer block (width 64, 4 heads, MLP 256, GELU)
  on 16 tokens of width 64, mean-pooled, K linear heads 64 -> 10, batch 32.

Steps timed (each a full step: losses, gradients, the method, Adam):

* ``grad``: one backward of the summed loss (linear scalarisation's cheap path);
* ``jac``: the K per-task gradients, then the aggregator (mtlx:
  ``mtlx.train.make_step(engine='jacobian')``, i.e. ``value_and_jacobian``, one
  Gramian, the method, the logged weights and cosines; TorchJD:
  ``autojac.backward`` + ``jac_to_grad(aggregator)``);
* ``gram``: the Gramian only, the weighting, one VJP of ``Σ w_k L_k`` (mtlx:
  ``make_step(engine='gramian')``: ``value_and_normalized_gramian`` + the weight
  function + ``weighted_grad``; TorchJD: ``autogram.Engine.compute_gramian`` +
  ``<M>Weighting`` + ``losses.backward(w)``).

LS on the ``jac`` path combines the Jacobian with weights 1 (TorchJD: ``Sum``).
Nash-MTL has no Gramian weighting in TorchJD (and needs cvxpy there): its TorchJD
columns are skipped when unavailable. Each mtlx step and its TorchJD twin are
timed alternately (after two warm-ups each), so load on a shared machine hits both
alike; medians of ``--repeats``; ratio = TorchJD time / mtlx time (> 1: mtlx
faster). After the table, the issue-13 goal ratios (mtlx alone, same run): the
Jacobian UPGrad step over the Jacobian LS step, and the Gramian-only UPGrad step
over the Jacobian UPGrad step. Both libraries use ``--threads`` CPU threads
(default: all cores; XLA:CPU uses all cores regardless).
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
from mtlx import weightings

CLASSES = 10


# ----------------------------------------------------------------------------- mtlx side

def _dense(key, i, o):
  return {"w": jax.random.normal(key, (i, o)) / np.sqrt(i), "b": jnp.zeros(o)}


BLOCK = dict(tokens=16, width=64, heads=4, mlp=256, batch=32)


def jax_model(name, k, key):
  ks = jax.random.split(key, 8)
  if name == "block":
    d, m = BLOCK["width"], BLOCK["mlp"]
    trunk = {"ln1": {"g": jnp.ones(d), "b": jnp.zeros(d)},
             "ln2": {"g": jnp.ones(d), "b": jnp.zeros(d)},
             "q": _dense(ks[0], d, d), "k": _dense(ks[1], d, d), "v": _dense(ks[2], d, d),
             "o": _dense(ks[4], d, d), "fc1": _dense(ks[5], d, m), "fc2": _dense(ks[6], m, d)}
    feat = d
  elif name == "mlp":
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


def _layer_norm(x, p):
  mu = jnp.mean(x, -1, keepdims=True)
  var = jnp.mean((x - mu) ** 2, -1, keepdims=True)
  return (x - mu) * jax.lax.rsqrt(var + 1e-5) * p["g"] + p["b"]


def _lin(x, p):
  return x @ p["w"] + p["b"]


def jax_features(name, trunk, x):
  if name == "block":
    b, t, d = x.shape
    nh = BLOCK["heads"]
    h = _layer_norm(x, trunk["ln1"])
    q, k_, v = (_lin(h, trunk[n]).reshape(b, t, nh, d // nh) for n in ("q", "k", "v"))
    att = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k_) / np.sqrt(d // nh), axis=-1)
    x = x + _lin(jnp.einsum("bhqk,bkhd->bqhd", att, v).reshape(b, t, d), trunk["o"])
    x = x + _lin(jax.nn.gelu(_lin(_layer_norm(x, trunk["ln2"]), trunk["fc1"]),
                             approximate=False), trunk["fc2"])
    return jnp.mean(x, axis=1)
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


def jax_steps(name, k, method, data):
  """``{path: (step, state, batch)}``: mtlx's own train steps (:func:`mtlx.train.make_step`)."""
  from mtlx import train as T  # noqa: PLC0415
  losses = jax_losses(name)
  loss_fn = lambda p, batch: losses(p, *batch)  # noqa: E731
  params = jax_model(name, k, jax.random.PRNGKey(0))
  adam = optax.adam(1e-3)
  steps = {}

  @jax.jit
  def grad_step(state, batch):
    params, opt = state
    g = jax.grad(lambda p: jnp.sum(loss_fn(p, batch)))(params)
    upd, opt = adam.update(g, opt, params)
    return optax.apply_updates(params, upd), opt

  if method == "ls":
    steps["grad"] = (grad_step, (params, adam.init(params)), data)
  grad_tx = {"ls": lambda: mtlx.linear_scalarization(), "upgrad": mtlx.upgrad,
             "mgda": mtlx.mgda, "nash_mtl": lambda: mtlx.nash_mtl(num_tasks=k)}[method]()
  engines = {"jac": "jacobian", "gram": "gramian"}
  for path, engine in engines.items():
    if path == "gram" and method == "ls":
      continue  # XLA drops the unused Gramian: the row would be the grad step
    st = T.make_step(loss_fn, grad_tx=grad_tx, optimizer=adam, engine=engine)
    state = st.init(params, data)
    steps[path] = ((lambda f: lambda state, batch: f(state, batch)[0])(st.step), state, data)
  return steps


def time_pair(jax_step, torch_step, repeats):
  """Medians (s) of the mtlx step and its TorchJD twin, timed alternately after two
  warm-ups each (either may be None)."""
  state = None
  if jax_step is not None:
    step, state, data = jax_step
    for _ in range(2):
      state = jax.block_until_ready(step(state, data))
  if torch_step is not None:
    for _ in range(2):
      torch_step()
  tj, tt = [], []
  for _ in range(repeats):
    if jax_step is not None:
      t0 = time.perf_counter()
      state = jax.block_until_ready(step(state, data))
      tj.append(time.perf_counter() - t0)
    if torch_step is not None:
      t0 = time.perf_counter()
      torch_step()
      tt.append(time.perf_counter() - t0)
  nan = float("nan")
  return (statistics.median(tj) if tj else nan), (statistics.median(tt) if tt else nan)


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

  class TorchBlock(nn.Module):
    """The pre-LN transformer block of ``jax_features('block')`` (leaf modules only:
    TorchJD's autogram engine hooks them)."""

    def __init__(self):
      super().__init__()
      d, m = BLOCK["width"], BLOCK["mlp"]
      self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
      self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
      self.fc1, self.fc2 = nn.Linear(d, m), nn.Linear(m, d)

    def forward(self, x):
      b, t, d = x.shape
      nh = BLOCK["heads"]
      h = self.ln1(x)
      q, k_, v = (f(h).reshape(b, t, nh, d // nh).transpose(1, 2)
                  for f in (self.q, self.k, self.v))
      att = torch.softmax(q @ k_.transpose(-1, -2) / (d // nh) ** 0.5, dim=-1)
      x = x + self.o((att @ v).transpose(1, 2).reshape(b, t, d))
      x = x + self.fc2(nn.functional.gelu(self.fc1(self.ln2(x))))
      return x.mean(dim=1)

  x = torch.from_numpy(np.asarray(data[0]))
  if name == "cnn":
    x = x.permute(0, 3, 1, 2).contiguous()
  y = torch.from_numpy(np.asarray(data[1])).long()
  ce = nn.CrossEntropyLoss()

  def build():
    """A fresh model and Adam per path (autogram's hooks stay on their model)."""
    torch.manual_seed(0)
    if name == "block":
      trunk = TorchBlock()
      feat = BLOCK["width"]
    elif name == "mlp":
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
    modules = list(trunk_w.children()) if name == "block" else [trunk_w]
    engine = Engine(*modules, *heads_w, batch_dim=None)
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
  if name == "block":
    return (rng.normal(size=(BLOCK["batch"], BLOCK["tokens"], BLOCK["width"])).astype(np.float32),
            rng.integers(0, CLASSES, (BLOCK["batch"], 256)))
  if name == "mlp":
    return rng.normal(size=(256, 784)).astype(np.float32), rng.integers(0, CLASSES, (256, 256))
  return rng.normal(size=(64, 28, 28, 1)).astype(np.float32), rng.integers(0, CLASSES, (64, 256))


QUICK = dict(ks="2,8,32", models="mlp,cnn,block", methods="ls,upgrad", repeats=5,
             solver_ks="32,128")


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                               formatter_class=argparse.RawDescriptionHelpFormatter,
                               epilog=__doc__.split("\n\n", 1)[1])
  ap.add_argument("--quick", action="store_true",
                  help=f"a short run (~3 min idle): {QUICK} (explicit flags still override)")
  ap.add_argument("--ks", default=None, help="numbers of tasks (default 2,8,32,128)")
  ap.add_argument("--models", default=None, help="mlp,cnn,block (default all)")
  ap.add_argument("--methods", default=None, help="default ls,upgrad,mgda,nash_mtl")
  ap.add_argument("--repeats", type=int, default=None, help="timed steps (default 10)")
  ap.add_argument("--threads", type=int, default=os.cpu_count())
  ap.add_argument("--out", default=None, help="also write the table to this file")
  ap.add_argument("--solver-ks", default=None,
                  help="K of the weights-only rows (default 32,128,256; empty: none)")
  args = ap.parse_args()
  full = dict(ks="2,8,32,128", models="mlp,cnn,block", methods="ls,upgrad,mgda,nash_mtl",
              repeats=10, solver_ks="32,128,256")
  for key, value in (QUICK if args.quick else full).items():
    if getattr(args, key) is None:
      setattr(args, key, value)
  skip = torch_available()
  if skip:
    print(skip)
  else:
    import torch
    torch.set_num_threads(args.threads)
  lines = [f"device: {jax.devices()[0].device_kind} ({platform.processor() or platform.machine()}, "
           f"{os.cpu_count()} cores), threads {args.threads}, jax {jax.__version__}"
           + ("" if skip else f", torch {__import__('torch').__version__}, "
              f"torchjd {__import__('importlib.metadata').metadata.version('torchjd')}")
           + f"; load average at start {os.getloadavg()[0]:.1f}",
           "",
           "| model | K | method | path | mtlx ms | TorchJD ms | TorchJD/mtlx |",
           "|---|---|---|---|---|---|---|"]
  print("\n".join(lines), flush=True)
  if args.solver_ks:
    lines += solver_rows([int(v) for v in args.solver_ks.split(",")], args.repeats, skip)
  rng = np.random.default_rng(0)
  mtlx_ms = {}
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
          tj, tt = time_pair(js.get(path), ts.get(path), args.repeats)
          tj, tt = tj * 1e3, tt * 1e3
          mtlx_ms[name, k, method, path] = tj
          row = (f"| {name} | {k} | {method} | {path} | {tj:.2f} | "
                 f"{'—' if tt != tt else f'{tt:.2f}'} | {'—' if tt != tt else f'{tt / tj:.2f}'} |")
          lines.append(row)
          print(row, flush=True)
  goals = ["", "| model | K | mtlx UPGrad jac / LS jac (goal ≤ 1.1) | "
           "UPGrad gram / UPGrad jac (goal ≤ 0.6 at K = 32) |", "|---|---|---|---|"]
  for (name, k, method, path), t in mtlx_ms.items():
    if method == "upgrad" and path == "jac":
      ls = mtlx_ms.get((name, k, "ls", "jac"), float("nan"))
      gram = mtlx_ms.get((name, k, "upgrad", "gram"), float("nan"))
      goals.append(f"| {name} | {k} | {t / ls:.2f} | {gram / t:.2f} |")
  if len(goals) > 3:
    lines += goals
    print("\n".join(goals))
  lines.append(f"load average at the end {os.getloadavg()[0]:.1f}")
  print(lines[-1])
  if args.out:
    with open(args.out, "w") as f:
      f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
  main()
