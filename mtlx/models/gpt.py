"""Decoder-only causal transformer (GPT-2, Radford et al. 2019) for multi-task learning.

Encoder: the input as a sequence of ``T`` tokens, learned position embeddings,
``depth`` pre-LN causal blocks (:mod:`mtlx.models.transformer`) and the final
LayerNorm. Inputs are either integer token ids ``[B, T]`` (``vocab_size > 0``: a
token-embedding table) or, with ``vocab_size = 0``, any float array read as a
sequence (images ``[H, W, C]`` as raster-order ``p × p`` patches, vectors ``[D]`` as
consecutive chunks of ``p`` features), embedded by one dense layer (Image-GPT-like
causal modelling of patches).

Two heads (``head=``):

``'tasks'`` (default) one linear head per task on the last position's state (the
  only one that sees the whole causal sequence) or the mean over positions
  (``pool='mean'``): ``z = [B, D]`` (``[K, B, D]`` with per-task adapters/routers).
``'lm'`` a shared language-model head over every position, ``outputs['lm'] =
  [B, T, V]`` (tied to the token embedding with ``tie_embeddings``); a task is a
  set of sequences and a loss on some of their positions, given by a per-task
  mask (:func:`lm_task_losses`). ``z`` is the token states ``[B, T, D]``.

Presets (``preset=``; sizes and ``vocab_size`` / ``max_len`` override):

======= ===== ===== ===== ======= ====== ========= ============
name    dim   depth heads vocab   ctx    params    note
======= ===== ===== ===== ======= ====== ========= ============
tiny    32    2     2     64      32     ~30 K     tests
mini    128   4     4     512     128    ~0.9 M    CPU benchmarks
small   768   12    12    50257   1024   124 M     GPT-2 small
medium  1024  24    16    50257   1024   355 M     GPT-2 medium
large   1280  36    20    50257   1024   774 M     GPT-2 large
xl      1600  48    25    50257   1024   1.56 B    GPT-2 XL
======= ===== ===== ===== ======= ====== ========= ============
(tied embeddings, as GPT-2.)
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from flax import nnx
import jax
import jax.numpy as jnp
import optax

from mtlx.models import base
from mtlx.models import lora as lora_lib
from mtlx.models import transformer as tf
from mtlx.models.transformer import Preset, Size

PRESETS = {
    "tiny": Preset(Size(32, 2, 2), {"vocab_size": 64, "max_len": 32, "patch_size": 4}),
    "mini": Preset(Size(128, 4, 4), {"vocab_size": 512, "max_len": 128, "patch_size": 4}),
    "small": Preset(Size(768, 12, 12), {"vocab_size": 50257, "max_len": 1024, "patch_size": 16}),
    "medium": Preset(Size(1024, 24, 16), {"vocab_size": 50257, "max_len": 1024, "patch_size": 16}),
    "large": Preset(Size(1280, 36, 20), {"vocab_size": 50257, "max_len": 1024, "patch_size": 16}),
    "xl": Preset(Size(1600, 48, 25), {"vocab_size": 50257, "max_len": 1024, "patch_size": 16}),
}
HEADS = ("tasks", "lm")


def sequence_length(input_shape: Sequence[int], vocab_size: int, patch_size: int) -> int:
  """Number of tokens ``T`` for per-example inputs of ``input_shape``."""
  if vocab_size:
    if len(input_shape) != 1:
      raise ValueError(f"token inputs must be [T]; got input_shape={tuple(input_shape)}.")
    return int(input_shape[0])
  if len(input_shape) == 3:
    h, w, _ = input_shape
    if h % patch_size or w % patch_size:
      raise ValueError(f"input_shape={tuple(input_shape)} is not divisible into "
                       f"patch_size={patch_size} patches; expected H, W multiples of it.")
    return (h // patch_size) * (w // patch_size)
  return math.ceil(math.prod(input_shape) / patch_size)


def to_sequence(x, patch_size: int):
  """A float input ``[B, ...]`` as ``[B, T, F]`` (patches of images, chunks of vectors)."""
  if x.ndim == 4:
    from mtlx.models.vit import patchify  # pylint: disable=import-outside-toplevel
    return patchify(x, patch_size)
  x = x.reshape(x.shape[0], -1)
  pad = (-x.shape[1]) % patch_size
  x = jnp.pad(x, ((0, 0), (0, pad)))
  return x.reshape(x.shape[0], -1, patch_size)


class GPTEncoder(nnx.Module):
  """Token (or patch) embedding + positions + causal blocks + final LN (+ pooling)."""

  def __init__(self, input_shape, size: Size, *, vocab_size, max_len, patch_size, pool,
               head, tied, num_tasks, dtype, dropout_rate, rngs, **stack_kw):
    t = sequence_length(input_shape, vocab_size, patch_size)
    if t > max_len:
      raise ValueError(f"the input is {t} tokens; expected at most max_len={max_len}.")
    if pool not in ("last", "mean"):
      raise ValueError(f"pool={pool!r}; expected 'last' or 'mean'.")
    d = size.dim
    self.vocab_size, self.patch_size, self.pool, self.head = vocab_size, patch_size, pool, head
    self.dtype, self.dropout_rate, self.tied = dtype, dropout_rate, tied
    if vocab_size:
      self.wte = nnx.Param(0.02 * jax.random.normal(rngs.params(), (vocab_size, d), jnp.float32))
    else:
      feat = (patch_size * patch_size * input_shape[-1] if len(input_shape) == 3
              else patch_size)
      self.proj = lora_lib.LoRALinear(feat, d, dtype=dtype, rngs=rngs)
    self.wpe = nnx.Param(0.02 * jax.random.normal(rngs.params(), (max_len, d), jnp.float32))
    self.stack = tf.Stack(size, causal=True, num_tasks=num_tasks, dtype=dtype,
                          dropout_rate=dropout_rate, rngs=rngs, **stack_kw)
    self.has_moe = bool(stack_kw.get("moe_experts", 0))

  def embed(self, x):
    if self.vocab_size:
      if not jnp.issubdtype(x.dtype, jnp.integer):
        raise ValueError(f"gpt with vocab_size={self.vocab_size} takes integer token ids; "
                         f"got dtype {x.dtype}.")
      return jnp.take(self.wte.value, x, axis=0).astype(self.dtype)
    return self.proj(to_sequence(x.astype(self.dtype), self.patch_size)[None])[0]

  def __call__(self, x, *, dropout_key=None):
    h = self.embed(x)
    t = h.shape[1]
    h = h + self.wpe.value[:t].astype(self.dtype)
    k_emb, k_stack = (jax.random.split(dropout_key) if dropout_key is not None
                      else (None, None))
    h = tf.dropout(h, self.dropout_rate, k_emb)
    out, aux = self.stack(h[None], k_stack)
    if self.head == "lm":
      if self.tied:  # the LM head reads wte: it stays in the encoder, z = logits
        out = jnp.einsum("...d,vd->...v", out, self.wte.value.astype(self.dtype)).astype(
            tf.wide(self.dtype))
      return tf.representation(out, aux, self.has_moe)
    pooled = out[:, :, -1] if self.pool == "last" else jnp.mean(out, axis=2)
    return tf.representation(pooled, aux, self.has_moe)


class LMHead(nnx.Module):
  """Shared LM head ``logits = h Wᵀ`` with its own ``W [V, D]`` (identity when tied:
  the encoder already applied the tied embedding)."""

  def __init__(self, dim, vocab_size, *, tied, dtype, rngs):
    self.tied, self.dtype = tied, dtype
    if not tied:
      self.w = nnx.Param(0.02 * jax.random.normal(rngs.params(), (vocab_size, dim), jnp.float32))

  def __call__(self, h):
    if self.tied:
      return h
    w = self.w.value
    return jnp.einsum("...d,vd->...v", h.astype(self.dtype), w.astype(self.dtype)).astype(
        tf.wide(self.dtype))


class GPTDecoder(nnx.Module):
  def __init__(self, tasks, dim, *, head, vocab_size, tied, dtype, rngs):
    self.head = head
    if head == "tasks":
      self.heads = tf.TaskHeads(tasks, dim, dtype=dtype, rngs=rngs)
    else:
      self.lm = LMHead(dim, vocab_size, tied=tied, dtype=dtype, rngs=rngs)

  def __call__(self, z, x):
    del x
    if self.head == "tasks":
      return self.heads(z)
    h = z["pooled"] if isinstance(z, dict) else z
    out = {"lm": self.lm(h)}
    if isinstance(z, dict):
      out["aux/moe_balance"] = z["aux"]
    return out


def gpt(input_shape: Sequence[int], tasks: Sequence[Any], *, preset: str = "tiny",
        dim: int | None = None, depth: int | None = None, heads: int | None = None,
        mlp_ratio: float | None = None, vocab_size: int | None = None,
        max_len: int | None = None, patch_size: int | None = None, pool: str = "last",
        head: str = "tasks", tie_embeddings: bool = False, lora_rank: int = 0, lora_alpha: float | None = None,
        lora_adapters: str = "task", moe_experts: int = 0, moe_top_k: int = 2,
        moe_every: int = 2, moe_task_routers: bool = False, dropout: float = 0.0,
        dtype: Any = "float32", remat: bool = False, seed: int = 0) -> base.MTLModel:
  """A multi-task causal transformer (module docstring).

  Args:
    input_shape: ``[T]`` token ids (``vocab_size > 0``) or any float input shape
      (``vocab_size = 0``: patches / chunks of ``patch_size`` as tokens).
    tasks: TaskSpecs (per-example kinds for ``head='tasks'``; any names for ``'lm'``,
      whose losses come from :func:`lm_task_losses`).
    preset: a name of :data:`PRESETS`; ``dim``, ``depth``, ``heads``, ``mlp_ratio``,
      ``vocab_size``, ``max_len``, ``patch_size`` override it.
    pool: ``'last'`` (last position) or ``'mean'`` for the task heads.
    head: ``'tasks'`` or ``'lm'``.
    tie_embeddings: (``head='lm'``) the LM head is ``wte``ᵀ (GPT-2); then the head
      lives in the encoder (``z`` = the logits ``[B, T, V]``) since one parameter
      cannot be both shared encoder and decoder.
    lora_*, moe_*, dropout, dtype, remat, seed: as in :func:`mtlx.models.vit`.
  """
  from mtlx.models import layers  # pylint: disable=import-outside-toplevel
  if head not in HEADS:
    raise ValueError(f"head={head!r}; expected one of {list(HEADS)}.")
  if head == "tasks":
    layers.check_tasks(tasks, input_shape)
  size = tf.resolve_size(PRESETS, preset, dim=dim, depth=depth, heads=heads,
                         mlp_ratio=mlp_ratio)
  extra = PRESETS[preset].extra
  vocab = int(extra["vocab_size"] if vocab_size is None else vocab_size)
  ctx = int(max_len or extra["max_len"])
  patch = int(patch_size or extra["patch_size"])
  if head == "lm" and not vocab:
    raise ValueError("head='lm' needs token inputs; got vocab_size=0.")
  if tie_embeddings and head != "lm":
    raise ValueError("tie_embeddings=True needs head='lm'; got head='tasks'.")
  dt = tf.resolve_dtype(dtype)
  rngs = nnx.Rngs(seed)
  enc = GPTEncoder(tuple(input_shape), size, vocab_size=vocab, max_len=ctx, patch_size=patch,
                   pool=pool, head=head, tied=tie_embeddings, num_tasks=len(tasks), dtype=dt, dropout_rate=dropout,
                   rngs=rngs, lora_rank=lora_rank, lora_alpha=lora_alpha,
                   lora_adapters=lora_adapters, moe_experts=moe_experts, moe_top_k=moe_top_k,
                   moe_every=moe_every, moe_task_routers=moe_task_routers, remat=remat)
  dec = GPTDecoder(tasks, size.dim, head=head, vocab_size=vocab, tied=tie_embeddings, dtype=dt,
                   rngs=rngs)
  return base.MTLModel(enc, dec, tasks, input_shape)


def lm_task_losses(logits: jax.Array, targets: jax.Array, task_masks: jax.Array) -> jax.Array:
  """``[K]`` per-task next-token losses of a shared LM head.

  ``L_k = Σ_{b,t} m_k[b,t] · CE(logits[b,t], targets[b,t]) / max(Σ_{b,t} m_k[b,t], 1)``:
  task k is the set of (sequence, position) pairs its mask selects (e.g. the
  answer tokens of its sequences). ``targets`` are the next tokens (the inputs
  shifted by one); positions a task does not score have mask 0.

  Args:
    logits: ``[B, T, V]``.
    targets: ``[B, T]`` integer ids.
    task_masks: ``[K, B, T]`` (0/1 or weights).
  """
  if task_masks.ndim != 3 or task_masks.shape[1:] != targets.shape:
    raise ValueError(f"task_masks has shape {task_masks.shape}; expected [K, "
                     f"{', '.join(map(str, targets.shape))}].")
  ce = optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.promote_types(logits.dtype, jnp.float32)), targets)
  m = task_masks.astype(ce.dtype)
  return jnp.sum(m * ce[None], axis=(1, 2)) / jnp.maximum(jnp.sum(m, axis=(1, 2)), 1.0)


def num_params(preset: str) -> int:
  """Parameters of a preset with tied embeddings (GPT-2 counting), without building it."""
  p = PRESETS[preset]
  d = p.size.dim
  return (p.extra["vocab_size"] + p.extra["max_len"]) * d + p.size.depth * \
      tf.count_block_params(p.size) + 2 * d
