"""Guard for a new model or mesh: a few steps on the mesh against one device.

The same train steps must give the same numbers on every mesh (a float32
rounding apart). XLA's SPMD partitioner has given silently wrong gradients for
some layouts (see :func:`mtlx.sharding._fsdp_spec`), so before a long run on a new
model/mesh pair run::

  XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu \\
  python -m mtlx.sharding.check --config configs/multi_digits.py \\
      --config.method=upgrad --config.mesh.data=2 --config.mesh.model=4 \\
      [--steps=3] [--batch_size=0] [--tolerance=1e-4]

or set ``--config.mesh.verify=True`` for ``experiments/train.py``, which then runs
:func:`check_config` before training and stops with a ``ValueError`` (nothing
written) when the mesh disagrees. It runs ``steps`` train steps of the config's
model, methods and optimizer on the configured mesh and, from the same params and
batches, on one device without shardings, at a reduced batch (the smallest
multiple of ``mesh.data`` that is at least 8, unless ``batch_size`` is given);
prints the largest relative difference ``max|a - b| / max|b|`` of every parameter
leaf (and of the logged task losses) next to its sharding, and exits with status 1
when one exceeds ``tolerance``.

Cost: two short runs (compile + ``steps`` steps each) at a small batch.
Single host only (the one-device run needs the whole batch on one process).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Sequence

import jax
import numpy as np

from mtlx import sharding as sharding_lib

DEFAULT_TOLERANCE = 1e-4
DEFAULT_STEPS = 3


def relative_differences(tree: Any, reference: Any) -> dict[str, float]:
  """``{leaf path: max|a - b| / max|b|}`` for two pytrees of the same structure
  (0 for empty leaves; ``inf`` where they disagree on non-finite values)."""
  ref = dict(jax.tree_util.tree_leaves_with_path(reference))
  out = {}
  for path, x in jax.tree_util.tree_leaves_with_path(tree):
    a = np.asarray(x, np.float64)
    b = np.asarray(ref[path], np.float64)
    if a.shape != b.shape:
      raise ValueError(f"leaf {jax.tree_util.keystr(path)} has shape {a.shape} vs "
                       f"{b.shape} in the reference; expected equal shapes.")
    if not a.size:
      out[jax.tree_util.keystr(path)] = 0.0
      continue
    with np.errstate(invalid="ignore"):
      diff = np.abs(a - b)
    same_nonfinite = (~np.isfinite(a)) & (a == b)
    diff = np.where(same_nonfinite, 0.0, diff)
    diff = np.where(np.isnan(diff), np.inf, diff)
    scale = np.abs(b[np.isfinite(b)]).max() if np.isfinite(b).any() else 1.0
    out[jax.tree_util.keystr(path)] = float(diff.max() / max(scale, 1e-30))
  return out


class CheckResult(NamedTuple):
  """What :func:`check_config` / :func:`compare_steps` return.

  Attributes:
    differences: ``{leaf path: relative difference}`` of the final params, plus
      ``'losses'`` (the task losses of every step).
    specs: ``{leaf path: PartitionSpec string}`` on the mesh.
    mesh_shape: ``{'data': .., 'model': .., 'task': ..}``.
    tolerance: the threshold.
  """
  differences: dict
  specs: dict
  mesh_shape: dict
  tolerance: float

  @property
  def worst(self) -> float:
    return max(self.differences.values()) if self.differences else 0.0

  @property
  def ok(self) -> bool:
    return self.worst <= self.tolerance

  def report(self) -> str:
    """A table: one line per leaf (worst first), then the verdict."""
    mesh = " x ".join(f"{k}={v}" for k, v in self.mesh_shape.items())
    width = max([len(k) for k in self.differences] + [4])
    lines = [f"mesh {mesh} vs one device: max relative difference per leaf",
             f"{'leaf':<{width}}  {'sharding':<28}  rel. diff"]
    for key, value in sorted(self.differences.items(), key=lambda kv: -kv[1]):
      flag = "  <-- above tolerance" if value > self.tolerance else ""
      lines.append(f"{key:<{width}}  {self.specs.get(key, ''):<28}  {value:.3g}{flag}")
    verdict = "OK" if self.ok else "FAILED"
    lines.append(f"{verdict}: worst {self.worst:.3g}, tolerance {self.tolerance:g}")
    return "\n".join(lines)

  def raise_if_failed(self) -> "CheckResult":
    """Raises ValueError (with :meth:`report`) when a difference exceeds the tolerance."""
    if not self.ok:
      raise ValueError(
          "config.mesh.verify: the sharded step does not give the one-device numbers "
          f"(worst relative difference {self.worst:.3g} > tolerance {self.tolerance:g}); "
          "expected equal numbers. Try --config.mesh.param_rule=replicated or another "
          "mesh shape, and report the model/mesh.\n" + self.report())
    return self


def compare_steps(build, batches: Sequence[Any], mesh, *, seed: int = 0,
                  tolerance: float = DEFAULT_TOLERANCE) -> CheckResult:
  """Runs the same train steps on ``mesh`` and on one device; compares params.

  Args:
    build: ``mesh_or_None -> (trainer, params)`` with ``trainer`` an
      :class:`mtlx.train.Trainer` (``init``, ``step``, ``shard_batch``).
    batches: the host batches (NumPy pytrees), one per step.
    mesh: the mesh to check.
    seed: the train state's seed.
    tolerance: the largest relative difference accepted.
  """
  def run(target_mesh):
    trainer, params = build(target_mesh)
    state = trainer.init(params, trainer.shard_batch(batches[0]), seed)
    losses = []
    for batch in batches:
      state, info = trainer.step(state, trainer.shard_batch(batch))
      losses.append(np.asarray(info["losses"]))
    return state.params, np.stack(losses)

  params_m, losses_m = run(mesh)
  specs = {jax.tree_util.keystr(p): str(x.sharding.spec) if hasattr(x.sharding, "spec")
           else str(x.sharding) for p, x in jax.tree_util.tree_leaves_with_path(params_m)}
  params_m = jax.tree.map(np.asarray, params_m)
  with jax.default_device(mesh.devices.flat[0]):
    params_1, losses_1 = run(None)
  diffs = relative_differences(params_m, jax.tree.map(np.asarray, params_1))
  diffs["losses"] = relative_differences(losses_m, losses_1)[""]
  specs["losses"] = "replicated"
  return CheckResult(diffs, specs, dict(mesh.shape), float(tolerance))


def check_config(config, *, devices=None, steps: int = DEFAULT_STEPS, batch_size: int = 0,
                 tolerance: float = DEFAULT_TOLERANCE) -> CheckResult:
  """:func:`compare_steps` for an ``experiments/train.py`` config.

  Builds the config's data, model, methods and optimizer (``experiments.train``'s
  own builders, so it checks exactly what training runs), takes ``steps`` batches
  of the train split at ``batch_size`` rows (0: the smallest multiple of
  ``config.mesh.data`` that is at least 8) and compares the mesh of
  ``config.mesh`` with one device.

  Raises:
    ValueError: for a bad config (as training would), ``steps < 1``, a negative
      ``batch_size`` or one not divisible by ``mesh.data``, or several processes.
  """
  from experiments import train as train_exp  # pylint: disable=import-outside-toplevel
  from mtlx import data as mdata  # pylint: disable=import-outside-toplevel
  if jax.process_count() > 1:
    raise ValueError(f"mtlx.sharding.check runs on one host; got {jax.process_count()} "
                     "processes. Expected a single-process launch.")
  if not isinstance(steps, int) or steps < 1:
    raise ValueError(f"steps={steps!r}; expected an int >= 1.")
  info, tasks = train_exp.validate(config)
  mesh = sharding_lib.mesh_from_config(config, devices)
  n_data = mesh.shape["data"]
  if batch_size == 0:
    batch_size = n_data * math.ceil(8 / n_data)
  if batch_size < 0 or batch_size % n_data:
    raise ValueError(f"batch_size={batch_size}; expected a positive multiple of "
                     f"mesh.data={n_data} (or 0 for the default).")
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.batch_size = batch_size
  rows = batch_size * (1 + config.extra_batches)
  iterator = mdata.make_iterator(config.dataset, config.train_split, batch_size=rows,
                                 seed=config.seed, shuffle=True,
                                 **train_exp._data_kwargs(config))  # noqa: SLF001
  batches = [next(iterator) for _ in range(steps)]
  return compare_steps(lambda m: train_exp.build_trainer(config, info, tasks, m), batches,
                       mesh, seed=config.seed, tolerance=tolerance)


def main(argv):
  from absl import flags  # pylint: disable=import-outside-toplevel
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments {argv[1:]}")
  f = flags.FLAGS
  result = check_config(f.config, steps=f.steps, batch_size=f.batch_size,
                        tolerance=f.tolerance)
  print(result.report())
  return 0 if result.ok else 1


def _cli():
  import sys  # pylint: disable=import-outside-toplevel
  from absl import app, flags  # pylint: disable=import-outside-toplevel
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  config_flags.DEFINE_config_file("config", "configs/multi_digits.py",
                                  "Path to a config file (get_config()).", lock_config=True)
  flags.DEFINE_integer("steps", DEFAULT_STEPS, "Train steps on each side.")
  flags.DEFINE_integer("batch_size", 0, "Rows per step (0: smallest multiple of "
                       "mesh.data that is at least 8).")
  flags.DEFINE_float("tolerance", DEFAULT_TOLERANCE, "Largest relative difference accepted.")
  app.run(lambda argv: sys.exit(main(argv)))


if __name__ == "__main__":
  _cli()
