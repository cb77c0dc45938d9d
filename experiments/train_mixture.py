"""Train one multi-task model on tasks that come from separate datasets.

  python -m experiments.train --config configs/digits_mixture.py \
      --config.sampler.name=bandit --config.method=upgrad --config.workdir=runs/dm_bandit

``experiments/train.py`` hands a config over to :func:`train_and_evaluate` here when
``config.tasks`` is a list of per-task sources (:func:`is_mixture_config`). The
step is the library's one step builder, `mtlx.train.make_step`, with
``task_mask="task_id"`` (any engine, ``config.engine``; on a mesh with
``config.mesh``): masked per-task losses (`mtlx.train.task_mask.masked_task_losses`:
task ``k``'s mean over its own rows, 0 when absent), the engine's per-task
gradients / Gramian / single backward pass, the MTO chain told which tasks are
present (absent tasks' method state is unchanged), then the optimizer.
``metrics.jsonl`` train rows add ``count/<task>`` (the step's global examples of each task),
``weight/<task>`` (the step's task weights),
``examples/<task>`` (cumulative) and ``p/<task>`` (the sampler's probabilities);
eval rows hold ``loss/<task>`` and ``<metric>/<task>`` per task on its own test
split. The orbax checkpoint holds ``{"train": ..., "mixture": MixtureState}``, so
``resume`` continues the exact task and example sequence (adaptive samplers
included).
"""

from __future__ import annotations

import os
import shutil
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mtlx import metrics as mmetrics
from mtlx import models as mmodels
from mtlx import train as mtrain
from mtlx.data import mixture
from mtlx.data import samplers
from mtlx.data import sources as msources
from mtlx.train import task_mask


def is_mixture_config(config) -> bool:
  """Whether ``config.tasks`` is a list of per-task sources (not a subset string)."""
  tasks = config.get("tasks", None) if hasattr(config, "get") else None
  return isinstance(tasks, (list, tuple))


def make_sources(config, split: str) -> list:
  """The per-task sources of ``config.tasks`` for one split."""
  return [msources.source_from_config(t, split, seed=int(config.get("data_seed", 0)))
          for t in config.tasks]


def make_mixture_iterator(config, train_sources, state=None) -> mixture.MixtureIterator:
  """``config.tasks`` + ``config.sampler`` -> this host's `MixtureIterator` (global
  batch ``batch_size × process count``)."""
  sampler = samplers.make_sampler(config.sampler, len(train_sources),
                                  [s.num_examples for s in train_sources])
  return mixture.MixtureIterator(train_sources, sampler, batch_size=config.batch_size,
                                 seed=config.seed, process_index=jax.process_index(),
                                 process_count=jax.process_count(), state=state)


ICL_MODELS = ("icl_gpt", "icl_transformer")  # the second: the old name


def make_model(config, info):
  """``(ModelFns, params)``: ``icl_gpt`` (the library GPT read out at every x token,
  `experiments.icl_model`) or any `mtlx.models` name."""
  kwargs = dict(config.get("model_kwargs", {}) or {})
  if config.model in ICL_MODELS:
    from experiments import icl_model  # pylint: disable=import-outside-toplevel
    if "width" in kwargs:  # the old stub's spelling
      kwargs["dim"] = kwargs.pop("width")
    keep = {k: kwargs[k] for k in ("preset", "dim", "depth", "heads") if k in kwargs}
    return mmodels.split(icl_model.icl_gpt(info.input_shape, info.tasks, seed=config.seed,
                                           **keep))
  from experiments import train as train_lib  # pylint: disable=import-outside-toplevel
  model = mmodels.get_model(config.model, input_shape=info.input_shape, tasks=info.tasks,
                            **train_lib.model_kwargs(config))
  return mmodels.split(model)


class MixtureStep(NamedTuple):
  """What :func:`make_step` returns: the one step builder's :class:`mtlx.train.Step`
  (``step.init``, ``step.step``, ``step.shard_batch``, …) and the eval function."""
  step: Any
  eval_stats: Any


