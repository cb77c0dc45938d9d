"""QM9 (manual_dir): 11 regression targets, MAE.

  python -m experiments.train --config configs/qm9.py --config.method=ls \
      --config.workdir=runs/qm9 [--config.manual_dir=PATH]

Starts from `configs/multi_digits.py` (every key documented there) and changes the
data, model and schedule.
"""

import ml_collections

from configs import multi_digits


def get_config(arg=None):
  c = multi_digits.get_config(arg)
  c.dataset = "qm9"
  c.builder_kwargs = ml_collections.ConfigDict({})  # overridable options
  c.eval_split = "test"
  c.val_split = "validation"
  c.batch_size = 120
  c.eval_batch_size = 500
  c.learning_rate = 1e-3
  c.model = "hps"
  c.model_kwargs.widths = (128, 128)
  c.num_steps = 5000
  c.eval_every = 500
  c.checkpoint_every = 1000
  return c
