"""Compare MTO methods on one dataset: single-task baselines, each method, seeds.

  python -m experiments.compare --config configs/multi_digits.py \
      --methods ls,mgda,pcgrad,cagrad,nash_mtl,famo,upgrad --seeds 3

For every seed it trains one single-task model per task (``method=ls`` on that
task alone: the baselines of Δm) and one multi-task model per method spec (a
gradient-space name, a loss-space name, or ``weighting+method``), all with the
same config otherwise, through ``experiments.train.train_and_evaluate``. A spec may
also name a seed-method line (``SEED_LINES``: ``fuller``, ``partition_upgrad_fuse``,
``flat_regions+upgrad``, ``rep_mtl``, ``focal``, ``aligned_mtl_pref``, ``ls_affinity``): a method with the
config keys it needs. Every run
lives in ``{workdir}/runs/<label>/seed<s>``; a finished run is reused and an
interrupted one resumed when the compare is started again.

Tasks from separate datasets (``config.tasks`` a list of per-task sources, e.g.
``configs/digits_mixture.py``): the single-task baselines train each task alone on
its own data, and ``--samplers`` sweeps ``config.sampler.name`` (``all``: the eight
samplers; labels ``method@sampler``); every run's ``metrics.jsonl`` logs the
per-task example counts of each step (``count/<task>``).

  python -m experiments.compare --config configs/digits_mixture.py \
      --methods ls,famo,upgrad --samplers all --seeds 2

In-context function classes (``configs/icl_function_classes.py``): the same, plus
``icl_curves.png`` / ``icl_table.md`` / ``icl_curves.json``, every line's error
against the number of in-context examples per class next to the classical
baselines on the same prompts (:func:`write_icl_curves`); the line ``curriculum``
is LS with Garg et al.'s curriculum on the dimension and the prompt length
(``config.icl.curriculum``)::

  python -m experiments.compare --config configs/icl_function_classes.py \
      --methods ls,upgrad,curriculum --samplers uniform,loss_proportional --seeds 1

Protocol (explicit; ``--protocol``, default from ``config.protocol``):
  ``last_k``    each run's score is the mean of its last ``k`` eval rows
                (``--last_k``, default ``config.last_k``).
  ``best_val``  single-task runs: the eval row at the step with the best
                validation value of the task's first metric; multi-task runs: the
                eval row at the step whose validation metrics have the lowest Δm
                against the single-task runs' validation metrics (same seed).

Writes ``results.md`` and ``results.csv`` (per-task metrics mean ± std over seeds,
Δm% (Nash-MTL / FAMO convention; lower is better, per-seed mean ± std), LibMTL's
Δp% (higher is better), mean rank over every metric, seconds per step) and three
plots: ``learning_curves.png``, ``task_weights.png``, ``tradeoff.png``.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import json
import os
import time
from typing import Any

from absl import app
from absl import flags
from absl import logging
import ml_collections
import numpy as np

from mtlx import metrics as mmetrics
from mtlx import registry
from mtlx import train as mtrain

# The methods compared by default (and by `bash run.sh main`).
DEFAULT_METHODS = ("ls", "mgda", "pcgrad", "cagrad", "nash_mtl", "famo", "upgrad")

PROTOCOLS = ("last_k", "best_val")

# Named lines for the seed-paper methods (README "Methods from the seed papers"): a
# method spec plus the config keys it sets; pass the name in --methods. ``fuller`` and
# ``partition_upgrad_fuse`` need ``--config.model=two_branch`` (its params hold
# encoder/branch_a, encoder/branch_b, encoder/fuse); set it for the whole compare so the
# single-task baselines use the same model.
SEED_LINES = {
    # FULLER (two levels): branch magnitudes equalised per task, UPGrad at the last
    # shared layer (the fusion), the sum elsewhere.
    "fuller": ("ls", {"method_groups": {"upgrad": "encoder/fuse"},
                      "calibrate_branches": "encoder/branch_a,encoder/branch_b",
                      "engine": "jacobian"}),
    # the same partition without the branch calibration
    "partition_upgrad_fuse": ("ls", {"method_groups": {"upgrad": "encoder/fuse"},
                                     "engine": "jacobian"}),
    # task-based flat regions on UPGrad (a second Jacobian per step)
    "flat_regions+upgrad": ("upgrad", {"flat_regions.rho": 0.05, "engine": "jacobian"}),
    # Rep-MTL's saliency penalties (TSR + CSA, 0.1 each) on LS, representation engine
    "rep_mtl": ("ls", {"rep_mtl.tsr_weight": 0.1, "rep_mtl.csa_weight": 0.1,
                       "engine": "representation"}),
    # MFTCoder's token-level focal loss (γ = 2) under LS
    "focal": ("ls", {"focal_gamma": 2.0}),
    # Aligned-MTL with pre-defined task weights (here: twice the weight on the first task)
    "aligned_mtl_pref": ("aligned_mtl", {"method_kwargs.pref_vector": "first_task_x2"}),
    # linear scalarization with TAG's lookahead affinity logged every log_every steps
    # (split="affinity" rows; affinity.json in each run's workdir)
    "ls_affinity": ("ls", {"affinity_every": "log_every"}),
    # in-context function classes (configs/icl_function_classes.py): Garg et al.'s
    # curriculum on the dimension and the prompt length (config.icl.curriculum) on LS
    "curriculum": ("ls", {"task_curriculum": "icl.curriculum"}),
}


def _clear_kwargs(config, key: str) -> None:
  """Empties ``config[key]`` (a method's constructor arguments) in its own type: a
  ConfigDict, or ``""`` where the config holds a string (the multi-dataset configs)."""
  config[key] = "" if isinstance(config.get(key), str) else ml_collections.ConfigDict()


def seed_line_config(config, label: str, num_tasks: int):
  """``config`` with the keys of the seed-method line ``label`` set (a copy; other
  labels: unchanged). A multi-dataset label ``line@sampler`` is the line ``line``."""
  label = label.split("@")[0]
  if label not in SEED_LINES:
    return config
  config = copy.deepcopy(config)
  spec, keys = SEED_LINES[label]
  method, weighting = registry.parse_method_spec(spec)
  with config.unlocked():
    if method != config.method:  # as run_one: the kwargs belong to the config's method
      _clear_kwargs(config, "method_kwargs")
    if weighting != config.weighting:
      _clear_kwargs(config, "weighting_kwargs")
    config.method, config.weighting = method, weighting
    for key, value in keys.items():
      if key == "task_curriculum":  # every per-task source gets the ICL curriculum
        if not isinstance(config.get("tasks", None), (list, tuple)) or \
            config.get("icl", None) is None or "curriculum" not in config.icl:
          raise ValueError(f"line {label!r} needs a function-class config (per-task "
                           "sources and config.icl.curriculum, e.g. "
                           "configs/icl_function_classes.py).")
        for t in config.tasks:
          t.curriculum_dims = tuple(config.icl.curriculum.dims)
          t.curriculum_points = tuple(config.icl.curriculum.points)
        continue
      if value == "log_every":
        value = config.log_every
      elif value == "first_task_x2":
        value = [2.0] + [1.0] * (num_tasks - 1)
      node, *rest = key.split(".")
      if rest:
        config[node][rest[0]] = value
      elif isinstance(value, dict):
        config[key] = ml_collections.ConfigDict(value)
      else:
        config[key] = value
  return config


def parse_methods(specs) -> list[tuple[str, str, str]]:
  """``[(label, method, weighting)]`` for every spec; unknown names fail here, up front,
  with the list of valid ones."""
  out, seen = [], set()
  for spec in specs:
    spec = spec.strip()
    if not spec:
      continue
    method, weighting = registry.parse_method_spec(SEED_LINES.get(spec, (spec,))[0])
    if spec in seen:
      raise ValueError(f"--methods lists {spec!r} twice; expected distinct specs.")
    seen.add(spec)
    out.append((spec, method, weighting))
  if not out:
    raise ValueError("--methods is empty; expected at least one method spec.")
  return out


def _dirname(label: str) -> str:
  return label.replace("+", "_plus_").replace("/", "_")


def run_done(workdir: str, num_steps: int) -> bool:
  """Whether the run in ``workdir`` wrote its final eval row."""
  rows = mtrain.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  return any(r["split"] == "eval" and r["step"] == num_steps for r in rows)


_NOT_HASHED = ("workdir", "resume", "progress", "tensorboard", "protocol", "last_k")


def config_hash(config) -> str:
  """8 hex digits identifying everything in a run's config that affects its result."""
  d = {k: v for k, v in json.loads(config.to_json_best_effort()).items()
       if k not in _NOT_HASHED}
  return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:8]


