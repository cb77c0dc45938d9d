"""Three tasks from three separate datasets of different sizes (offline, quick).

  python -m experiments.train --config configs/digits_mixture.py \
      --config.sampler.name=temperature --config.sampler.temperature=2 \
      --config.method=upgrad --config.workdir=runs/dm_upgrad

Tasks (`mtlx.data.sources.digits_source`, scikit-learn's 8x8 digits): ``digit``
(1000 train images, 10 classes), ``rotated`` (400 images rotated by 90 degrees, 10
classes) and ``value`` (150 images, regression of digit / 9); each is evaluated on
its own test split. ``config.tasks`` is a list of per-task sources, which sends
``experiments/train.py`` to `experiments.train_mixture`; ``config.sampler`` picks
how many examples of each task every step holds (`mtlx.data.samplers`):
``name`` in fixed | proportional | temperature | uniform | unmixed | staged |
bandit | loss_proportional, with its arguments beside it.
"""

import ml_collections


def sampler_config(name: str = "temperature") -> ml_collections.ConfigDict:
  """Every sampler argument, so each is overridable from the command line."""
  return ml_collections.ConfigDict({
      "name": name,
      "weights": (1.0, 1.0, 1.0),     # fixed
      "temperature": 2.0,             # temperature: p_k ~ n_k^(1/T)
      "num_slices": 1,                # unmixed: one task per slice of the global batch
      "base": {"name": "uniform", "temperature": 2.0},  # unmixed: the rule per slice
      # staged: [{"steps": n, "sampler": {...}}, ...]; default: the large dataset
      # (digit) alone for 100 steps, then the temperature mixture
      "stages": [{"steps": 100, "sampler": {"name": "fixed", "weights": [1.0, 0.0, 0.0]}},
                 {"steps": 1, "sampler": {"name": "temperature", "temperature": 2.0}}],
      "algorithm": "exp3",            # bandit: exp3 | ucb
      "gamma": 0.1,                   # bandit (exp3): exploration
      "c": 1.0,                       # bandit (ucb): exploration bonus
      "alpha": 1.0,                   # loss_proportional: p ~ loss^alpha
      "epsilon": 0.1,                 # loss_proportional: uniform mixing
  })


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.tasks = [ml_collections.ConfigDict({"source": "digits", "variant": v, "num_examples": 0})
             for v in ("digit", "rotated", "value")]   # num_examples 0: 1000 / 400 / 150
  c.sampler = sampler_config("temperature")
  c.data_seed = 0            # the digits' train/test split
  c.method = "ls"
  c.weighting = "none"
  c.method_kwargs = ""
  c.weighting_kwargs = ""
  c.optimizer = "adam"
  c.learning_rate = 1e-3
  c.schedule = "constant"
  c.model = "hps"
  c.model_kwargs = ml_collections.ConfigDict({"widths": (16, 32), "hidden": 64,
                                              "head_hidden": 32})
  c.batch_size = 64
  c.eval_batch_size = 512
  c.eval_split = "test"
  c.eval_examples = 0
  c.num_steps = 600
  c.seed = 0
  c.workdir = "runs/digits_mixture"
  c.resume = False
  c.log_every = 20
  c.eval_every = 200
  c.checkpoint_every = 200
  c.keep_checkpoints = 2
  c.progress = False
  c.tensorboard = False
  c.mesh = ml_collections.ConfigDict({"data": 1, "model": 1, "task": 1})
  return c
