"""Train one multi-task model with one chain of MTO methods.

  python -m experiments.train --config configs/multi_digits.py \
      --config.method=pcgrad --config.weighting=none --config.workdir=runs/md_pcgrad

Reads the config (an ``ml_collections.ConfigDict``; see ``configs/multi_digits.py``
for every key), builds the data iterator (``mtlx.data``), the model
(``mtlx.models``) and the jitted step (``mtlx.train.make_trainer``: one backward
pass for loss-space methods, the per-task Jacobian for gradient-space ones, or the
representation-level Jacobian with ``rep_grad=True``), then trains.

Writes to ``workdir``: ``config.json``; ``metrics.jsonl`` (``split="train"`` rows
every ``log_every`` steps with ``loss/<task>``, ``weight/<task>``, ``grad_norm``,
``cos/<a>/<b>`` (every pair up to 16 tasks), ``cos_mean``, ``cos_min``,
``cos_frac_negative`` and ``time/step_s``; ``split="eval"`` (and ``"val"``) rows every
``eval_every`` steps with ``loss/<task>`` and ``<metric>/<task>``); TensorBoard
events under ``tb/`` (tensorboardX); orbax checkpoints under ``checkpoints/``
every ``checkpoint_every`` steps and at the end. ``--config.resume=True``
continues from the latest checkpoint and ends with exactly the params and
metrics of an uninterrupted run (the data stream restarts at the checkpoint's
step, and the PRNG key and every optimizer/method state are in the checkpoint).

On a device mesh (``mtlx.sharding``)::

  python -m experiments.train --config configs/multi_digits.py \
      --config.mesh.data=4 --config.mesh.model=2 [--config.mesh.param_rule=fsdp]

``config.mesh.{data,model,task}`` are the mesh axis sizes (their product must be
the device count, checked before anything is built), ``param_rule`` is
``fsdp`` (large leaves split over ``model``) or ``replicated``, ``shard_tasks``
splits the per-task grads' K axis over ``task``. The same jitted step then runs
with ``NamedSharding`` s on the whole train state and the batch. Multi-host:
``jax.distributed.initialize()`` runs first (``mtlx.sharding.initialize_distributed``,
when the launch sets the usual variables); ``config.batch_size`` is per host
(the global batch is ``batch_size × process count``), each host reads its own
slice of every batch and of the eval splits; only process 0 writes files; every
host writes its shards of the orbax checkpoints, and ``resume`` restores them
onto the current mesh, whatever mesh wrote them.
"""

from __future__ import annotations

import ast
import inspect
import json
import os
import re
import shutil
import time
from typing import Any

from absl import app
from absl import flags
from absl import logging
import jax
import ml_collections
import numpy as np

import mtlx
from mtlx import data as mdata
from mtlx import sharding
from mtlx import metrics as mmetrics
from mtlx import models as mmodels
from mtlx import train as mtrain


def parse_kwargs(value: Any) -> dict:
  """``"c=0.4,rescale=1"`` (or a dict / ConfigDict) -> ``{'c': 0.4, 'rescale': 1}``."""
  if isinstance(value, ml_collections.ConfigDict):
    return value.to_dict()
  if isinstance(value, dict):
    return dict(value)
  out = {}
  parts = re.split(r",(?=\s*[A-Za-z_]\w*\s*=)", str(value or ""))
  for part in filter(None, (p.strip() for p in parts)):
    if "=" not in part:
      raise ValueError(f"kwargs entry {part!r}; expected 'name=value'.")
    key, raw = part.split("=", 1)
    try:
      out[key.strip()] = ast.literal_eval(raw.strip())
    except (ValueError, SyntaxError):
      out[key.strip()] = raw.strip()
  return out


