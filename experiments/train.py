"""Train one multi-task model with one chain of MTO methods.

  python -m experiments.train --config configs/multi_digits.py \
      --config.method=pcgrad --config.weighting=none --config.workdir=runs/md_pcgrad

Reads the config (an ``ml_collections.ConfigDict``; see ``configs/multi_digits.py``
for every key), builds the data iterator (``mtlx.data``), the model
(``mtlx.models``) and the jitted step (``mtlx.train.make_trainer`` on
``mtlx.train.make_step``), then trains. ``config.engine`` picks how the step gets
the task gradients: ``one_backward`` (loss-only weightings with LS), ``gramian``
(``mtlx.value_and_gramian``: Gramian methods without the K × P Jacobian),
``jacobian`` (every method), ``representation`` (``rep_grad=True``), or ``auto``
(the cheapest that serves the methods; the choice is logged and written to
``config.json`` as ``engine_used``). An engine that cannot serve the methods fails
before anything is built, saying which can. ``config.method_kwargs``,
``config.weighting_kwargs`` and ``config.model_kwargs`` are ConfigDicts passed to
the constructors (an unknown key: ``ValueError`` naming it and the accepted ones).
``config.flat_regions.rho`` > 0 adds task-based flat regions to any method
(``mtlx.flat_regions``; jacobian engine; a second Jacobian per step);
``config.calibrate_branches`` (param-path prefixes) equalises each task's gradient
norm across the model's branches first (``mtlx.calibrate_magnitudes``, FULLER);
``config.rep_mtl.{tsr,csa}_weight`` > 0 adds Rep-MTL's saliency penalties to linear
scalarization (``mtlx.rep_mtl.rep_mtl_heads``; best on ``engine='representation'``);
``config.focal_gamma`` > 0 trains every classification task on MFTCoder's token-level
focal loss (``mtlx.task_losses.focal_task_losses``).

Writes to ``workdir``: ``config.json``; ``metrics.jsonl`` (``split="train"`` rows
every ``log_every`` steps with ``loss/<task>``, ``weight/<task>`` (``weights_exact``
1: the weights the methods used; 0: the least-squares fit of the update), ``grad_norm``,
``cos/<a>/<b>`` (every pair up to 16 tasks), ``cos_mean``, ``cos_min``,
``cos_frac_negative`` and ``time/step_s``; ``split="eval"`` (and ``"val"``) rows every
``eval_every`` steps with ``loss/<task>`` and ``<metric>/<task>``; with
``config.affinity_every`` N > 0, ``split="affinity"`` rows every N steps with
``affinity/<i>/<j>``, TAG's lookahead affinity of task i onto task j at the
params before that step, on its batch (``mtlx.affinity.affinity_fn``: one Jacobian
and K forward passes each time), and at the end ``affinity.json``, their mean and
the task-grouping search on it); TensorBoard
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
``fsdp`` (large leaves split over ``model``), ``zero3`` (stored as ``fsdp``,
gathered for the step, the batch over ``data × model``: less traffic for large
batches, see ``mtlx.sharding``) or ``replicated``, ``shard_tasks``
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
import sys
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
from mtlx import registry
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
  """``config.model_kwargs`` for the chosen model's constructor (with ``seed``).

  ``config.model_kwargs`` is a ConfigDict of the model's constructor arguments, or
  one ConfigDict per model name (``model_kwargs.hps``, ``model_kwargs.mmoe``...),
  of which the chosen model's is used. An argument the constructor does not take
  is a ``ValueError`` naming it and the accepted ones.
  """
  if config.model not in mmodels.REGISTRY:
    raise ValueError(f"config.model={config.model!r}; expected one of "
                     f"{mmodels.model_names()}.")
  kw = parse_kwargs(config.model_kwargs)
  if any(isinstance(v, dict) for v in kw.values()) and set(kw) <= set(mmodels.model_names()):
    kw = dict(kw.get(config.model, {}))
  accepted = sorted(n for n in inspect.signature(mmodels.REGISTRY[config.model]).parameters
                    if n not in ("input_shape", "tasks", "seed"))
  unknown = sorted(set(kw) - set(accepted))
  if unknown:
    raise ValueError(f"config.model_kwargs has key(s) {unknown} that model "
                     f"{config.model!r} does not take; expected some of {accepted}.")
  kw = {k: tuple(v) if isinstance(v, list) else v for k, v in kw.items()}
  kw["seed"] = int(config.seed)
  # Transformers (vit, gpt): compute dtype and per-block remat from the top-level keys.
  if "dtype" in accepted and config.get("compute_dtype"):
    kw["dtype"] = str(config.compute_dtype)
  if "remat" in accepted and config.get("remat") is not None:
    kw["remat"] = bool(config.remat)
  return kw


def engine(config) -> str:
  """``config.engine`` (``'auto'`` when absent); ``rep_grad=True`` spells
  ``'representation'``."""
  name = config.get("engine", "auto") or "auto"
  if config.get("rep_grad", False):
    if name not in ("auto", "representation"):
      raise ValueError(f"config.rep_grad=True is config.engine='representation'; got "
                       f"config.engine={name!r}. Expected one of them alone.")
    name = "representation"
  if name != "auto" and name not in mtrain.ENGINES:
    raise ValueError(f"config.engine={name!r}; expected 'auto' or one of "
                     f"{list(mtrain.ENGINES)}.")
  return name


def build_methods(config, num_tasks: int):
  """``(loss_tx, grad_tx)`` of the config (unknown names or constructor arguments:
  ``ValueError`` naming them and the valid ones), checked against ``config.engine``."""
  loss_tx, grad_tx = registry.build(
      config.method, config.weighting, num_tasks,
      method_kwargs=parse_kwargs(config.method_kwargs),
      weighting_kwargs=parse_kwargs(config.weighting_kwargs))
  name = engine(config)
  if name != "auto":
    mtrain.check_engine(name, loss_tx, grad_tx, extra_batches=config.extra_batches,
                        label=f"config.weighting={config.weighting!r}, "
                              f"config.method={config.method!r}",
                        **({"flat_regions_rho": flat_regions_rho(config)}
                           if flat_regions_rho(config) else {}))
  return loss_tx, grad_tx


def rep_mtl_kwargs(config) -> dict | None:
  """``config.rep_mtl`` (``{tsr_weight, csa_weight, temperature}``) when a weight is
  > 0, else None; Rep-MTL is a regulariser of linear scalarization (``method='ls'``,
  ``weighting='none'``: ValueError otherwise)."""
  kw = config.get("rep_mtl") or {}
  kw = kw.to_dict() if hasattr(kw, "to_dict") else dict(kw)
  check = mtlx.validation.check_number
  check(kw.get("tsr_weight", 0.0), "config.rep_mtl.tsr_weight", low=0)
  check(kw.get("csa_weight", 0.0), "config.rep_mtl.csa_weight", low=0)
  check(kw.get("temperature", 0.1), "config.rep_mtl.temperature", low=0, low_open=True)
  if not (kw.get("tsr_weight") or kw.get("csa_weight")):
    return None
  if (config.method, config.weighting) != ("ls", "none"):
    raise ValueError(f"config.rep_mtl adds Rep-MTL's penalties to linear scalarization; got "
                     f"config.method={config.method!r}, config.weighting="
                     f"{config.weighting!r}; expected 'ls' and 'none'.")
  return kw


def flat_regions_rho(config) -> float:
  """``config.flat_regions.rho`` (0 when absent: off)."""
  fr = config.get("flat_regions") or {}
  return float(fr.get("rho", 0.0) or 0.0) if hasattr(fr, "get") else 0.0


def resume_mode(config):
  """``config.resume`` as ``False``, ``True`` or ``"auto"`` (strings accepted)."""
  value = config.get("resume", False)
  if isinstance(value, str):
    value = {"true": True, "1": True, "false": False, "0": False, "": False,
             "auto": "auto"}.get(value.strip().lower(), value)
  if not (isinstance(value, bool) or value == "auto"):
    raise ValueError(f"config.resume={config.get('resume')!r} is not valid; expected "
                     "False (fresh run), True (continue; error if no checkpoint) or "
                     "'auto' (continue if there is a checkpoint, else start fresh).")
  return value


POSITIVE_SIZES = ("widths", "hidden", "head_hidden", "num_experts", "num_levels", "k",
                  "num_heads", "embed_dim", "depth")


def check_numbers(config) -> None:
  """Checks every number of the config (steps, cadences, sizes, model sizes).

  Raises one ``ValueError`` naming the key, the value and the valid range, before
  the workdir is created.
  """
  check = mtlx.validation.check_number
  for key in ("num_steps", "log_every", "eval_every", "checkpoint_every",
              "keep_checkpoints", "batch_size", "eval_batch_size"):
    check(config[key], f"config.{key}", low=1, integer=True)
  check(config.get("max_nonfinite_steps", DEFAULT_MAX_NONFINITE_STEPS),
        "config.max_nonfinite_steps", low=1, integer=True)
  check(config.extra_batches, "config.extra_batches", low=0, integer=True)
  check(config.chunk_size, "config.chunk_size", low=0, integer=True)
  check(config.seed, "config.seed", integer=True)
  check(flat_regions_rho(config), "config.flat_regions.rho", low=0)
  rep_mtl_kwargs(config)
  check(config.get("focal_gamma", 0.0) or 0.0, "config.focal_gamma", low=0)
  check(config.get("affinity_every", 0) or 0, "config.affinity_every", low=0, integer=True)
  check(config.get("affinity_learning_rate", 0.0) or 0.0, "config.affinity_learning_rate",
        low=0)
  # Transformers: the MoE balance loss's weight, outside the K task losses (0: off).
  check(config.get("moe_aux_weight", 0.0), "config.moe_aux_weight", low=0)
  check(parse_kwargs(config.model_kwargs).get("dropout", 0.0), "config.model_kwargs.dropout",
        low=0, high=1, high_open=True)
  for key, value in parse_kwargs(config.model_kwargs).items():
    values = value if isinstance(value, (list, tuple)) else [value]
    for v in values:
      if isinstance(v, bool) or not isinstance(v, (int, float)):
        continue
      if isinstance(v, int):  # sizes >= 1; other counts (shared experts ...) >= 0
        check(v, f"config.model_kwargs.{key}", low=1 if key in POSITIVE_SIZES else 0,
              integer=True)
      else:
        check(v, f"config.model_kwargs.{key}")
  resume_mode(config)


def validate(config) -> tuple[Any, tuple]:
  """Checks every name and number in the config before anything is built or trained.

  Returns the dataset info and the selected tasks. Raises ValueError naming the
  key, what was given and the valid names or range.
  """
  check_numbers(config)
  if config.dataset not in mdata.dataset_names():
    raise ValueError(f"config.dataset={config.dataset!r}; expected one of "
                     f"{mdata.dataset_names()}.")
  mtrain.check_method_names(config.method, config.weighting)
  model_kwargs(config)
  engine(config)
  mtrain.make_optimizer(config.optimizer, config.learning_rate, schedule=config.schedule)
  info = mdata.get_info(config.dataset, **parse_kwargs(config.builder_kwargs))
  tasks = select_tasks(info, config.tasks)
  build_methods(config, len(tasks))  # unknown constructor arguments, engine that cannot serve
  for split in filter(None, (config.train_split, config.eval_split, config.val_split)):
    if split not in info.splits:
      raise ValueError(f"split {split!r} is not a split of {info.name!r}; expected one "
                       f"of {list(info.splits)}.")
  for t in tasks:
    for m in t.metrics:
      mmetrics.check_metric(m, t.kind)
  return info, tasks


DEFAULT_MAX_NONFINITE_STEPS = 3

# Keys a resumed run may change. The optimizer's keys need
# config.resume_allow_optimizer_change=True; every other key (method, weighting,
# model and its sizes, dataset, tasks, seed, batch size ...) must equal the stored one.
MUTABLE_ON_RESUME = ("num_steps", "log_every", "eval_every", "checkpoint_every",
                     "keep_checkpoints", "progress", "tensorboard", "eval_batch_size",
                     "eval_split", "val_split", "workdir", "resume", "data_dir",
                     "manual_dir", "mesh", "chunk_size", "max_nonfinite_steps",
                     "protocol", "last_k", "resume_allow_optimizer_change", "engine_used")
OPTIMIZER_KEYS = ("learning_rate", "schedule", "warmup_steps", "weight_decay", "momentum",
                  "grad_clip")


def _flat(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
  return out


def config_changes(stored: dict, new: dict, *, allow_optimizer_change: bool = False) -> dict:
  """The differences between a stored run's config and the resuming one.

  Returns ``{key: [stored, new]}`` for the keys that may change. Raises one
  ``ValueError`` listing every key that may not (``config.<key>: stored -> new``).
  A key on one side only, set to an off value (0, '', False, None) on the other, is
  no change: the trainer reads an absent key as off, so a run stored before a
  feature's key existed resumes with the feature off.
  """
  a, b = _flat(stored), _flat(new)
  changes, refused = {}, []
  for key in sorted(set(a) | set(b)):
    old, cur = a.get(key, "<absent>"), b.get(key, "<absent>")
    if old == cur or ((key not in a or key not in b)
                      and not (cur if key not in a else old)):
      continue
    top = key.split(".", 1)[0]
    if top in MUTABLE_ON_RESUME or (allow_optimizer_change and top in OPTIMIZER_KEYS):
      changes[key] = [old, cur]
    else:
      refused.append(f"config.{key}: {old!r} -> {cur!r}")
  if refused:
    hint = ("; the optimizer's keys may change with "
            "--config.resume_allow_optimizer_change=True"
            if any(r.split(":")[0][7:].split(".")[0] in OPTIMIZER_KEYS for r in refused) else "")
    raise ValueError("cannot resume with a different config: " + "; ".join(refused)
                     + f". Expected the stored values (a new workdir starts a new run){hint}.")
  return changes


def _config_dict(config) -> dict:
  return json.loads(config.to_json_best_effort())


def stored_config(workdir: str) -> dict | None:
  """The config the run in ``workdir`` uses now: ``config.json`` with every change
  recorded in ``config_history.jsonl`` applied (None for a fresh workdir)."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    config = json.load(f)
  history = os.path.join(workdir, "config_history.jsonl")
  if os.path.exists(history):
    for row in mtrain.read_jsonl(history):
      config = row.get("config", config)
  return config


