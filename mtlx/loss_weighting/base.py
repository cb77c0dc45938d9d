"""The building block of every loss-space method, and the one-backward path.

A loss-space method picks per-task weights ``w ∈ R^K`` from the task losses (and
its own state) and re-weights the stacked per-task gradients row by row:

.. math::  g_k \\mapsto w_k\\, g_k \\qquad (k = 1..K),

so its output is again a stacked pytree (leading K axis on every leaf) that any
gradient-space method (``mtlx.linear_scalarization()``, ``mtlx.pcgrad()`` ...)
consumes. :func:`loss_space_weighting` wraps a pure ``weight_fn`` once;
:func:`loss_weights` reads the weights of such a transform (or of an
``optax.chain`` of them) from the losses alone, so a trainer can take ONE backward
pass of ``Σ_k w_k L_k`` instead of K.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from mtlx import validation

PyTree = Any

_PROBE = threading.local()


def _probing() -> bool:
  return getattr(_PROBE, "active", False)


@contextlib.contextmanager
def _probe():
  """Marks (at trace time) that ``loss_weights`` drives the transform."""
  previous = _probing()
  _PROBE.active = True
  try:
    yield
  finally:
    _PROBE.active = previous


def check_not_probing(method: str, hint: str = "") -> None:
  """Raises if a method that reads real gradients runs inside ``loss_weights``."""
  if _probing():
    raise ValueError(
        f"{method} reads the per-task gradients, so its weights cannot be computed "
        "from the losses alone: mtlx.loss_weights does not support it. Use the "
        "stacked path instead: `losses, task_grads = mtlx.value_and_jacobian(loss_fn)"
        "(params, batch)` then `tx.update(task_grads, state, params, "
        f"task_losses=losses)`.{(' ' + hint) if hint else ''}")


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
  return jnp.promote_types(task_losses.dtype, jnp.float32)


def state_zeros(k: int) -> jax.Array:
  """A ``[K]`` state vector in the default float dtype (float64 under x64)."""
  return jnp.zeros((k,), jnp.asarray(0.0).dtype)


def like(new: jax.Array, old: jax.Array) -> jax.Array:
  """Casts a new state entry to the dtype of the old one (stable under ``lax.scan``)."""
  return jnp.asarray(new).astype(jnp.asarray(old).dtype)


def scale_rows(weights: jax.Array, task_grads: PyTree) -> PyTree:
  """``g_k -> w_k g_k`` on every leaf (leading K axis), in float32 or wider."""

  def leaf(g):
    acc = jnp.promote_types(g.dtype, jnp.float32)
    w = weights.astype(acc).reshape((-1,) + (1,) * (g.ndim - 1))
    return (w * g.astype(acc)).astype(g.dtype)

  return jax.tree_util.tree_map(leaf, task_grads)


def loss_space_weighting(
    weight_fn: Callable[..., Any], *,
    init_fn: Callable[[int | None], Any] | None = None,
    num_tasks: int | None = None,
    name: str = "loss_weighting",
    reads_grads: bool = False) -> optax.GradientTransformationExtraArgs:
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
      a transform refuses to run inside :func:`loss_weights`.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update(task_grads, state,
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
    task_losses = check_losses(task_losses, k, name)
    if reads_grads:
      check_not_probing(name)
      weights, new_state = weight_fn(state, task_losses, task_grads)
    else:
      weights, new_state = weight_fn(state, task_losses)
    if jnp.shape(weights) != (k,):
      raise ValueError(f"{name} produced weights of shape {jnp.shape(weights)}; "
                       f"expected shape ({k},).")
    return scale_rows(weights, task_grads), new_state

  return optax.GradientTransformationExtraArgs(init, validation.guarded_update(update, name))


def loss_weights(tx: optax.GradientTransformation, state: Any,
                 task_losses: jax.Array) -> tuple[jax.Array, Any]:
  """The weights of a loss-space transform (or chain of them) from the losses alone.

  Every loss-only transform maps row ``g_k`` of the stacked grads to ``w_k g_k``.
  Running ``tx.update`` on the ``K × K`` identity as a one-leaf stacked gradient
  therefore returns ``diag(w)`` (for a chain, the product of the chain's
  weights), and the diagonal is the weight vector. A training step then takes one
  forward and one backward pass, pulling the weights back through the VJP of
  the loss vector (the weights are constants of the backward pass)::

    losses, vjp = jax.vjp(lambda p: loss_fn(p, batch), params)
    weights, state = mtlx.loss_weights(loss_tx, state, losses)
    grads, = vjp(weights.astype(losses.dtype))  # = ∇ Σ_k w_k L_k
    updates, opt_state = optimizer.update(grads, opt_state, params)

  which equals ``loss_tx`` applied to the stacked per-task grads followed by
  ``mtlx.linear_scalarization()``, with one backward pass instead of K.
  ``new_state`` is exactly the state the stacked path would produce. (To put a
  gradient-space method after a loss weighting, use the stacked path: the
  one-backward path yields one combined gradient.)

  Args:
    tx: a loss-space transform, or an ``optax.chain`` of loss-space transforms
      only (a gradient-space aggregator or an optimizer in the chain is an error
      or, for element-wise optimizers, gives meaningless weights).
    state: ``tx``'s state (``tx.init(params)``).
    task_losses: ``[K]`` floating losses of the current batch.

  Returns:
    ``(weights[K], new_state)``.

  Raises:
    ValueError: at trace time, for bad ``task_losses``; for a transform that
      reads real gradients (GradNorm, DB-MTL); or if ``tx`` does not map
      stacked grads to stacked grads (e.g. it contains an aggregator).

  Cost: ``tx.update`` on a ``K × K`` matrix (``K²`` numbers); no backward pass.
  """
  task_losses = check_losses(task_losses, None, "mtlx.loss_weights")
  k = task_losses.shape[0]
  eye = jnp.eye(k, dtype=compute_dtype(task_losses))
  with _probe():
    out, new_state = tx.update(eye, state, None, task_losses=task_losses)
  leaves = jax.tree_util.tree_leaves(out)
  if len(leaves) != 1 or jnp.shape(leaves[0]) != (k, k):
    shapes = [jnp.shape(x) for x in leaves]
    raise ValueError(
        f"mtlx.loss_weights: tx mapped the ({k}, {k}) stacked probe to leaves of "
        f"shapes {shapes}; expected one ({k}, {k}) leaf. tx must map stacked task "
        "grads to stacked task grads (loss-space transforms only, no aggregator "
        "or optimizer in the chain).")
  return jnp.diagonal(leaves[0]), new_state


# The old public name (``mtlx.loss_weighting(fn)``); the package ``mtlx.loss_weighting``
# forwards calls here too (see ``mtlx/loss_weighting/__init__.py``).
loss_weighting = loss_space_weighting
