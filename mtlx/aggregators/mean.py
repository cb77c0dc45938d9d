"""Mean of the task gradients."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from mtlx import jacobian
from mtlx import validation
from mtlx.aggregators._extras import stateless


def mean_weights(gramian: jax.Array) -> jax.Array:
  """``w = 1/K`` for every task (only the size of ``G`` is read)."""
  k = gramian.shape[-1]
  return jnp.full((k,), 1.0 / k, gramian.dtype)


def mean() -> optax.GradientTransformationExtraArgs:
  """The mean of the task gradients: ``d = (1/K) Σ_k g_k``.

  Linear scalarization with uniform weights ``1/K``; the baseline of the
  benchmark. Properties: linear under scaling, permutation-invariant, K=1 gives
  back ``g_1``; non-conflicting only when the gradients do not conflict;
  non-finite rows propagate. No hyperparameters, no state. The weights follow
  the dtype of the task grads (float32 or wider: float64 grads get float64
  ``1/K``, so a mean of equal rows is exact under ``jax_enable_x64``).

  Cost: ``K P`` multiply-adds (no Gramian is formed); equals one backward pass of
  the mean loss when nothing else needs the per-task grads.
  """

  def aggregate(task_grads):
    k = validation.num_tasks(task_grads)
    dtype = jnp.result_type(jnp.float32, *jax.tree_util.tree_leaves(task_grads))
    return jacobian.combine(jnp.full((k,), 1.0 / k, dtype), task_grads)

  return stateless(aggregate)
