"""Pareto fronts: a grid of single-point runs vs one front-learning model, on the test split.

  python -m experiments.pareto --problem=toy --methods=linear,tchebycheff,epo,pamal \
      --steps=2000 --workdir=runs/pareto_toy
  python -m experiments.pareto --config=configs/multi_digits.py \
      --methods=linear,tchebycheff,epo,pmtl,pamal,palora,cosmos,phn,soups \
      --num_preferences=5 --steps=1500 --workdir=runs/pareto_md

Methods (``--methods``, comma-separated):

* single-point chains, trained once per preference of an evenly spaced grid
  (:func:`mtlx.pareto.simplex_grid`, ``--num_preferences`` points), each for
  ``steps // num_preferences`` steps so the grid's total equals one front model's:
  ``linear``, ``tchebycheff``, ``smooth_tchebycheff``, ``pbi``, ``cosine_penalty``
  (scalarization → ``mtlx.linear_scalarization()`` → optimizer), ``epo``
  (``mtlx.pareto.epo(r)``; EPO reads ``r`` as the ray ``L ∝ 1/r``), ``pmtl``
  (``mtlx.pareto.pmtl(grid, i)``, the grid as reference directions);
* one front model trained for ``steps`` steps and evaluated at the same grid:
  ``pamal``, ``palora``, ``phn`` (PHN-LS), ``phn_epo``, ``cosmos``, and ``soups``
  (one model per task from a shared initialisation, ``steps // K`` steps each,
  then weight interpolation at every preference).

Every run uses the config's optimizer settings (adam, ``learning_rate``,
``batch_size``, model). The front is each method's per-task *test* losses at
the grid's preferences. Writes ``{workdir}/pareto.md`` and ``pareto.csv`` (one row
per method: steps, wall time including compilation, hypervolume with the
reference point, IGD / IGD⁺ against the reference front where one is known,
spread, non-dominated count) and ``pareto_front.png`` (every method's front,
2-D scatter, log axes when every loss is positive; pairwise projections for 3
tasks) and ``fronts.npz`` (every front and the reference point). The reference point is shared
by all rows: ``max + 0.1 (max - min)`` per objective over every method's points.

``--problem=toy``: the two-task toy of ``mtlx.problems.toy`` (no data; the params
are the point ``x ∈ R²`` itself, from ``(0, 0)``; its Pareto front is the reference
front). Its losses are shifted by +25 so that they are positive (EPO and the
cosine penalty need positive losses); the front's shape is unchanged.
"""

from __future__ import annotations

import csv
import os
import time
from typing import Any, Callable, NamedTuple

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from ml_collections import config_flags  # noqa: E402

import mtlx  # noqa: E402
from mtlx import pareto  # noqa: E402

GRID_METHODS = ("linear", "tchebycheff", "smooth_tchebycheff", "pbi", "cosine_penalty",
                "epo", "pmtl")
FRONT_METHODS = ("pamal", "palora", "phn", "phn_epo", "cosmos", "soups")
TOY_SHIFT = 25.0

FLAGS = flags.FLAGS


class Problem(NamedTuple):
  """What a run needs: params init, a train loss, batches, test losses, a known front."""
  name: str
  task_names: tuple
  init: Callable[[jax.Array], Any]                   # key -> params
  loss: Callable[[Any, Any], jax.Array]              # (params, batch) -> [K]
  cond_init: Callable[[jax.Array], Any]              # COSMOS: params of the r-conditioned model
  cond_loss: Callable[[Any, Any, jax.Array], jax.Array]  # (params, batch, r) -> [K]
  batches: Callable[[int], Any]                      # seed -> iterator of train batches
  test_losses: Callable[[Callable[[Any], jax.Array]], np.ndarray]  # evaluates a loss of params
  reference_front: np.ndarray | None
  learning_rate: float


def parse_methods(spec: str) -> list[str]:
  names = [m.strip() for m in spec.split(",") if m.strip()]
  bad = [m for m in names if m not in GRID_METHODS + FRONT_METHODS]
  if bad or not names:
    raise ValueError(f"--methods has {bad or spec!r}; expected names among "
                     f"{sorted(GRID_METHODS + FRONT_METHODS)}.")
  return names


