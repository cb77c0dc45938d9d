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

``config.icl.curriculum_dims = (start, increment, interval)`` trains every class
with Garg et al.'s curriculum on the dimension (evaluation uses every dimension).

Baselines (`mtlx.data.function_classes.BASELINES`): least squares, 3-NN and
averaging on every class, the lasso on ``sparse_linear_regression``.
"""

from __future__ import annotations

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


def curves(config, params, fns, info, test_sources) -> dict:
  """``{class: {"model": curve, baseline: curve}}`` on the test prompts."""
  count = int(config.icl.eval_prompts)
  out = {}
  apply = jax.jit(fns.apply)
  for k, (task, src) in enumerate(zip(info.tasks, test_sources)):
    batch = src.read(np.arange(count))
    tokens = jnp.asarray(batch[src.input_key])
    xs, ys = fc.split_tokens(tokens)
    dim = xs.shape[-1]
    preds = apply(params, tokens)[task.name]
    entry = {"model": np.asarray(fc.normalised_error(preds, ys, dim)).tolist()}
    names = ["least_squares", "3nn", "averaging"]
    if "sparse" in task.name:
      names.append("lasso")
    entry.update({n: v.tolist() for n, v in fc.baseline_curves(xs, ys, names).items()})
    out[task.name] = entry
    del k
  return out


def table(result: dict, dim: int) -> str:
  """A Markdown table of the curves at a few positions."""
  n = len(next(iter(result.values()))["model"])
  positions = sorted({1, max(dim // 2, 1), min(dim, n - 1), n - 1})
  lines = ["| class | estimator | " + " | ".join(f"i={i}" for i in positions) + " |",
           "|---|---|" + "---|" * len(positions)]
  for cls, entry in result.items():
    for name, curve in entry.items():
      lines.append(f"| {cls} | {name} | " + " | ".join(f"{curve[i]:.3f}" for i in positions)
                   + " |")
  return "\n".join(lines) + "\n"


def figure(result: dict, path: str) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, axes = plt.subplots(1, len(result), figsize=(3.2 * len(result), 3), squeeze=False)
  for ax, (cls, entry) in zip(axes[0], result.items()):
    for name, curve in entry.items():
      ax.plot(np.arange(len(curve)), curve, label=name, lw=2 if name == "model" else 1)
    ax.set_title(cls, fontsize=9)
    ax.set_xlabel("in-context examples")
    # least squares peaks at i = d (interpolation threshold): clip the axis to the model's scale
    ax.set_ylim(0, 2.0 * max(max(entry["model"]), 1e-3))
  axes[0][0].set_ylabel("squared error / d")
  axes[0][-1].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def run(config) -> dict:
  """Trains, then writes the curves, table and figure; returns the curves."""
  if tuple(config.icl.get("curriculum_dims", ()) or ()):
    for t in config.tasks:  # the same curriculum on the dimension for every class
      t.curriculum_dims = tuple(config.icl.curriculum_dims)
  _, (state, fns, info) = train_mixture.train(config, return_state=True)
  test_sources = train_mixture.make_sources(config, config.get("eval_split", "test") or "test")
  mixture.check_sources(test_sources)
  result = curves(config, state["params"], fns, info, test_sources)
  workdir = os.path.abspath(config.workdir)
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
