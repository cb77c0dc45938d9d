"""Vision Transformer (Dosovitskiy et al., ICLR 2021) for multi-task learning.

Encoder: non-overlapping ``p × p`` patches, flattened and embedded by one dense
layer, a learned CLS token and position embeddings, ``depth`` pre-LN blocks
(:mod:`mtlx.models.transformer`), the final LayerNorm and pooling (the CLS token
or the mean over patches): ``z = [B, D]`` (``[K, B, D]`` with per-task adapters /
routers, stream k for task k). Decoder: one linear head per task (classification,
binary, regression).

Presets (``preset=``; ``dim``/``depth``/``heads``/``mlp_ratio``/``patch_size`` override):

======== ====== ===== ===== ===== ======= ===============================
name     dim    depth heads patch params  note
======== ====== ===== ===== ===== ======= ===============================
tiny     32     2     2     4     ~30 K   tests
mini     128    4     4     4     ~0.8 M  CPU benchmarks
S/16     384    12    6     16    22 M    ViT-S/16
B/16     768    12    12    16    86 M    ViT-B/16
L/16     1024   24    16    16    304 M   ViT-L/16
g/14     1408   40    16    14    1.0 B   ViT-g/14 (mlp 6144)
======== ====== ===== ===== ===== ======= ===============================
(param counts at 224×224×3 inputs, without heads.)
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from flax import nnx
import jax
import jax.numpy as jnp

from mtlx.models import base
from mtlx.models import lora as lora_lib
from mtlx.models import transformer as tf
from mtlx.models.transformer import Preset, Size

PRESETS = {
    "tiny": Preset(Size(32, 2, 2), {"patch_size": 4}),
    "mini": Preset(Size(128, 4, 4), {"patch_size": 4}),
    "S/16": Preset(Size(384, 12, 6), {"patch_size": 16}),
    "B/16": Preset(Size(768, 12, 12), {"patch_size": 16}),
    "L/16": Preset(Size(1024, 24, 16), {"patch_size": 16}),
    "g/14": Preset(Size(1408, 40, 16, 6144 / 1408), {"patch_size": 14}),
}


def patchify(x, patch_size: int):
  """``[B, H, W, C] -> [B, (H/p)(W/p), p·p·C]`` (row-major patches)."""
  b, h, w, c = x.shape
  p = patch_size
  x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // p) * (w // p), p * p * c)


class ViTEncoder(nnx.Module):
  """Patch embedding + CLS + positions + blocks + pooling (see the module docstring)."""

  def __init__(self, input_shape, size: Size, *, patch_size, pool, num_tasks, dtype,
               dropout_rate, rngs, **stack_kw):
    h, w, c = input_shape
    if h % patch_size or w % patch_size:
      raise ValueError(f"input_shape={tuple(input_shape)} is not divisible into "
                       f"patch_size={patch_size} patches; expected H and W multiples of it.")
    if pool not in ("cls", "mean"):
      raise ValueError(f"pool={pool!r}; expected 'cls' or 'mean'.")
    self.patch_size, self.pool, self.dtype = patch_size, pool, dtype
    self.dropout_rate = dropout_rate
    n = (h // patch_size) * (w // patch_size)
    d = size.dim
    self.embed = lora_lib.LoRALinear(patch_size * patch_size * c, d, dtype=dtype, rngs=rngs)
    self.cls = nnx.Param(jnp.zeros((1, 1, d), jnp.float32))
    self.pos = nnx.Param(0.02 * jax.random.normal(rngs.params(), (n + 1, d), jnp.float32))
    self.stack = tf.Stack(size, causal=False, num_tasks=num_tasks, dtype=dtype,
                          dropout_rate=dropout_rate, rngs=rngs, **stack_kw)
    self.has_moe = bool(stack_kw.get("moe_experts", 0))

  def __call__(self, x, *, dropout_key=None):
    tokens = self.embed(patchify(x.astype(self.dtype), self.patch_size)[None])[0]
    b = tokens.shape[0]
    cls = jnp.broadcast_to(self.cls.value.astype(self.dtype), (b, 1, tokens.shape[-1]))
    tokens = jnp.concatenate([cls, tokens], axis=1) + self.pos.value.astype(self.dtype)
    k_emb, k_stack = (jax.random.split(dropout_key) if dropout_key is not None
                      else (None, None))
    tokens = tf.dropout(tokens, self.dropout_rate, k_emb)
    out, aux = self.stack(tokens[None], k_stack)
    pooled = out[:, :, 0] if self.pool == "cls" else jnp.mean(out[:, :, 1:], axis=2)
    return tf.representation(pooled, aux, self.has_moe)


class ViTDecoder(nnx.Module):
  def __init__(self, tasks, dim, *, dtype, rngs):
    self.heads = tf.TaskHeads(tasks, dim, dtype=dtype, rngs=rngs)

  def __call__(self, z, x):
    del x
    return self.heads(z)


def vit(input_shape: Sequence[int], tasks: Sequence[Any], *, preset: str = "tiny",
        dim: int | None = None, depth: int | None = None, heads: int | None = None,
        mlp_ratio: float | None = None, patch_size: int | None = None, pool: str = "cls",
        lora_rank: int = 0, lora_alpha: float | None = None, lora_adapters: str = "task",
        moe_experts: int = 0, moe_top_k: int = 2, moe_every: int = 2,
        moe_task_routers: bool = False, dropout: float = 0.0, dtype: Any = "float32",
        remat: bool = False, seed: int = 0) -> base.MTLModel:
  """A multi-task ViT: shared patch encoder, one linear head per task.

  Args:
    input_shape: ``[H, W, C]`` (H, W multiples of the patch size).
    tasks: TaskSpecs of per-example kinds (classification, binary, regression).
    preset: a name of :data:`PRESETS` (module docstring); ``dim``, ``depth``,
      ``heads``, ``mlp_ratio``, ``patch_size`` override it.
    pool: ``'cls'`` (the CLS token) or ``'mean'`` (mean over patch tokens).
    lora_rank, lora_alpha, lora_adapters: per-task (``'task'``) or one shared
      (``'shared'``) LoRA adapter on every attention and MLP kernel (0: none).
    moe_experts, moe_top_k, moe_every, moe_task_routers: sparse top-k MoE MLP in
      every ``moe_every``-th block (0 experts: none); per-task routers optional.
    dropout: residual/embedding dropout rate (active with ``dropout_key=``).
    dtype: compute dtype, ``'float32'`` or ``'bfloat16'`` (params float32).
    remat: rematerialise each block.
    seed: initialisation seed.

  The encoder is called as ``encoder(x, dropout_key=None)``; ``mtlx.models.split``
  forwards keyword arguments of ``apply``/``encode`` to it.
  """
  from mtlx.models import layers  # pylint: disable=import-outside-toplevel
  layers.check_tasks(tasks, input_shape)
  if not layers.is_image(input_shape):
    raise ValueError(f"vit needs an [H, W, C] image input; got input_shape="
                     f"{tuple(input_shape)}.")
  size = tf.resolve_size(PRESETS, preset, dim=dim, depth=depth, heads=heads,
                         mlp_ratio=mlp_ratio)
  patch = int(patch_size or PRESETS[preset].extra["patch_size"])
  dt = tf.resolve_dtype(dtype)
  rngs = nnx.Rngs(seed)
  enc = ViTEncoder(tuple(input_shape), size, patch_size=patch, pool=pool,
                   num_tasks=len(tasks), dtype=dt, dropout_rate=dropout, rngs=rngs,
                   lora_rank=lora_rank, lora_alpha=lora_alpha, lora_adapters=lora_adapters,
                   moe_experts=moe_experts, moe_top_k=moe_top_k, moe_every=moe_every,
                   moe_task_routers=moe_task_routers, remat=remat)
  dec = ViTDecoder(tasks, size.dim, dtype=dt, rngs=rngs)
  return base.MTLModel(enc, dec, tasks, input_shape)


def num_params(preset: str, image_size: int = 224, channels: int = 3) -> int:
  """Encoder parameters of a preset at ``image_size``² inputs (no heads), without
  building it."""
  p = PRESETS[preset]
  ps = p.extra["patch_size"]
  n = (image_size // ps) ** 2
  d = p.size.dim
  return (ps * ps * channels * d + d) + d + (n + 1) * d + p.size.depth * \
      tf.count_block_params(p.size) + 2 * d
