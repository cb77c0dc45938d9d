"""The building block of every loss-space method, and the one-backward path.

A loss-space method picks per-task weights ``w ∈ R^K`` from the task losses (and
its own state) and re-weights the stacked per-task gradients row by row:

.. math::  g_k \\mapsto w_k\\, g_k \\qquad (k = 1..K),

so its output is again a stacked pytree (leading K axis on every leaf) that any
gradient-space method (``mtlx.linear_scalarization()``, ``mtlx.pcgrad()`` ...)
consumes. :func:`loss_space_weighting` wraps a pure ``weight_fn`` once into a
:class:`LossWeighting`, which carries it; :func:`loss_weights` calls it (for one
transform or a :func:`loss_chain` of them) on the losses alone, so a trainer can
take ONE backward pass of ``Σ_k w_k L_k`` instead of K.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import optax

from mtlx import jacobian
from mtlx import validation

PyTree = Any


def check_losses(task_losses: Any, k: int | None, method: str) -> jax.Array:
  """Checks ``task_losses`` (present, shape [K], floating) and returns it as an array."""
  validation.check_task_losses(task_losses, k, method)
  task_losses = jnp.asarray(task_losses)
  if not jnp.issubdtype(task_losses.dtype, jnp.floating):
    raise ValueError(f"task_losses has dtype {task_losses.dtype}; expected a "
                     "floating dtype.")
  return task_losses


def compute_dtype(task_losses: jax.Array) -> jnp.dtype:
  """Weights are computed in float32 or wider (bf16 losses -> float32)."""
  return jacobian.accumulation_dtype(task_losses.dtype)


def state_zeros(k: int) -> jax.Array:
  """A ``[K]`` state vector in the default float dtype (float64 under x64)."""
  return jnp.zeros((k,), jnp.asarray(0.0).dtype)


def like(new: jax.Array, old: jax.Array) -> jax.Array:
  """Casts a new state entry to the dtype of the old one (stable under ``lax.scan``)."""
  return jnp.asarray(new).astype(jnp.asarray(old).dtype)


def scale_rows(weights: jax.Array, task_grads: PyTree) -> PyTree:
  """``g_k -> w_k g_k`` on every leaf (leading K axis), in float32 or wider."""

  def leaf(g):
    acc = jacobian.accumulation_dtype(g.dtype)
    w = weights.astype(acc).reshape((-1,) + (1,) * (g.ndim - 1))
    return (w * g.astype(acc)).astype(g.dtype)

  return jax.tree_util.tree_map(leaf, task_grads)


def scale_gramian(weights: jax.Array, gramian: jax.Array) -> jax.Array:
  """``diag(w) G diag(w)``: the Gramian of the rows :func:`scale_rows` gives."""
  w = weights.astype(gramian.dtype)
  return gramian * w[:, None] * w[None, :]


def guard_non_finite(weights: jax.Array, new_state: Any, state: Any,
                     task_losses: jax.Array) -> tuple[jax.Array, Any]:
  """Non-finite losses: non-finite weights out, the state left as it was.

  A non-finite ``L_k`` makes ``w_k`` non-finite even for methods whose weights
  do not read the current losses (DWA), so the update is non-finite and an
  ``optax.apply_if_finite`` after the aggregator skips it; the state is not
  advanced, so the skipped step leaves no trace (no NaN stored in it). An exact
  no-op for finite losses.
  """
  weights = weights + jnp.zeros_like(weights) * task_losses.astype(weights.dtype)
  finite = jnp.all(jnp.isfinite(task_losses))
  new_state = jax.tree_util.tree_map(
      lambda new, old: jnp.where(finite, new, old).astype(jnp.asarray(old).dtype),
      new_state, state)
  return weights, new_state


class LossWeighting(optax.GradientTransformationExtraArgs):
  """A loss-space transform ``g_k -> w_k g_k`` that carries its weight function.

  An ``optax.GradientTransformationExtraArgs`` (the ``(init, update)`` pair: it
  chains and unpacks like any optax transform) with, as attributes:

  Attributes:
    weight_fn: ``weight_fn(state, task_losses) -> (w[K], new_state)``, or with
      ``reads_grads`` ``weight_fn(state, task_losses, task_grads)``.
    state_init: ``state_init(num_tasks) -> state`` or ``None`` (``EmptyState``).
    num_tasks: K when the state is sized by it, else ``None``.
    reads_grads: whether ``weight_fn`` reads the stacked per-task grads
      (GradNorm): such a weighting needs an engine that forms them.
    name: the method's name (error messages, logs).

  :meth:`weights` is the one call every engine makes.
  """

  def __new__(cls, init, update, weight_fn=None, state_init=None, num_tasks=None,
              reads_grads=False, name="loss_weighting"):
    self = super().__new__(cls, init, update)
    # Attributes, not tuple fields: optax.chain unpacks transforms as (init, update).
    self.weight_fn = weight_fn
    self.state_init = state_init
    self.num_tasks = num_tasks
    self.reads_grads = bool(reads_grads)
    self.name = name
    return self

  def weights(self, state: Any, task_losses: Any,
              task_grads: PyTree = None) -> tuple[jax.Array, Any]:
    """``(w[K], new_state)``: checked losses in, checked weights out.

    ``task_grads`` (stacked, leading K axis) is required when :attr:`reads_grads`.
    Non-finite losses give non-finite weights and leave the state as it was
    (:func:`guard_non_finite`).
    """
    task_losses = check_losses(task_losses, None, self.name)
    k = task_losses.shape[0]
    validation.check_num_tasks(k, self.num_tasks, self.name)
    if self.reads_grads:
      if task_grads is None:
        raise ValueError(
            f"{self.name} reads the per-task gradients, so its weights cannot be "
            "computed from the losses alone (the one-backward and Gramian engines, "
            "mtlx.loss_weights). Use the stacked path instead: `losses, task_grads = "
            "mtlx.value_and_jacobian(loss_fn)(params, batch)` then `tx.update("
            "task_grads, state, params, task_losses=losses)` (engine='jacobian').")
      weights, new_state = self.weight_fn(state, task_losses, task_grads)
    else:
      weights, new_state = self.weight_fn(state, task_losses)
    if jnp.shape(weights) != (k,):
      raise ValueError(f"{self.name} produced weights of shape {jnp.shape(weights)}; "
                       f"expected shape ({k},).")
    return guard_non_finite(weights, new_state, state, task_losses)


def loss_space_weighting(
    weight_fn: Callable[..., Any], *,
    init_fn: Callable[[int | None], Any] | None = None,
    num_tasks: int | None = None,
    name: str = "loss_weighting",
    reads_grads: bool = False) -> LossWeighting:
  """Wraps a pure weight function as a loss-space transform (``g_k -> w_k g_k``).

  Args:
    weight_fn: ``weight_fn(state, task_losses) -> (weights[K], new_state)``, or
      with ``reads_grads=True`` ``weight_fn(state, task_losses, task_grads)``.
      ``task_losses`` arrives checked (shape [K], floating); the weights are
      used as computed (no repair: non-finite losses give non-finite weights).
    init_fn: ``init_fn(num_tasks) -> state``; ``None`` for ``optax.EmptyState()``.
    num_tasks: K for methods whose state is sized by the number of tasks; an
      update with another K raises a ``ValueError`` naming both numbers.
    name: the method's public name, for error messages.
    reads_grads: whether ``weight_fn`` reads the stacked grads (GradNorm); such
      a transform needs the per-task grads (refused by :func:`loss_weights`).

  Returns:
    A :class:`LossWeighting` (an ``optax.GradientTransformationExtraArgs``) whose ``update(task_grads, state,
    params=None, *, task_losses, **extra)`` returns the re-weighted stacked grads
    (same structure and dtypes) and the new state. Non-finite losses give
    non-finite weights and leave the state unchanged; so do non-finite grads
    (:func:`mtlx.validation.guard_step`).

  Cost: ``K P`` multiplies on top of ``weight_fn`` (O(K) for loss-only methods).
  """

  def init(params):
    del params
    return optax.EmptyState() if init_fn is None else init_fn(num_tasks)

  def update(task_grads, state, params=None, *, task_losses=None, **extra):
    del params, extra
    k = validation.num_tasks(task_grads)
    validation.check_num_tasks(k, num_tasks, name)
    check_losses(task_losses, k, name)
    weights, new_state = tx.weights(state, task_losses, task_grads)
    return scale_rows(weights, task_grads), new_state

  tx = LossWeighting(init, validation.guarded_update(update, name), weight_fn, init_fn, num_tasks, reads_grads, name)
  return tx


def loss_chain(*transforms: LossWeighting) -> LossWeighting:
  """``optax.chain`` of loss-space weightings that stays a :class:`LossWeighting`.

  The chain's weights are the product ``w = Π_i w^{(i)}`` (each member sees the
  rows already re-weighted by the members before it, as in ``optax.chain``); its
  state is the tuple of the members' states, exactly ``optax.chain``'s, so either
  can be used with the other's state. ``optax.chain`` itself returns an opaque
  transform, which :func:`loss_weights` and the trainer's engines cannot read.

  Raises:
    ValueError: if a member is not a :class:`LossWeighting`.
  """
  for i, t in enumerate(transforms):
    if not isinstance(t, LossWeighting):
      raise ValueError(f"mtlx.loss_chain: transform {i} is a {type(t).__name__}; "
                       "expected a loss-space weighting (mtlx.dwa(), mtlx.famo(), ...: "
                       "a LossWeighting).")
  chained = optax.chain(*transforms)

  def weight_fn(state, task_losses, task_grads=None):
    weights, new_state = None, []
    for t, s in zip(transforms, state):
      rows = None
      if t.reads_grads:
        rows = task_grads if weights is None else scale_rows(weights, task_grads)
      w, s = t.weights(s, task_losses, rows)
      weights = w if weights is None else weights * w.astype(weights.dtype)
      new_state.append(s)
    return weights, tuple(new_state)

  nums = {t.num_tasks for t in transforms} - {None}
  return LossWeighting(chained.init, chained.update, weight_fn, None,
                       nums.pop() if len(nums) == 1 else None,
                       any(t.reads_grads for t in transforms),
                       "+".join(t.name for t in transforms))


def as_loss_weightings(tx: Any) -> tuple[LossWeighting, ...]:
  """``tx`` (a :class:`LossWeighting`, a sequence of them, or ``None``) as a tuple.

  Raises a ``ValueError`` naming what was given otherwise (an ``optax.chain`` hides
  its members: build it with :func:`loss_chain` or pass the list).
  """
  if tx is None:
    return ()
  items = tuple(tx) if isinstance(tx, (list, tuple)) and not isinstance(
      tx, optax.GradientTransformation) else (tx,)
  for t in items:
    if not isinstance(t, LossWeighting):
      raise ValueError(
          f"expected a loss-space weighting (a LossWeighting such as mtlx.dwa(), or "
          f"mtlx.loss_chain(...) of them); got a {type(t).__name__}. An optax.chain "
          "hides its members: use mtlx.loss_chain(a, b) instead, and keep "
          "gradient-space methods and optimizers out of it.")
  return items


def loss_weights(tx: Any, state: Any, task_losses: jax.Array) -> tuple[jax.Array, Any]:
  """The weights of a loss-space weighting (or a chain of them) from the losses alone.

  Calls the weight function the transform carries (:class:`LossWeighting`); for a
  :func:`loss_chain` (or a list of weightings with the tuple of their states) the
  product of the members' weights. A training step then takes one forward and
  one backward pass, pulling the weights back through the VJP of the loss vector
  (the weights are constants of the backward pass)::

    losses, vjp = jax.vjp(lambda p: loss_fn(p, batch), params)
    weights, state = mtlx.loss_weights(loss_tx, state, losses)
    grads, = vjp(weights.astype(losses.dtype))  # = ∇ Σ_k w_k L_k
    updates, opt_state = optimizer.update(grads, opt_state, params)

  which equals ``loss_tx`` applied to the stacked per-task grads followed by
  ``mtlx.linear_scalarization()``, with one backward pass instead of K.
  ``new_state`` is exactly the state the stacked path would produce.

  Args:
    tx: a :class:`LossWeighting`, a :func:`loss_chain` of them, or a list of them
      (then ``state`` is the tuple of their states).
    state: ``tx``'s state (``tx.init(params)``).
    task_losses: ``[K]`` floating losses of the current batch.

  Returns:
    ``(weights[K], new_state)``.

  Raises:
    ValueError: at trace time, for bad ``task_losses``; for a weighting that
      reads the per-task gradients (GradNorm); or if ``tx`` is not a loss-space
      weighting (an ``optax.chain``, an aggregator, an optimizer).

  Cost: the weight functions' own work (O(K) for loss-only methods); no backward pass.
  """
  task_losses = check_losses(task_losses, None, "mtlx.loss_weights")
  if isinstance(tx, LossWeighting):
    return tx.weights(state, task_losses)
  items = as_loss_weightings(tx)
  return loss_chain(*items).weights(tuple(state), task_losses)


# The old public name (``mtlx.loss_weighting(fn)``); the package ``mtlx.loss_weighting``
# forwards calls here too (see ``mtlx/loss_weighting/__init__.py``).
loss_weighting = loss_space_weighting
