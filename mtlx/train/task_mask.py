"""Steps in which some tasks have no example: masked per-task losses and method states.

With per-task datasets (`mtlx.data.mixture`), a step's batch holds ``c_k ≥ 0``
rows of task ``k``. Task ``k``'s loss is the mean over its own rows,

.. math::   L_k = \\frac{1}{\\max(c_k, 1)} \\sum_{i:\\,\\text{task}(i) = k} \\ell_k(f(x_i), y_i),

so a task with ``c_k = 0`` has ``L_k = 0`` and a zero gradient. Its presence
``m_k = (c_k > 0)`` (``task_mask``) must reach the MTO methods: a stateful
method (DWA's loss history, FAMO's logits, GradVac's cosine targets, …) must not
read a fake 0 loss or a zero gradient as an observation of task ``k``.
`mask_absent_tasks` wraps any transform (loss-space or gradient-space) so that:

* the update runs on the step as it is (absent rows are the masked zero
  gradients) but with the absent tasks' ``task_losses`` replaced by
  ``fill_loss`` (default 1: finite, ``log 1 = 0``) so no method takes ``log 0`` or
  divides by it;
* in the new state, every entry indexed by an absent task along a *task axis*
  keeps its old value: for a leaf with task axes ``a_1 … a_m`` the entry
  ``[…, i_1, …, i_m, …]`` is updated only if every ``m_{i_j}`` is true (a ``[K]``
  vector keeps absent entries, a ``[K, K]`` matrix keeps absent rows and
  columns); leaves without a task axis (step counters, PRNG keys, parameter
  shaped moments) are updated as usual.

Caveat (gradient-space methods): the update sees the absent tasks' zero gradient
rows. Weightings that ignore a zero row (linear scalarization, UPGrad, PCGrad,
GradVac, …) then act on the present tasks only; min-norm methods do not: the
convex hull contains 0, so their direction collapses to 0 on such a step. MGDA
and CAGrad therefore declare the optional extra ``task_mask`` and ``make_step``
passes the mask to them: their simplex is restricted to the present tasks
(`mtlx.aggregators.mgda.restricted_min_norm`; CAGrad also takes ``g_0`` as the
mean of the present rows, `mtlx.aggregators.cagrad.cagrad_weights`), exactly
the method on the present tasks' rows. With the other simplex methods (SDMGrad,
MoDo) prefer samplers that keep every task present (large batches, no
``unmixed``). Nash-MTL and FairGrad
put a large weight on the zero row (their equation for it has no finite solution);
it multiplies zero, and the present tasks' weights solve their own sub-system.

In the one step builder: ``mtlx.train.make_step(..., task_mask="task_id")`` does
all of this on every engine (:func:`presence_fn`, :func:`with_filled_losses`,
:func:`keep_absent` with :func:`param_aware_task_axes`); the wrappers below serve
hand-written loops.

Task axes: by default every axis of size K of a floating or integer state leaf
(``task_axes=None``); pass ``task_axes=fn(path, leaf) -> tuple of axes`` when a
non-task axis can have size K. With every task present the wrapper returns
exactly the inner update and state. Cost: one ``where`` per state leaf.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import optax

from mtlx import validation
from mtlx.data.specs import loss_mask_key


def task_presence(task_id: jax.Array, num_tasks: int) -> tuple[jax.Array, jax.Array]:
  """``(counts [K] int32, task_mask [K] bool)`` from a batch's ``task_id [B]``.

  Under ``jit`` on a batch sharded over ``data`` the sum is global (all hosts)."""
  counts = jnp.zeros((num_tasks,), jnp.int32).at[task_id].add(1, mode="drop")
  return counts, counts > 0


def per_example_loss(kind: str, pred: jax.Array, label: jax.Array,
                     loss_mask: jax.Array | None = None) -> jax.Array:
  """``[B]`` per-example losses, the per-row terms of `mtlx.train.task_loss`.

  classification: softmax cross-entropy; binary: sigmoid cross-entropy (mean over
  its outputs); regression: squared error averaged over the output axes (the mean
  over rows is then the mean squared error over rows and outputs).

  ``loss_mask`` (regression and binary; 0/1, the label's shape): the row's loss is
  the mean over the entries where it is 1 (``Σ m e / max(Σ m, 1)``), e.g. the first
  ``n_t`` positions of a prompt under a curriculum on prompt length.
  """
  b = pred.shape[0]
  if loss_mask is not None and kind not in ("binary", "regression"):
    raise ValueError(f"loss_mask for a task of kind {kind!r}; expected a 'regression' "
                     "or 'binary' task (a mask over its label entries).")
  if kind == "classification":
    return optax.softmax_cross_entropy_with_integer_labels(
        pred, label.reshape(b).astype(jnp.int32))
  if kind in ("binary", "regression"):
    lab = jnp.asarray(label).reshape(pred.shape).astype(pred.dtype)
    if kind == "binary":
      err = optax.sigmoid_binary_cross_entropy(pred, lab)
    else:
      err = (pred - lab) ** 2
    if loss_mask is None:
      return jnp.mean(err.reshape(b, -1), axis=1)
    m = jnp.asarray(loss_mask).reshape(err.shape).astype(err.dtype).reshape(b, -1)
    return jnp.sum(err.reshape(b, -1) * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1)
  raise ValueError(f"task kind {kind!r} in a mixture; expected one of "
                   "['classification', 'binary', 'regression'] (per-example losses).")


def masked_task_losses(tasks: Sequence[Any], outputs: dict, batch: dict, *,
                       task_id_key: str = "task_id") -> tuple[jax.Array, jax.Array]:
  """``(losses [K], counts [K])``: each task's mean loss over its own rows (0 when
  absent), from model outputs ``{task name: pred [B, ...]}`` and a mixture batch
  (labels under the task names, rows' tasks under ``task_id_key``, optional loss
  masks under `mtlx.data.specs.loss_mask_key`; see `per_example_loss`)."""
  task_id = batch[task_id_key]
  counts, _ = task_presence(task_id, len(tasks))
  losses = []
  for k, t in enumerate(tasks):
    per_row = per_example_loss(t.kind, outputs[t.name], batch[t.label_key],
                               batch.get(loss_mask_key(t.label_key)))
    rows = (task_id == k).astype(per_row.dtype)
    losses.append(jnp.sum(per_row * rows) / jnp.maximum(counts[k], 1).astype(per_row.dtype))
  return jnp.stack(losses), counts


def _default_task_axes(k):
  def axes(path, leaf):
    del path
    if not jnp.issubdtype(leaf.dtype, jnp.number):
      return ()
    return tuple(i for i, n in enumerate(leaf.shape) if n == k)
  return axes


def keep_absent(new_state: Any, old_state: Any, task_mask: jax.Array, *,
                task_axes: Callable | None = None) -> Any:
  """``new_state`` with every entry indexed by an absent task (along its task axes)
  taken from ``old_state`` (module docstring)."""
  k = task_mask.shape[0]
  axes_of = task_axes or _default_task_axes(k)

  def leaf(path, new, old):
    if not hasattr(new, "shape") or jnp.issubdtype(getattr(new, "dtype", jnp.float32),
                                                   jax.dtypes.prng_key):
      return new
    axes = tuple(axes_of(path, new))
    if not axes:
      return new
    keep = jnp.ones(new.shape, bool)
    for a in axes:
      if not 0 <= a < new.ndim or new.shape[a] != k:
        raise ValueError(f"task_axes: state leaf {jax.tree_util.keystr(path)} of shape "
                         f"{new.shape} given task axis {a}; expected an axis of size K={k}.")
      shape = [1] * new.ndim
      shape[a] = k
      keep = keep & task_mask.reshape(shape)
    return jnp.where(keep, new, old)

  return jax.tree_util.tree_map_with_path(leaf, new_state, old_state)


def mask_absent_tasks(inner: optax.GradientTransformation, *, num_tasks: int,
                      task_axes: Callable | None = None,
                      fill_loss: float = 1.0) -> optax.GradientTransformationExtraArgs:
  """``inner`` told which tasks are present: ``update(..., task_mask=[K] bool)``.

  Absent tasks' losses are replaced by ``fill_loss`` for the update and their
  entries of the new state keep their old values (module docstring). Without
  ``task_mask`` (or with every task present) it is ``inner`` exactly. The mask is
  not forwarded to ``inner``: MGDA's restriction to the present tasks
  (``mtlx.mgda().update(..., task_mask=m)``) is what ``make_step`` adds.

  Args:
    inner: any transform of the stacked per-task grads (loss-space or
      gradient-space, or a chain of them).
    num_tasks: K.
    task_axes: ``(path, leaf) -> axes`` of the state leaves indexed by task
      (default: every axis of size K).
    fill_loss: the loss absent tasks show to ``inner`` (default 1.0).
  """
  k = validation.require_num_tasks(num_tasks, "mask_absent_tasks")
  inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    return inner.init(params)

  def update_fn(updates, state, params=None, *, task_mask=None, task_losses=None, **extra):
    if task_mask is None:
      return inner.update(updates, state, params, task_losses=task_losses, **extra)
    validation.check_vector(task_mask, k, "task_mask")
    task_mask = jnp.asarray(task_mask).astype(bool)
    if task_losses is not None:
      task_losses = jnp.where(task_mask, task_losses,
                              jnp.asarray(fill_loss, jnp.asarray(task_losses).dtype))
    out, new_state = inner.update(updates, state, params, task_losses=task_losses, **extra)
    return out, keep_absent(new_state, state, task_mask, task_axes=task_axes)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def masked_loss_weights(loss_tx: optax.GradientTransformation, state: Any,
                        task_losses: jax.Array, task_mask: jax.Array, *,
                        task_axes: Callable | None = None,
                        fill_loss: float = 1.0) -> tuple[jax.Array, Any]:
  """`mtlx.loss_weights` (the one-backward path) told which tasks are present.

  Returns ``(weights [K], new_state)`` equal to what ``mask_absent_tasks(loss_tx)``
  does on the stacked path: absent losses read as ``fill_loss``, absent tasks'
  state entries unchanged. The absent tasks' weights multiply zero gradients.
  """
  from mtlx.loss_weighting import loss_weights  # pylint: disable=import-outside-toplevel
  task_mask = jnp.asarray(task_mask).astype(bool)
  validation.check_vector(task_mask, None, "task_mask")
  filled = jnp.where(task_mask, task_losses, jnp.asarray(fill_loss, task_losses.dtype))
  weights, new_state = loss_weights(loss_tx, state, filled)
  return weights, keep_absent(new_state, state, task_mask, task_axes=task_axes)


# ---- the hook of the one step builder (`mtlx.train.make_step(..., task_mask=...)`) ----


def presence_fn(task_mask: str | Callable) -> Callable:
  """``(batch, num_tasks) -> [K] bool`` from ``make_step``'s ``task_mask`` argument.

  ``task_mask`` is either a function of the batch returning the ``[K]`` presence
  mask (bool or 0/1), or the key of the batch's per-row task ids (``int [B]``, e.g.
  ``"task_id"`` of `mtlx.data.mixture` batches): ``m_k = (#rows of task k > 0)``,
  a global count on a batch sharded over ``data``.
  """
  if callable(task_mask):
    def from_fn(batch, num_tasks):
      mask = jnp.asarray(task_mask(batch)).astype(bool)
      validation.check_vector(mask, num_tasks, "task_mask(batch)")
      return mask
    return from_fn
  if isinstance(task_mask, str):
    return lambda batch, num_tasks: task_presence(batch[task_mask], num_tasks)[1]
  raise ValueError(f"task_mask={task_mask!r}; expected None, the key of the batch's "
                   "per-row task ids (e.g. 'task_id') or a function batch -> [K] bool.")


def losses_seen_by_methods(losses: jax.Array, mask: jax.Array,
                           fill_loss: float = 1.0) -> jax.Array:
  """``losses`` whose absent entries READ as ``fill_loss`` while their gradient is the
  masked loss's own (zero): ``L_k + stop_gradient(fill − L_k)`` for absent ``k``.

  Every engine then hands the methods finite, non-zero losses for absent tasks (no
  ``log 0``), and every backward pass (``vjp``, Gramian, Jacobian) is unchanged.
  A non-finite loss of a present task propagates as it is."""
  mask = jnp.asarray(mask).astype(bool)
  fill = jnp.asarray(fill_loss, losses.dtype)
  return losses + jax.lax.stop_gradient(jnp.where(mask, 0, fill - losses).astype(losses.dtype))


def param_aware_task_axes(params: Any, num_tasks: int) -> Callable:
  """``task_axes`` for :func:`keep_absent` on method states next to ``params``.

  A state leaf whose shape ends with the full shape of a parameter of at least two
  dimensions holds a parameter-shaped tensor (a moment ``[*shape]``, tracked
  per-task gradients ``[K, *shape]``): only its leading axes (before that
  shape) can be task axes. Every other leaf: every axis of size K (``[K]``
  vectors, ``[K, K]`` matrices, ``[L, K, K]`` per-leaf matrices). The default of
  :func:`keep_absent` alone would also take a parameter's own axes of size K
  (a 3×3 conv kernel with K = 3) for task axes.
  """
  k = int(num_tasks)
  shapes = {tuple(x.shape) for x in jax.tree_util.tree_leaves(params)
            if len(getattr(x, "shape", ())) >= 2}

  def axes(path, leaf):
    del path
    if not jnp.issubdtype(leaf.dtype, jnp.number):
      return ()
    shape = tuple(leaf.shape)
    lead = len(shape)
    for ps in shapes:
      if len(ps) <= len(shape) and shape[len(shape) - len(ps):] == ps:
        lead = min(lead, len(shape) - len(ps))
    return tuple(i for i in range(lead) if shape[i] == k)
  return axes


def with_filled_losses(fn: Callable, mask_fn: Callable, *, batch_arg: int = 1,
                       fill_loss: float = 1.0) -> Callable:
  """``fn(*args) -> losses [K]`` with absent tasks' losses read as ``fill_loss``
  (:func:`losses_seen_by_methods`); the mask is ``mask_fn(args[batch_arg], K)``."""
  def wrapped(*args):
    out = fn(*args)
    losses, aux = (out, None) if not isinstance(out, tuple) else out  # has_aux: (losses, aux)
    losses = losses_seen_by_methods(losses, mask_fn(args[batch_arg], losses.shape[0]),
                                    fill_loss)
    return losses if aux is None else (losses, aux)
  return wrapped
