"""SDMGrad: stochastic direction-oriented multi-objective gradient (Xiao et al., NeurIPS 2023)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from mtlx import jacobian
from mtlx import solvers
from mtlx import validation
from mtlx.aggregators.gramian_weighting import cross_gramian_weighting


class SDMGradState(NamedTuple):
  """``weights``: the simplex weights ``w`` of the last step (warm start, ``[K]``)."""
  weights: jax.Array


def sdmgrad_weights(cross, weights, *, lam: float = 0.3, num_iters: int = 20,
                    step_size: float = 5.0, momentum: float = 0.5):
  """SDMGrad weights from the cross matrix ``C = J₁ J₂ᵀ`` (Xiao et al., NeurIPS 2023).

  The inner problem ``min_{w ∈ Δ} ½‖J w + λ ḡ‖²`` (``ḡ`` the mean gradient) is solved
  with stochastic gradients ``C w + λ C 1/K`` (unbiased with two independent
  batches), normalised as in the official code by ``s² = mean_k √max(C_kk, 0)²``
  (``Ĉ = C/s²``; the official code adds 1e-8 to ``s²``, we divide exactly and
  leave ``Ĉ = 0`` when ``s = 0``, so the weights do not depend on the scale), by
  ``num_iters`` heavy-ball steps each followed by the projection on the simplex
  (``b ← m b + ∇``, ``w ← Π_Δ(w - η b)``, ``b₀ = 0``; official values η = 5,
  m = 0.5, 20 steps), warm-started from the previous step's ``w``.

  Returns:
    ``(direction_weights, w)``: the direction is ``d = Σ_k ω_k g_k`` with
    ``ω = (w + λ/K) / (1 + λ)`` (``(J w + λ ḡ)/(1+λ)``); ``w`` is the new state.
  """
  k = cross.shape[0]
  dtype = cross.dtype
  s = jnp.mean(jacobian.task_norms(cross))
  s2 = s * s
  chat = cross / jnp.where(s2 > 0, s2, 1.0)
  lin = lam * jnp.mean(chat, axis=1)

  def body(_, carry):
    w, buf = carry
    buf = momentum * buf + chat @ w + lin
    return solvers.project_simplex(w - step_size * buf), buf

  w0 = jnp.asarray(weights, dtype)
  w, _ = lax.fori_loop(0, num_iters, body, (w0, jnp.zeros((k,), dtype)))
  return (w + lam / k) / (1.0 + lam), w


def sdmgrad(lam: float = 0.3, *, num_tasks: int | None = None, num_iters: int = 20,
            step_size: float = 5.0,
            momentum: float = 0.5) -> optax.GradientTransformationExtraArgs:
  """SDMGrad as a gradient-space transform over two (or three) mini-batches.

  Direction-oriented MGDA: find the best common-descent direction within a ball
  around the mean gradient ``ḡ = J^T 1/K``,

  .. math::
     w^* = \\arg\\min_{w \\in Δ} \\tfrac12 \\| J^T w + λ ḡ \\|^2,\\qquad
     d = \\frac{J^T w^* + λ ḡ}{1 + λ}.

  The inner gradient ``J Jᵀ w + λ J ḡ`` is estimated without bias by the cross
  matrix ``C = J₁ J₂ᵀ`` of two independent batches (``C w + λ C 1/K``);
  :func:`mtlx.weightings.sdmgrad` runs ``num_iters`` projected heavy-ball steps
  (official step size 5, momentum 0.5, on ``C`` normalised by the mean gradient
  norm squared), warm-started from the previous ``w`` (state). The direction uses
  a third batch when given, else the first.

  Extra arguments of ``update``:
    task_grads_2: per-task grads of a second, independent mini-batch (same
      pytree as ``task_grads``). Required: a missing one raises a ``ValueError``
      that says what to pass.
    task_grads_3: optional third batch for the direction ``d`` (as in the
      official code); without it, ``d`` is built from ``task_grads``.

  Properties: permutation-equivariant; K = 1 returns the gradient; λ → ∞ gives
  the mean gradient, λ = 0 stochastic MGDA; the weights are invariant to
  scaling the gradients, so the update is linear under scaling (for a fixed
  warm start); non-conflicting only approximately (it is a ball around the mean,
  and ``num_iters`` iterations). Needs two batches: it cannot run in a one-batch
  loop (use ``task_grads_2=task_grads`` only as a biased approximation).

  Args:
    lam: λ, the regularisation towards the mean direction (LibMTL default 0.3;
      the paper tunes it in {0.1, 0.3, 0.5, 1, …}).
    num_tasks: K (the warm start is ``[K]``); required.
    num_iters, step_size, momentum: inner solver (official 20, 5.0, 0.5).

  Cost: two (three) Jacobians, i.e. 2K (3K) backward passes; the cross matrix
  (``K² P``), ``num_iters`` steps of ``O(K²)`` plus a sort, the combination
  (``K P``); state ``K`` numbers.

  Reference: P. Xiao, H. Ban, K. Ji. Direction-oriented Multi-objective Learning:
  Simple and Provable Stochastic Algorithms. NeurIPS 2023.
  """
  validation.check_number(lam, "lam", low=0, method="sdmgrad")
  validation.check_number(num_iters, "num_iters", low=1, integer=True, method="sdmgrad")
  validation.check_number(step_size, "step_size", low=0, low_open=True, method="sdmgrad")
  validation.check_number(momentum, "momentum", low=0, high=1, high_open=True, method="sdmgrad")

  def init(k):
    k = validation.require_num_tasks(k, "sdmgrad")
    return SDMGradState(jnp.ones((k,)) / k)

  def weighting(cross, state):
    omega, w = sdmgrad_weights(cross, state.weights.astype(cross.dtype), lam=lam,
                               num_iters=num_iters, step_size=step_size, momentum=momentum)
    keep = jnp.all(jnp.isfinite(w))
    new = jnp.where(keep, w, state.weights.astype(w.dtype)).astype(state.weights.dtype)
    # A non-finite cross matrix must show in the update even if the weights are
    # repaired for the warm start: omega carries the NaN.
    return omega, SDMGradState(new)

  return cross_gramian_weighting(weighting, init=init, num_tasks=num_tasks, name="sdmgrad")