# ---------------------------------------------------------------------------
# Problems.
# ---------------------------------------------------------------------------

def toy_problem() -> Problem:
  from mtlx.problems import toy  # pylint: disable=import-outside-toplevel
  hnet = pareto.hypernetwork(jnp.zeros((2,)), 2, hidden=(32, 32))

  def loss(x, batch=None):
    del batch
    return toy.task_losses(jnp.reshape(x, (-1,))) + TOY_SHIFT

  def repeat():
    while True:
      yield None

  return Problem(
      # x is held as a 1 x 2 matrix so that PaLoRA can put adapters on it.
      name="toy", task_names=("f1", "f2"), init=lambda key: jnp.zeros((1, 2)), loss=loss,
      cond_init=hnet.init, cond_loss=lambda p, b, r: loss(hnet.apply(p, r)),
      batches=lambda seed: repeat(), test_losses=lambda f: np.asarray(f(None)),
      reference_front=np.asarray(toy.pareto_set()[1]) + TOY_SHIFT, learning_rate=1e-2)


def data_problem(config) -> Problem:
  from experiments import train as etrain  # pylint: disable=import-outside-toplevel
  from mtlx import data as mdata  # pylint: disable=import-outside-toplevel
  from mtlx import models as mmodels  # pylint: disable=import-outside-toplevel
  from mtlx.train import losses as mlosses  # pylint: disable=import-outside-toplevel

  info, tasks = etrain.validate(config)
  k = len(tasks)
  data_kw = dict(data_dir=config.data_dir or None, manual_dir=config.manual_dir or None,
                 builder_kwargs=etrain.parse_kwargs(config.builder_kwargs))
  kwargs = etrain.model_kwargs(config)

  def build(input_shape, seed):
    seed_kw = {"seed": seed} if _takes_seed(config.model) else {}
    model = mmodels.get_model(config.model, input_shape=input_shape, tasks=tasks,
                              **{**kwargs, **seed_kw})
    return mmodels.split(model)

  fns, _ = build(tuple(info.input_shape), config.seed)
  cond_shape = tuple(info.input_shape[:-1]) + (info.input_shape[-1] + k,)
  cond_cache = {}

  def cond_fns_():  # the r-conditioned model (COSMOS), built on first use
    if "fns" not in cond_cache:
      cond_cache["fns"] = build(cond_shape, config.seed)[0]
    return cond_cache["fns"]

  def loss(params, batch):
    return mlosses.task_losses(tasks, fns.apply(params, batch[info.input_key]), batch)

  def cond_loss(params, batch, r):
    x = pareto.condition_on_preference(batch[info.input_key], r)
    return mlosses.task_losses(tasks, cond_fns_().apply(params, x), batch)

  test = [dict(b) for b in mdata.make_iterator(
      config.dataset, config.eval_split, batch_size=config.eval_batch_size, shuffle=False,
      num_epochs=1, drop_remainder=False, **data_kw)]

  def test_losses(f):
    total, count = 0.0, 0
    for b in test:
      n = len(next(iter(b.values())))
      total = total + np.asarray(f(b), np.float64) * n
      count += n
    return total / count

  return Problem(
      name=config.dataset, task_names=tuple(t.name for t in tasks),
      init=lambda key: build(tuple(info.input_shape),
                             int(jax.random.randint(key, (), 0, 2 ** 30)))[1],
      loss=loss,
      cond_init=lambda key: build(cond_shape, int(jax.random.randint(key, (), 0, 2 ** 30)))[1],
      cond_loss=cond_loss,
      batches=lambda seed: iter(mdata.make_iterator(
          config.dataset, config.train_split, batch_size=config.batch_size, seed=seed,
          **data_kw)),
      test_losses=test_losses, reference_front=None, learning_rate=config.learning_rate)


def _takes_seed(model_name):
  import inspect  # pylint: disable=import-outside-toplevel
  from mtlx import models as mmodels  # pylint: disable=import-outside-toplevel
  return "seed" in inspect.signature(mmodels.REGISTRY[model_name]).parameters


