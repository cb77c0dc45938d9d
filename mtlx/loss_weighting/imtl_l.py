"""IMTL-L: impartial multi-task learning, loss part (Liu et al., ICLR 2021)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from mtlx import validation
from mtlx.loss_weighting import base


class IMTLLState(NamedTuple):
  """``log_scale``: the learned per-task log loss scales ``s_k``."""
  log_scale: jax.Array


def imtl_l(learning_rate: float = 0.025, *,
           num_tasks: int | None = None) -> optax.GradientTransformationExtraArgs:
  """IMTL-L: learned loss scales that make every scaled loss equal to one.

  .. math::

     \\tilde L_k = e^{s_k} L_k - s_k,\\qquad w_k = e^{s_k},\\qquad
     \\frac{\\partial \\tilde L_k}{\\partial s_k} = e^{s_k} L_k - 1 .

  Update ``t`` weights the grads with the current ``s`` and then takes the
  closed-form gradient step ``s ← s - η (e^{s} L(t) - 1)`` (plain SGD, the
  simultaneous step of the paper, which trains ``s`` jointly with θ). The fixed
  point is ``e^{s_k} L_k = 1``: every task's scaled loss is 1, whatever its
  scale. Weights are positive. The gradient part (IMTL-G) is a Gramian method.

  Args:
    learning_rate: ``η`` for ``s`` (the paper trains ``s`` with the network's
      optimizer; 0.025 is mtlx's default).
    num_tasks: K (required; ``s`` starts at 0, i.e. ``w = 1``).

  Returns:
    A loss-space ``optax.GradientTransformationExtraArgs``; state
    :class:`IMTLLState`.

  Reference: L. Liu, Y. Li, Z. Kuang, J.-H. Xue, Y. Chen, W. Yang, Q. Liao,
  W. Zhang, "Towards Impartial Multi-task Learning", ICLR 2021, Sec. 3.2.

  Cost: O(K); works on the one-backward path (``mtlx.loss_weights``).
  """
  validation.check_number(learning_rate, "learning_rate", low=0, low_open=True, method="imtl_l")
  k = validation.require_num_tasks(num_tasks, "imtl_l")

  def init_fn(k):
    return IMTLLState(base.state_zeros(k))

  def weight_fn(state, task_losses):
    s = state.log_scale.astype(base.compute_dtype(task_losses))
    weights = jnp.exp(s)
    grad_s = weights * task_losses - 1.0
    return weights, IMTLLState(base.like(s - learning_rate * grad_s, state.log_scale))

  return base.loss_weighting(weight_fn, init_fn=init_fn, num_tasks=k, name="imtl_l")
