"""FairGrad: α-fair resource allocation among task gradients (Ban & Ji, ICML 2024)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from mtlx import solvers
from mtlx import validation
from mtlx.aggregators.gramian_weighting import gramian_weighting


class FairGradState(NamedTuple):
  """``warm_start``: the normalised weights ``w̃`` of the last step (``[K]``)."""
  warm_start: jax.Array


def fairgrad_weights(gramian, warm_start=None, *, alpha: float = 1.0,
                     max_iters: int = 50, tol: float | None = None,
                     max_weight: float = 1e4):
  """FairGrad weights: the positive solution of ``G w = w^{-1/α}`` (Ban & Ji, ICML 2024).

  The α-fair direction ``d = Σ_k w_k g_k`` maximises ``Σ_k U_α(⟨g_k, d⟩)`` with
  ``U_α(x) = x^{1-α}/(1-α)`` (``log x`` for α = 1); its KKT condition is the
  system ``G w = w^{-1/α}`` (element-wise power). It is the stationarity
  condition of the strictly convex problem

  .. math:: \\min_{w > 0}\\ h(w) = \\tfrac12 w^T \\tilde G w - \\sum_k ψ(w_k),
            \\qquad ψ'(w) = w^{-1/α},

  solved here by damped Newton steps (Hessian ``G̃ + diag(w^{-1/α-1}/α)``,
  with the curvature floored at ``16 K ε`` so the step stays finite where it
  underflows at the cap next to a singular Gramian; a non-finite step is
  dropped; backtracking over ``t = 1, 1/2, …, 2^{-29}`` that keeps ``w > 0`` and
  decreases ``h`` or the residual) on the normalised ``G̃ = G / m`` with
  ``m = mean(diag G)``; then ``w = w̃ m^{-α/(1+α)}``, so the weights are exact
  under any scaling of the gradients. The official code calls
  ``scipy.optimize.least_squares`` from ``w = 1/K`` each step instead.

  Stopping rule: ``max_k |(G̃w̃ - w̃^{-1/α})_k| ≤ tol · max_k w̃_k^{-1/α}`` or
  ``max_iters`` Newton steps (``lax.while_loop``); ``tol`` defaults to 1e-12
  (float64) / 1e-6 (float32). ``w̃`` is kept in ``[w_min, max_weight]`` with
  ``w_min = max(1e-10, max_float^{-α/4})`` (so ``w̃^{-1/α}`` cannot overflow;
  about 0.11 for α = 0.1 in float32): when no positive solution exists (a zero
  gradient, exactly opposite gradients ``[g, -g]``, ``[g, -2g]``, signed rank-1
  Jacobians) the weights of the offending tasks grow to ``max_weight`` instead
  of diverging, and stay finite for every finite input.

  Args:
    gramian: ``[K, K]`` Gramian.
    warm_start: ``[K]`` normalised weights ``w̃`` of the previous step (``None``:
      ones).
    alpha: the fairness exponent α > 0 (α=1: proportional fairness; α→∞: max-min).

  Returns:
    ``(weights, w̃)``: the ``[K]`` weights and the normalised ones to warm-start
    the next call.
  """
  if not alpha > 0:
    raise ValueError(f"alpha={alpha}; expected alpha > 0.")
  k = gramian.shape[0]
  dtype = gramian.dtype
  tol = solvers.default_tol(dtype) if tol is None else tol
  finfo = jnp.finfo(dtype)
  # Lower bound: w^{-1/α} and the squared residual stay finite in ``dtype``
  # (w^{-1/α} ≤ max^{1/4}); 1e-10 unless α is small in float32.
  w_min = max(1e-10, float(finfo.max) ** (-alpha / 4.0))
  # Curvature floor of the Newton system (the normalised Gramian has mean
  # diagonal 1): keeps the step finite where the barrier's curvature
  # w^{-1/α-1}/α underflows at the weight cap next to a singular Gramian.
  ridge = 16 * k * float(finfo.eps)
  inv_a = 1.0 / alpha
  m = jnp.mean(jnp.diagonal(gramian))
  safe_m = jnp.where(m > 0, m, jnp.ones_like(m))
  gn = gramian / safe_m
  w0 = jnp.ones((k,), dtype) if warm_start is None else jnp.asarray(warm_start, dtype)
  w0 = jnp.clip(jnp.where(jnp.isfinite(w0), w0, 1.0), w_min, max_weight)

  def psi(w):
    if alpha == 1.0:
      return jnp.log(w)
    return w ** (1.0 - inv_a) / (1.0 - inv_a)

  def h(w):
    return 0.5 * w @ (gn @ w) - jnp.sum(psi(w))

  def residual(w):
    return gn @ w - w ** (-inv_a)

  def rel_res(w):
    return jnp.max(jnp.abs(residual(w))) / jnp.max(w ** (-inv_a))

  steps = 2.0 ** (-jnp.arange(30, dtype=dtype))

  def body(carry):
    i, w, _ = carry
    f = residual(w)
    hess = gn + jnp.diag(jnp.maximum(inv_a * w ** (-inv_a - 1.0), ridge))
    delta = -jnp.linalg.solve(hess, f)
    delta = jnp.where(jnp.all(jnp.isfinite(delta)), delta, jnp.zeros_like(delta))
    cand = w[None, :] + steps[:, None] * delta[None, :]
    pos = jnp.all(cand > 0, axis=1)
    safe = jnp.where(pos[:, None], cand, w[None, :])
    h_c = jax.vmap(h)(safe)
    r_c = jax.vmap(lambda x: jnp.sum(residual(x) ** 2))(safe)
    ok = pos & ((h_c <= h(w) + 1e-4 * steps * (f @ delta)) | (r_c < jnp.sum(f ** 2)))
    t = jnp.where(jnp.any(ok), steps[jnp.argmax(ok)], 0.0)
    w_new = jnp.where(t > 0, jnp.clip(w + t * delta, w_min, max_weight), w)
    return i + 1, w_new, rel_res(w_new)

  def cond(carry):
    i, _, res = carry
    return (i < max_iters) & ~(res <= tol)

  _, w, res = lax.while_loop(cond, body, (0, w0, rel_res(w0)))
  # NaN/inf input: the loop stops at once (res is NaN); make the weights say so.
  w = jnp.where(jnp.isfinite(res), w, jnp.nan)
  scale = safe_m ** (-alpha / (1.0 + alpha))
  return w * scale, w


def fairgrad(alpha: float = 1.0, *, num_tasks: int | None = None, max_iters: int = 50,
             tol: float | None = None,
             max_weight: float = 1e4) -> optax.GradientTransformationExtraArgs:
  """FairGrad as a gradient-space transform: stacked task grads -> one update.

  .. math::
     d = \\sum_k w_k g_k,\\qquad G w = w^{-1/α},\\ w > 0

  the update that maximises the α-fair utility ``Σ_k U_α(⟨g_k, d⟩)`` of the
  first-order task improvements (α = 1: proportional fairness, α = 2: minimum
  potential delay, α → ∞: max-min fairness). The system is solved by the jittable
  damped Newton method of :func:`mtlx.weightings.fairgrad` (the official code
  uses ``scipy.optimize.least_squares``), warm-started from the previous step's
  solution kept in the state.

  Properties: permutation-equivariant; homogeneous of degree
  ``(1-α)/(1+α)`` under scaling all gradients by ``s`` (the weights scale as
  ``s^{-2α/(1+α)}``, as the equation requires), so *not* linear under scaling:
  for α = 1 the direction does not depend on the gradient scale at all;
  non-conflicting whenever the system has a positive solution
  (``⟨g_k, d⟩ = w_k^{-1/α} > 0``); K = 1 gives ``g / ‖g‖^{2α/(1+α)}``
  (``g/‖g‖`` for α = 1). A zero gradient or exactly opposite gradients have no
  positive solution: the offending weights stop at ``max_weight`` (in units of
  the normalised Gramian) and the update stays finite.

  Args:
    alpha: the fairness exponent (paper default 1.0; the paper tunes it in
      {0.5, 1, 2, 5, 10} per benchmark).
    num_tasks: K (the warm start is a ``[K]`` vector); required.
    max_iters, tol, max_weight: solver settings, see
      :func:`mtlx.weightings.fairgrad`.

  Cost: the Gramian (``K² P``) and the combination (``K P``); the solver is
  ``≤ max_iters`` Newton steps of ``O(K³)`` each (typically 1–3 with the warm
  start). No extra backward pass; state ``K`` numbers.

  Reference: H. Ban, K. Ji. Fair Resource Allocation in Multi-Task Learning.
  ICML 2024.
  """
  validation.check_number(alpha, "alpha", low=0, low_open=True, method="fairgrad")
  validation.check_number(max_iters, "max_iters", low=1, integer=True, method="fairgrad")
  validation.check_number(max_weight, "max_weight", low=0, low_open=True, method="fairgrad")
  if tol is not None:
    validation.check_number(tol, "tol", low=0, low_open=True, method="fairgrad")

  def init(k):
    k = validation.require_num_tasks(k, "fairgrad")
    return FairGradState(jnp.ones((k,)))

  def weighting(gramian, state):
    w, wt = fairgrad_weights(gramian, state.warm_start.astype(gramian.dtype),
                                alpha=alpha, max_iters=max_iters, tol=tol,
                                max_weight=max_weight)
    keep = jnp.all(jnp.isfinite(wt))
    new = jnp.where(keep, wt, state.warm_start.astype(wt.dtype))
    return w, FairGradState(new.astype(state.warm_start.dtype))

  return gramian_weighting(weighting, init=init, num_tasks=num_tasks, name="fairgrad")