def run_config(base_config, rundir: str, *, seed: int, method: str, weighting: str,
               tasks: Any = "", sampler: str = ""):
  """The config of one run (:func:`run_one`), its ``workdir`` and ``resume`` set."""
  from experiments import train as train_lib  # pylint: disable=import-outside-toplevel
  config = copy.deepcopy(base_config)
  with config.unlocked():
    config.seed = seed
    # Constructor arguments belong to the method the config was made for.
    if method != base_config.method:
      _clear_kwargs(config, "method_kwargs")
    if weighting != base_config.weighting:
      _clear_kwargs(config, "weighting_kwargs")
    config.method = method
    config.weighting = weighting
    config.tasks = tasks
    if sampler:
      config.sampler.name = sampler
  workdir = os.path.join(rundir, f"seed{seed}_{config_hash(config)}")
  with config.unlocked():
    config.workdir = workdir
    ckpt_dir = os.path.join(workdir, "checkpoints")
    config.resume = bool(train_lib.checkpoint_steps_on_disk(ckpt_dir))
  return config


def run_one(base_config, rundir: str, *, seed: int, method: str, weighting: str,
            tasks: Any = "", sampler: str = "") -> list[dict]:
  """Trains (or reuses / resumes) one run and returns its metrics.jsonl rows.

  The run lives in ``{rundir}/seed<seed>_<config hash>``: a finished run with the
  same config is reused, an interrupted one resumed, and a changed config gets a
  new directory (never a stale result). ``tasks``: a subset string, or for a
  multi-dataset config the list of per-task source configs; ``sampler``: the
  ``config.sampler.name`` of a multi-dataset run.
  """
  from experiments import train as train_lib  # pylint: disable=import-outside-toplevel
  config = run_config(base_config, rundir, seed=seed, method=method, weighting=weighting,
                      tasks=tasks, sampler=sampler)
  workdir = config.workdir
  if not run_done(workdir, config.num_steps):
    train_lib.train_and_evaluate(config)
  return mtrain.read_jsonl(os.path.join(workdir, "metrics.jsonl"))