def select_tasks(info, names: str):
  """The dataset's tasks, or the comma-separated subset ``names`` (in that order)."""
  if not names:
    return tuple(info.tasks)
  by_name = {t.name: t for t in info.tasks}
  chosen = [n.strip() for n in names.split(",") if n.strip()]
  bad = [n for n in chosen if n not in by_name]
  if bad:
    raise ValueError(f"config.tasks names {bad}, not tasks of {info.name!r}; expected "
                     f"some of {list(by_name)}.")
  return tuple(by_name[n] for n in chosen)


def model_kwargs(config) -> dict:
  """The ``config.model_kwargs`` entries the chosen model's constructor takes."""
  if config.model not in mmodels.REGISTRY:
    raise ValueError(f"config.model={config.model!r}; expected one of "
                     f"{mmodels.model_names()}.")
  accepted = inspect.signature(mmodels.REGISTRY[config.model]).parameters
  kw = {k: v for k, v in parse_kwargs(config.model_kwargs).items() if k in accepted}
  kw = {k: tuple(v) if isinstance(v, list) else v for k, v in kw.items()}
  kw["seed"] = int(config.seed)
  # Transformers (vit, gpt): compute dtype and per-block remat from the top-level keys.
  if "dtype" in accepted and config.get("compute_dtype"):
    kw["dtype"] = str(config.compute_dtype)
  if "remat" in accepted and config.get("remat") is not None:
    kw["remat"] = bool(config.remat)
  return kw


def validate(config) -> tuple[Any, tuple]:
  """Checks every name in the config before anything is built or trained.

  Returns the dataset info and the selected tasks. Raises ValueError naming the
  key, what was given and the valid names.
  """
  if config.dataset not in mdata.dataset_names():
    raise ValueError(f"config.dataset={config.dataset!r}; expected one of "
                     f"{mdata.dataset_names()}.")
  mtrain.check_method_names(config.method, config.weighting)
  model_kwargs(config)
  mtrain.make_optimizer(config.optimizer, config.learning_rate, schedule=config.schedule)
  info = mdata.get_info(config.dataset, **parse_kwargs(config.builder_kwargs))
  tasks = select_tasks(info, config.tasks)
  for split in filter(None, (config.train_split, config.eval_split, config.val_split)):
    if split not in info.splits:
      raise ValueError(f"split {split!r} is not a split of {info.name!r}; expected one "
                       f"of {list(info.splits)}.")
  for t in tasks:
    for m in t.metrics:
      mmetrics.check_metric(m, t.kind)
  return info, tasks


def _data_kwargs(config) -> dict:
  return dict(data_dir=config.data_dir or None, manual_dir=config.manual_dir or None,
              builder_kwargs=parse_kwargs(config.builder_kwargs))


def evaluate(trainer, params, config, tasks, split: str) -> dict:
  """Per-task loss and metrics over a whole split (stored order, last batch kept).

  Each host reads its slice of the split (``eval_batch_size`` rows per host and
  batch; with several hosts the last ``n mod process_count`` examples are left out,
  as ``mtlx.data`` splits a split into equal parts); the statistics are sums over
  the global (sharded) batch, so they are totals across hosts.
  """
  sums = None
  for batch in mdata.make_iterator(config.dataset, split, batch_size=config.eval_batch_size,
                                   shuffle=False, num_epochs=1, drop_remainder=False,
                                   process_index=jax.process_index(),
                                   process_count=jax.process_count(),
                                   **_data_kwargs(config)):
    stats = trainer.eval_stats(params, trainer.shard_eval_batch(batch))
    sums = mmetrics.accumulate(sums, jax.device_get(stats))
  return mtrain.finalize_eval(tasks, sums)


MAX_COSINE_PAIRS_TASKS = 16  # log every pairwise cosine up to this many tasks