def checkpoint_steps_on_disk(ckpt_dir: str) -> list[int]:
  """Numeric step folders under ``ckpt_dir`` (readable or not)."""
  if not os.path.isdir(ckpt_dir):
    return []
  return sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit())


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
  if "aux_loss" in info:  # e.g. the weighted MoE balance loss (config.moe_aux_weight)
    row["aux_loss"] = float(info["aux_loss"])
  if "weights_exact" in info:  # 1: the weights the methods used; 0: a least-squares fit
    row["weights_exact"] = float(info["weights_exact"])
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


class NonFiniteLossError(RuntimeError):
  """The training loss was non-finite for ``config.max_nonfinite_steps`` steps in a row."""


class NonFiniteWatch:
  """Counts consecutive steps with a non-finite training loss.

  ``observe(step, losses)`` keeps this step's losses and checks the previous
  step's (so the host does not wait for the step just dispatched); after
  ``limit`` consecutive non-finite steps it raises :class:`NonFiniteLossError`
  naming the steps and tasks. ``finite_now`` checks the current step (used
  before checkpointing, so a non-finite state is never saved).
  """

  def __init__(self, limit: int, names, checkpointer=None):
    self.limit, self.names = int(limit), tuple(names)
    self.run, self.first = 0, None
    self._pending = None
    self.checkpointer = checkpointer

  def _check(self, step, losses):
    values = np.asarray(jax.device_get(losses), np.float64)
    if np.all(np.isfinite(values)):
      self.run, self.first = 0, None
      return
    self.run += 1
    self.first = step if self.first is None else self.first
    if self.run >= self.limit:
      bad = ", ".join(f"loss/{n}={v}" for n, v in zip(self.names, values)
                      if not np.isfinite(v))
      last = ""
      if self.checkpointer is not None:
        self.checkpointer.close()  # the checkpoints saved so far (all finite) stay
        last = (f" Last checkpoint: step {self.checkpointer.latest_step()} in "
                f"{self.checkpointer.directory}.")
      raise NonFiniteLossError(
          f"training loss non-finite for {self.run} consecutive steps (steps "
          f"{self.first}..{step}; at step {step}: {bad}); stopping "
          f"(config.max_nonfinite_steps={self.limit}). Lower config.learning_rate, "
          f"set config.grad_clip, or check the data.{last}")

  def observe(self, step, losses):
    if self._pending is not None:
      self._check(*self._pending)
    self._pending = (step, losses)

  def flush(self):
    if self._pending is not None:
      self._check(*self._pending)
      self._pending = None

  def finite_now(self, step, losses) -> bool:
    if self._pending is not None and self._pending[0] == step:
      self._pending = None
    self._check(step, losses)
    return self.run == 0


