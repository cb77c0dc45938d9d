"""CelebA (manual_dir, 64x64): 40 binary attributes.

  python -m experiments.train --config configs/celeba.py --config.method=ls \
      --config.workdir=runs/celeba [--config.manual_dir=PATH]

Starts from `configs/multi_digits.py` (every key documented there) and changes the
data, model and schedule.
"""

import ml_collections

from configs import multi_digits


def get_config(arg=None):
  c = multi_digits.get_config(arg)
  c.dataset = "celeba"
  c.builder_kwargs = ml_collections.ConfigDict({"image_size": 64, "max_per_split": 0})  # overridable options
  c.eval_split = "test"
  c.val_split = "validation"
  c.batch_size = 128
  c.eval_batch_size = 500
  c.learning_rate = 3e-4
  c.model = "hps"
  c.model_kwargs.widths = (16, 32, 64)
  c.num_steps = 5000
  c.eval_every = 500
  c.checkpoint_every = 1000
  return c