# ------------------------------------------------------------------ scoring

def _rows(rows, split):
  return sorted((r for r in rows if r["split"] == split), key=lambda r: r["step"])


def metric_keys(tasks) -> list[tuple[str, str, bool]]:
  """``[(key, task, higher_is_better)]`` for every metric of every task."""
  return [(f"{m}/{t.name}", t.name, bool(h)) for t in tasks
          for m, h in zip(t.metrics, t.higher_is_better)]


def score_last_k(rows, keys, k: int) -> dict:
  """Mean of ``keys`` over the last ``k`` eval rows."""
  ev = _rows(rows, "eval")[-k:]
  if not ev:
    raise ValueError("a run has no eval rows; expected at least one (config.eval_every).")
  return {key: float(np.mean([r[key] for r in ev])) for key in keys}


def best_step_single(rows, key: str, higher: bool) -> int:
  """Step of the best validation value of ``key``."""
  val = _rows(rows, "val")
  if not val:
    raise ValueError("protocol best_val needs val rows; set config.val_split.")
  vals = np.array([r[key] for r in val])
  return val[int(np.argmax(vals) if higher else np.argmin(vals))]["step"]


def best_step_multi(rows, keys, baseline_val: dict, hib: dict) -> int:
  """Step of the lowest validation Δm against the single-task validation values."""
  val = _rows(rows, "val")
  if not val:
    raise ValueError("protocol best_val needs val rows; set config.val_split.")
  dm = [mmetrics.delta_m([r[k] for k in keys], [baseline_val[k] for k in keys],
                         [hib[k] for k in keys]) for r in val]
  return val[int(np.argmin(dm))]["step"]


