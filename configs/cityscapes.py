"""Cityscapes (manual_dir, 128x256): 7-class segmentation and depth.

  python -m experiments.train --config configs/cityscapes.py --config.method=ls \
      --config.workdir=runs/cityscapes [--config.manual_dir=PATH]

Starts from `configs/multi_digits.py` (every key documented there) and changes the
data, model and schedule.
"""

import ml_collections

from configs import multi_digits


def get_config(arg=None):
  c = multi_digits.get_config(arg)
  c.dataset = "cityscapes"
  c.builder_kwargs = ml_collections.ConfigDict({})  # overridable options
  c.eval_split = "test"
  c.val_split = ""
  c.batch_size = 8
  c.eval_batch_size = 200
  c.learning_rate = 1e-4
  c.model = "mtan"
  c.model_kwargs.widths = (16, 32, 64)
  c.num_steps = 5000
  c.eval_every = 500
  c.checkpoint_every = 1000
  return c
