"""Many correlated regression tasks (offline; task count from builder_kwargs).

  python -m experiments.train --config configs/many_tasks.py --config.method=ls \
      --config.workdir=runs/many_tasks [--config.manual_dir=PATH]

Starts from `configs/multi_digits.py` (every key documented there) and changes the
data, model and schedule.
"""

import ml_collections

from configs import multi_digits


def get_config(arg=None):
  c = multi_digits.get_config(arg)
  c.dataset = "many_tasks"
  c.builder_kwargs = ml_collections.ConfigDict({"num_tasks": 16, "rho": 0.5, "num_train": 10000})  # overridable options
  c.eval_split = "test"
  c.val_split = "validation"
  c.batch_size = 128
  c.eval_batch_size = 500
  c.learning_rate = 1e-3
  c.model = "hps"
  c.model_kwargs.widths = (64, 64)
  c.num_steps = 5000
  c.eval_every = 500
  c.checkpoint_every = 1000
  return c
