"""Task affinity by lookahead (TAG) and the search for which tasks to train together.

Fifty et al., "Efficiently Identifying Task Groupings for Multi-Task Learning"
(NeurIPS 2021): the affinity of task i onto task j at parameters θ is how much a
step on task i alone lowers task j's loss,

.. math::  Z_{i→j} = 1 - \\frac{L_j(θ - η\\, g_i)}{L_j(θ)}, \\qquad g_i = ∇_θ L_i(θ),

measured on the current batch, averaged over training, and then used to choose task
groups. mtlx's trainer logs it every ``config.affinity_every`` steps.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mtlx import validation

PyTree = Any


def lookahead_affinity(loss_fn: Callable[..., jax.Array], params: PyTree, task_grads: PyTree,
                       *args, learning_rate: float, losses: jax.Array | None = None
                       ) -> jax.Array:
  """``Z[i, j] = 1 - L_j(θ - η g_i) / L_j(θ)`` on the batch ``args``.

  Args:
    loss_fn: ``(params, *args) -> losses[K]``.
    params: θ.
    task_grads: per-task grads at θ (leading K axis; ``mtlx.value_and_jacobian``),
      with the structure of ``params``; zero the parts the lookahead should not
      move (TAG moves the shared parameters only).
    *args: the batch (passed to ``loss_fn``).
    learning_rate: η of the lookahead (TAG uses the optimizer's step; plain SGD
      here, so first order ``Z_{i→j} ≈ η ⟨g_i, g_j⟩ / L_j``).
    losses: ``L(θ)`` if already computed (saves one forward pass).

  Returns:
    ``[K, K]`` affinities, row i the source task, column j the target. Positive:
    a step on i helps j. Non-finite inputs give non-finite entries.

  Cost: K forward passes (vmapped over the K lookahead parameter sets; memory K ×
  the activations of one forward) plus one forward for ``L(θ)`` when not given;
  no backward pass.
  """
  validation.check_number(learning_rate, "learning_rate", low=0, low_open=True,
                          method="lookahead_affinity")
  k = validation.num_tasks(task_grads)
  if losses is None:
    losses = loss_fn(params, *args)
  validation.check_vector(losses, k, "losses")

  def ahead(i):
    moved = jax.tree_util.tree_map(lambda p, g: p - learning_rate * g[i].astype(p.dtype),
                                   params, task_grads)
    return loss_fn(moved, *args)

  after = jax.vmap(ahead)(jnp.arange(k))  # [K sources, K targets]
  return 1.0 - after / losses[None, :]


def _score(affinity: np.ndarray, groups: Sequence[Sequence[int]]) -> float:
  """Σ_j (mean affinity onto j from the other members of j's group); singletons 0."""
  total = 0.0
  for g in groups:
    if len(g) < 2:
      continue
    for j in g:
      total += float(np.mean([affinity[i, j] for i in g if i != j]))
  return total


def _partitions(items: list[int], max_blocks: int):
  if not items:
    yield []
    return
  first, rest = items[0], items[1:]
  for part in _partitions(rest, max_blocks):
    for i in range(len(part)):
      yield part[:i] + [[first] + part[i]] + part[i + 1:]
    if len(part) < max_blocks:
      yield [[first]] + part


def group_tasks(affinity: Any, num_groups: int | None = None, *,
                exhaustive_up_to: int = 10) -> tuple[list[list[int]], float]:
  """Which tasks to train together: a partition maximising within-group affinity.

  The score of a partition is ``Σ_j mean_{i ∈ group(j), i ≠ j} Z_{i→j}`` (each task
  scored by the average affinity it receives from its group mates, as TAG's
  inter-task affinity of a group; singletons score 0). Exhaustive over every
  partition into at most ``num_groups`` blocks for ``K ≤ exhaustive_up_to`` (the
  Bell number of 10 is 115 975 partitions); greedy beyond (start from singletons,
  repeatedly merge the two groups whose merge raises the score most, while it rises
  or while there are more than ``num_groups`` groups).

  Args:
    affinity: ``[K, K]`` (e.g. the training average of :func:`lookahead_affinity`).
    num_groups: at most this many groups (``None``: any number).
    exhaustive_up_to: largest K searched exhaustively.

  Returns:
    ``(groups, score)``: a list of sorted task-index lists, and its score.
  """
  z = np.asarray(affinity, dtype=np.float64)
  if z.ndim != 2 or z.shape[0] != z.shape[1]:
    raise ValueError(f"affinity has shape {z.shape}; expected a square [K, K] matrix.")
  k = z.shape[0]
  if num_groups is None:
    num_groups = k
  validation.check_number(num_groups, "num_groups", low=1, integer=True, method="group_tasks")
  if not np.all(np.isfinite(z)):
    raise ValueError("affinity has non-finite entries; expected finite numbers.")
  if k <= exhaustive_up_to:
    best, best_score = None, -np.inf
    for part in _partitions(list(range(k)), num_groups):
      s = _score(z, part)
      if s > best_score + 1e-12:
        best, best_score = part, s
    groups = best
  else:
    groups = [[i] for i in range(k)]
    while len(groups) > 1:
      base = _score(z, groups)
      gains = []
      for a, b in itertools.combinations(range(len(groups)), 2):
        merged = [g for i, g in enumerate(groups) if i not in (a, b)] + [groups[a] + groups[b]]
        gains.append((_score(z, merged) - base, a, b))
      gain, a, b = max(gains)
      if gain <= 0 and len(groups) <= num_groups:
        break
      groups = [g for i, g in enumerate(groups) if i not in (a, b)] + [groups[a] + groups[b]]
  groups = sorted(sorted(g) for g in groups)
  return groups, _score(z, groups)


def affinity_fn(loss_fn: Callable[..., jax.Array], *, learning_rate: float,
                shared: Callable[[PyTree], PyTree] | None = None,
                chunk_size: int | None = None) -> Callable[..., jax.Array]:
  """``f(params, *args) -> Z [K, K]``: the per-task grads and the lookahead affinity.

  :func:`mtlx.value_and_jacobian` of ``loss_fn`` at ``params`` on the batch ``args``,
  the rows of the parameters ``shared(params)`` marks False zeroed (TAG moves the
  shared parameters only; ``None``: move every parameter), then
  :func:`lookahead_affinity`. Jittable; the trainer calls it every
  ``config.affinity_every`` steps.

  Cost: one Jacobian (1 forward + K backward passes, memory K × P) and K vmapped
  lookahead forward passes: on the steps it runs, about a ``jacobian``-engine step
  more.
  """
  from mtlx import jacobian  # pylint: disable=import-outside-toplevel
  validation.check_number(learning_rate, "learning_rate", low=0, low_open=True,
                          method="affinity_fn")
  value_and_jac = jacobian.value_and_jacobian(loss_fn, chunk_size=chunk_size)

  def f(params, *args):
    losses, task_grads = value_and_jac(params, *args)
    if shared is not None:
      task_grads = jax.tree_util.tree_map(lambda g, keep: g if keep else jnp.zeros_like(g),
                                          task_grads, shared(params))
    return lookahead_affinity(loss_fn, params, task_grads, *args,
                              learning_rate=learning_rate, losses=losses)

  return f


def affinity_summary(matrices: Sequence[Any], names: Sequence[str]) -> dict:
  """The training average of logged affinity matrices and the grouping search on it.

  Returns ``{"tasks", "num_measurements", "mean_affinity" [K][K] (row: source),
  "groups" (best partition, any number of groups, by task name), "score",
  "groups_by_count" {n: {"groups", "score"}} for n = 2 .. K-1}``; the
  matrices with a non-finite entry are left out of the average (counted in
  ``"num_nonfinite"``).
  """
  k = len(names)
  finite = [np.asarray(m, np.float64) for m in matrices
            if np.all(np.isfinite(np.asarray(m, np.float64)))]
  out = {"tasks": list(names), "num_measurements": len(finite),
         "num_nonfinite": len(matrices) - len(finite)}
  if not finite:
    return out
  z = np.mean(finite, axis=0)
  if z.shape != (k, k):
    raise ValueError(f"affinity matrices have shape {z.shape}; expected ({k}, {k}) for "
                     f"tasks {list(names)}.")
  named = lambda groups: [[names[i] for i in g] for g in groups]
  groups, score = group_tasks(z)
  out.update(mean_affinity=z.tolist(), groups=named(groups), score=score,
             groups_by_count={})
  for n in range(2, k):
    g, s = group_tasks(z, num_groups=n)
    out["groups_by_count"][str(n)] = {"groups": named(g), "score": s}
  return out
