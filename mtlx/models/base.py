"""The encoder/decoder split every mtlx model exposes, as pure functions of params."""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

from flax import nnx
import jax

from mtlx.models import layers


class MTLModel(nnx.Module):
  """A multi-task model: ``outputs = decoder(encoder(x), x)``.

  ``encoder(x) -> z`` is the part shared by every task (the representation that
  ``mtlx.value_and_representation_jacobian`` differentiates with respect to);
  ``decoder(z, x) -> {task name: prediction}`` holds everything task-specific
  (heads, gates, task experts, attention, cross-stitch columns). The decoder also
  receives ``x`` because gates (MMoE, CGC/PLE, DSelect-k) read the input.
  """

  def __init__(self, encoder: nnx.Module, decoder: nnx.Module, tasks: Sequence[Any],
               input_shape: Sequence[int]):
    self.encoder = encoder
    self.decoder = decoder
    self.task_names = tuple(t.name for t in tasks)
    self.input_shape = tuple(input_shape)

  def __call__(self, x) -> dict:
    return self.decoder(self.encoder(x), x)


class ModelFns(NamedTuple):
  """Pure functions of a split :class:`MTLModel` (params are plain nested dicts).

  Attributes:
    apply: ``(params, x, **kw) -> {task: prediction}``, params ``{'encoder': ..., 'decoder': ...}``.
    encode: ``(encoder_params, x, **kw) -> z``; keyword arguments go to the encoder
      (the transformers take ``dropout_key=``).
    decode: ``(decoder_params, z, x) -> {task: prediction}``.
    task_names: task order (the order of the loss vector).
  """
  apply: Any
  encode: Any
  decode: Any
  task_names: tuple


def split(model: MTLModel) -> tuple[ModelFns, dict]:
  """Splits an :class:`MTLModel` into pure functions and a params pytree.

  The params are ``{'encoder': {...}, 'decoder': {...}}`` of plain arrays (what
  ``nnx.split`` gives as a pure dict), ready for ``jax.grad``, optax and orbax.
  """
  gd_enc, st_enc = nnx.split(model.encoder)
  gd_dec, st_dec = nnx.split(model.decoder)
  params = {"encoder": nnx.to_pure_dict(st_enc), "decoder": nnx.to_pure_dict(st_dec)}

  def encode(enc_params, x, **kwargs):
    return nnx.merge(gd_enc, enc_params)(x, **kwargs)

  def decode(dec_params, z, x):
    return nnx.merge(gd_dec, dec_params)(z, x)

  def apply(p, x, **kwargs):
    return decode(p["decoder"], encode(p["encoder"], x, **kwargs), x)

  return ModelFns(apply, encode, decode, model.task_names), params


def out_hw(input_shape):
  """Output resolution of dense heads: the input's ``(H, W)``, or None for vectors."""
  return tuple(input_shape[:2]) if layers.is_image(input_shape) else None


def count_params(params) -> int:
  """Number of scalars in a params pytree."""
  return sum(int(x.size) for x in jax.tree_util.tree_leaves(params))