def _train_row(info: dict, names) -> dict:
  row = {}
  for i, n in enumerate(names):
    row[f"loss/{n}"] = float(info["losses"][i])
    row[f"weight/{n}"] = float(info["weights"][i])
  row["grad_norm"] = float(info["grad_norm"])
  if "cosines" in info and len(names) > 1:
    c = np.asarray(info["cosines"], np.float64)
    off = c[np.triu_indices(len(names), 1)]
    row.update({"cos_mean": float(off.mean()), "cos_min": float(off.min()),
                "cos_frac_negative": float(np.mean(off < 0))})
    if len(names) <= MAX_COSINE_PAIRS_TASKS:  # every pair; beyond, the summary only
      for i, a in enumerate(names):
        for j in range(i + 1, len(names)):
          row[f"cos/{a}/{names[j]}"] = float(c[i, j])
  return row


def _mesh_option(config, key: str, default):
  mesh = config.get("mesh") or {}
  return mesh.get(key, default) if hasattr(mesh, "get") else default


def make_mesh(config, devices=None):
  """The mesh ``config.mesh`` asks for (ValueError, before training, if the product
  of its sizes is not the device count)."""
  return sharding.mesh_from_config(config, devices=devices)


def train_and_evaluate(config: ml_collections.ConfigDict, *, devices=None) -> dict:
  """Trains as the config says and returns the last ``eval`` row's values.

  ``devices``: the devices the mesh ``config.mesh`` lays out (default: all of
  them, ``jax.devices()``); the product of the mesh sizes must equal their number.
  Multi-host entry points call ``mtlx.sharding.initialize_distributed()`` before
  this (``main`` does).
  """
  info, tasks = validate(config)
  mesh = make_mesh(config, devices)  # a wrong mesh fails here, before anything is built
  workdir = os.path.abspath(config.workdir)
  names = tuple(t.name for t in tasks)
  global_rows = config.batch_size * (1 + config.extra_batches) * jax.process_count()
  if global_rows % mesh.shape["data"]:
    raise ValueError(
        f"config.batch_size={config.batch_size} (x {1 + config.extra_batches} "
        f"mini-batches x {jax.process_count()} process(es) = {global_rows} rows) is not "
        f"divisible by config.mesh.data={mesh.shape['data']}; expected a multiple.")

  model = mmodels.get_model(config.model, input_shape=info.input_shape, tasks=tasks,
                            **model_kwargs(config))
  fns, params = mmodels.split(model)
  optimizer = mtrain.make_optimizer(
      config.optimizer, config.learning_rate, schedule=config.schedule,
      num_steps=config.num_steps, warmup_steps=config.warmup_steps,
      weight_decay=config.weight_decay, momentum=config.momentum,
      grad_clip=config.grad_clip)
  trainer = mtrain.make_trainer(
      fns, tasks, info.input_key, params, method=config.method, weighting=config.weighting,
      optimizer=optimizer, rep_grad=config.rep_grad,
      method_kwargs=parse_kwargs(config.method_kwargs),
      weighting_kwargs=parse_kwargs(config.weighting_kwargs),
      chunk_size=config.chunk_size or None, extra_batches=config.extra_batches,
      mesh=mesh, param_rule=_mesh_option(config, "param_rule", "fsdp"),
      shard_tasks=bool(_mesh_option(config, "shard_tasks", True)),
      min_size=int(_mesh_option(config, "min_size", 2 ** 10)))
  # With extra_batches (MoDo, SDMGrad) every step reads 1 + extra_batches mini-batches.
  # batch_size is per host: each host reads its own slice of every global batch.
  train_iter_kw = dict(batch_size=config.batch_size * (1 + config.extra_batches),
                       seed=config.seed, shuffle=True, process_index=jax.process_index(),
                       process_count=jax.process_count(), **_data_kwargs(config))
  example = trainer.shard_batch(
      next(mdata.make_iterator(config.dataset, config.train_split, **train_iter_kw)))
  state = trainer.init(params, example, config.seed)  # placed on the mesh
  try:  # trace the step once: a method's errors surface here, before training
    jax.eval_shape(trainer.step, state, example)
  except ValueError as e:
    if "second, independent mini-batch" in str(e) and not config.extra_batches:
      raise ValueError(f"{e} With experiments/train.py: set config.extra_batches=1 "
                       "(or 2 for a third batch).") from e
    raise

  # Fresh run or resume.
  ckpt_dir = os.path.join(workdir, "checkpoints")
  start = 0
  if config.resume and os.path.isdir(ckpt_dir):
    ckpt = mtrain.Checkpointer(ckpt_dir, max_to_keep=config.keep_checkpoints)
    if ckpt.latest_step() is not None:
      state = ckpt.restore(state)  # onto the shardings of `state`: this run's mesh
      start = int(state.step)
      logging.info("resumed from step %d of %s", start, ckpt_dir)
  else:
    if os.path.isdir(ckpt_dir) and os.listdir(ckpt_dir):
      raise ValueError(f"config.workdir={workdir!r} already holds checkpoints; expected "
                       "config.resume=True to continue it, or an empty workdir.")
    if os.path.isdir(ckpt_dir):
      shutil.rmtree(ckpt_dir)
    ckpt = mtrain.Checkpointer(ckpt_dir, max_to_keep=config.keep_checkpoints)
  os.makedirs(workdir, exist_ok=True)
  chief = sharding.is_primary_host()  # the only process that writes files
  if chief:
    mtrain.MetricWriter.truncate(workdir, start)  # fresh: empty; resume: up to the checkpoint
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
  writer = mtrain.MetricWriter(workdir, tensorboard=config.tensorboard, enabled=chief)
  logging.info("model %s (%d params), path %s, tasks %s, mesh %s", config.model,
               mmodels.count_params(params), trainer.path, names, dict(mesh.shape))

  train_iter = mdata.make_iterator(config.dataset, config.train_split, start_step=start,
                                   **train_iter_kw)
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  bar = tqdm(total=config.num_steps, initial=start, disable=not config.progress,
             desc=f"{config.weighting}+{config.method}", dynamic_ncols=True)
  last_eval: dict = {}
  t0, n0 = time.perf_counter(), start
  for step in range(start, config.num_steps):
    state, step_info = trainer.step(state, trainer.shard_batch(next(train_iter)))
    s = step + 1
    final = s == config.num_steps
    if s % config.log_every == 0 or final:
      row = _train_row(jax.device_get(step_info), names)
      now = time.perf_counter()
      row["time/step_s"] = (now - t0) / max(s - n0, 1)
      t0, n0 = now, s
      writer.write(s, "train", row)
      bar.set_postfix({n: f"{row[f'loss/{n}']:.3f}" for n in names}
                      | {"ms/step": f"{1e3 * row['time/step_s']:.1f}"})
    if s % config.eval_every == 0 or final:
      te = time.perf_counter()
      if config.val_split:
        writer.write(s, "val", evaluate(trainer, state.params, config, tasks,
                                        config.val_split))
      last_eval = evaluate(trainer, state.params, config, tasks, config.eval_split)
      writer.write(s, "eval", last_eval | {"time/eval_s": time.perf_counter() - te})
      t0 += time.perf_counter() - te  # eval time is not step time
    if s % config.checkpoint_every == 0 or final:
      ckpt.save(s, state, force=final)
    bar.update(1)
  bar.close()
  ckpt.close()
  writer.close()
  if not last_eval:  # resumed a finished run: report its last eval row
    rows = [r for r in mtrain.read_jsonl(writer.path) if r["split"] == "eval"]
    last_eval = {k: v for k, v in rows[-1].items() if k not in ("step", "split")} if rows else {}
  return last_eval


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  sharding.initialize_distributed()  # multi-host launches; a no-op otherwise
  config = flags.FLAGS.config
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  result = train_and_evaluate(config)
  print(json.dumps({"workdir": os.path.abspath(config.workdir), "eval": result}, indent=1))


if __name__ == "__main__":
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  config_flags.DEFINE_config_file("config", "configs/multi_digits.py",
                                  "Path to a config file (get_config()).",
                                  lock_config=True)
  app.run(main)
