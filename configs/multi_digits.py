"""Two-digit classification (left / right digit) on the offline multi_digits data.

  python -m experiments.train --config configs/multi_digits.py \
      --config.method=pcgrad --config.workdir=runs/md_pcgrad

Every key is overridable with ``--config.<key>=value``. ``method_kwargs``,
``weighting_kwargs`` and ``model_kwargs`` are ConfigDicts passed straight to the
constructors (an unknown key is a ValueError naming the accepted ones); they hold
the chosen method's / model's defaults, so pick those with the config argument to
override them by flag::

  python -m experiments.train --config configs/multi_digits.py:method=cagrad,weighting=dwa \
      --config.method_kwargs.c=0.5 --config.weighting_kwargs.temperature=1.0 \
      --config.engine=gramian

``engine``: how the step gets the task gradients (``mtlx.train.make_step``):
``auto`` (cheapest valid; the choice goes to the log and to ``config.json``),
``one_backward``, ``gramian``, ``jacobian`` or ``representation``.

The keys ``method``,
``weighting``, ``optimizer``, ``learning_rate``, ``num_steps``, ``batch_size``,
``seed``, ``workdir``, ``resume``, ``eval_every``, ``checkpoint_every`` are a
contract other tools rely on.
"""

import ml_collections

# Options of the models beyond the common sizes (model_kwargs holds the chosen one's).
MODEL_OPTIONS = {
    "mmoe": {"num_experts": 4},
    "cgc": {"num_shared_experts": 2, "num_task_experts": 1},
    "ple": {"num_levels": 2, "num_shared_experts": 2, "num_task_experts": 1},
    "dselect_k": {"num_experts": 4, "k": 2, "gamma": 1.0},
}


def parse_arg(arg: str | None) -> dict:
  """``"method=cagrad,weighting=dwa,model=mmoe"`` -> a dict (the config argument)."""
  out = {}
  for part in filter(None, (arg or "").split(",")):
    key, _, value = part.partition("=")
    if key not in ("method", "weighting", "model") or not value:
      raise ValueError(f"config argument {part!r}; expected method=, weighting= or "
                       "model= entries joined by ','.")
    out[key] = value
  return out