def at_step(rows, split, step, keys) -> dict:
  """Values of ``keys`` in the ``split`` row at ``step``."""
  for r in rows:
    if r["split"] == split and r["step"] == step:
      return {k: float(r[k]) for k in keys}
  raise ValueError(f"no {split} row at step {step}.")


def sec_per_step(rows) -> float:
  """Median ``time/step_s`` of the train rows, the first (compilation) excluded."""
  t = [r["time/step_s"] for r in _rows(rows, "train")[1:] if "time/step_s" in r]
  return float(np.median(t)) if t else float("nan")


def summarize(results: dict, tasks, labels, seeds, protocol: str, last_k: int) -> dict:
  """Per label: per-seed scores, means, stds, Δm, Δp, sec/step."""
  keys = metric_keys(tasks)
  allk = [k for k, _, _ in keys]
  hib = {k: h for k, _, h in keys}
  task_of = {k: t for k, t, _ in keys}
  # single-task scores per seed
  stl, stl_val = {}, {}
  for s in seeds:
    stl[s], stl_val[s] = {}, {}
    for t in tasks:
      rows = results[("stl", t.name, s)]
      tk = [k for k in allk if task_of[k] == t.name]
      if protocol == "last_k":
        stl[s].update(score_last_k(rows, tk, last_k))
      else:
        step = best_step_single(rows, tk[0], hib[tk[0]])
        stl[s].update(at_step(rows, "eval", step, tk))
        stl_val[s].update(at_step(rows, "val", step, tk))
  out = {}
  base_mean = {k: float(np.mean([stl[s][k] for s in seeds])) for k in allk}

  def pack(per_seed, times):
    mean = {k: float(np.mean([p[k] for p in per_seed])) for k in allk}
    std = {k: float(np.std([p[k] for p in per_seed])) for k in allk}
    hv = [hib[k] for k in allk]
    dms = [mmetrics.delta_m([p[k] for k in allk], [base_mean[k] for k in allk], hv)
           for p in per_seed]
    by_task = lambda d: {t.name: [d[k] for k in allk if task_of[k] == t.name] for t in tasks}
    hib_t = {t.name: [hib[k] for k in allk if task_of[k] == t.name] for t in tasks}
    dps = [mmetrics.delta_p(by_task(p), by_task(base_mean), hib_t) for p in per_seed]
    return {"per_seed": per_seed, "mean": mean, "std": std,
            "delta_m": float(np.mean(dms)), "delta_m_std": float(np.std(dms)),
            "delta_p": float(np.mean(dps)), "delta_p_std": float(np.std(dps)),
            "sec_per_step": float(np.nanmean(times)) if times else float("nan")}

  stl_times = [sec_per_step(results[("stl", t.name, s)]) for s in seeds for t in tasks]
  out["single-task"] = pack([stl[s] for s in seeds], stl_times)
  for label in labels:
    per_seed, times = [], []
    for s in seeds:
      rows = results[(label, s)]
      if protocol == "last_k":
        per_seed.append(score_last_k(rows, allk, last_k))
      else:
        step = best_step_multi(rows, allk, stl_val[s], hib)
        per_seed.append(at_step(rows, "eval", step, allk))
      times.append(sec_per_step(rows))
    out[label] = pack(per_seed, times)
  if labels:
    ranks = mmetrics.mean_rank([[out[l]["mean"][k] for k in allk] for l in labels],
                               [hib[k] for k in allk])
    for l, r in zip(labels, ranks):
      out[l]["mean_rank"] = float(r)
  return out