def make_step(fns, info, config, *, params=None, example_batch=None,
              mesh=None) -> MixtureStep:
  """The mixture step: `mtlx.train.make_step` with ``task_mask="task_id"`` on the
  masked per-task losses (module docstring), any engine (``config.engine``), on
  ``mesh`` when given; and the jitted per-task eval sums."""
  from experiments import train as train_lib  # pylint: disable=import-outside-toplevel
  k = info.num_tasks
  loss_tx, grad_tx = mtrain.build_mto(
      config.method, config.weighting, k,
      method_kwargs=_kwargs(config.get("method_kwargs", "")),
      weighting_kwargs=_kwargs(config.get("weighting_kwargs", "")))
  optimizer = mtrain.make_optimizer(config.optimizer, config.learning_rate,
                                    schedule=config.get("schedule", "constant"),
                                    num_steps=config.num_steps)

  def heads(dec, z, batch):
    return task_mask.masked_task_losses(info.tasks, fns.decode(dec, z, batch[info.input_key]),
                                        batch)[0]

  def loss_fn(p, batch):
    return heads(p["decoder"], fns.encode(p["encoder"], batch[info.input_key]), batch)

  rep = mtrain.Representation(lambda enc, batch: fns.encode(enc, batch[info.input_key]), heads)
  st = mtrain.make_step(
      loss_fn, loss_tx=loss_tx, grad_tx=grad_tx, optimizer=optimizer,
      engine=train_lib.engine(config), params=params, example_batch=example_batch,
      representation=rep, mesh=mesh, task_mask=mixture.TASK_ID_KEY,
      label=f"weighting={config.weighting!r}, method={config.method!r}")

  @jax.jit
  def eval_stats(p, batch):
    out = fns.apply(p, batch[info.input_key])
    losses, counts = task_mask.masked_task_losses(info.tasks, out, batch)
    stats = {"_loss": losses * counts, "_count": counts.astype(jnp.float32)}
    for t in info.tasks:
      stats[t.name] = {m: mmetrics.metric_stats(m, t.kind, out[t.name], batch[t.label_key],
                                                num_outputs=t.num_outputs) for m in t.metrics}
    return stats

  return MixtureStep(st, eval_stats)


def _kwargs(value) -> dict:
  from experiments import train as train_lib  # pylint: disable=import-outside-toplevel
  return train_lib.parse_kwargs(value)


def evaluate(eval_stats, params, info, test_sources, config) -> dict:
  """Per task, on its own test source: ``loss/<task>`` and ``<metric>/<task>``."""
  row = {}
  limit = int(config.get("eval_examples", 0) or 0) or None
  for k, (task, src) in enumerate(zip(info.tasks, test_sources)):
    sums = None
    for batch in mixture.single_task_batches(test_sources, k, batch_size=config.eval_batch_size,
                                             limit=limit if src.num_examples is None else None):
      sums = mmetrics.accumulate(sums, jax.device_get(eval_stats(params, batch)))
    row[f"loss/{task.name}"] = float(sums["_loss"][k]) / max(float(sums["_count"][k]), 1.0)
    for m in task.metrics:
      row[f"{m}/{task.name}"] = mmetrics.finalize_metric(m, sums[task.name][m])
  return row


def make_mesh(config, devices=None):
  """``None`` for ``config.mesh`` all ones (one device, plain ``jit``), else the mesh
  (`mtlx.sharding.mesh_from_config`); the global batch must divide over ``data``."""
  mesh_cfg = config.get("mesh", None)
  if mesh_cfg is None or all(int(mesh_cfg.get(a, 1)) == 1 for a in ("data", "model", "task")):
    return None
  from mtlx import sharding  # pylint: disable=import-outside-toplevel
  mesh = sharding.mesh_from_config(config, devices=devices)
  rows = int(config.batch_size) * jax.process_count()
  if rows % mesh.shape["data"]:
    raise ValueError(f"config.batch_size={config.batch_size} (x {jax.process_count()} "
                     f"process(es) = {rows} rows) is not divisible by config.mesh.data="
                     f"{mesh.shape['data']}; expected a multiple.")
  return mesh


