"""The in-context function-class model: the library GPT (`mtlx.models.gpt`) read out
at every ``x`` token.

A prompt ``(x₁, f(x₁), …, x_n, f(x_n))`` is ``2n`` float tokens of ``d + 1``
features (`mtlx.data.function_classes.prompt_tokens`). The encoder is
`mtlx.models.gpt.GPTEncoder` with ``vocab_size = 0`` and ``patch_size = d + 1`` (one
dense embedding of each token), learned positions, ``depth`` pre-LN causal blocks
and the final LayerNorm, returning every position's state (``head='lm'`` layout,
untied: ``z = [B, 2n, D]``). The decoder holds one linear head per task (function
class) that reads the states at the ``x`` tokens (positions ``0, 2, 4, …``), so
head ``k`` predicts every ``f(x_i)`` of a prompt from its prefix (Garg et al.,
2022, with one head per task): outputs ``{task: [B, n]}``.
"""

from __future__ import annotations

from typing import Sequence

from flax import nnx
import jax.numpy as jnp

from mtlx.models import base
from mtlx.models.gpt import PRESETS
from mtlx.models.gpt import GPTEncoder
from mtlx.models import transformer as tf


class XTokenHeads(nnx.Module):
  """One linear head ``D -> 1`` per task on the states of the ``x`` tokens."""

  def __init__(self, tasks, dim: int, *, rngs):
    self.names = tuple(t.name for t in tasks)
    self.heads = nnx.Dict({n: nnx.Linear(dim, 1, rngs=rngs) for n in self.names})

  def __call__(self, z, x):
    del x
    states = z[:, 0::2]  # [B, n, D]: the x tokens
    return {n: self.heads[n](states)[..., 0].astype(jnp.float32) for n in self.names}


def icl_gpt(input_shape: Sequence[int], tasks, *, preset: str = "tiny",
            dim: int | None = None, depth: int | None = None, heads: int | None = None,
            seed: int = 0) -> base.MTLModel:
  """The library GPT over prompt tokens ``[2n, d + 1]`` with per-class read-outs.

  Args:
    input_shape: ``(2n, d + 1)``.
    tasks: the TaskSpecs (one head each; regression with ``n`` outputs).
    preset, dim, depth, heads: `mtlx.models.gpt` size (``tiny``: 32 wide, 2 blocks,
      2 heads; the sizes override it).
    seed: initialisation seed.
  """
  t_len, feat = (int(v) for v in input_shape)
  size = tf.resolve_size(PRESETS, preset, dim=dim, depth=depth, heads=heads)
  rngs = nnx.Rngs(seed)
  enc = GPTEncoder((t_len, feat), size, vocab_size=0, max_len=t_len,
                           patch_size=feat, pool="last", head="lm", tied=False,
                           num_tasks=len(tasks), dtype=jnp.float32, dropout_rate=0.0,
                           rngs=rngs)
  return base.MTLModel(enc, XTokenHeads(tasks, size.dim, rngs=rngs), tasks, input_shape)


def tiny_causal_transformer(input_shape: Sequence[int], tasks, *, width: int = 32,
                            depth: int = 2, heads: int = 2, seed: int = 0):
  """``(ModelFns, params)`` of :func:`icl_gpt` (the old stub's name and arguments)."""
  return base.split(icl_gpt(input_shape, tasks, dim=width, depth=depth, heads=heads,
                            seed=seed))