# ------------------------------------------------------------------ outputs

def write_tables(summary: dict, tasks, workdir: str, header: str) -> tuple[str, str]:
  """Writes ``results.md`` and ``results.csv``; returns their paths."""
  keys = metric_keys(tasks)
  arrow = lambda h: "↑" if h else "↓"
  cols = [f"{k} {arrow(h)}" for k, _, h in keys]
  md = [header, "",
        "| method | " + " | ".join(cols) + " | Δm% ↓ | Δp% ↑ | mean rank ↓ | s/step |",
        "|---" * (len(cols) + 5) + "|"]
  csv_rows = []
  for label, r in summary.items():
    cells = [f"{r['mean'][k]:.2f} ± {r['std'][k]:.2f}" for k, _, _ in keys]
    is_stl = label == "single-task"
    dm = "0.00 (baseline)" if is_stl else f"{r['delta_m']:+.2f} ± {r['delta_m_std']:.2f}"
    dp = "0.00 (baseline)" if is_stl else f"{r['delta_p']:+.2f} ± {r['delta_p_std']:.2f}"
    mr = "" if is_stl else f"{r['mean_rank']:.2f}"
    sps = r["sec_per_step"]
    md.append(f"| {label} | " + " | ".join(cells) +
              f" | {dm} | {dp} | {mr} | {sps * 1e3:.2f} ms |")
    row = {"method": label, "seeds": len(r["per_seed"])}
    for k, _, _ in keys:
      row[f"{k} mean"] = r["mean"][k]
      row[f"{k} std"] = r["std"][k]
    row.update({"delta_m": 0.0 if is_stl else r["delta_m"],
                "delta_m_std": 0.0 if is_stl else r["delta_m_std"],
                "delta_p": 0.0 if is_stl else r["delta_p"],
                "delta_p_std": 0.0 if is_stl else r["delta_p_std"],
                "mean_rank": "" if is_stl else r["mean_rank"],
                "sec_per_step": sps})
    csv_rows.append(row)
  md_path = os.path.join(workdir, "results.md")
  with open(md_path, "w") as f:
    f.write("\n".join(md) + "\n")
  csv_path = os.path.join(workdir, "results.csv")
  with open(csv_path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(csv_rows[0]))
    w.writeheader()
    w.writerows(csv_rows)
  return md_path, csv_path


def _curve(rows_per_seed, split, key):
  """Mean over seeds of ``key`` against step (steps common to all seeds)."""
  per = [{r["step"]: r[key] for r in _rows(rows, split) if r.get(key) is not None}
         for rows in rows_per_seed]
  steps = sorted(set.intersection(*(set(p) for p in per))) if per else []
  return np.array(steps), np.array([np.mean([p[s] for p in per]) for s in steps])


