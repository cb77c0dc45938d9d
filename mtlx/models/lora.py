"""Dense layers with optional per-task LoRA adapters (Hu et al., ICLR 2022).

A :class:`LoRALinear` holds a shared base kernel ``W [D_in, D_out]`` (and bias)
and, when ``rank > 0``, ``S`` low-rank adapters ``A_s [D_in, r]``, ``B_s [r, D_out]``
(``S = num_adapters``, one per task in the multi-task transformers)::

  y_s = x_s W + b + (α / r) · (x_s A_s) B_s          (stream s = task s)

``B`` starts at zero, so a freshly built model equals its base (tested). Inputs
carry a leading *stream* axis ``[S, ...]``: stream ``s`` is task ``s``'s forward
pass (a shared base with K adapters needs K forward passes through every adapted
layer; layers before the first task-specific one run once, with ``S = 1``).

The MTO method may act on the shared base, the adapters or both:
:func:`param_labels` labels every leaf ``'base'`` (shared kernels, biases, norms,
embeddings), ``'adapter'`` (LoRA ``A``/``B``) or ``'head'`` (the task-specific
decoder), and :func:`mto_mask` turns a choice into a boolean pytree for
``optax.masked`` / ``optax.multi_transform`` (e.g. a frozen base:
``optax.multi_transform({'train': tx, 'freeze': optax.set_to_zero()}, labels)``).
Adapter ``s`` only moves task ``s``'s loss, so its rows of the Jacobian are zero
for every other task (the per-task gradients there never conflict).
"""

from __future__ import annotations

import math

from flax import nnx
import jax
import jax.numpy as jnp

LABELS = ("base", "adapter", "head")


class LoRALinear(nnx.Module):
  """``y = x W + b`` plus, for ``rank > 0``, the per-stream adapter ``(α/r) x A_s B_s``.

  Args:
    d_in, d_out: sizes.
    rank: LoRA rank ``r`` (0: a plain dense layer).
    num_adapters: ``S``, the number of adapters (streams) when ``rank > 0``.
    alpha: LoRA scale ``α`` (default ``r``, i.e. scale 1; the paper's ``α/r``).
    dtype: compute dtype (params stay float32; inputs and kernels are cast).
    use_bias: whether the base has a bias.
    init_scale: std multiplier of the base kernel (``1/sqrt(d_in)`` times this).
  """

  def __init__(self, d_in: int, d_out: int, *, rank: int = 0, num_adapters: int = 1,
               alpha: float | None = None, dtype=jnp.float32, use_bias: bool = True,
               init_scale: float = 1.0, rngs: nnx.Rngs):
    self.dtype = jnp.dtype(dtype)
    std = init_scale / math.sqrt(d_in)
    self.kernel = nnx.Param(std * jax.random.normal(rngs.params(), (d_in, d_out), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((d_out,), jnp.float32)) if use_bias else None
    self.rank = int(rank)
    if self.rank > 0:
      self.scale = float(alpha if alpha is not None else rank) / self.rank
      self.lora_a = nnx.Param(jax.random.normal(rngs.params(), (num_adapters, d_in, rank),
                                                jnp.float32) / math.sqrt(d_in))
      self.lora_b = nnx.Param(jnp.zeros((num_adapters, rank, d_out), jnp.float32))

  def __call__(self, x):
    """``x [S, ..., D_in] -> [S, ..., D_out]`` (``S`` = 1 or ``num_adapters`` when adapted)."""
    x = x.astype(self.dtype)
    y = jnp.einsum("...d,de->...e", x, self.kernel.value.astype(self.dtype))
    if self.bias is not None:
      y = y + self.bias.value.astype(self.dtype)
    if self.rank > 0:
      s = x.shape[0]
      a = self.lora_a.value.astype(self.dtype)
      b = self.lora_b.value.astype(self.dtype)
      if a.shape[0] != s:
        raise ValueError(f"LoRALinear got {s} streams; expected {a.shape[0]} "
                         "(one per adapter).")
      xs = x.reshape(s, -1, x.shape[-1])
      low = jnp.einsum("snd,sdr->snr", xs, a)
      y = y + (self.scale * jnp.einsum("snr,sre->sne", low, b)).reshape(y.shape)
    return y


def _label_tree(tree, under_decoder: bool):
  out = {}
  for key, val in tree.items():
    if isinstance(val, dict):
      out[key] = _label_tree(val, under_decoder)
    elif under_decoder:
      out[key] = "head"
    elif key in ("lora_a", "lora_b"):
      out[key] = "adapter"
    else:
      out[key] = "base"
  return out


def param_labels(params: dict) -> dict:
  """``'base'`` / ``'adapter'`` / ``'head'`` for every leaf of a split model's params.

  ``params`` is the ``{'encoder': ..., 'decoder': ...}`` dict of
  :func:`mtlx.models.split`; decoder leaves are ``'head'``, LoRA ``lora_a`` /
  ``lora_b`` leaves ``'adapter'``, every other encoder leaf ``'base'``.
  """
  if not isinstance(params, dict) or set(params) != {"encoder", "decoder"}:
    raise ValueError("params must be the {'encoder', 'decoder'} dict of "
                     f"mtlx.models.split; got keys {sorted(params) if isinstance(params, dict) else type(params)}.")
  return {"encoder": _label_tree(params["encoder"], False),
          "decoder": _label_tree(params["decoder"], True)}


def mto_mask(params: dict, act_on=("base",)) -> dict:
  """Boolean pytree: True on the leaves whose label (:func:`param_labels`) is in ``act_on``.

  Args:
    params: split model params.
    act_on: labels the MTO method acts on, a subset of ``('base', 'adapter', 'head')``
      (default: the shared base; adapters and heads are task-specific).

  Raises:
    ValueError: for an unknown label.
  """
  act_on = (act_on,) if isinstance(act_on, str) else tuple(act_on)
  bad = [a for a in act_on if a not in LABELS]
  if bad:
    raise ValueError(f"act_on={act_on}; expected labels among {list(LABELS)}.")
  return jax.tree_util.tree_map(lambda lab: lab in act_on, param_labels(params))
