"""The step's auxiliary loss and dropout key (``make_step(has_aux=..., takes_rng=...)``).

Transformers bring two things a plain ``loss_fn(params, batch) -> losses[K]`` lacks:

* **an auxiliary loss** outside the K task losses, e.g. the sparse-MoE
  load-balancing loss (Switch Transformer, Fedus et al. 2022, eq. 4). With
  ``has_aux=True`` the loss function returns ``(losses[K], aux)`` where ``aux`` is a
  dict; a scalar ``aux["aux_loss"]`` (if present) is added to the objective with
  weight 1, so the step's gradient is

  .. math::  g = d_{\\text{MTO}} + \\nabla_θ\\, \\text{aux\\_loss}(θ)

  where ``d_MTO`` is what the engine and the MTO chain make of the K task losses
  (``Σ_k w_k ∇L_k`` for weightings). The term is NOT a task: the MTO methods never
  see it (it enters neither the Gramian nor the task weights) and it is logged as
  ``info["aux_loss"]``. Scale it inside ``loss_fn`` (the trainer's
  ``config.moe_aux_weight``; Switch's default is 0.01). Other keys of ``aux`` are
  ignored.
* **a dropout key**: with ``takes_rng=True`` the loss function is called as
  ``loss_fn(params, batch, key)``; ``key`` is ``jax.random.split(state.rng)[1]``
  (the state's next key is ``split(state.rng)[0]``, as without the hook), so every
  step gets fresh masks, every pass of one step (the Gramian pass and the VJP of the
  Gramian engine, the extra mini-batches) the same masks, and a run resumed from a
  checkpoint the masks of the uninterrupted run (the key is part of the
  checkpointed :class:`mtlx.train.TrainState`). The ``representation`` engine then
  calls ``representation.encode(enc_params, batch, key)`` (the heads take no key).

Cost of the auxiliary term, per engine:

=============== ==================================================================
one_backward    folded into the one VJP: cotangent ``(w, 1)`` on ``(L, aux)``; free
gramian         folded into the final VJP of ``Σ_k w_k L_k + aux``; free
jacobian        one extra forward + backward of ``aux`` (``jax.value_and_grad``);
                the K rows of the Jacobian stay task gradients
representation  one extra forward + backward of ``aux`` over all params (the
                representation Jacobian covers the task losses only)
=============== ==================================================================

(XLA may share the extra forward with the step's own; it is not relied on.) With
``has_aux=False`` and ``takes_rng=False`` every function here hands ``loss_fn``
through unchanged, so the step's program is the one without hooks.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from mtlx import autogram

AUX_LOSS = "aux_loss"


def dropout_key(rng: jax.Array) -> jax.Array:
  """The step's dropout key from the state's key: ``split(rng)[1]`` (the next
  state key is ``split(rng)[0]``)."""
  return jax.random.split(rng)[1]


def _check_aux(out, has_aux: bool) -> bool:
  """Whether the traced output carries a scalar ``aux["aux_loss"]`` (ValueError if
  ``has_aux`` but the output is not ``(losses, dict)`` or the term not a scalar)."""
  if not has_aux:
    return False
  if not (isinstance(out, (tuple, list)) and len(out) == 2 and isinstance(out[1], dict)):
    raise ValueError(f"has_aux=True but loss_fn returned {type(out).__name__}; expected "
                     "(losses[K], aux dict).")
  aux = out[1]
  if AUX_LOSS in aux and jnp.shape(aux[AUX_LOSS]) != ():
    raise ValueError(f"loss_fn's aux[{AUX_LOSS!r}] has shape {jnp.shape(aux[AUX_LOSS])}; "
                     "expected a scalar.")
  return AUX_LOSS in aux


class StepLoss(NamedTuple):
  """``loss_fn`` bound to one step's dropout key (:func:`bind`).

  Attributes:
    task_losses: ``(params, batch) -> losses[K]``.
    with_aux_loss: ``(params, batch) -> (losses[K], aux_loss)`` (``aux_loss`` 0
      without the term).
    has_aux_loss: whether ``loss_fn`` returns an ``aux["aux_loss"]``.
    key: the dropout key (None without ``takes_rng``).
  """
  task_losses: Callable
  with_aux_loss: Callable
  has_aux_loss: bool
  key: Any

  def vjp(self, params, batch):
    """``(losses, vjp)`` with ``vjp(w) = (∇(Σ_k w_k L_k + aux),)`` and the aux value
    (None without the term): the one-backward engine's pass."""
    if not self.has_aux_loss:
      losses, vjp = jax.vjp(lambda q: self.task_losses(q, batch), params)
      return losses, vjp, None
    (losses, aux), vjp = jax.vjp(lambda q: self.with_aux_loss(q, batch), params)
    return losses, lambda w: vjp((w, jnp.ones_like(aux))), aux

  def weighted_grad(self, params, weights, batch):
    """``(∇(Σ_k w_k L_k + aux), aux value or None)``: the Gramian engine's one VJP."""
    if not self.has_aux_loss:
      return autogram.weighted_grad(self.task_losses)(params, weights, batch), None

    def extended(q, b):
      losses, aux = self.with_aux_loss(q, b)
      return jnp.concatenate([losses, aux.astype(losses.dtype)[None]]), aux

    w = jnp.concatenate([weights, jnp.ones((1,), weights.dtype)])
    return autogram.weighted_grad(extended, has_aux=True)(params, w, batch)

  def aux_value_and_grad(self, params, batch):
    """``(aux, ∇aux)``: the extra forward + backward of the Jacobian and
    representation engines."""
    return jax.value_and_grad(lambda q: self.with_aux_loss(q, batch)[1])(params)


