"""Dynamic Weight Average (Liu, Johns & Davison, CVPR 2019, "MTAN")."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from mtlx import validation
from mtlx.loss_weighting import base


class DWAState(NamedTuple):
  """``count`` updates seen; the losses of the last (``prev``) and the one before
  (``prev2``) update."""
  count: jax.Array
  prev: jax.Array
  prev2: jax.Array


def dwa(temperature: float = 2.0, *,
        num_tasks: int | None = None) -> optax.GradientTransformationExtraArgs:
  """Dynamic Weight Average: weights from the rate at which each loss descends.

  .. math::

     r_k(t) = L_k(t-1) / L_k(t-2),\\qquad
     w_k(t) = K\\,\\frac{\\exp(r_k(t) / T)}{\\sum_i \\exp(r_i(t) / T)},

  and ``w_k = 1`` for the first two updates. DWA needs positive losses: where
  ``L_k(t-2) ≤ 0`` the ratio is taken as 1 and a negative ``L_k(t-1)`` counts as 0,
  so finite losses always give finite weights. Weights are positive and sum to K;
  a task whose loss stalls (``r ≈ 1``) gets more weight than one that drops.

  The paper computes ``L_k(t)`` as the average loss over epoch ``t``; here ``t``
  counts updates, so ``r`` uses the ``task_losses`` of the previous two updates
  (the weights of update ``t`` do not depend on its own losses). Feed
  epoch-averaged losses yourself for the paper's epoch-level schedule.

  Args:
    temperature: ``T``, the softness of the softmax (paper: 2.0).
    num_tasks: K (required: the state holds two [K] loss vectors).

  Returns:
    A loss-space ``optax.GradientTransformationExtraArgs`` (stacked grads ->
    re-weighted stacked grads); state :class:`DWAState`.

  Reference: S. Liu, E. Johns, A. J. Davison, "End-to-End Multi-Task Learning
  with Attention", CVPR 2019, Eq. (1).

  Cost: O(K) per update; works on the one-backward path (``mtlx.loss_weights``).
  """
  validation.check_number(temperature, "temperature", low=0, low_open=True, method="dwa")
  k = validation.require_num_tasks(num_tasks, "dwa")

  def init_fn(k):
    z = base.state_zeros(k)
    return DWAState(jnp.zeros((), jnp.int32), z, z)

  def weight_fn(state, task_losses):
    dtype = base.compute_dtype(task_losses)
    prev, prev2 = state.prev.astype(dtype), state.prev2.astype(dtype)
    ok = prev2 > 0  # a zero/negative loss has no descent rate: r = 1 (documented)
    ratio = jnp.where(ok, jnp.maximum(prev, 0.0) / jnp.where(ok, prev2, 1.0), 1.0)
    w_dwa = k * jax.nn.softmax(ratio / temperature)
    weights = jnp.where(state.count >= 2, w_dwa, jnp.ones((k,), dtype))
    new_state = DWAState(optax.safe_int32_increment(state.count),
                         base.like(task_losses, state.prev), state.prev)
    return weights, new_state

  return base.loss_weighting(weight_fn, init_fn=init_fn, num_tasks=k, name="dwa")
