"""Fast Adaptive Multitask Optimization (Liu et al., NeurIPS 2023)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from mtlx import validation
from mtlx.loss_weighting import base


class FAMOState(NamedTuple):
  """``logits`` ξ of the task distribution ``z = softmax(ξ)`` and their Adam state;
  ``prev_losses`` the losses of the previous update; ``count`` updates seen."""
  count: jax.Array
  logits: jax.Array
  logits_opt: Any
  prev_losses: jax.Array


def _logit_optimizer(learning_rate: float, gamma: float) -> optax.GradientTransformation:
  # torch.optim.Adam(lr, weight_decay=gamma) of the official code: L2 term added
  # to the gradient before the moments, eps outside the square root.
  return optax.chain(optax.add_decayed_weights(gamma),
                     optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-8),
                     optax.scale(-learning_rate))


def famo(gamma: float = 1e-3, learning_rate: float = 0.025, eps: float = 1e-8, *,
         min_losses: Any = None,
         num_tasks: int | None = None) -> optax.GradientTransformationExtraArgs:
  """FAMO: balance the tasks' log-loss improvement rates with O(1) memory and time.

  With task distribution ``z = softmax(ξ)`` and shifted losses
  ``D_k = L_k - L_k^* + ε``, the update direction is

  .. math::

     d = \\sum_k w_k \\nabla L_k,\\qquad
     w_k = \\frac{z_k / D_k}{\\sum_i z_i / D_i}\\quad(\\textstyle\\sum_k w_k = 1),

  the gradient of ``Σ_k z_k log D_k / c`` with ``c = Σ_i z_i / D_i`` held
  constant. The logits then learn from the observed improvement of the log
  losses ``δ_k = log D_k(t-1) - log D_k(t)``:

  .. math::  ∇_ξ = J_{\\mathrm{softmax}}(ξ)^T δ = z ⊙ (δ - ⟨z, δ⟩),
             \\qquad ξ ← \\mathrm{Adam}(∇_ξ + γ ξ;\\ \\text{lr}),

  so a task that improved less than average gains weight.

  Which losses: the official code runs an extra forward pass on the same batch
  after the parameter step to get ``L(t+1)``. mtlx needs no extra pass: the state
  stores the previous update's losses, and update ``t`` first moves ξ with
  ``δ = log D(t-1) - log D(t)`` (``D(t)`` from this update's ``task_losses``, i.e.
  the next batch after the step), then computes the weights of update ``t`` from
  the new ξ and ``L(t)``. The first update only stores its losses (``z`` uniform).

  Args:
    gamma: ``γ``, the weight decay of the logits (paper: 1e-3).
    learning_rate: Adam learning rate of the logits (paper: 0.025).
    eps: ``ε`` added to the shifted losses (official code: 1e-8).
    min_losses: ``L^*``, a ``[K]`` lower bound of the losses (default 0). FAMO
      takes ``log(L - L^*)``: pass it for losses that can be negative (a
      Gaussian NLL). A finite loss below ``L^*`` counts as ``L^*`` (``D = ε``),
      so the weights and the state stay finite.
    num_tasks: K (required: the state holds K logits).

  Returns:
    A loss-space ``optax.GradientTransformationExtraArgs``; state :class:`FAMOState`.

  Reference: B. Liu, Y. Feng, P. Stone, Q. Liu, "FAMO: Fast Adaptive Multitask
  Optimization", NeurIPS 2023, Algorithm 1.

  Cost: O(K) per update and no per-task gradients: use it on the one-backward
  path (``mtlx.loss_weights``), where the step costs one backward pass.
  """
  validation.check_number(gamma, "gamma", low=0, method="famo")
  validation.check_number(learning_rate, "learning_rate", low=0, low_open=True, method="famo")
  validation.check_number(eps, "eps", low=0, low_open=True, method="famo")
  k = validation.require_num_tasks(num_tasks, "famo")
  opt = _logit_optimizer(learning_rate, gamma)
  l_star = None if min_losses is None else jnp.asarray(min_losses)
  if l_star is not None and l_star.shape != (k,):
    raise ValueError(f"min_losses has shape {l_star.shape}; expected shape ({k},).")

  def init_fn(k):
    logits = base.state_zeros(k)
    return FAMOState(jnp.zeros((), jnp.int32), logits, opt.init(logits),
                     base.state_zeros(k))

  def weight_fn(state, task_losses):
    dtype = base.compute_dtype(task_losses)
    shift = 0.0 if l_star is None else l_star.astype(dtype)
    log_d = jnp.log(jnp.maximum(task_losses.astype(dtype) - shift, 0.0) + eps)
    log_d_prev = jnp.log(jnp.maximum(state.prev_losses.astype(dtype) - shift, 0.0) + eps)
    logits = state.logits.astype(dtype)
    z = jax.nn.softmax(logits)
    delta = log_d_prev - log_d
    grad = z * (delta - jnp.vdot(z, delta))
    step, opt_state = opt.update(grad, state.logits_opt, logits)
    moved = state.count > 0
    logits = jnp.where(moved, logits + step, logits)
    opt_state = jax.tree_util.tree_map(lambda new, old: jnp.where(moved, new, old).astype(old.dtype),
                                       opt_state, state.logits_opt)
    weights = jax.nn.softmax(jax.nn.log_softmax(logits) - log_d)  # (z/D) / Σ z/D
    new_state = FAMOState(optax.safe_int32_increment(state.count),
                          base.like(logits, state.logits), opt_state,
                          base.like(task_losses, state.prev_losses))
    return weights, new_state

  return base.loss_weighting(weight_fn, init_fn=init_fn, num_tasks=k, name="famo")
