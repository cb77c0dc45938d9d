"""Mean of the task gradients."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from mtlx.aggregators._extras import fixed_weighting


def mean_weights(gramian: jax.Array) -> jax.Array:
  """``w = 1/K`` for every task (only the size of ``G`` is read)."""
  k = gramian.shape[-1]
  return jnp.full((k,), 1.0 / k, gramian.dtype)


def mean() -> optax.GradientTransformationExtraArgs:
  """The mean of the task gradients: ``d = (1/K) Σ_k g_k``.

  Linear scalarization with uniform weights ``1/K``; the baseline of the
  benchmark. Properties: linear under scaling, permutation-invariant, K=1 gives
  back ``g_1``; non-conflicting only when the gradients do not conflict;
  non-finite rows propagate. No hyperparameters, no state. The weights are in the
  default float dtype (float64 under ``jax_enable_x64``, so a mean of equal
  float64 rows is exact) and the update keeps each leaf's dtype.

  Cost: ``K P`` multiply-adds (no Gramian is formed); equals one backward pass of
  the mean loss when nothing else needs the per-task grads.
  """

  # 1/K in the default float dtype (float64 under x64); mtlx.combine accumulates in
  # the wider of it and each leaf's dtype and casts back to the leaf's dtype.
  return fixed_weighting(lambda k: jnp.full((k,), 1.0 / k), name="mean")