def mto_kwargs(method: str, weighting: str) -> tuple:
  """ConfigDicts of the chosen methods' constructor defaults (overridable by flag)."""
  from mtlx import registry  # pylint: disable=import-outside-toplevel
  registry.check_names(method, weighting)
  names = registry.weighting_names(weighting)
  if len(names) > 1:  # one ConfigDict per loss-space method
    wkw = {n: registry.get(n, "loss").config_defaults() for n in names}
  else:
    wkw = registry.get(names[0], "loss").config_defaults() if names else {}
  return (ml_collections.ConfigDict(registry.get(method, "gradient").config_defaults()),
          ml_collections.ConfigDict(wkw))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  chosen = parse_arg(arg)
  c = ml_collections.ConfigDict()
  # --- MTO chain: loss-space part -> gradient-space part -> optimizer.
  c.method = chosen.get("method", "ls")  # gradient-space method (mtlx.registry.gradient_methods())
  c.weighting = chosen.get("weighting", "none")  # loss-space method(s) ('dwa+famo') or 'none'
  # Constructor arguments (the chosen methods' defaults; an unknown key is an error).
  c.method_kwargs, c.weighting_kwargs = mto_kwargs(c.method, c.weighting)
  c.engine = "auto"          # auto | one_backward | gramian | jacobian | representation
  c.rep_grad = False         # the old spelling of engine='representation'
  c.chunk_size = 0           # K-row chunks of the Jacobian (0: all at once)
  c.extra_batches = 0        # independent extra mini-batches per step (MoDo, SDMGrad: 1)
  c.optimizer = "adam"       # adam | adamw | sgd
  c.learning_rate = 1e-3
  c.schedule = "constant"    # constant | cosine | warmup_cosine
  c.warmup_steps = 0
  c.weight_decay = 0.0
  c.momentum = 0.9           # sgd only
  c.grad_clip = 0.0          # global-norm clipping (0: off)
  # --- Seed-paper methods (README "Methods from the seed papers").
  # Task-based flat regions (mtlx.flat_regions): rho > 0 takes every task's gradient
  # also at θ + ρ g_k/‖g_k‖ (a second Jacobian; jacobian engine); 0: off.
  c.flat_regions = ml_collections.ConfigDict({"rho": 0.0})
  # FULLER's modality level (mtlx.calibrate_magnitudes): param-path prefixes of the
  # branches, e.g. 'encoder/branch_a,encoder/branch_b' with model=two_branch ('' off).
  c.calibrate_branches = ""
  # TAG lookahead affinity (mtlx.affinity) every N steps to metrics.jsonl
  # (split="affinity"), its mean and the task grouping to affinity.json (0: off);
  # lookahead step size (0: learning_rate). Cost: one Jacobian + K forwards per log.
  c.affinity_every = 0
  # MFTCoder's token-level focal loss for classification tasks (mtlx.task_losses; 0: off).
  c.focal_gamma = 0.0
  # Rep-MTL (mtlx.rep_mtl): saliency penalties on top of method=ls (a weight > 0: on).
  c.rep_mtl = ml_collections.ConfigDict({"tsr_weight": 0.0, "csa_weight": 0.0,
                                         "temperature": 0.1})
  c.affinity_learning_rate = 0.0
  # --- Data (mtlx.data).
  c.dataset = "multi_digits"
  c.builder_kwargs = ml_collections.ConfigDict({"overlap": 4, "num_train": 10000})
  c.data_dir = ""            # '' -> $MTLX_DATA_DIR or ~/tensorflow_datasets
  c.manual_dir = ""          # the user's raw files (real benchmarks)
  c.tasks = ""               # comma-separated subset of the dataset's tasks ('' = all)
  c.train_split = "train"
  c.eval_split = "test"      # written with split="eval"
  c.val_split = "validation"  # written with split="val" ('' to skip); for best-by-validation
  c.batch_size = 128
  c.eval_batch_size = 500
  # --- Model (mtlx.models).
  c.model = chosen.get("model", "hps")  # hps | cross_stitch | mmoe | cgc | ple | mtan | dselect_k
  # The model's constructor arguments: sizes, and the chosen model's options.
  c.model_kwargs = ml_collections.ConfigDict(dict(
      {"widths": (16, 32), "hidden": 64, "head_hidden": 32},
      **MODEL_OPTIONS.get(c.model, {})))
  # --- Run.
  c.num_steps = 1000
  c.seed = 0
  c.workdir = "runs/multi_digits"
  # False: fresh run (a workdir with checkpoints is refused); True: continue from the
  # newest readable checkpoint (error if there is none); 'auto': continue if there is
  # one, else start fresh. Resuming compares the config with the stored one: only the
  # run-cadence keys may change (experiments/train.py MUTABLE_ON_RESUME), the
  # optimizer's with resume_allow_optimizer_change; changes go to config_history.jsonl.
  c.resume = ml_collections.FieldReference(False, field_type=object)
  c.resume_allow_optimizer_change = False
  c.log_every = 20
  c.eval_every = 100
  c.checkpoint_every = 200
  c.keep_checkpoints = 3     # newest checkpoints kept (>= 1; the final one is always saved)
  c.max_nonfinite_steps = 3  # stop (exit code 1) after this many non-finite losses in a row
  c.progress = True
  c.tensorboard = True
  # --- Comparison protocol (experiments/compare.py).
  c.protocol = "last_k"      # last_k: mean of the last k evals | best_val: eval at the best val step
  c.last_k = 3
  # --- Sharding (mtlx.sharding): mesh axis sizes (product = device count), params
  # fsdp (leaves >= min_size elements split over model) or replicated, shard_tasks:
  # the per-task grads K axis over task, verify: first compare a few steps on the
  # mesh with one device (mtlx.sharding.check). --config.mesh.data=4 --config.mesh.model=2
  c.mesh = ml_collections.ConfigDict({"data": 1, "model": 1, "task": 1,
                                      "param_rule": "fsdp", "shard_tasks": True,
                                      "min_size": 1024, "verify": False})
  return c
