"""Train one multi-task model on tasks that come from separate datasets.

  python -m experiments.train --config configs/digits_mixture.py \
      --config.sampler.name=bandit --config.method=upgrad --config.workdir=runs/dm_bandit

``experiments/train.py`` hands a config over to :func:`train_and_evaluate` here when
``config.tasks`` is a list of per-task sources (:func:`is_mixture_config`). This is
the thin, self-contained mixture layer; the lead folds it into the one step builder
(the pieces it needs are `mtlx.data.mixture`, `mtlx.data.samplers` and
`mtlx.train.task_mask`).

Config keys read (beside the usual ``method``, ``weighting``, ``*_kwargs``,
``optimizer``, ``learning_rate``, ``schedule``, ``num_steps``, ``batch_size``,
``seed``, ``workdir``, ``resume``, ``log_every``, ``eval_every``,
``checkpoint_every``, ``keep_checkpoints``, ``model``, ``model_kwargs``):

* ``tasks``: a list of source configs (`mtlx.data.sources.source_from_config`);
* ``sampler``: a nested ConfigDict (`mtlx.data.samplers.make_sampler`);
* ``eval_batch_size``; ``eval_examples`` (examples per endless task at eval).

The step: masked per-task losses (`mtlx.train.task_mask.masked_task_losses`), the
per-task gradients (``mtlx.value_and_jacobian``), the MTO chain wrapped in
`mtlx.train.task_mask.mask_absent_tasks` (told which tasks are present, so absent
tasks' method state is unchanged), then the optimizer. ``metrics.jsonl`` train
rows add ``count/<task>`` (the step's global examples of each task),
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
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import mtlx
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


def make_model(config, info):
  """``(ModelFns, params)``: ``icl_transformer`` (the stub in experiments/icl_model.py)
  or any `mtlx.models` name."""
  kwargs = dict(config.get("model_kwargs", {}) or {})
  if config.model == "icl_transformer":
    from experiments import icl_model  # pylint: disable=import-outside-toplevel
    keep = {k: kwargs[k] for k in ("width", "depth", "heads") if k in kwargs}
    return icl_model.tiny_causal_transformer(info.input_shape, info.tasks, seed=config.seed,
                                             **keep)
  from experiments import train as train_lib  # pylint: disable=import-outside-toplevel
  model = mmodels.get_model(config.model, input_shape=info.input_shape, tasks=info.tasks,
                            **train_lib.model_kwargs(config))
  return mmodels.split(model)


def make_step(fns, info, config):
  """``(init, step, eval_stats)``: the jitted mixture step (module docstring)."""
  k = info.num_tasks
  loss_tx, grad_tx = mtrain.build_mto(
      config.method, config.weighting, k,
      method_kwargs=_kwargs(config.get("method_kwargs", "")),
      weighting_kwargs=_kwargs(config.get("weighting_kwargs", "")))
  inner = grad_tx if loss_tx is None else optax.chain(loss_tx, grad_tx)
  mto = task_mask.mask_absent_tasks(inner, num_tasks=k)
  optimizer = mtrain.make_optimizer(config.optimizer, config.learning_rate,
                                    schedule=config.get("schedule", "constant"),
                                    num_steps=config.num_steps)

  def loss_fn(p, batch):
    return task_mask.masked_task_losses(info.tasks, fns.apply(p, batch[info.input_key]),
                                        batch)[0]

  def init(params):
    return {"step": jnp.zeros((), jnp.int32), "params": params, "mto": mto.init(params),
            "opt": optimizer.init(params)}

  @jax.jit
  def step(state, batch):
    p = state["params"]
    losses, task_grads = mtlx.value_and_jacobian(loss_fn)(p, batch)
    counts, present = task_mask.task_presence(batch[mixture.TASK_ID_KEY], k)
    grads, mto_state = mto.update(task_grads, state["mto"], p, task_losses=losses,
                                  task_mask=present)
    updates, opt_state = optimizer.update(grads, state["opt"], p)
    new = {"step": state["step"] + 1, "params": optax.apply_updates(p, updates),
           "mto": mto_state, "opt": opt_state}
    return new, {"losses": losses, "counts": counts}

  @jax.jit
  def eval_stats(p, batch):
    out = fns.apply(p, batch[info.input_key])
    losses, counts = task_mask.masked_task_losses(info.tasks, out, batch)
    stats = {"_loss": losses * counts, "_count": counts.astype(jnp.float32)}
    for t in info.tasks:
      stats[t.name] = {m: mmetrics.metric_stats(m, t.kind, out[t.name], batch[t.label_key],
                                                num_outputs=t.num_outputs) for m in t.metrics}
    return stats

  return init, step, eval_stats


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


def train(config, *, return_state: bool = False):
  """Runs the config; returns the last eval row (and ``(state, fns, info)``)."""
  train_sources = make_sources(config, "train")
  test_sources = make_sources(config, config.get("eval_split", "test") or "test")
  info = mixture.check_sources(train_sources)
  for t in info.tasks:
    for m in t.metrics:
      mmetrics.check_metric(m, t.kind)
  it = make_mixture_iterator(config, train_sources)  # validates the sampler config
  fns, params = make_model(config, info)
  init, step, eval_stats = make_step(fns, info, config)
  state = init(params)
  workdir = os.path.abspath(config.workdir)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  start = 0
  if config.resume and os.path.isdir(ckpt_dir):
    ckpt = mtrain.Checkpointer(ckpt_dir, max_to_keep=config.keep_checkpoints)
    if ckpt.latest_step() is not None:
      restored = ckpt.restore({"train": state, "mixture": it.state})
      state = restored["train"]
      it = make_mixture_iterator(config, train_sources, state=restored["mixture"])
      start = int(state["step"])
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
    batch = next(it)
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
        row[f"count/{n}"] = int(out["counts"][k])
        row[f"examples/{n}"] = int(it.state.cursor[k])
        row[f"p/{n}"] = float(p[k])
      now = time.perf_counter()
      row["time/step_s"] = (now - t0) / max(s - n0, 1)
      t0, n0 = now, s
      writer.write(s, "train", row)
    if s % config.eval_every == 0 or final:
      te = time.perf_counter()
      last_eval = evaluate(eval_stats, state["params"], info, test_sources, config)
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
  """The `experiments.train.train_and_evaluate` of mixture configs (one device:
  ``config.mesh`` other than all ones is a ValueError here, until the lead wires the
  mixture into the sharded step builder)."""
  del devices
  mesh = config.get("mesh", None)
  if mesh is not None and any(int(mesh.get(a, 1)) != 1 for a in ("data", "model", "task")):
    raise ValueError(f"config.mesh={dict(mesh)}: mixture runs (config.tasks a list) run on "
                     "one device for now; expected data=model=task=1.")
  return train(config)