# ---------------------------------------------------------------------------
# Training.
# ---------------------------------------------------------------------------

def _loop(step_fn, state, batches, steps):
  for i in range(steps):
    state = step_fn(state, next(batches), jnp.asarray(i))
  return state


def train_chain(problem: Problem, tx, params, steps: int, seed: int):
  """``steps`` steps of a gradient-space chain on the per-task Jacobian."""
  vj = lambda p, b: mtlx.value_and_jacobian(lambda q: problem.loss(q, b))(p)

  @jax.jit
  def step(state, batch, i):
    del i
    p, s = state
    losses, grads = vj(p, batch)
    u, s = tx.update(grads, s, p, task_losses=losses)
    return optax.apply_updates(p, u), s

  p, _ = _loop(step, (params, tx.init(params)), problem.batches(seed), steps)
  return p


def train_objective(problem: Problem, objective, params, steps: int, seed: int,
                    uses_step: bool = False, grads_fn=None):
  """``steps`` adam steps on a front model's scalar objective (or given grads)."""
  opt = optax.adam(problem.learning_rate)
  base_key = jax.random.PRNGKey(seed)

  @jax.jit
  def step(state, batch, i):
    p, s = state
    arg = i if uses_step else jax.random.fold_in(base_key, i)
    if grads_fn is None:
      g, _ = jax.grad(objective, has_aux=True)(p, batch, arg)
    else:
      g, _ = grads_fn(p, batch, arg)
    u, s = opt.update(g, s, p)
    return optax.apply_updates(p, u), s

  p, _ = _loop(step, (params, opt.init(params)), problem.batches(seed), steps)
  return p