def bind(loss_fn: Callable, rng: jax.Array, params, batch, *, has_aux: bool = False,
         takes_rng: bool = False) -> StepLoss:
  """``loss_fn`` for one step (see the module docstring); traces it once
  (``jax.eval_shape``) to see whether it returns an ``aux_loss``."""
  if not (has_aux or takes_rng):
    return StepLoss(loss_fn, lambda q, b: (loss_fn(q, b), jnp.zeros(())), False, None)
  key = dropout_key(rng) if takes_rng else None

  def call(q, b):
    return loss_fn(q, b, key) if takes_rng else loss_fn(q, b)

  has_term = _check_aux(jax.eval_shape(call, params, batch), has_aux)

  def task_losses(q, b):
    return call(q, b)[0] if has_aux else call(q, b)

  def with_aux_loss(q, b):
    out = call(q, b)
    if not has_term:
      return (out[0] if has_aux else out), jnp.zeros(())
    return out[0], out[1][AUX_LOSS]

  return StepLoss(task_losses, with_aux_loss, has_term, key)


def num_tasks(loss_fn: Callable, params, batch, *, has_aux: bool = False,
              takes_rng: bool = False) -> int:
  """K, from the shape of ``loss_fn``'s losses (nothing is computed)."""
  args = (params, batch) + ((jax.random.PRNGKey(0),) if takes_rng else ())
  out = jax.eval_shape(loss_fn, *args)
  return int((out[0] if has_aux else out).shape[0])


def bind_representation(representation, key):
  """The :class:`mtlx.train.Representation` with the dropout key bound into
  ``encode`` (unchanged without a key)."""
  if key is None or representation is None:
    return representation
  return representation._replace(encode=lambda e, b: representation.encode(e, b, key))


def add_grads(grads, extra):
  """``grads + extra`` leaf by leaf (in ``grads``' dtypes)."""
  return jax.tree_util.tree_map(lambda g, e: g + e.astype(g.dtype), grads, extra)


def trainer_loss_fns(tasks, fns, input_key: str, *, aux_loss_weight: float = 0.0,
                     dropout_rng: bool = False, default=None):
  """``(loss_fn, representation, make_step hooks)`` of :func:`mtlx.train.make_trainer`.

  ``aux_loss_weight > 0``: ``loss_fn`` returns ``(losses, {"aux_loss":
  aux_loss_weight × Σ_i outputs['aux/i']})`` (no ``aux_loss`` for a model without
  auxiliary outputs); ``dropout_rng``: the model is called with ``dropout_key=``
  (encoder keyword of the transformers). Neither: ``default`` (the trainer's own
  ``(loss_fn, representation)``) and no hooks.
  """
  from mtlx.models import transformer  # noqa: PLC0415
  from mtlx.train import losses as losses_lib  # noqa: PLC0415
  from mtlx.train.step import Representation  # noqa: PLC0415
  has_aux, takes_rng = aux_loss_weight > 0, bool(dropout_rng)
  if not (has_aux or takes_rng):
    return default[0], default[1], {}

  def kw(key):
    return {"dropout_key": key} if takes_rng else {}

  def with_aux(out, losses):
    if not has_aux:
      return losses
    extra = transformer.aux_losses(out)
    aux = {AUX_LOSS: aux_loss_weight * sum(extra.values())} if extra else {}
    return losses, aux

  def loss_fn(p, batch, key=None):
    out = fns.apply(p, batch[input_key], **kw(key))
    return with_aux(out, losses_lib.task_losses(tasks, out, batch))

  def encode(enc, batch, key=None):
    return fns.encode(enc, batch[input_key], **kw(key))

  def heads(dec, z, batch):
    return losses_lib.task_losses(tasks, fns.decode(dec, z, batch[input_key]), batch)

  return loss_fn, Representation(encode, heads), dict(has_aux=has_aux, takes_rng=takes_rng)
