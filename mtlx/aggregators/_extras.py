"""Shared helpers of the gradient-space methods: stateless transforms, extra
arguments (other batches) and per-task buffers."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from mtlx import jacobian
from mtlx import validation


def stateless(aggregate: Callable[[Any], Any]) -> optax.GradientTransformationExtraArgs:
  """The stateless transform ``update(task_grads, state, params=None, **extra) =
  (aggregate(task_grads), state)``: ``init`` gives ``optax.EmptyState()``; ``params``
  and the extra arguments are not read."""

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(task_grads, state, params=None, **extra):
    del params, extra
    return aggregate(task_grads), state

  return optax.GradientTransformationExtraArgs(init_fn, validation.guarded_update(update_fn))


def fixed_weighting(weights_for: Callable[[int], jax.Array], *,
                    name: str = "fixed_weighting"):
  """The stateless transform ``d = Σ_k w_k g_k`` with ``w = weights_for(K)``.

  ``weights_for`` sees only K (read from ``task_grads`` at trace time) and may
  raise a ``ValueError`` there; no Gramian is formed. Cost: ``K P``. Returns a
  :class:`mtlx.aggregators.gramian_weighting.GramianWeighting` (a weighting that
  ignores the Gramian), so every engine serves it.
  """
  from mtlx.aggregators.gramian_weighting import GramianWeighting  # noqa: PLC0415 (cycle)

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(task_grads, state, params=None, **extra):
    # validation.guarded_update's rule, checked on the P-sized update instead of the
    # K x P task grads (one pass less): a non-finite entry of any g_k makes that
    # entry of sum_k w_k g_k non-finite (inf, or NaN for w_k = 0), so the update is
    # all-NaN exactly when an input is non-finite (or the sum overflows).
    validation.check_task_grads_match_params(task_grads, params, name)
    k = validation.num_tasks(task_grads)
    update = jacobian.combine(weights_for(k), task_grads)
    rest = [v for v in extra.values() if v is not None]
    return validation.poison_if_not_finite(validation.all_finite(update, *rest), update), state

  return GramianWeighting(init_fn, update_fn,
                          lambda gramian: weights_for(gramian.shape[0]),
                          name=name, needs_gramian=False)


def stacked_zeros(params: Any, k: int) -> Any:
  """Zeros shaped like ``params`` with a leading K axis on every leaf (a per-task buffer)."""
  return jax.tree_util.tree_map(
      lambda p: jnp.zeros((k,) + jnp.shape(p), jnp.result_type(p)), params)


# Who passes each keyword extra of ``update`` (for the error of a missing one).
_PROVIDERS = {
    "task_losses": "the [K] task losses; every engine of mtlx.train.make_step passes them",
    "task_grads_2": ("the per-task grads of a second, independent mini-batch; only "
                     "mtlx.train.make_step(engine='jacobian', extra_batches=1 or 2) passes "
                     "them (config.extra_batches in experiments/train.py)"),
    "task_grads_3": ("the per-task grads of a third, independent mini-batch; only "
                     "mtlx.train.make_step(engine='jacobian', extra_batches=2) passes them"),
}


def check_extras(extra: dict, names: tuple[str, ...], method: str) -> None:
  """Raises one ``ValueError`` when a keyword extra in ``names`` is missing (or None)
  from ``extra``, naming the method, the missing extras and what provides them."""
  missing = [n for n in names if extra.get(n) is None]
  if not missing:
    return
  who = "; ".join(f"`{n}`: " + _PROVIDERS.get(
      n, "no engine of mtlx.train.make_step passes it") for n in missing)
  example = ", ".join(f"{n}=..." for n in missing)
  raise ValueError(
      f"{method} reads the keyword extra argument(s) {missing}, which the caller did not "
      f"pass ({who}). Calling the transform directly, pass them to update: "
      f"`tx.update(task_grads, state, params, {example})`.")


def second_batch(task_grads: Any, extra: dict, method: str, name: str = "task_grads_2",
                 required: bool = True) -> Any:
  """Reads the per-task grads of another mini-batch from the keyword extras.

  Checks that they have the pytree structure, trailing shapes and K of
  ``task_grads``. Raises a ``ValueError`` that says what to pass when missing.
  """
  other = extra.get(name)
  if other is None:
    if not required:
      return None
    raise ValueError(
        f"{method} needs a second, independent mini-batch: pass its per-task grads "
        f"as the keyword extra argument `{name}` (a pytree like task_grads, leading K "
        f"axis on every leaf), e.g. `tx.update(task_grads, state, params, "
        f"{name}=task_grads_of_batch_2)`. It cannot run in a one-batch training loop: "
        f"{_PROVIDERS.get(name, name)}.")
  k = validation.num_tasks(task_grads)
  k2 = validation.num_tasks(other, name)
  s1 = jax.tree_util.tree_structure(task_grads)
  s2 = jax.tree_util.tree_structure(other)
  if s1 != s2:
    raise ValueError(f"{name} has pytree structure {s2}; expected the structure of "
                     f"task_grads, {s1}.")
  if k2 != k:
    raise ValueError(f"{name} has K={k2} tasks but task_grads has K={k}; expected "
                     "the same K.")
  for a, b in zip(jax.tree_util.tree_leaves(task_grads), jax.tree_util.tree_leaves(other)):
    if a.shape != b.shape:
      raise ValueError(f"{name} has a leaf of shape {b.shape} where task_grads has "
                       f"{a.shape}; expected equal shapes.")
  return other
