"""Pre-LayerNorm transformer blocks shared by :mod:`mtlx.models.vit` and
:mod:`mtlx.models.gpt`, their size presets, and the options both take.

A block is ``x + Attn(LN(x))`` then ``x + MLP(LN(x))`` (Xiong et al., 2020; ViT,
GPT-2). Activations carry a leading *stream* axis ``[S, B, T, D]``: ``S = 1`` while
every task shares the computation, ``S = K`` from the first task-specific layer on
(per-task LoRA adapters, per-task MoE routers), where stream ``k`` is task ``k``'s
forward pass. Options:

* ``lora_rank > 0``: per-task LoRA on the q/k/v/output projections and both MLP
  kernels (:mod:`mtlx.models.lora`); ``lora_rank`` with ``lora_adapters=1`` is one
  shared adapter.
* ``moe_experts > 0``: every ``moe_every``-th block's MLP is a sparse top-k MoE
  (:mod:`mtlx.models.sparse_moe`), with one router per task when
  ``moe_task_routers``; its load-balancing loss is returned as an auxiliary
  output (:func:`aux_losses`), outside the K task losses.
* ``dtype``: the compute dtype (``'float32'`` or ``'bfloat16'``). Params stay float32
  (so do the optimizer state, the Gramian and the losses: heads return float32).
* ``remat``: rematerialise each block in the backward pass (``nnx.remat``).
* ``dropout``: residual / embedding dropout rate, active only when the model is
  called with ``dropout_key=`` (a PRNG key, e.g. the train state's key for the step).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp

from mtlx.models import lora as lora_lib
from mtlx.models import sparse_moe

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float64": jnp.float64}


@dataclasses.dataclass(frozen=True)
class Size:
  """Width ``dim``, ``depth`` blocks, ``heads``, MLP hidden = ``mlp_ratio × dim``."""
  dim: int
  depth: int
  heads: int
  mlp_ratio: float = 4.0


def resolve_dtype(dtype: Any):
  """``'float32'`` / ``'bfloat16'`` (or a dtype) -> a jnp dtype; ValueError otherwise."""
  if isinstance(dtype, str):
    if dtype not in DTYPES:
      raise ValueError(f"dtype={dtype!r}; expected one of {list(DTYPES)}.")
    return DTYPES[dtype]
  return jnp.dtype(dtype).type


def resolve_size(presets: dict, preset: str, **overrides) -> Size:
  """The preset's :class:`Size` with the non-None ``overrides`` applied."""
  if preset not in presets:
    raise ValueError(f"preset={preset!r}; expected one of {list(presets)}.")
  size = dataclasses.replace(presets[preset].size,
                             **{k: v for k, v in overrides.items() if v is not None})
  if size.dim % size.heads:
    raise ValueError(f"dim={size.dim} is not divisible by heads={size.heads}; expected "
                     "a multiple.")
  return size


def wide(dtype):
  """float32, or float64 for float64 runs: where losses, softmaxes and aux terms live."""
  return jnp.promote_types(dtype, jnp.float32)


def dropout(x, rate: float, key):
  """Inverted dropout; identity when ``key`` is None or ``rate`` is 0."""
  if key is None or rate == 0.0:
    return x
  keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