def build_trainer(config, info, tasks, mesh, example_batch=None):
  """``(trainer, params)``: the config's model, optimizer and step on ``mesh``
  (``None``: one device, no shardings). ``example_batch`` (a local batch) lets
  ``engine='auto'`` read the model's autogram plan."""
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
      optimizer=optimizer, engine=engine(config),
      method_kwargs=parse_kwargs(config.method_kwargs),
      weighting_kwargs=parse_kwargs(config.weighting_kwargs),
      example_batch=example_batch,
      chunk_size=config.chunk_size or None, extra_batches=config.extra_batches,
      mesh=mesh, param_rule=_mesh_option(config, "param_rule", "fsdp"),
      shard_tasks=bool(_mesh_option(config, "shard_tasks", True)),
      min_size=int(_mesh_option(config, "min_size", 2 ** 10)),
      method_groups=config.get("method_groups") or None,
      calibrate_branches=config.get("calibrate_branches", "") or "",
      flat_regions_rho=flat_regions_rho(config), rep_mtl=rep_mtl_kwargs(config),
      focal_gamma=float(config.get("focal_gamma", 0.0) or 0.0),
      aux_loss_weight=float(config.get("moe_aux_weight", 0.0)),
      dropout_rng=float(model_kwargs(config).get("dropout", 0.0)) > 0)
  return trainer, params


