"""A multi-task ViT (``mtlx.models.vit``) on the offline two-digit data.

  python -m experiments.train --config configs/vit.py --config.method=upgrad \\
      --config.model_kwargs.preset=mini --config.compute_dtype=bfloat16

Presets: tiny (tests), mini, S/16, B/16, L/16, g/14 (see ``mtlx/models/vit.py``);
``model_kwargs`` also take per-task LoRA (``lora_rank``) and sparse MoE
(``moe_experts``, ``moe_top_k``, ``moe_task_routers``; ``moe_aux_weight`` weighs
the balance loss) options; ``model_kwargs.dropout > 0`` draws the masks from the
train state's key (exact on resume). Every other key is
that of ``configs/multi_digits.py``.
"""

import ml_collections

from configs import multi_digits


def get_config() -> ml_collections.ConfigDict:
  c = multi_digits.get_config()
  c.model = "vit"
  c.model_kwargs = ml_collections.ConfigDict({
      "preset": "tiny", "patch_size": 4, "pool": "cls", "lora_rank": 0,
      "lora_adapters": "task", "moe_experts": 0, "moe_top_k": 2, "moe_every": 2,
      "moe_task_routers": False, "dropout": 0.0})
  c.compute_dtype = "float32"  # float32 | bfloat16 (params, opt state, losses stay float32)
  c.remat = False            # rematerialise each transformer block
  # Switch Transformer's load-balancing loss weight (with model_kwargs.moe_experts > 0):
  # added to the step's objective outside the K task losses, logged as aux_loss.
  c.moe_aux_weight = 0.01
  c.batch_size = 64
  c.num_steps = 500
  c.workdir = "runs/vit"
  return c
