"""Trace-time checks shared by every mtlx transform.

All checks look at static shapes only, so they run once while tracing and cost
nothing in the compiled step. Each raises one ``ValueError`` that names the
argument, what was given and what was expected.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp


def num_tasks(task_grads: Any, name: str = "task_grads") -> int:
  """Returns K, the shared leading axis of every leaf of ``task_grads``.

  Raises:
    ValueError: if the pytree has no leaves, a leaf is a scalar, or the leaves
      disagree on their leading axis (the message lists the first two paths).
  """
  leaves = jax.tree_util.tree_leaves_with_path(task_grads)
  if not leaves:
    raise ValueError(f"{name} has no array leaves; expected a pytree whose every "
                     "leaf has a leading task axis K.")
  first_path, first = leaves[0]
  for path, leaf in leaves:
    if jnp.ndim(leaf) == 0:
      raise ValueError(
          f"{name}{jax.tree_util.keystr(path)} is a scalar; expected every leaf "
          "to have a leading task axis K.")
  k = jnp.shape(first)[0]
  for path, leaf in leaves[1:]:
    if jnp.shape(leaf)[0] != k:
      raise ValueError(
          f"{name} leaves disagree on the task axis: "
          f"{name}{jax.tree_util.keystr(first_path)} has leading axis {k} but "
          f"{name}{jax.tree_util.keystr(path)} has {jnp.shape(leaf)[0]} "
          f"(shape {jnp.shape(leaf)}); expected the same K on every leaf.")
  return int(k)


def check_vector(x: Any, length: int | None, name: str) -> None:
  """Checks that ``x`` is a 1-D array, of ``length`` entries when given."""
  shape = jnp.shape(x)
  if len(shape) != 1 or (length is not None and shape[0] != length):
    want = f"shape ({length},)" if length is not None else "a 1-D vector"
    raise ValueError(f"{name} has shape {shape}; expected {want}.")


def check_task_losses(task_losses: Any, k: int | None,
                      method: str = "this method") -> None:
  """Checks the ``task_losses`` extra argument: present and of shape [K]."""
  if task_losses is None:
    raise ValueError(
        f"{method} reads the task losses: pass them as the keyword extra "
        "argument `task_losses` (shape [K]) to `update`, e.g. "
        "`tx.update(task_grads, state, params, task_losses=losses)`.")
  check_vector(task_losses, k, "task_losses")


def check_num_tasks(given: int, expected: int | None, method: str) -> None:
  """Checks K against the ``num_tasks`` a stateful method was built with."""
  if expected is not None and given != expected:
    raise ValueError(
        f"{method} was constructed with num_tasks={expected} but the update "
        f"received K={given} tasks; expected the same K in init and update.")


def require_num_tasks(num_tasks: int | None, method: str) -> int:
  """Validates the ``num_tasks`` of a method whose state is sized by K; returns it.

  optax's ``init(params)`` cannot see the number of tasks, so such methods take
  it at construction. ``None`` (not given) and anything but an ``int >= 1``
  (``bool`` excluded) raise a ``ValueError`` that says what to pass.
  """
  if num_tasks is None:
    raise ValueError(
        f"{method} keeps state sized by the number of tasks, and optax's "
        f"init(params) cannot see it: construct it with num_tasks=K (got "
        f"num_tasks=None), e.g. `mtlx.{method}(num_tasks=2)`.")
  if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < 1:
    raise ValueError(f"{method}: num_tasks={num_tasks!r} is not valid; expected an "
                     "int >= 1.")
  return num_tasks


def check_state_structure(task_grads: Any, state_tree: Any, method: str) -> None:
  """Checks that ``task_grads`` has the pytree structure of a params-shaped state.

  For methods that keep a stacked per-task buffer (leading K axis) built from
  the params at ``init``.
  """
  s1 = jax.tree_util.tree_structure(task_grads)
  s2 = jax.tree_util.tree_structure(state_tree)
  if s1 != s2:
    raise ValueError(f"{method}: task_grads has pytree structure {s1} but the state "
                     f"was initialised from params with structure {s2}; expected "
                     "the params' structure with a leading K axis.")


def check_choice(value: str, choices: Sequence[str], name: str) -> None:
  """Checks that a string option is one of ``choices``."""
  if value not in choices:
    raise ValueError(f"{name}={value!r} is not valid; expected one of "
                     f"{sorted(choices)}.")


def check_number(value: Any, name: str, *, low: float | None = None,
                 high: float | None = None, low_open: bool = False,
                 high_open: bool = False, integer: bool = False,
                 method: str | None = None) -> None:
  """Checks a hyperparameter: a finite real (an ``int`` with ``integer``) in a range.

  ``low``/``high`` bound the value (inclusive unless ``low_open``/``high_open``);
  ``None`` leaves that side unbounded. Raises one ``ValueError`` that names the
  method, the argument, the value given and the valid range, e.g.
  ``"mgda: num_iters=-5 is not valid; expected an int >= 1."``. Call it in a
  constructor, before anything is built.
  """
  prefix = f"{method}: " if method else ""
  kind = "an int" if integer else "a finite number"
  parts = []
  if low is not None:
    parts.append(f"{'>' if low_open else '>='} {low}")
  if high is not None:
    parts.append(f"{'<' if high_open else '<='} {high}")
  want = kind + (" " + " and ".join(parts) if parts else "")
  bad = isinstance(value, bool) or not isinstance(value, (int, float)) and not (
      hasattr(value, "dtype") and jnp.ndim(value) == 0)
  if not bad:
    if integer and not float(value).is_integer():
      bad = True
    else:
      v = float(value)
      bad = (v != v or v in (float("inf"), float("-inf"))
             or (low is not None and (v <= low if low_open else v < low))
             or (high is not None and (v >= high if high_open else v > high)))
  if bad:
    raise ValueError(f"{prefix}{name}={value!r} is not valid; expected {want}.")


def check_task_grads_match_params(task_grads: Any, params: Any, method: str = "this method",
                                  k: int | None = None) -> None:
  """Checks that every leaf of ``task_grads`` is ``(K,) + param.shape``.

  ``params`` is what ``update`` received (``None``: nothing to check, e.g. the
  representation path or ``mtlx.loss_weights``). Raises a ``ValueError`` naming
  the leaf path and both shapes, e.g. ``"upgrad: task_grads['b'] has shape
  (3, 1, 2); expected (K,) + params['b'].shape = (3, 2, 2)."``. A task-grads
  pytree of another structure than ``params`` is not checked (engines pass
  stand-ins: the autogram engine's ``K × K`` factor and probe). Static shapes
  only: runs once while tracing.
  """
  if params is None:
    return
  if jax.tree_util.tree_structure(task_grads) != jax.tree_util.tree_structure(params):
    return
  k = num_tasks(task_grads) if k is None else k
  for (path, g), p in zip(jax.tree_util.tree_leaves_with_path(task_grads),
                          jax.tree_util.tree_leaves(params)):
    want = (k,) + tuple(jnp.shape(p))
    if tuple(jnp.shape(g)) != want:
      where = jax.tree_util.keystr(path)
      raise ValueError(f"{method}: task_grads{where} has shape {tuple(jnp.shape(g))}; "
                       f"expected (K,) + params{where}.shape = {want}.")


def all_finite(*trees: Any) -> jax.Array:
  """A scalar bool: every floating leaf of every tree is finite (others ignored)."""
  flags = [jnp.all(jnp.isfinite(x)) for t in trees for x in jax.tree_util.tree_leaves(t)
           if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(flags)) if flags else jnp.asarray(True)


def _select(pred: jax.Array, new: Any, old: Any) -> Any:
  old = jnp.asarray(old) if not hasattr(old, "dtype") else old
  new = jnp.asarray(new)
  if jnp.issubdtype(old.dtype, jax.dtypes.prng_key):
    return jax.lax.select(pred, new, old)
  return jnp.where(pred, new.astype(old.dtype), old)


def keep_state_if_not_finite(finite: jax.Array, new_state: Any, state: Any) -> Any:
  """``new_state`` when ``finite`` else ``state`` (leaf by leaf, in the old dtypes)."""
  return jax.tree_util.tree_map(lambda n, o: _select(finite, n, o), new_state, state)


def poison_if_not_finite(finite: jax.Array, updates: Any) -> Any:
  """``updates`` when ``finite``, else all-NaN floating leaves (so ``apply_if_finite`` skips)."""

  def leaf(u):
    if hasattr(u, "dtype") and jnp.issubdtype(u.dtype, jnp.inexact):
      return jnp.where(finite, u, jnp.asarray(jnp.nan, u.dtype))
    return u

  return jax.tree_util.tree_map(leaf, updates)


def guard_step(updates: Any, new_state: Any, state: Any, *inputs: Any) -> tuple[Any, Any]:
  """The rule "state is never poisoned", for any transform's update.

  If every floating leaf of ``inputs`` (task grads, task losses, other batches)
  and of ``new_state`` is finite: ``(updates, new_state)`` unchanged (an exact
  no-op). Otherwise (a non-finite input, or finite inputs that would put a
  non-finite number into the state, e.g. an overflow):
  all-NaN updates, so an ``optax.apply_if_finite`` after the method skips the
  step, and the OLD ``state``, so the skipped step leaves no trace (no NaN, no
  counter or PRNG key advanced): the run then continues exactly as if the bad
  step had not happened. Cost: one finiteness reduction over the inputs and one
  select per state/update entry; no host callback.
  """
  finite = all_finite(new_state, *inputs)
  return poison_if_not_finite(finite, updates), keep_state_if_not_finite(finite, new_state, state)


def guarded_update(update_fn: Any, method: str = "this method") -> Any:
  """Wraps ``update_fn(task_grads, state, params=None, **extra)`` of a transform that
  takes stacked task grads: checks the shapes against ``params`` at trace time
  (:func:`check_task_grads_match_params`) and applies :func:`guard_step` with every
  array input (``task_grads`` and the keyword extras: ``task_losses``,
  ``task_grads_2`` ...). One line per transform::

    return optax.GradientTransformationExtraArgs(
        init_fn, validation.guarded_update(update_fn, "moco"))
  """

  def update(task_grads, state, params=None, **extra):
    check_task_grads_match_params(task_grads, params, method)
    updates, new_state = update_fn(task_grads, state, params, **extra)
    inputs = [v for v in extra.values() if v is not None]
    return guard_step(updates, new_state, state, task_grads, *inputs)

  update.__doc__ = update_fn.__doc__
  update.__wrapped__ = update_fn
  return update
