"""In-context function-class benchmark: train one causal model on several function
classes, then plot its error against the number of in-context examples per class,
next to the classical baselines on the same prompts.

  python -m experiments.icl_function_classes --config configs/icl_function_classes.py \
      --config.workdir=runs/icl [--config.sampler.name=temperature ...]

Training is `experiments.train_mixture` (one task per function class, mixed by
``config.sampler``, MTO chain ``config.weighting`` + ``config.method``). Then, on
``config.icl.eval_prompts`` test prompts per class, writes to ``workdir``:

* ``icl_curves.json``: ``{class: {"model": [n], "<baseline>": [n]}}``, the
  normalised squared error ``(ŷ_i − y_i)² / d`` at every prompt position ``i``
  (`mtlx.data.function_classes.normalised_error`);
* ``icl_table.md``: the same at a few positions (``i = 1, d/2, d, n−1``);
* ``icl_curves.png``: one panel per class, model and baselines against ``i``.

``config.icl.curriculum_dims`` / ``config.icl.curriculum_points = (start, increment,
interval)`` train every class with Garg et al.'s curriculum on the dimension / on the
prompt length (evaluation uses every dimension and position).

Baselines (`mtlx.data.function_classes.BASELINES`): least squares, 3-NN and
averaging on every class, the lasso on ``sparse_linear_regression``.
"""

from __future__ import annotations

import copy
import json
import os

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from experiments import train_mixture
from mtlx.data import function_classes as fc
from mtlx.data import mixture


BASELINE_NAMES = ("least_squares", "3nn", "averaging")


def curves(config, params, fns, info, test_sources, *, label: str = "model",
           baselines: bool = True) -> dict:
  """``{class: {label: curve, baseline: curve}}`` on the test prompts."""
  count = int(config.icl.eval_prompts)
  out = {}
  apply = jax.jit(fns.apply)
  for task, src in zip(info.tasks, test_sources):
    batch = src.read(np.arange(count))
    tokens = jnp.asarray(batch[src.input_key])
    xs, ys = fc.split_tokens(tokens)
    dim = xs.shape[-1]
    preds = apply(params, tokens)[task.name]
    entry = {label: np.asarray(fc.normalised_error(preds, ys, dim)).tolist()}
    if baselines:
      names = list(BASELINE_NAMES) + (["lasso"] if "sparse" in task.name else [])
      entry.update({n: v.tolist() for n, v in fc.baseline_curves(xs, ys, names).items()})
    out[task.name] = entry
  return out


def variant_config(config, variant):
  """``config`` with one comparison variant's overrides: ``sampler`` (a dict of
  sampler keys), ``method``, ``weighting``, ``curriculum_dims``, ``curriculum_points``;
  its own workdir."""
  # a deep copy: the per-task source configs in config.tasks are ConfigDicts that the
  # variant's curriculum is written into (they must not leak into later variants)
  c = copy.deepcopy(config.copy_and_resolve_references())
  with c.unlocked():
    for key in ("method", "weighting"):
      if variant.get(key):
        c[key] = variant[key]
    for key, value in dict(variant.get("sampler", {}) or {}).items():
      c.sampler[key] = value
    for key in ("curriculum_dims", "curriculum_points"):
      c.icl[key] = tuple(variant.get(key, ()) or ())
    c.workdir = os.path.join(config.workdir, variant["name"])
  return c


def table(result: dict, dim: int) -> str:
  """A Markdown table of the curves at a few positions."""
  n = len(next(iter(next(iter(result.values())).values())))
  positions = sorted({1, max(dim // 2, 1), min(dim, n - 1), n - 1})
  lines = ["| class | estimator | " + " | ".join(f"i={i}" for i in positions) + " |",
           "|---|---|" + "---|" * len(positions)]
  for cls, entry in result.items():
    for name, curve in entry.items():
      lines.append(f"| {cls} | {name} | " + " | ".join(f"{curve[i]:.3f}" for i in positions)
                   + " |")
  return "\n".join(lines) + "\n"


def figure(result: dict, path: str) -> None:
  """One panel per class: every trained variant (solid) and the baselines (dashed)."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, axes = plt.subplots(1, len(result), figsize=(3.0 * len(result), 2.8), squeeze=False)
  for ax, (cls, entry) in zip(axes[0], result.items()):
    models = [n for n in entry if n not in BASELINE_NAMES + ("lasso",)]
    for name, curve in entry.items():
      base = name not in models
      ax.plot(np.arange(len(curve)), curve, label=name, lw=1 if base else 1.8,
              ls="--" if base else "-")
    ax.set_title(cls, fontsize=9)
    ax.set_xlabel("in-context examples", fontsize=8)
    # least squares peaks at i = d (interpolation threshold): clip to the models' scale
    top = max(max(entry[n]) for n in models)
    ax.set_ylim(0, 1.5 * max(top, 1e-3))
    ax.tick_params(labelsize=7)
  axes[0][0].set_ylabel("squared error / d", fontsize=8)
  handles = {}
  for ax in axes[0]:  # one legend for every panel (lasso is only on the sparse class)
    for h, lab in zip(*ax.get_legend_handles_labels()):
      handles.setdefault(lab, h)
  fig.tight_layout(rect=(0, 0, 0.9, 1))
  fig.legend(list(handles.values()), list(handles), fontsize=7, loc="center right")
  fig.savefig(path, dpi=80)
  plt.close(fig)


def _apply_curriculum(config) -> None:
  """Writes ``config.icl``'s curricula into every per-task source config."""
  for key in ("curriculum_dims", "curriculum_points"):
    if tuple(config.icl.get(key, ()) or ()):
      for t in config.tasks:  # the same curriculum for every class
        t[key] = tuple(config.icl[key])


def _train_curves(config, label, baselines):
  _apply_curriculum(config)
  _, (state, fns, info) = train_mixture.train(config, return_state=True)
  test_sources = train_mixture.make_sources(config, config.get("eval_split", "test") or "test")
  mixture.check_sources(test_sources)
  return curves(config, state.params, fns, info, test_sources, label=label,
                baselines=baselines), info


def run(config) -> dict:
  """Trains (each of ``config.icl.variants``, or the config itself as ``model``),
  then writes the curves, table and figure; returns the curves."""
  variants = list(config.icl.get("variants", ()) or ())
  if not variants:
    result, info = _train_curves(config, "model", True)
  else:
    result = {}
    for i, v in enumerate(variants):
      part, info = _train_curves(variant_config(config, v), v["name"], i == 0)
      for cls, entry in part.items():
        result.setdefault(cls, {}).update(entry)
    # variants first, then the baselines
    names = [v["name"] for v in variants]
    result = {cls: {**{n: e[n] for n in names}, **{n: c for n, c in e.items() if n not in names}}
              for cls, e in result.items()}
  workdir = os.path.abspath(config.workdir)
  os.makedirs(workdir, exist_ok=True)
  dim = int(info.input_shape[1]) - 1
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "icl_curves.json"), "w") as f:
      json.dump(result, f)
    with open(os.path.join(workdir, "icl_table.md"), "w") as f:
      f.write(table(result, dim))
    figure(result, os.path.join(workdir, "icl_curves.png"))
  return result


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  config = flags.FLAGS.config
  run(config)
  print(open(os.path.join(os.path.abspath(config.workdir), "icl_table.md")).read())


if __name__ == "__main__":
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  config_flags.DEFINE_config_file("config", "configs/icl_function_classes.py",
                                  "Path to a config file (get_config()).", lock_config=True)
  app.run(main)