def write_plots(results, summary, tasks, labels, seeds, workdir) -> list[str]:
  """Learning curves, task weights and the 2-task trade-off; returns the PNG paths."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  keys = metric_keys(tasks)
  paths = []
  colors = {l: plt.cm.tab10(i % 10) for i, l in enumerate(labels)}

  def curves_png(name, panels, split, baseline=False):
    """One panel per ``(key, task)``: every method's mean curve (and the single-task
    run's, dashed, when ``baseline``), saved as ``{workdir}/{name}``."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (key, task) in zip(axes[0], panels):
      for label in labels:
        x, y = _curve([results[(label, s)] for s in seeds], split, key)
        ax.plot(x, y, label=label, color=colors[label])
      if baseline:
        x, y = _curve([results[("stl", task, s)] for s in seeds], split, key)
        ax.plot(x, y, "k--", label="single-task")
      ax.set_title(key)
      ax.set_xlabel("step")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    paths.append(os.path.join(workdir, name))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

  # learning curves: every metric of every task (eval split), single-task dashed
  curves_png("learning_curves.png", [(key, task) for key, task, _ in keys], "eval",
             baseline=True)
  # task weights over time
  curves_png("task_weights.png", [(f"weight/{t.name}", t.name) for t in tasks], "train")
  # trade-off scatter: first metric of the first two tasks
  if len(tasks) >= 2:
    kx = next(k for k, t, _ in keys if t == tasks[0].name)
    ky = next(k for k, t, _ in keys if t == tasks[1].name)
    fig, ax = plt.subplots(figsize=(5, 4.2))
    for label in ["single-task"] + list(labels):
      r = summary[label]
      ax.errorbar(r["mean"][kx], r["mean"][ky], xerr=r["std"][kx], yerr=r["std"][ky],
                  fmt="*" if label == "single-task" else "o", capsize=3,
                  color="k" if label == "single-task" else colors[label], label=label)
    ax.set_xlabel(kx)
    ax.set_ylabel(ky)
    ax.legend(fontsize=7)
    ax.set_title("trade-off (mean ± std over seeds)")
    fig.tight_layout()
    paths.append(os.path.join(workdir, "tradeoff.png"))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
  return paths


# ------------------------------------------------------------ multi-dataset runs


def mixture_specs(config, specs, samplers) -> tuple[Any, list, list, dict]:
  """``(info, tasks, specs, sampler_of)`` of a multi-dataset config (``config.tasks`` a
  list of per-task sources): every method spec under every sampler of ``samplers``
  (names; ``['all']``: the eight of `mtlx.data.samplers.SAMPLER_NAMES`; empty:
  ``config.sampler.name``), labelled ``spec@sampler`` when there are several. Every
  sampler and method is built once here, so a bad name or argument fails before any run."""
  from experiments import train_mixture  # pylint: disable=import-outside-toplevel
  from mtlx.data import mixture as mixture_lib  # pylint: disable=import-outside-toplevel
  from mtlx.data import samplers as samplers_lib  # pylint: disable=import-outside-toplevel
  names = [n.strip() for n in (samplers or ()) if n.strip()] or [config.sampler.name]
  if names == ["all"]:
    names = list(samplers_lib.SAMPLER_NAMES)
  srcs = train_mixture.make_sources(config, "train")
  info = mixture_lib.check_sources(srcs)
  sizes = [s.num_examples for s in srcs]
  for name in names:
    cfg = copy.deepcopy(config.sampler)
    with cfg.unlocked():
      cfg.name = name
    samplers_lib.make_sampler(cfg, len(srcs), sizes)
  for _, method, weighting in specs:
    mtrain.build_mto(method, weighting, len(srcs))
  out, sampler_of = [], {}
  for name in names:
    for label, method, weighting in specs:
      full = f"{label}@{name}" if len(names) > 1 else label
      out.append((full, method, weighting))
      sampler_of[full] = name
  return info, list(info.tasks), out, sampler_of


def _enable_compilation_cache(path: str) -> None:
  """Seeds after the first reuse the compiled steps (same programs, other values)."""
  import jax  # pylint: disable=import-outside-toplevel
  try:
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  except (AttributeError, ValueError):  # an older jax without these options
    pass


