"""A minimal causal transformer for the in-context function-class benchmark (a STUB).

Placeholder until the library's GPT (``mtlx/models/gpt.py``) is merged: the
in-context benchmark takes its model as a constructor, and the lead switches it
to that GPT. Pre-LayerNorm blocks (causal multi-head self-attention, a GELU MLP
of width 4w), learned positions, a linear read-in of the ``d + 1`` token
features; one linear head per task (function class) reads the hidden state at
every ``x`` token (positions ``0, 2, 4, …``), so head ``k`` predicts all
``f(x_i)`` of a prompt (Garg et al., 2022, with one head per task).

Params are ``{'encoder': ..., 'decoder': {task: ...}}`` of plain arrays, and
`tiny_causal_transformer` returns `mtlx.models.ModelFns`-shaped functions, so the
trainers treat it like any `mtlx.models` model.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mtlx.models.base import ModelFns


def _dense(key, fan_in, fan_out):
  return {"w": jax.random.normal(key, (fan_in, fan_out), jnp.float32) / np.sqrt(fan_in),
          "b": jnp.zeros((fan_out,), jnp.float32)}


def _ln(x, p):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / jnp.sqrt(var + 1e-5) * p["g"] + p["b"]


def tiny_causal_transformer(input_shape: Sequence[int], tasks, *, width: int = 64,
                            depth: int = 2, heads: int = 2, seed: int = 0):
  """``(ModelFns, params)`` of a small causal transformer over tokens ``[T, F]``.

  Args:
    input_shape: ``(T, F)``: sequence length ``2n`` and token size ``d + 1``.
    tasks: the TaskSpecs (one head each; regression with ``n`` outputs).
    width, depth, heads: model width, number of blocks, attention heads.
    seed: initialisation seed.
  """
  t_len, feat = int(input_shape[0]), int(input_shape[1])
  if width % heads:
    raise ValueError(f"width={width} is not divisible by heads={heads}; expected a multiple.")
  keys = iter(jax.random.split(jax.random.PRNGKey(seed), 4 + 4 * depth + len(tasks)))
  ones, zeros = jnp.ones((width,), jnp.float32), jnp.zeros((width,), jnp.float32)
  enc = {"read_in": _dense(next(keys), feat, width),
         "pos": 0.02 * jax.random.normal(next(keys), (t_len, width), jnp.float32),
         "ln_f": {"g": ones, "b": zeros}, "blocks": []}
  for _ in range(depth):
    enc["blocks"].append({"ln1": {"g": ones, "b": zeros}, "ln2": {"g": ones, "b": zeros},
                          "qkv": _dense(next(keys), width, 3 * width),
                          "proj": _dense(next(keys), width, width),
                          "fc": _dense(next(keys), width, 4 * width),
                          "out": _dense(next(keys), 4 * width, width)})
  dec = {t.name: _dense(next(keys), width, 1) for t in tasks}
  mask = jnp.tril(jnp.ones((t_len, t_len), bool))

  def encode(p, x):
    h = x @ p["read_in"]["w"] + p["read_in"]["b"] + p["pos"]
    b = x.shape[0]
    for blk in p["blocks"]:
      a = _ln(h, blk["ln1"])
      q, k, v = jnp.split(a @ blk["qkv"]["w"] + blk["qkv"]["b"], 3, axis=-1)
      split = lambda z: z.reshape(b, t_len, heads, width // heads).transpose(0, 2, 1, 3)
      q, k, v = split(q), split(k), split(v)
      att = jnp.einsum("bhqd,bhkd->bhqk", q, k) / np.sqrt(width // heads)
      att = jax.nn.softmax(jnp.where(mask, att, -1e30), axis=-1)
      o = jnp.einsum("bhqk,bhkd->bhqd", att, v).transpose(0, 2, 1, 3).reshape(b, t_len, width)
      h = h + o @ blk["proj"]["w"] + blk["proj"]["b"]
      m = jax.nn.gelu(_ln(h, blk["ln2"]) @ blk["fc"]["w"] + blk["fc"]["b"])
      h = h + m @ blk["out"]["w"] + blk["out"]["b"]
    return _ln(h, p["ln_f"])[:, 0::2]  # the x tokens: [B, n, width]

  def decode(p, z, x):
    del x
    return {name: (z @ head["w"] + head["b"])[..., 0] for name, head in p.items()}

  def apply(params, x):
    return decode(params["decoder"], encode(params["encoder"], x), x)

  names = tuple(t.name for t in tasks)
  return ModelFns(apply, encode, decode, names), {"encoder": enc, "decoder": dec}