class Attention(nnx.Module):
  """Multi-head self-attention on ``[S, B, T, D]`` (causal or not)."""

  def __init__(self, dim, heads, *, causal, lora, dtype, rngs):
    self.heads, self.causal, self.dtype = heads, causal, dtype
    self.q = lora_lib.LoRALinear(dim, dim, dtype=dtype, rngs=rngs, **lora)
    self.k = lora_lib.LoRALinear(dim, dim, dtype=dtype, rngs=rngs, **lora)
    self.v = lora_lib.LoRALinear(dim, dim, dtype=dtype, rngs=rngs, **lora)
    self.o = lora_lib.LoRALinear(dim, dim, dtype=dtype, rngs=rngs, **lora)

  def __call__(self, x):
    s, b, t, d = x.shape
    h = self.heads

    def split_heads(y):
      return y.reshape(s, b, t, h, d // h)

    q, k, v = split_heads(self.q(x)), split_heads(self.k(x)), split_heads(self.v(x))
    acc = wide(self.dtype)
    logits = jnp.einsum("sbqhc,sbkhc->sbhqk", q, k).astype(acc) / math.sqrt(d // h)
    if self.causal:
      mask = jnp.tril(jnp.ones((t, t), bool))
      logits = jnp.where(mask, logits, jnp.finfo(acc).min)
    att = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    y = jnp.einsum("sbhqk,sbkhc->sbqhc", att, v).reshape(s, b, t, d)
    return self.o(y)


class MLP(nnx.Module):
  """``gelu(x W1 + b1) W2 + b2`` (optionally LoRA-adapted)."""

  def __init__(self, dim, hidden, *, lora, dtype, rngs):
    self.fc1 = lora_lib.LoRALinear(dim, hidden, dtype=dtype, rngs=rngs, **lora)
    self.fc2 = lora_lib.LoRALinear(hidden, dim, dtype=dtype, rngs=rngs, **lora)

  def __call__(self, x):
    return self.fc2(jax.nn.gelu(self.fc1(x))), jnp.zeros((), wide(x.dtype))


class Block(nnx.Module):
  """Pre-LN block ``x + Attn(LN x)``, ``x + MLP(LN x)`` (MLP: dense or sparse MoE).

  ``task_specific`` blocks need ``S = K`` streams (per-task adapters or routers);
  ``__call__`` broadcasts a shared ``S = 1`` input to them.
  """

  def __init__(self, size: Size, *, causal: bool, lora: dict, moe: dict | None,
               num_streams: int, dropout_rate: float, dtype, rngs):
    d = size.dim
    hidden = int(size.mlp_ratio * d)
    self.ln1 = nnx.LayerNorm(d, dtype=dtype, rngs=rngs)
    self.ln2 = nnx.LayerNorm(d, dtype=dtype, rngs=rngs)
    self.attn = Attention(d, size.heads, causal=causal, lora=lora, dtype=dtype, rngs=rngs)
    if moe is None:
      self.mlp = MLP(d, hidden, lora=lora, dtype=dtype, rngs=rngs)
    else:
      self.mlp = sparse_moe.SparseMoEMLP(d, hidden, dtype=dtype, rngs=rngs, **moe)
    self.num_streams = num_streams
    self.task_specific = (lora.get("rank", 0) > 0 and lora.get("num_adapters", 1) > 1) or (
        moe is not None and moe.get("num_routers", 1) > 1)
    self.dropout_rate = dropout_rate

  def __call__(self, x, key=None):
    if self.task_specific and x.shape[0] != self.num_streams:
      x = jnp.broadcast_to(x, (self.num_streams,) + x.shape[1:])
    k1, k2 = jax.random.split(key) if key is not None else (None, None)
    x = x + dropout(self.attn(self.ln1(x)), self.dropout_rate, k1)
    y, aux = self.mlp(self.ln2(x))
    return x + dropout(y, self.dropout_rate, k2), aux


class Stack(nnx.Module):
  """``depth`` blocks then a final LayerNorm; returns ``(x, Σ aux)``.

  Args:
    size: the :class:`Size`.
    causal: causal self-attention (GPT) or not (ViT).
    num_tasks: K (the number of streams of task-specific blocks).
    lora_rank, lora_alpha, lora_adapters: LoRA options (``lora_adapters``: 'task'
      for one adapter per task, or 'shared' for one adapter).
    moe_experts, moe_top_k, moe_every, moe_task_routers: sparse-MoE options (blocks
      ``i`` with ``(i + 1) % moe_every == 0`` get the MoE MLP).
    dropout_rate, dtype, remat: see the module docstring.
  """

  def __init__(self, size: Size, *, causal: bool, num_tasks: int, lora_rank: int = 0,
               lora_alpha: float | None = None, lora_adapters: str = "task",
               moe_experts: int = 0, moe_top_k: int = 2, moe_every: int = 2,
               moe_task_routers: bool = False, dropout_rate: float = 0.0,
               dtype=jnp.float32, remat: bool = False, rngs: nnx.Rngs):
    if lora_adapters not in ("task", "shared"):
      raise ValueError(f"lora_adapters={lora_adapters!r}; expected 'task' or 'shared'.")
    if lora_rank < 0 or moe_experts < 0 or moe_every < 1:
      raise ValueError(f"lora_rank={lora_rank}, moe_experts={moe_experts}, moe_every="
                       f"{moe_every}; expected lora_rank >= 0, moe_experts >= 0, "
                       "moe_every >= 1.")
    if not 0.0 <= dropout_rate < 1.0:
      raise ValueError(f"dropout={dropout_rate}; expected 0 <= dropout < 1.")
    adapters = num_tasks if lora_adapters == "task" else 1
    lora = {"rank": lora_rank, "num_adapters": adapters, "alpha": lora_alpha} if lora_rank else {}
    streams = 1
    if lora_rank and adapters > 1:
      streams = num_tasks
    if moe_experts and moe_task_routers and num_tasks > 1:
      streams = num_tasks
    self.depth, self.remat, self.dim = size.depth, remat, size.dim
    blocks = []
    for i in range(size.depth):
      moe = None
      if moe_experts and (i + 1) % moe_every == 0:
        moe = {"num_experts": moe_experts, "top_k": moe_top_k,
               "num_routers": num_tasks if moe_task_routers else 1}
      blocks.append(Block(size, causal=causal, lora=lora, moe=moe, num_streams=streams,
                          dropout_rate=dropout_rate, dtype=dtype, rngs=rngs))
    self.blocks = nnx.List(blocks)
    self.ln_f = nnx.LayerNorm(size.dim, dtype=dtype, rngs=rngs)
    self.num_streams = streams

  def __call__(self, x, key=None):
    aux = jnp.zeros((), wide(x.dtype))
    for i, block in enumerate(self.blocks):
      k = jax.random.fold_in(key, i) if key is not None else None
      if self.remat:
        x, a = nnx.remat(lambda blk, y, kk: blk(y, kk))(block, x, k)
      else:
        x, a = block(x, k)
      aux = aux + a
    return self.ln_f(x), aux


class TaskHeads(nnx.Module):
  """One linear head per (vector) task on a pooled representation ``[S, B, D]``;
  stream ``k`` feeds head ``k`` (or the single stream feeds all); outputs float32."""

  def __init__(self, tasks, dim, *, dtype, rngs):
    from mtlx.models import layers  # pylint: disable=import-outside-toplevel
    for t in tasks:
      if t.kind in layers.DENSE_KINDS:
        raise ValueError(f"task {t.name!r} is dense ({t.kind}); the transformer heads "
                         f"take per-example kinds {list(layers.VECTOR_KINDS)}.")
    self.names = tuple(t.name for t in tasks)
    self.heads = nnx.Dict({t.name: lora_lib.LoRALinear(dim, layers.head_outputs(t),
                                                       dtype=dtype, rngs=rngs)
                           for t in tasks})

  def __call__(self, z):
    reps = z["pooled"] if isinstance(z, dict) else z
    if reps.ndim == 2:
      reps = reps[None]
    out = {}
    for i, n in enumerate(self.names):
      r = reps[i if reps.shape[0] > 1 else 0]
      out[n] = self.heads[n](r[None])[0].astype(wide(r.dtype))
    if isinstance(z, dict) and "aux" in z:
      out["aux/moe_balance"] = z["aux"]
    return out


def representation(x, aux, has_moe: bool):
  """The encoder's output: ``x`` (``[B, ...]`` when one stream, else ``[K, B, ...]``),
  and with MoE blocks a dict ``{'pooled': x, 'aux': balance loss}``."""
  if x.shape[0] == 1:
    x = x[0]
  return {"pooled": x, "aux": aux} if has_moe else x


def aux_losses(outputs: dict) -> dict:
  """The auxiliary (non-task) losses in a model's outputs: keys ``'aux/...'``.

  They are extra terms of the objective, outside the K task losses, e.g. the
  MoE load balance: ``total = Σ_k w_k L_k + aux_weight · outputs['aux/moe_balance']``.
  """
  return {k: v for k, v in outputs.items() if k.startswith("aux/")}


@dataclasses.dataclass(frozen=True)
class Preset:
  """A named size and its defaults (``extra``: patch size, vocabulary, context ...)."""
  size: Size
  extra: dict = dataclasses.field(default_factory=dict)


def count_block_params(size: Size) -> int:
  """Parameters of one dense block (4 D² attention + 2 r D² MLP + biases and norms)."""
  d, h = size.dim, int(size.mlp_ratio * size.dim)
  return 4 * (d * d + d) + (d * h + h) + (h * d + d) + 4 * d
