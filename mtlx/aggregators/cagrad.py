"""CAGrad: conflict-averse gradient descent (Liu et al., NeurIPS 2021)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from mtlx import validation
from mtlx import solvers
from mtlx.aggregators.gramian_weighting import gramian_weighting


def _objective(gramian, b, r, w):
  return b @ w + r * jnp.sqrt(jnp.maximum(w @ gramian @ w, 0.0))


def _face_closed_form(gramian, b, r, mask):
  """Exact minimiser of ``bᵀw + r‖J^T w‖`` on the face ``{w_S, Σ w = 1}``.

  Stationarity ``b_S + r G_SS w_S/s = μ 1`` with ``s = ‖Jᵀw‖`` gives
  ``w = (μ x - y)/(μ a - β)`` with ``x = G_SS⁻¹ 1``, ``y = G_SS⁻¹ b_S``,
  ``a = 1ᵀx``, ``β = 1ᵀy``, ``γ = bᵀy`` and ``μ a - β = (β² - aγ + a r²)^{1/2}``.
  """
  m = mask.astype(gramian.dtype)
  a_mat = gramian * m[:, None] * m[None, :] + jnp.diag(1.0 - m)
  sol = jnp.linalg.lstsq(a_mat, jnp.stack([m, b * m], axis=1))[0] * m[:, None]
  x, y = sol[:, 0], sol[:, 1]
  a, beta, gamma = jnp.sum(x), jnp.sum(y), b @ y
  root = jnp.sqrt(jnp.maximum(beta * beta - a * gamma + a * r * r, 0.0))
  mu = (beta + root) / a
  return (mu * x - y) / root


def cagrad_weights(gramian: jax.Array, c: float = 0.4, *, rescale: bool = True,
                   num_iters: int = 10, qp_iters: int = 30) -> jax.Array:
  """CAGrad weights of the Gramian.

  With ``g_0 = (1/K) Σ g_k``, ``b = J g_0 = G 1/K`` and ``r = c ‖g_0‖``:

  .. math::  w^* = \\arg\\min_{w ∈ Δ_K} bᵀ w + r \\|Jᵀ w\\|,\\qquad
             d = g_0 + \\frac{r}{\\|Jᵀ w^*\\|} Jᵀ w^*

  so the weights are ``1/K + r w*/‖Jᵀw*‖`` (divided by ``1 + c²`` with
  ``rescale``, as in the authors' code). ``G`` is first divided by its mean
  diagonal (the weights are scale-free).

  Solver: the variational form ``r‖v‖ = min_{t>0} r(‖v‖²/(2t) + t/2)`` turns the
  problem into alternating exact minimisation (``num_iters`` rounds): ``t ←
  ‖Jᵀw‖``, then the simplex QP ``min ½ wᵀGw + (t/r) bᵀw`` by
  :func:`mtlx.solvers.simplex_qp` (``qp_iters`` FISTA steps, warm-started, no
  refinement); finally the exact minimiser on the support found
  (:func:`_face_closed_form`) replaces the iterate when feasible and not worse.
  When ``‖Jᵀw*‖ = 0`` (0 in the hull) the direction ``g_0`` is returned.
  """
  k = gramian.shape[-1]
  s = jnp.trace(gramian) / k
  g = gramian / jnp.where(s > 0, s, jnp.ones_like(s))
  b = jnp.mean(g, axis=1)
  g0_sq = jnp.mean(b)
  r = c * jnp.sqrt(jnp.maximum(g0_sq, 0.0))
  r_safe = jnp.where(r > 0, r, jnp.ones_like(r))

  lip = solvers._lipschitz(g)  # pylint: disable=protected-access

  def body(_, w):
    t = jnp.sqrt(jnp.maximum(w @ g @ w, 0.0))
    return solvers.simplex_qp(g, (t / r_safe) * b, num_iters=qp_iters, num_refine=0,
                              init=w, lipschitz=lip)

  w = jnp.full((k,), 1.0 / k, g.dtype)
  w = jax.lax.fori_loop(0, num_iters, body, w)
  polished = _face_closed_form(g, b, r, w > 0)
  f_w, f_p = _objective(g, b, r, w), _objective(g, b, r, polished)
  ok = (jnp.all(jnp.isfinite(polished)) & jnp.all(polished >= 0)
        & (f_p <= f_w + 16 * jnp.finfo(g.dtype).eps * (jnp.abs(f_w) + 1.0)))
  w = jnp.where(ok, polished, w)
  norm = jnp.sqrt(jnp.maximum(w @ g @ w, 0.0))
  lam = jnp.where((norm > 0) & (r > 0), r / jnp.where(norm > 0, norm, 1.0), 0.0)
  weights = 1.0 / k + lam * w
  # Propagate non-finite Gramians (the guards above would otherwise hide them).
  weights = weights + 0.0 * jnp.sum(gramian)
  return weights / (1.0 + c * c) if rescale else weights


def cagrad(c: float = 0.4, *, rescale: bool = True, num_iters: int = 10,
           qp_iters: int = 30) -> optax.GradientTransformationExtraArgs:
  """CAGrad as a gradient-space transform.

  .. math::  \\max_d \\min_k ⟨g_k, d⟩ \\ \\text{s.t.}\\ \\|d - g_0\\| ≤ c\\|g_0\\|
             \\;\\Rightarrow\\; d = g_0 + \\frac{c\\|g_0\\|}{\\|g_w\\|} g_w,\\quad
             w = \\arg\\min_{w∈Δ} g_wᵀ g_0 + c\\|g_0\\|\\|g_w\\|

  (Liu et al., "Conflict-Averse Gradient Descent for Multi-task Learning",
  NeurIPS 2021). A Gramian weighting: ``d`` is a combination of the rows plus
  their mean (:func:`cagrad_weights`).

  Args:
    c: radius of the ball around the mean gradient, in units of ``‖g_0‖``
      (paper: 0.4 on the toy and NYUv2, 0.2 on CityScapes). ``c = 0`` gives the
      mean gradient.
    rescale: divide by ``1 + c²`` as the authors' code does (``rescale=1``).
    num_iters, qp_iters: alternations and FISTA steps of the inner solver
      (see :func:`cagrad_weights`).

  Properties: linear under scaling; permutation-invariant; K=1 gives ``g_1``
  (``(1+c)/(1+c²) g_1`` with ``rescale``, as the code); converges to a stationary
  point of the mean loss for ``c < 1`` (Thm. 3.2); not non-conflicting in
  general (``min_k ⟨g_k, d⟩`` is maximised inside the ball, it may stay
  negative); finite for zero or duplicated rows; non-finite rows propagate.

  Raises:
    ValueError: ``c < 0``.

  Cost: the Gramian (``K² P``), ``num_iters`` simplex QPs on ``K×K``, the
  combination ``K P``; no extra backward pass.
  """
  validation.check_number(c, "c", low=0, method="cagrad")
  validation.check_number(num_iters, "num_iters", low=1, integer=True, method="cagrad")
  validation.check_number(qp_iters, "qp_iters", low=1, integer=True, method="cagrad")
  if not c >= 0:
    raise ValueError(f"c={c!r}; expected a number >= 0.")
  def weighting(gramian):
    return cagrad_weights(gramian, c, rescale=rescale, num_iters=num_iters,
                          qp_iters=qp_iters)

  return gramian_weighting(weighting, name="cagrad")