def make_affinity(config, trainer, params):
  """``None`` (``config.affinity_every`` 0), else the jitted ``(params, batch) -> Z``
  of the lookahead affinity (:func:`mtlx.affinity.affinity_fn`): the shared encoder
  moves by ``config.affinity_learning_rate`` (0: ``config.learning_rate``) along each
  task's gradient. Cost on the steps it runs: one Jacobian (K backward passes) and K
  forward passes."""
  if not config.get("affinity_every", 0):
    return None
  lr = float(config.get("affinity_learning_rate", 0.0) or config.learning_rate)
  shared = None
  if isinstance(params, dict) and set(params) == {"encoder", "decoder"}:
    shared = lambda p: {"encoder": jax.tree_util.tree_map(lambda _: True, p["encoder"]),
                        "decoder": jax.tree_util.tree_map(lambda _: False, p["decoder"])}
  return jax.jit(mtlx.affinity.affinity_fn(trainer.loss_fn, learning_rate=lr, shared=shared))


def _affinity_row(z, names) -> dict:
  z = np.asarray(jax.device_get(z), np.float64)
  return {f"affinity/{a}/{b}": float(z[i, j]) for i, a in enumerate(names)
          for j, b in enumerate(names)}


def write_affinity_summary(workdir: str, names) -> str | None:
  """``affinity.json``: the mean of the ``split="affinity"`` rows of metrics.jsonl and
  the grouping search on it (:func:`mtlx.affinity.affinity_summary`)."""
  rows = [r for r in mtrain.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
          if r["split"] == "affinity"]
  if not rows:
    return None
  mats = [[[r[f"affinity/{a}/{b}"] for b in names] for a in names] for r in rows]
  path = os.path.join(workdir, "affinity.json")
  with open(path, "w") as f:
    json.dump(mtlx.affinity.affinity_summary(mats, names), f, indent=1)
  return path