def grid_front(problem: Problem, method: str, prefs: np.ndarray, steps: int, seed: int):
  k = prefs.shape[1]
  pts = []
  for i, r in enumerate(prefs):
    if method == "epo":
      r_pos = np.maximum(r, 1e-2)
      head = pareto.epo(r_pos / r_pos.sum())
    elif method == "pmtl":
      head = pareto.pmtl(np.maximum(prefs, 0.0) + 1e-12, i, init_steps=max(steps // 10, 0))
    else:
      scal = getattr(pareto, method)(r)
      head = optax.chain(scal, mtlx.linear_scalarization())
    tx = optax.chain(head, optax.adam(problem.learning_rate))
    params = problem.init(jax.random.PRNGKey(seed))
    params = train_chain(problem, tx, params, steps, seed + i)
    f = jax.jit(lambda b, p=params: problem.loss(p, b))
    pts.append(problem.test_losses(f))
  del k
  return np.stack(pts)


def front_model(problem: Problem, method: str, prefs: np.ndarray, steps: int, seed: int):
  k = prefs.shape[1]
  key = jax.random.PRNGKey(seed)
  rs = jnp.asarray(prefs, jnp.float32)
  if method == "pamal":
    anchors = pareto.pamal_init(problem.init, key, k)
    obj = pareto.pamal_objective(problem.loss, num_tasks=k, num_samples=2)
    anchors = train_objective(problem, obj, anchors, steps, seed)
    at = lambda r: pareto.pamal_params(anchors, r)
  elif method == "palora":
    p = pareto.palora_init(problem.init(key), jax.random.fold_in(key, 1), k, rank=1)
    obj = pareto.palora_objective(problem.loss, num_tasks=k, total_steps=steps,
                                  num_points=max(len(prefs), 2))
    p = train_objective(problem, obj, p, steps, seed, uses_step=True)
    at = lambda r: pareto.palora_params(p, r)
  elif method in ("phn", "phn_epo"):
    hnet = pareto.hypernetwork(problem.init(key), k, hidden=(32,))
    phi = hnet.init(jax.random.fold_in(key, 1))
    if method == "phn":
      obj = pareto.phn_objective(hnet, problem.loss, num_tasks=k, alpha=1.0)
      phi = train_objective(problem, obj, phi, steps, seed)
    else:
      grads_fn = pareto.phn_epo_grads(hnet, problem.loss, num_tasks=k, alpha=1.0)
      phi = train_objective(problem, None, phi, steps, seed, grads_fn=grads_fn)
    at = lambda r: hnet.apply(phi, r)
  elif method == "cosmos":
    params = problem.cond_init(key)
    obj = pareto.cosmos_objective(problem.cond_loss, num_tasks=k, penalty=1.0)
    params = train_objective(problem, obj, params, steps, seed)
    f = jax.jit(lambda b, r: problem.cond_loss(params, b, r))
    return np.stack([problem.test_losses(lambda b, r=r: f(b, r)) for r in rs])
  elif method == "soups":
    base = problem.init(key)
    finetuned = []
    for t in range(k):
      e = np.zeros(k)
      e[t] = 1.0
      tx = optax.chain(pareto.linear(e), mtlx.linear_scalarization(),
                       optax.adam(problem.learning_rate))
      finetuned.append(train_chain(problem, tx, base, max(steps // k, 1), seed + t))
    at = lambda r: pareto.soup(base, finetuned, r)
  else:
    raise ValueError(f"unknown front method {method!r}; expected one of {FRONT_METHODS}.")
  f = jax.jit(lambda b, r: problem.loss(at(r), b))
  return np.stack([problem.test_losses(lambda b, r=r: f(b, r)) for r in rs])


# ---------------------------------------------------------------------------
# Report.
# ---------------------------------------------------------------------------

def reference_point(fronts: dict) -> np.ndarray:
  allpts = np.concatenate([f for f in fronts.values() if np.all(np.isfinite(f))])
  hi, lo = allpts.max(0), allpts.min(0)
  return hi + 0.1 * np.maximum(hi - lo, 1e-12)


def report(problem: Problem, fronts: dict, runs: dict, workdir: str) -> list[dict]:
  ref = reference_point(fronts)
  rows = []
  for name, pts in fronts.items():
    finite = np.all(np.isfinite(pts))
    row = {"method": name, "kind": runs[name]["kind"], "steps": runs[name]["steps"],
           "time_s": round(runs[name]["time_s"], 1),
           "hypervolume": pareto.hypervolume(pts, ref) if finite else float("nan"),
           "non_dominated": int(pareto.non_dominated_mask(pts).sum()) if finite else 0,
           "spread": pareto.spread(pts) if finite else float("nan")}
    if problem.reference_front is not None and finite:
      row["igd"] = pareto.igd(pts, problem.reference_front)
      row["igd_plus"] = pareto.igd_plus(pts, problem.reference_front)
    rows.append(row)
  os.makedirs(workdir, exist_ok=True)
  np.savez(os.path.join(workdir, "fronts.npz"), reference_point=ref, **fronts)
  keys = ["method", "kind", "steps", "time_s", "hypervolume", "igd", "igd_plus", "spread",
          "non_dominated"]
  keys = [k for k in keys if any(k in r for r in rows)]
  with open(os.path.join(workdir, "pareto.csv"), "w", newline="") as fh:
    w = csv.DictWriter(fh, fieldnames=keys + ["reference_point"])
    w.writeheader()
    for r in rows:
      w.writerow({**r, "reference_point": " ".join(f"{v:.6g}" for v in ref)})
  ref_txt = "(" + ", ".join(f"{v:.4g}" for v in ref) + ")"
  lines = [f"# Pareto fronts on {problem.name} (tasks {', '.join(problem.task_names)}; test "
           f"losses)", "",
           f"Hypervolume reference point {ref_txt} (max + 10% of the range over every "
           "method's points); higher is better. IGD/IGD+ against the known front, "
           "lower is better. Time: wall seconds including compilation.", "",
           "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
  for r in rows:
    cells = []
    for k in keys:
      v = r.get(k, "")
      cells.append(f"{v:.4g}" if isinstance(v, float) else str(v))
    lines.append("| " + " | ".join(cells) + " |")
  with open(os.path.join(workdir, "pareto.md"), "w") as fh:
    fh.write("\n".join(lines) + "\n")
  plot(problem, fronts, os.path.join(workdir, "pareto_front.png"))
  return rows


def plot(problem: Problem, fronts: dict, path: str) -> None:
  k = len(problem.task_names)
  pairs = [(0, 1)] if k == 2 else [(a, b) for a in range(k) for b in range(a + 1, k)][:3]
  fig, axes = plt.subplots(1, len(pairs), figsize=(5 * len(pairs), 4.2), squeeze=False)
  markers = "os^vD<>pP*Xh"
  for ax, (a, b) in zip(axes[0], pairs):
    if problem.reference_front is not None:
      ax.plot(problem.reference_front[:, a], problem.reference_front[:, b], "k-", lw=1,
              label="Pareto front", zorder=0)
    for j, (name, pts) in enumerate(fronts.items()):
      if not np.all(np.isfinite(pts)):
        continue
      order = np.argsort(pts[:, a])
      ax.plot(pts[order, a], pts[order, b], marker=markers[j % len(markers)], ms=5, lw=0.8,
              alpha=0.85, label=name)
    allpts = np.concatenate([p for p in fronts.values() if np.all(np.isfinite(p))])
    if np.all(allpts > 0):  # losses spanning decades (untrained extremes): log axes
      ax.set_xscale("log")
      ax.set_yscale("log")
    ax.set_xlabel(f"test loss: {problem.task_names[a]}")
    ax.set_ylabel(f"test loss: {problem.task_names[b]}")
    ax.grid(alpha=0.3)
  axes[0][0].legend(fontsize=7)
  fig.suptitle(f"Pareto fronts on {problem.name}")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def run(problem: Problem, methods, num_preferences: int, steps: int, workdir: str,
        seed: int = 0) -> list[dict]:
  """Trains every method, evaluates its front on the test split, writes the report."""
  k = len(problem.task_names)
  prefs = pareto.simplex_grid(k, num_preferences)
  fronts, runs = {}, {}
  for m in methods:
    t0 = time.perf_counter()
    if m in GRID_METHODS:
      per = max(steps // len(prefs), 1)
      pts = grid_front(problem, m, prefs, per, seed)
      runs[m] = {"kind": f"grid x{len(prefs)}", "steps": per * len(prefs)}
    else:
      pts = front_model(problem, m, prefs, steps, seed)
      runs[m] = {"kind": "front", "steps": steps}
    runs[m]["time_s"] = time.perf_counter() - t0
    fronts[m] = np.asarray(pts, np.float64)
    print(f"{m}: {runs[m]['time_s']:.1f}s, front {np.round(fronts[m], 4).tolist()}", flush=True)
  return report(problem, fronts, runs, workdir)


def _define_flags():
  """Command-line flags, defined only when run as a script (importing this module for
  its functions, e.g. in the tests next to experiments.train, defines none)."""
  config_flags.DEFINE_config_file("config", None, "experiment config (data problems)")
  flags.DEFINE_string("problem", "", "'toy' for the two-task toy problem (no --config)")
  flags.DEFINE_string("methods", "linear,tchebycheff,epo,pmtl,pamal,palora,cosmos,phn,soups",
                      "comma-separated methods")
  flags.DEFINE_integer("num_preferences", 5, "preferences of the grid")
  flags.DEFINE_integer("steps", 1000, "total training steps per method")
  flags.DEFINE_string("workdir", "runs/pareto", "output directory")
  flags.DEFINE_integer("seed", 0, "seed")


def main(argv):
  del argv
  methods = parse_methods(FLAGS.methods)
  if FLAGS.problem == "toy":
    problem = toy_problem()
  elif FLAGS.problem:
    raise ValueError(f"--problem={FLAGS.problem!r}; expected 'toy' or a --config.")
  elif FLAGS.config is None:
    raise ValueError("pass --config=configs/<dataset>.py or --problem=toy.")
  else:
    problem = data_problem(FLAGS.config)
  rows = run(problem, methods, FLAGS.num_preferences, FLAGS.steps, FLAGS.workdir, FLAGS.seed)
  for r in rows:
    print(r)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
