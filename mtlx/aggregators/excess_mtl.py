"""ExcessMTL: task weights from estimated excess risks (He et al., ICML 2024)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from mtlx import jacobian
from mtlx import validation
from mtlx.aggregators._extras import stacked_zeros


class ExcessMTLState(NamedTuple):
  """``count``: steps taken; ``grad_sq_sum``: ``Σ_t g_{t,k}²`` per task
  (params-shaped, leading K); ``initial``: the first step's excess-risk estimates;
  ``log_weights``: log of the task weights (``[K]``)."""
  count: jax.Array
  grad_sq_sum: Any
  initial: jax.Array
  log_weights: jax.Array


def excess_mtl(step_size: float = 1e-2, *, num_tasks: int | None = None,
               eps: float = 1e-7) -> optax.GradientTransformationExtraArgs:
  """ExcessMTL as a gradient-space transform: weights from excess-risk estimates.

  The excess risk of task ``k`` (its loss above the best achievable) is
  estimated by a second-order Taylor expansion, ``L_k(θ) - L_k(θ_k^*) ≈
  g_kᵀ H_k^{-1} g_k``, with the diagonal AdaGrad/empirical-Fisher estimate
  ``H_k ≈ diag(√(Σ_{s≤t} g_{s,k}² + ε))``; estimates are normalised by those of
  the first step (scale normalisation), and the weights follow online
  exponentiated gradient ascent (a min-max over the simplex), scaled to sum to K:

  .. math::
     A_{t,k} = A_{t-1,k} + g_{t,k}^{\\odot 2},\\qquad
     e_{t,k} = \\Big\\langle g_{t,k}, \\frac{g_{t,k}}{\\sqrt{A_{t,k} + ε}} \\Big\\rangle\\\\
     t = 1:\\ e_{0,k} := e_{1,k},\\ w_1 = \\mathbf 1;\\qquad
     t > 1:\\ w_{t,k} ∝ w_{t-1,k} \\exp(η\\, e_{t,k} / e_{0,k}),\\ \\sum_k w_{t,k} = K\\\\
     d_t = \\sum_k w_{t,k}\\, g_{t,k}

  (the official code's schedule; ``e_{t,k}/e_{0,k}`` is set to 0 when
  ``e_{0,k} = 0``, i.e. a task whose first gradient was zero). The weights are
  kept as logits (``log w``) so long runs cannot overflow.

  The excess-risk estimate uses the gradients only, as in the paper and its
  official code: ``task_losses`` is not read (it may be passed; it is ignored).

  Properties: permutation-equivariant; weights positive, summing to K; the
  first step returns the plain sum; linear under scaling the whole gradient
  sequence by ``s`` while ``Σ g² ≫ ε`` (``e`` is then 1-homogeneous and ``e/e_0``
  scale-free), not under scaling one step alone; not
  non-conflicting (a loss-weighting-like method); K = 1 returns ``g``.

  Args:
    step_size: η, the exponentiated-gradient step (LibMTL's
      ``robust_step_size``; the paper tunes it per benchmark; default 1e-2).
    num_tasks: K; required (the accumulator has a leading K axis).
    eps: ε inside the square root (official 1e-7).

  Cost: ``2 K P`` for the accumulator and the estimates, the combination
  (``K P``); memory: state ``K × P`` (one Jacobian's worth). No extra backward pass.

  Reference: Y. He et al. Robust Multi-Task Learning with Excess Risks. ICML 2024.
  """
  validation.check_number(step_size, "step_size", low=0, method="excess_mtl")
  validation.check_number(eps, "eps", low=0, low_open=True, method="excess_mtl")

  def init_fn(params):
    k = validation.require_num_tasks(num_tasks, "excess_mtl")
    return ExcessMTLState(jnp.zeros((), jnp.int32), stacked_zeros(params, k), jnp.zeros((k,)),
                          jnp.zeros((k,)))

  def update_fn(task_grads, state, params=None, **extra):
    del params, extra
    k = validation.num_tasks(task_grads)
    validation.check_num_tasks(k, num_tasks, "excess_mtl")
    validation.check_state_structure(task_grads, state.grad_sq_sum, "excess_mtl")
    acc = jax.tree_util.tree_map(lambda a, g: a + jnp.square(g.astype(a.dtype)),
                                 state.grad_sq_sum, task_grads)

    def leaf_excess(a, g):
      g = g.astype(a.dtype)
      per = jnp.square(g) / jnp.sqrt(a + eps)
      acc_t = jnp.promote_types(a.dtype, jnp.float32)
      return jnp.sum(per.astype(acc_t), axis=tuple(range(1, per.ndim)))

    parts = jax.tree_util.tree_leaves(jax.tree_util.tree_map(leaf_excess, acc, task_grads))
    e = sum(parts[1:], parts[0])
    first = state.count == 0
    initial = jnp.where(first, e, state.initial.astype(e.dtype))
    pos = initial > 0
    ratio = jnp.where(pos, e / jnp.where(pos, initial, 1.0), jnp.where(jnp.isfinite(e), 0.0, e))
    log_w = state.log_weights.astype(e.dtype)
    log_w = jnp.where(first, log_w, log_w + step_size * ratio)
    log_w = log_w - jax.scipy.special.logsumexp(log_w) + jnp.log(float(k))
    w = jnp.exp(log_w)
    update = jacobian.combine(w, task_grads)
    new = ExcessMTLState(state.count + 1, acc, initial.astype(state.initial.dtype),
                         log_w.astype(state.log_weights.dtype))
    return update, new

  return optax.GradientTransformationExtraArgs(
      init_fn, validation.guarded_update(update_fn, "excess_mtl"))
