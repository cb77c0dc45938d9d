"""Smooth Tchebycheff scalarization (Lin et al., ICML 2024)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from mtlx import validation
from mtlx.loss_weighting import base


class STCHState(NamedTuple):
  """``count`` updates seen; ``loss_sum`` the sum of the warm-up losses (nadir)."""
  count: jax.Array
  loss_sum: jax.Array


def stch(mu: float = 1.0, warmup_steps: int = 0, eps: float = 1e-20, *,
         num_tasks: int | None = None) -> optax.GradientTransformationExtraArgs:
  """Smooth Tchebycheff scalarization of the log losses, normalised by a nadir point.

  STCH replaces the max of Tchebycheff scalarization by its smooth log-sum-exp
  upper bound, ``μ log Σ_k exp(f_k / μ)``. For deep multi-task learning (the
  paper's MTL setting, and its official code) ``f_k`` is the log loss relative to
  a nadir vector ``n`` (the mean loss over the warm-up updates):

  .. math::

     f_k = \\log(L_k / n_k + ε),\\qquad
     \\mathcal L = K μ \\log \\sum_k e^{f_k / μ},\\qquad
     w_k = K\\, \\mathrm{softmax}(f / μ)_k \\,\\frac{1}{L_k + ε n_k}.

  During the first ``warmup_steps`` updates the weights are those of the sum of
  log losses, ``w_k = 1 / (L_k + ε)``, and the losses are averaged into ``n``
  (the official code averages over the last warm-up epoch only; here over all
  warm-up updates). With ``warmup_steps=0``, ``n = 1``. ``log w`` is formed in
  log space, so a zero or tiny loss gives finite weights. A negative finite loss
  counts as 0 (the log loss needs ``L ≥ 0``), and a nadir entry that warmed up to
  0 counts as 1, so finite losses always give finite weights. Weights are positive;
  ``μ → 0`` approaches the (non-smooth) Tchebycheff max of the ``f_k``.

  Args:
    mu: ``μ``, the smoothing parameter (paper's MTL default 1.0).
    warmup_steps: updates of log-loss warm-up that also estimate the nadir ``n``
      (the paper warms up for a few epochs: pass ``epochs × steps_per_epoch``).
    eps: ``ε`` inside the log (official code: 1e-20).
    num_tasks: K (required: the state holds the nadir accumulator).

  Returns:
    A loss-space ``optax.GradientTransformationExtraArgs``; state :class:`STCHState`.

  Reference: X. Lin, X. Zhang, Z. Yang, F. Liu, Z. Wang, Q. Zhang, "Smooth
  Tchebycheff Scalarization for Multi-Objective Optimization", ICML 2024.

  Cost: O(K); works on the one-backward path (``mtlx.loss_weights``).
  """
  validation.check_number(mu, "mu", low=0, low_open=True, method="stch")
  validation.check_number(warmup_steps, "warmup_steps", low=0, integer=True, method="stch")
  validation.check_number(eps, "eps", low=0, low_open=True, method="stch")
  k = validation.require_num_tasks(num_tasks, "stch")
  if warmup_steps < 0:
    raise ValueError(f"warmup_steps={warmup_steps}; expected an int >= 0.")
  if mu <= 0:
    raise ValueError(f"mu={mu}; expected mu > 0.")

  def init_fn(k):
    return STCHState(jnp.zeros((), jnp.int32), base.state_zeros(k))

  def weight_fn(state, task_losses):
    dtype = base.compute_dtype(task_losses)
    losses = jnp.maximum(task_losses.astype(dtype), 0.0)  # negative -> 0 (documented)
    warming = state.count < warmup_steps
    if warmup_steps > 0:
      nadir = state.loss_sum.astype(dtype) / warmup_steps
      nadir = jnp.where(nadir > 0, nadir, jnp.ones_like(nadir))  # all-zero warm-up
    else:
      nadir = jnp.ones((k,), dtype)
    f = jnp.log(losses / nadir + eps)
    log_w = jnp.log(float(k)) + jax.nn.log_softmax(f / mu) - jnp.log(losses + eps * nadir)
    w_warm = 1.0 / (losses + eps)
    weights = jnp.where(warming, w_warm, jnp.exp(log_w))
    loss_sum = jnp.where(warming, state.loss_sum.astype(dtype) + losses,
                         state.loss_sum.astype(dtype))
    new_state = STCHState(optax.safe_int32_increment(state.count),
                          base.like(loss_sum, state.loss_sum))
    return weights, new_state

  return base.loss_weighting(weight_fn, init_fn=init_fn, num_tasks=k, name="stch")
