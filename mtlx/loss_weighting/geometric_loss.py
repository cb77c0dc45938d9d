"""Geometric Loss Strategy (Chennupati et al., CVPR Workshops 2019)."""

from __future__ import annotations

import jax.numpy as jnp
import optax

from mtlx import validation
from mtlx.loss_weighting import base
from mtlx.loss_weighting.scale_invariant import positive_losses


def geometric_loss(eps: float = 1e-8) -> optax.GradientTransformationExtraArgs:
  """Geometric Loss Strategy (GLS): minimise the geometric mean of the losses.

  .. math::

     \\mathcal L = \\Big(\\prod_{k=1}^K L_k\\Big)^{1/K},\\qquad
     \\nabla_θ \\mathcal L = \\sum_k \\frac{\\mathcal L}{K L_k} \\nabla_θ L_k,
     \\qquad w_k = \\frac{\\exp(\\tfrac1K \\sum_i \\log \\tilde L_i)}{K \\tilde L_k},

  with ``L̃ = max(L, ε)``. Computed in log space, so a zero or tiny loss gives
  finite weights (the exact gradient of the geometric mean is infinite there).

  Args:
    eps: ``ε > 0``, the floor of the losses: a zero, tiny or negative finite
      loss counts as ``ε`` (finite weights; see
      :func:`mtlx.loss_weighting.scale_invariant.positive_losses`); a non-finite
      loss gives a non-finite update.

  Returns:
    A stateless loss-space ``optax.GradientTransformationExtraArgs``.

  Reference: S. Chennupati, G. Sistu, S. Yogamani, S. A. Rawashdeh,
  "MultiNet++: Multi-Stream Feature Aggregation and Geometric Loss Strategy for
  Multi-Task Learning", CVPR Workshops 2019, Eq. (2).

  Cost: O(K); works on the one-backward path.
  """
  validation.check_number(eps, "eps", low=0, low_open=True, method="geometric_loss")

  def weight_fn(state, task_losses):
    losses = positive_losses(task_losses.astype(base.compute_dtype(task_losses)), eps)
    k = losses.shape[0]
    log_l = jnp.log(losses)
    return jnp.exp(jnp.mean(log_l) - log_l) / k, state

  return base.loss_weighting(weight_fn, name="geometric_loss")
