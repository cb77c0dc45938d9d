"""Two-digit classification (left / right digit) on the offline multi_digits data.

  python -m experiments.train --config configs/multi_digits.py \
      --config.method=pcgrad --config.workdir=runs/md_pcgrad

Every key is overridable with ``--config.<key>=value``. The keys ``method``,
``weighting``, ``optimizer``, ``learning_rate``, ``num_steps``, ``batch_size``,
``seed``, ``workdir``, ``resume``, ``eval_every``, ``checkpoint_every`` are a
contract other tools rely on.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # --- MTO chain: loss-space part -> gradient-space part -> optimizer.
  c.method = "ls"            # gradient-space method (mtlx.registry.gradient_methods())
  c.weighting = "none"       # loss-space method (mtlx.registry.loss_methods()) or 'none'
  c.method_kwargs = ""       # constructor arguments, "c=0.4,rescale=1"
  c.weighting_kwargs = ""
  c.rep_grad = False         # MTO on the shared representation instead of the params
  c.chunk_size = 0           # K-row chunks of the Jacobian (0: all at once)
  c.extra_batches = 0        # independent extra mini-batches per step (MoDo, SDMGrad: 1)
  c.optimizer = "adam"       # adam | adamw | sgd
  c.learning_rate = 1e-3
  c.schedule = "constant"    # constant | cosine | warmup_cosine
  c.warmup_steps = 0
  c.weight_decay = 0.0
  c.momentum = 0.9           # sgd only
  c.grad_clip = 0.0          # global-norm clipping (0: off)
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
  c.model = "hps"            # hps | cross_stitch | mmoe | cgc | ple | mtan | dselect_k
  # Sizes; keys the chosen model does not take are not passed to it.
  c.model_kwargs = ml_collections.ConfigDict({
      "widths": (16, 32), "hidden": 64, "head_hidden": 32, "num_experts": 4,
      "num_shared_experts": 2, "num_task_experts": 1, "num_levels": 2, "k": 2,
      "gamma": 1.0})
  # --- Run.
  c.num_steps = 1000
  c.seed = 0
  c.workdir = "runs/multi_digits"
  c.resume = False
  c.log_every = 20
  c.eval_every = 100
  c.checkpoint_every = 200
  c.keep_checkpoints = 3
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