def train(config, *, return_state: bool = False, devices=None):
  """Runs the config; returns the last eval row (and ``(state, fns, info)``).

  On a mesh (``config.mesh``) each host reads its own rows of the global batch
  (`MixtureIterator`) and the step splits them over the ``data`` axis in contiguous
  blocks (`mtlx.train.make_step` with ``mesh=``): no row is read or used twice."""
  mesh = make_mesh(config, devices)
  train_sources = make_sources(config, "train")
  test_sources = make_sources(config, config.get("eval_split", "test") or "test")
  info = mixture.check_sources(train_sources)
  for t in info.tasks:
    for m in t.metrics:
      mmetrics.check_metric(m, t.kind)
  it = make_mixture_iterator(config, train_sources)  # validates the sampler config
  fns, params = make_model(config, info)
  example = next(make_mixture_iterator(config, train_sources))  # a fresh stream's first batch
  ms = make_step(fns, info, config, params=params, example_batch=example, mesh=mesh)
  step, eval_stats = ms.step.step, ms.eval_stats
  state = ms.step.init(params, ms.step.shard_batch(example), config.seed)
  workdir = os.path.abspath(config.workdir)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  start = 0
  if config.resume and os.path.isdir(ckpt_dir):
    ckpt = mtrain.Checkpointer(ckpt_dir, max_to_keep=config.keep_checkpoints)
    if ckpt.latest_step() is not None:
      restored = ckpt.restore({"train": state, "mixture": it.state})
      state = restored["train"]
      it = make_mixture_iterator(config, train_sources, state=restored["mixture"])
      start = int(state.step)
  else:
    if os.path.isdir(ckpt_dir) and os.listdir(ckpt_dir):
      raise ValueError(f"config.workdir={workdir!r} already holds checkpoints; expected "
                       "config.resume=True to continue it, or an empty workdir.")
    if os.path.isdir(ckpt_dir):
      shutil.rmtree(ckpt_dir)
    ckpt = mtrain.Checkpointer(ckpt_dir, max_to_keep=config.keep_checkpoints)
  os.makedirs(workdir, exist_ok=True)
  chief = jax.process_index() == 0
  if chief:
    mtrain.MetricWriter.truncate(workdir, start)
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
  writer = mtrain.MetricWriter(workdir, tensorboard=bool(config.get("tensorboard", False)),
                               enabled=chief)
  names = info.task_names
  last_eval: dict = {}
  t0, n0 = time.perf_counter(), start
  for s in range(start + 1, config.num_steps + 1):
    p = it.sampler.probabilities(it.state.sampler, int(it.state.step))
    batch = ms.step.shard_batch(next(it))
    counts = it.last_counts
    state, out = step(state, batch)
    if it.sampler.adaptive:
      it.update(np.asarray(jax.device_get(out["losses"])))
    else:
      it.update(np.zeros(len(names)))
    final = s == config.num_steps
    if s % config.log_every == 0 or final:
      out = jax.device_get(out)
      row = {}
      for k, n in enumerate(names):
        row[f"loss/{n}"] = float(out["losses"][k])
        row[f"count/{n}"] = int(counts[k])
        row[f"weight/{n}"] = float(out["weights"][k])
        row[f"examples/{n}"] = int(it.state.cursor[k])
        row[f"p/{n}"] = float(p[k])
      now = time.perf_counter()
      row["time/step_s"] = (now - t0) / max(s - n0, 1)
      t0, n0 = now, s
      writer.write(s, "train", row)
    if s % config.eval_every == 0 or final:
      te = time.perf_counter()
      last_eval = evaluate(eval_stats, state.params, info, test_sources, config)
      writer.write(s, "eval", last_eval)
      t0 += time.perf_counter() - te
    if s % config.checkpoint_every == 0 or final:
      ckpt.save(s, {"train": state, "mixture": it.state}, force=final)
  ckpt.close()
  writer.close()
  if not last_eval:
    rows = [r for r in mtrain.read_jsonl(writer.path) if r["split"] == "eval"]
    last_eval = {k: v for k, v in rows[-1].items() if k not in ("step", "split")} if rows else {}
  if return_state:
    return last_eval, (state, fns, info)
  return last_eval


def train_and_evaluate(config, *, devices=None) -> dict:
  """The `experiments.train.train_and_evaluate` of mixture configs (on the devices
  ``config.mesh`` lays out; default all of them)."""
  return train(config, devices=devices)