def compare(config, methods, *, seeds: int, workdir: str, protocol: str = "",
            last_k: int = 0, compilation_cache: bool = True, samplers=()) -> dict:
  """Runs the comparison and writes tables and plots; returns paths and the summary.

  A multi-dataset config (``config.tasks`` a list of per-task sources) compares
  every method under every sampler of ``samplers`` (:func:`mixture_specs`); its
  single-task baselines train each task alone on its own data.

  ``compilation_cache`` turns on JAX's persistent compilation cache under
  ``{workdir}/.jax_cache`` (a process-wide setting) so later seeds skip compiling.
  """
  from experiments import train as train_lib  # pylint: disable=import-outside-toplevel
  protocol = protocol or config.get("protocol", "last_k")
  last_k = last_k or config.get("last_k", 1)
  if protocol not in PROTOCOLS:
    raise ValueError(f"protocol={protocol!r}; expected one of {list(PROTOCOLS)}.")
  if seeds < 1:
    raise ValueError(f"seeds={seeds}; expected an int >= 1.")
  specs = parse_methods(methods)
  multi = isinstance(config.get("tasks", None), (list, tuple))  # one dataset per task
  sampler_of = {}
  if multi:
    info, tasks, specs, sampler_of = mixture_specs(config, specs, samplers)
    for label, _, _ in specs:  # a line's config errors before any run
      seed_line_config(config, label, len(tasks))
  else:
    info, tasks = train_lib.validate(config)
  for label, method, weighting in ([] if multi else specs):  # every method vs config.engine
    c = copy.deepcopy(config)
    with c.unlocked():
      if method != config.method:
        _clear_kwargs(c, "method_kwargs")
      if weighting != config.weighting:
        _clear_kwargs(c, "weighting_kwargs")
      c.method, c.weighting = method, weighting
    c = seed_line_config(c, label, len(tasks))
    train_lib.check_numbers(c)
    train_lib.build_methods(c, len(tasks))
  if protocol == "best_val" and not config.get("val_split", ""):
    raise ValueError("protocol best_val needs config.val_split; got ''.")
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  if compilation_cache:
    _enable_compilation_cache(os.path.join(workdir, ".jax_cache"))
  seed_list = [config.seed + i for i in range(seeds)]
  results = {}
  t0 = time.time()
  total = seeds * (len(tasks) + len(specs))
  done = 0
  for s in seed_list:
    for t in tasks:
      d = os.path.join(workdir, "runs", f"stl_{t.name}")
      results[("stl", t.name, s)] = run_one(
          config, d, seed=s, method="ls", weighting="none",
          **({"tasks": [config.tasks[tasks.index(t)]], "sampler": "uniform"} if multi
             else {"tasks": t.name}))
      done += 1
      print(f"[{done}/{total}] single-task {t.name} seed {s} ({time.time() - t0:.0f} s)",
            flush=True)
    for label, method, weighting in specs:
      line, rundir, data = _line(config, label, workdir, tasks, multi, sampler_of)
      results[(label, s)] = run_one(line, rundir, seed=s, method=method,
                                    weighting=weighting, **data)
      done += 1
      print(f"[{done}/{total}] {label} seed {s} ({time.time() - t0:.0f} s)", flush=True)
  labels = [l for l, _, _ in specs]
  summary = summarize(results, tasks, labels, seed_list, protocol, last_k)
  header = (f"## {info.name}: {len(labels)} methods, {seeds} seed(s), model "
            f"{config.model}, {config.num_steps} steps, protocol {protocol}"
            + (f" (last {last_k} evals)" if protocol == "last_k" else "") +
            f"\n\nΔm% against the single-task runs (Nash-MTL/FAMO convention, lower is "
            f"better, mean ± std over seeds); Δp% LibMTL's (higher is better); mean rank "
            f"over all metrics; s/step the median step time.")
  md, csv_path = write_tables(summary, tasks, workdir, header)
  plots = write_plots(results, summary, tasks, labels, seed_list, workdir)
  out = {"table": md, "csv": csv_path, "plots": plots, "summary": summary}
  if multi and config.get("icl", None) is not None:
    out["icl"] = write_icl_curves(config, specs, sampler_of, seed_list[0], workdir)
    out["plots"] = plots + [out["icl"]["figure"]]
  return out


