"""GradNorm: gradient normalisation for adaptive loss balancing (Chen et al., ICML 2018)."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from mtlx import validation
from mtlx.loss_weighting import base


class GradNormState(NamedTuple):
  """``weights`` for the next update (sum K) and their Adam state;
  ``initial_losses`` ``L(0)``; ``count`` updates seen."""
  count: jax.Array
  weights: jax.Array
  weights_opt: Any
  initial_losses: jax.Array


def masked_task_norms(task_grads: Any, mask: Any) -> jax.Array:
  """``[K]`` norms of the per-task grads over the leaves that ``mask`` selects.

  ``mask`` is ``None`` (all leaves), a pytree of bools that is a prefix of the
  params' structure (``True`` selects a whole subtree), or a callable returning
  one from the stacked grads.
  """
  if mask is None:
    mask = True
  elif callable(mask):
    mask = mask(task_grads)
  selected = []

  def visit(m, sub):
    if m:
      selected.extend(jax.tree_util.tree_leaves(sub))
    return None

  try:
    jax.tree_util.tree_map(visit, mask, task_grads)
  except ValueError as e:
    raise ValueError(f"mask must be None, a pytree of bools that is a prefix of the "
                     f"params' structure, or a callable returning one; got {mask!r} "
                     f"({e}).") from None
  if not selected:
    raise ValueError("mask selects no parameters; expected at least one leaf "
                     "(e.g. the last shared layer).")
  sq = [jnp.sum(jnp.square(g.astype(jnp.promote_types(g.dtype, jnp.float32))),
                axis=tuple(range(1, g.ndim))) for g in selected]
  return jnp.sqrt(sum(sq[1:], sq[0]))


def gradnorm(alpha: float = 1.5, learning_rate: float = 0.025, *,
             mask: Any | Callable[[Any], Any] = None,
             num_tasks: int | None = None) -> optax.GradientTransformationExtraArgs:
  """GradNorm: learn weights that equalise the tasks' weighted gradient norms.

  With ``n_k = ‖∇_W L_k‖`` over the selected parameters ``W`` (``mask``),
  ``G_k = w_k n_k``, ``Ḡ = mean_k G_k``, the inverse training rates
  ``r_k = \\tilde L_k / mean_i \\tilde L_i`` with ``\\tilde L_k = L_k(t) / L_k(0)``:

  .. math::

     \\mathcal L_{grad} = \\sum_k \\big| G_k - Ḡ\\, r_k^{α} \\big|,\\qquad
     \\frac{\\partial \\mathcal L_{grad}}{\\partial w_k} =
       \\mathrm{sign}(G_k - Ḡ r_k^α)\\, n_k

  (the target ``Ḡ r_k^α`` is a constant, as in the paper). Update ``t`` weights
  the grads with the current ``w`` and then steps
  ``w ← max(w + Adam_η(∂L_grad/∂w), 0)``, renormalised to ``Σ_k w_k = K``.
  ``L(0)`` is the first update's losses; a task whose first loss is 0 takes its
  first positive loss as ``L_k(0)`` and has ``\tilde L_k = 1`` until then; when
  every ``\tilde L`` is 0 (all losses zero) ``r = 1``; negative losses count as 0.
  So finite losses always give finite weights. Weights are non-negative and sum to K
  (a step that would clamp every weight to 0 leaves ``w`` as it was).

  Optimizer of ``w``: the paper states a learning rate (0.025) but not the
  optimizer; LibMTL and common PyTorch ports put ``w`` in the network's Adam.
  ``∂L_grad/∂w_k = ± n_k`` has the scale of the gradient norms themselves, so a
  plain SGD step is scale-dependent (with norms in the thousands, 0.025 × n_k
  throws weights to 0); mtlx therefore steps ``w`` with Adam (β = 0.9, 0.999,
  ε = 1e-8) at ``learning_rate``, which moves each weight by about η per update
  whatever the loss scale. The clamp at 0 (not in the paper) only acts if a step
  would make a weight negative. Convention: LibMTL parametrises
  ``w = K · softmax(θ)`` and steps ``θ``; mtlx steps ``w`` itself (clamped at 0,
  renormalised to ``Σ w = K``), so the weights agree at the start (all 1) but
  their trajectories differ.

  Args:
    alpha: ``α``, the restoring-force strength (paper: 1.5 on NYUv2; 0.12 on
      their synthetic tasks).
    learning_rate: ``η``, the Adam learning rate of ``w`` (paper: 0.025).
    mask: which parameters ``W`` the norms use. The paper uses the last shared
      layer, which a pytree does not identify: pass a pytree of bools (a prefix
      of the params' structure, e.g. ``{"trunk": {"out": True, ...}, "heads":
      False}``) or a callable returning one. ``None`` (default) uses all
      parameters, LibMTL's choice (there: all shared parameters). The trainer
      (``mtlx.train.make_trainer``) passes the model's shared encoder by default.
    num_tasks: K (required: the state holds the weights and ``L(0)``).

  Returns:
    A loss-space ``optax.GradientTransformationExtraArgs`` that reads the stacked
    grads; state :class:`GradNormState`. Not usable with ``mtlx.loss_weights``
    (it needs the per-task gradients; raises ``ValueError``).

  Reference: Z. Chen, V. Badrinarayanan, C.-Y. Lee, A. Rabinovich, "GradNorm:
  Gradient Normalization for Adaptive Loss Balancing in Deep Multitask
  Networks", ICML 2018, Eqs. (1)-(2).

  Cost: the K per-task gradients (K backward passes, ``K P`` memory) plus one
  norm over the masked parameters (``K |W|``).
  """
  validation.check_number(alpha, "alpha", low=0, method="gradnorm")
  validation.check_number(learning_rate, "learning_rate", low=0, low_open=True, method="gradnorm")
  k = validation.require_num_tasks(num_tasks, "gradnorm")
  opt = optax.adam(learning_rate, b1=0.9, b2=0.999, eps=1e-8)

  def init_fn(k):
    weights = base.state_zeros(k) + 1.0
    return GradNormState(jnp.zeros((), jnp.int32), weights, opt.init(weights),
                         base.state_zeros(k))

  def weight_fn(state, task_losses, task_grads):
    dtype = base.compute_dtype(task_losses)
    losses = task_losses.astype(dtype)
    weights = state.weights.astype(dtype)
    losses = jnp.maximum(losses, 0.0)
    l0 = state.initial_losses.astype(dtype)
    l0 = jnp.where(l0 > 0, l0, losses)  # L(0): the first positive loss of each task
    norms = masked_task_norms(task_grads, mask).astype(dtype)
    g = weights * norms
    tilde = jnp.where(l0 > 0, losses / jnp.where(l0 > 0, l0, 1.0), 1.0)
    mean_tilde = jnp.mean(tilde)
    ratio = jnp.where(mean_tilde > 0, tilde / jnp.where(mean_tilde > 0, mean_tilde, 1.0), 1.0)
    target = jnp.mean(g) * ratio ** alpha
    grad_w = jnp.sign(g - target) * norms
    step, opt_state = opt.update(grad_w, state.weights_opt, weights)
    new_w = jnp.maximum(weights + step, 0.0)
    total = jnp.sum(new_w)
    new_w = jnp.where(total > 0, k * new_w / jnp.where(total > 0, total, 1.0), weights)
    opt_state = jax.tree_util.tree_map(lambda new, old: new.astype(old.dtype),
                                       opt_state, state.weights_opt)
    new_state = GradNormState(optax.safe_int32_increment(state.count),
                              base.like(new_w, state.weights), opt_state,
                              base.like(l0, state.initial_losses))
    return weights, new_state

  return base.loss_weighting(weight_fn, init_fn=init_fn, num_tasks=k, name="gradnorm",
                             reads_grads=True)
