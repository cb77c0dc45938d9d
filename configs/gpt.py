"""A multi-task causal transformer (``mtlx.models.gpt``) on the offline two-digit data.

  python -m experiments.train --config configs/gpt.py --config.method=nash_mtl \\
      --config.model_kwargs.preset=mini

The image is read as a causal sequence of 4×4 patches (``vocab_size=0``: patches
are embedded by a dense layer, Image-GPT-like) and each task's head reads the last
position. Token inputs use ``vocab_size > 0``. Presets: tiny (tests), mini, small
(GPT-2 124M), medium, large, xl (1.5B); see ``mtlx/models/gpt.py``. Every other key
is that of ``configs/multi_digits.py``.
"""

import ml_collections

from configs import multi_digits


def get_config() -> ml_collections.ConfigDict:
  c = multi_digits.get_config()
  c.model = "gpt"
  c.model_kwargs = ml_collections.ConfigDict({
      "preset": "tiny", "vocab_size": 0, "patch_size": 4, "pool": "last",
      "lora_rank": 0, "lora_adapters": "task", "moe_experts": 0, "moe_top_k": 2,
      "moe_every": 2, "moe_task_routers": False, "dropout": 0.0})
  c.compute_dtype = "float32"  # float32 | bfloat16 (params, opt state, losses stay float32)
  c.remat = False            # rematerialise each transformer block
  # Switch Transformer's load-balancing loss weight (with model_kwargs.moe_experts > 0):
  # added to the step's objective outside the K task losses, logged as aux_loss.
  c.moe_aux_weight = 0.01
  c.batch_size = 64
  c.num_steps = 500
  c.workdir = "runs/gpt"
  return c