def _line(config, label, workdir, tasks, multi, sampler_of):
  """``(line config, run directory, run_one's tasks / sampler)`` of one compare line."""
  line = seed_line_config(config, label, len(tasks))
  data = ({"tasks": list(line.tasks), "sampler": sampler_of[label]} if multi
          else {"tasks": ",".join(t.name for t in tasks)})
  return line, os.path.join(workdir, "runs", _dirname(label)), data


def write_icl_curves(config, specs, sampler_of, seed: int, workdir: str) -> dict:
  """In-context function classes: every line's error against the number of in-context
  examples, per class, next to the classical baselines on the same test prompts
  (`experiments.icl_function_classes`: ``icl_curves.json``, ``icl_table.md``,
  ``icl_curves.png`` in ``workdir``), from each line's run of seed ``seed``."""
  from experiments import icl_function_classes as icl  # pylint: disable=import-outside-toplevel
  from experiments import train_mixture  # pylint: disable=import-outside-toplevel
  result, dim = {}, None
  for i, (label, method, weighting) in enumerate(specs):
    line, rundir, data = _line(config, label, workdir, config.tasks, True, sampler_of)
    run = run_config(line, rundir, seed=seed, method=method, weighting=weighting, **data)
    with run.unlocked():
      run.resume = True  # the finished run: restore its final state, train no step
    _, (state, fns, info) = train_mixture.train(run, return_state=True)
    test = train_mixture.make_sources(run, run.get("eval_split", "test") or "test")
    part = icl.curves(run, state.params, fns, info, test, label=label, baselines=i == 0)
    dim = int(info.input_shape[1]) - 1
    for cls, entry in part.items():
      result.setdefault(cls, {}).update(entry)
  labels = [label for label, _, _ in specs]
  result = {cls: {**{n: e[n] for n in labels},
                  **{n: c for n, c in e.items() if n not in labels}}
            for cls, e in result.items()}
  paths = {"curves": os.path.join(workdir, "icl_curves.json"),
           "table": os.path.join(workdir, "icl_table.md"),
           "figure": os.path.join(workdir, "icl_curves.png")}
  with open(paths["curves"], "w") as f:
    json.dump(result, f)
  with open(paths["table"], "w") as f:
    f.write(icl.table(result, dim))
  icl.figure(result, paths["figure"])
  return paths


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  config = flags.FLAGS.config
  workdir = flags.FLAGS.workdir or os.path.join("runs", "compare",
                                                config.get("dataset", "mixture"))
  out = compare(config, flags.FLAGS.methods, seeds=flags.FLAGS.seeds, workdir=workdir,
                protocol=flags.FLAGS.protocol, last_k=flags.FLAGS.last_k,
                samplers=flags.FLAGS.samplers)
  with open(out["table"]) as f:
    print(f.read())
  print(f"table: {out['table']}\ncsv:   {out['csv']}")
  for p in out["plots"]:
    print(f"plot:  {p}")


if __name__ == "__main__":
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  config_flags.DEFINE_config_file("config", "configs/multi_digits.py",
                                  "Path to a config file (get_config()).")
  flags.DEFINE_list("methods", list(DEFAULT_METHODS),
                    "Method specs: gradient-space names, loss-space names, or "
                    "'weighting+method', or a seed-method line: "
                    f"{sorted(SEED_LINES)}.")
  flags.DEFINE_integer("seeds", 3, "Seeds per method (config.seed, +1, ...).")
  flags.DEFINE_string("workdir", "", "Output directory (default runs/compare/<dataset>).")
  flags.DEFINE_string("protocol", "", f"One of {PROTOCOLS} (default config.protocol).")
  flags.DEFINE_integer("last_k", 0, "Evals averaged by last_k (default config.last_k).")
  flags.DEFINE_list("samplers", [], "Multi-dataset configs: sampler names to sweep "
                    "('all': every sampler; default config.sampler.name).")
  app.run(main)
