"""Per-task running normalisation of the loss scale (PopArt-style balancing)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from mtlx import validation
from mtlx.loss_weighting import base


class NormalizeTaskScaleState(NamedTuple):
  """``count`` updates seen; ``second_moment`` the EMA of ``L_k²`` (not debiased)."""
  count: jax.Array
  second_moment: jax.Array


def normalize_task_scale(decay: float = 0.99, eps: float = 1e-8, *,
                         num_tasks: int | None = None,
                         ) -> optax.GradientTransformationExtraArgs:
  """Divide each task by a running estimate of its scale.

  .. math::

     ν_k ← β ν_k + (1-β) L_k^2,\\qquad
     \\hat ν_k = ν_k / (1 - β^t),\\qquad
     w_k = 1 / (\\sqrt{\\hat ν_k} + ε),

  with ``t`` the number of updates so far including this one (Adam-style bias
  correction, so the first update uses ``w_k = 1/(|L_k| + ε)``). Every weighted
  loss ``w_k L_k`` is then of order one, whatever the task's scale; works for
  signed losses (policy-gradient surrogates, advantages), as in multi-task RL
  where the per-task scale of rewards/advantages is normalised with running
  statistics (PopArt). The current losses enter the statistics before the
  weights are computed. Weights are positive.

  Args:
    decay: ``β``, the EMA decay (mtlx default 0.99, a horizon of ~100 updates;
      PopArt's step size 3e-4 corresponds to ``decay=0.9997``).
    eps: ``ε`` in the denominator.
    num_tasks: K (required: the state holds ``ν ∈ R^K``).

  Returns:
    A loss-space ``optax.GradientTransformationExtraArgs``; state
    :class:`NormalizeTaskScaleState`.

  Reference: M. Hessel, H. Soyer, L. Espeholt, W. Czarnecki, S. Schmitt,
  H. van Hasselt, "Multi-task Deep Reinforcement Learning with PopArt", AAAI 2019
  (per-task adaptive normalisation of targets by running moments).

  Cost: O(K); works on the one-backward path (``mtlx.loss_weights``).
  """
  validation.check_number(decay, "decay", low=0, high=1, high_open=True,
                          method="normalize_task_scale")
  validation.check_number(eps, "eps", low=0, low_open=True, method="normalize_task_scale")
  k = validation.require_num_tasks(num_tasks, "normalize_task_scale")

  def init_fn(k):
    return NormalizeTaskScaleState(jnp.zeros((), jnp.int32), base.state_zeros(k))

  def weight_fn(state, task_losses):
    dtype = base.compute_dtype(task_losses)
    count = optax.safe_int32_increment(state.count)
    nu = decay * state.second_moment.astype(dtype) + (1.0 - decay) * task_losses.astype(dtype) ** 2
    nu_hat = nu / (1.0 - jnp.asarray(decay, dtype) ** count.astype(dtype))
    weights = 1.0 / (jnp.sqrt(nu_hat) + eps)
    return weights, NormalizeTaskScaleState(count, base.like(nu, state.second_moment))

  return base.loss_weighting(weight_fn, init_fn=init_fn, num_tasks=k,
                             name="normalize_task_scale")