def train_and_evaluate(config: ml_collections.ConfigDict, *, devices=None) -> dict:
  """Trains as the config says and returns the last ``eval`` row's values.

  ``devices``: the devices the mesh ``config.mesh`` lays out (default: all of
  them, ``jax.devices()``); the product of the mesh sizes must equal their number.
  Multi-host entry points call ``mtlx.sharding.initialize_distributed()`` before
  this (``main`` does). A config whose ``tasks`` is a list of per-task sources
  (tasks from separate datasets, ``config.sampler``) runs `experiments.train_mixture`.
  """
  from experiments import train_mixture  # pylint: disable=import-outside-toplevel
  if train_mixture.is_mixture_config(config):
    return train_mixture.train_and_evaluate(config, devices=devices)
  info, tasks = validate(config)
  mesh = make_mesh(config, devices)  # a wrong mesh fails here, before anything is built
  workdir = os.path.abspath(config.workdir)
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ValueError(f"config.workdir={workdir!r} is a file; expected a directory.")
  resume = resume_mode(config)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  has_checkpoint = bool(checkpoint_steps_on_disk(ckpt_dir))
  if resume is True and not has_checkpoint:
    raise ValueError(f"config.resume=True but {ckpt_dir} holds no checkpoint (a mistyped "
                     "workdir?); expected an existing run, or config.resume='auto' to "
                     "start fresh when there is none.")
  config_update = None
  if resume and has_checkpoint:
    stored = stored_config(workdir)
    if stored is not None:
      changes = config_changes(
          stored, _config_dict(config),
          allow_optimizer_change=bool(config.get("resume_allow_optimizer_change", False)))
      if changes:
        logging.warning("resuming %s with changed settings: %s", workdir,
                        ", ".join(f"{k}: {v[0]!r} -> {v[1]!r}" for k, v in changes.items()))
        config_update = {"changes": changes, "config": _config_dict(config)}
  names = tuple(t.name for t in tasks)
  global_rows = config.batch_size * (1 + config.extra_batches) * jax.process_count()
  axes = sharding.batch_axes(_mesh_option(config, "param_rule", "fsdp"))
  if global_rows % sharding.axes_size(mesh, axes):
    over = " x ".join(f"config.mesh.{a}={mesh.shape[a]}" for a in axes)
    raise ValueError(
        f"config.batch_size={config.batch_size} (x {1 + config.extra_batches} "
        f"mini-batches x {jax.process_count()} process(es) = {global_rows} rows) is not "
        f"divisible by {over}; expected a multiple.")

  if _mesh_option(config, "verify", False):
    # A few steps on this mesh against one device (mtlx.sharding.check): ValueError
    # before anything is written if they differ.
    from mtlx.sharding import check as sharding_check  # pylint: disable=import-outside-toplevel
    sharding_check.check_config(config, devices=devices).raise_if_failed()
  # With extra_batches (MoDo, SDMGrad) every step reads 1 + extra_batches mini-batches.
  # batch_size is per host: each host reads its own slice of every global batch.
  train_iter_kw = dict(batch_size=config.batch_size * (1 + config.extra_batches),
                       seed=config.seed, shuffle=True, process_index=jax.process_index(),
                       process_count=jax.process_count(), **_data_kwargs(config))
  local_example = next(mdata.make_iterator(config.dataset, config.train_split, **train_iter_kw))
  trainer, params = build_trainer(config, info, tasks, mesh, example_batch=local_example)
  example = trainer.shard_batch(local_example)
  state = trainer.init(params, example, config.seed)  # placed on the mesh
  try:  # trace the step once: a method's errors surface here, before training
    jax.eval_shape(trainer.step, state, example)
  except ValueError as e:
    if "second, independent mini-batch" in str(e) and not config.extra_batches:
      raise ValueError(f"{e} With experiments/train.py: set config.extra_batches=1 "
                       "(or 2 for a third batch).") from e
    raise

  # Fresh run or resume.
  start = 0
  if resume and has_checkpoint:
    ckpt = mtrain.Checkpointer(ckpt_dir, max_to_keep=config.keep_checkpoints)
    # the newest readable step, onto the shardings of `state` (this run's mesh)
    state, restored_step = ckpt.restore_latest(state)
    start = int(state.step)
    if restored_step != max(checkpoint_steps_on_disk(ckpt_dir)):
      logging.warning("resumed from step %d of %s (newer steps unreadable)", start, ckpt_dir)
    logging.info("resumed from step %d of %s", start, ckpt_dir)
  else:
    if has_checkpoint:
      raise ValueError(f"config.workdir={workdir!r} already holds checkpoints; expected "
                       "config.resume=True to continue it, or an empty workdir.")
    if os.path.isdir(ckpt_dir):  # no step folder: only leftovers of an interrupted save
      shutil.rmtree(ckpt_dir)
    ckpt = mtrain.Checkpointer(ckpt_dir, max_to_keep=config.keep_checkpoints)
  os.makedirs(workdir, exist_ok=True)
  chief = sharding.is_primary_host()  # the only process that writes files
  if chief:
    mtrain.MetricWriter.truncate(workdir, start)  # fresh: empty; resume: up to the checkpoint
    config_json = os.path.join(workdir, "config.json")
    if not start or not os.path.exists(config_json):
      with open(config_json, "w") as f:
        saved = ml_collections.ConfigDict(config.to_dict())
        saved.engine_used = trainer.engine  # what engine='auto' chose
        f.write(saved.to_json_best_effort(indent=2))
    elif config_update is not None:  # the first settings stay in config.json
      with open(os.path.join(workdir, "config_history.jsonl"), "a") as f:
        f.write(json.dumps({"step": start, **config_update}) + "\n")
  writer = mtrain.MetricWriter(workdir, tensorboard=config.tensorboard, enabled=chief)
  logging.info("model %s (%d params), engine %s (config.engine=%r), tasks %s, mesh %s",
               config.model, mmodels.count_params(params), trainer.engine, engine(config),
               names, dict(mesh.shape))

  train_iter = mdata.make_iterator(config.dataset, config.train_split, start_step=start,
                                   **train_iter_kw)
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  bar = tqdm(total=config.num_steps, initial=start, disable=not config.progress,
             desc=f"{config.weighting}+{config.method}", dynamic_ncols=True)
  last_eval: dict = {}
  t0, n0 = time.perf_counter(), start
  watch = NonFiniteWatch(config.get("max_nonfinite_steps", DEFAULT_MAX_NONFINITE_STEPS), names,
                         ckpt)
  affinity = make_affinity(config, trainer, params)
  for step in range(start, config.num_steps):
    batch = trainer.shard_batch(next(train_iter))
    if affinity is not None and (step + 1) % config.affinity_every == 0:
      # at the params before update step+1, on its batch
      writer.write(step + 1, "affinity", _affinity_row(affinity(state.params, batch), names))
    state, step_info = trainer.step(state, batch)
    s = step + 1
    final = s == config.num_steps
    watch.observe(s, step_info["losses"])  # reads the previous step's losses
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
      if watch.finite_now(s, step_info["losses"]):  # never checkpoint a non-finite loss
        ckpt.save(s, state, force=final)
      else:
        logging.warning("step %d: non-finite training loss; checkpoint not saved", s)
    bar.update(1)
  bar.close()
  watch.flush()
  ckpt.close()
  writer.close()
  if chief and config.get("affinity_every", 0):
    write_affinity_summary(workdir, names)
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
  try:
    result = train_and_evaluate(config)
  except (mtrain.CheckpointSaveError, NonFiniteLossError) as e:
    # One line, exit code 1, at once: a failed orbax save can leave its background
    # threads blocked forever, and the interpreter would wait for them at exit.
    print(f"error: {e}", file=sys.stderr, flush=True)
    logging.flush()
    os._exit(1)  # pylint: disable=protected-access
  print(json.dumps({"workdir": os.path.abspath(config.workdir), "eval": result}, indent=1))


if __name__ == "__main__":
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  config_flags.DEFINE_config_file("config", "configs/multi_digits.py",
                                  "Path to a config file (get_config()).",
                                  lock_config=True)
  app.run(main)
