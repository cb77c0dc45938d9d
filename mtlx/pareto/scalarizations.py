"""Preference-conditioned scalarizations as loss-space transforms.

Each scalarization ``s(L; r)`` of the loss vector ``L ∈ R^K`` under a
preference ``r`` is a weighting of the task losses: its gradient is
``Σ_k w_k ∇L_k`` with ``w = ∂s/∂L`` evaluated at the current losses (a
constant of the backward pass). Each method is therefore a pure function
``weights(task_losses, preference, **hyperparameters) -> w[K]`` (public, so
a front-learning loop can call it with a different ``r`` every step) wrapped
once by :func:`mtlx.loss_space_weighting`, which gives the stacked path
(``g_k -> w_k g_k``, then any aggregator) and the one-backward path
(:func:`mtlx.loss_weights`) for free.

All five are stateless. Put ``mtlx.linear_scalarization()`` (or any
gradient-space method) after one to combine the re-weighted rows.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mtlx import validation
from mtlx.loss_weighting.base import compute_dtype
from mtlx.loss_weighting.base import loss_space_weighting
from mtlx.pareto.preference import check_preference


def _prepare(task_losses, preference, ideal):
  dtype = compute_dtype(jnp.asarray(task_losses))
  losses = jnp.asarray(task_losses).astype(dtype)
  r = jnp.asarray(preference, dtype)
  z = jnp.zeros_like(losses) if ideal is None else jnp.asarray(ideal, dtype)
  return losses, r, z


def _stateless(weights_of, preference, k, name):
  def weight_fn(state, task_losses):
    return weights_of(task_losses), state
  return loss_space_weighting(weight_fn, num_tasks=k, name=name)


def _check_ideal(ideal, k, method):
  if ideal is None:
    return None
  z = np.asarray(ideal, np.float64)
  if z.shape != (k,) or not np.all(np.isfinite(z)):
    raise ValueError(f"{method}: ideal has shape {z.shape} (values {z.tolist()}); "
                     f"expected {k} finite numbers (an ideal point below the losses).")
  return z


# ---------------------------------------------------------------------------
# Linear scalarization.
# ---------------------------------------------------------------------------

def linear_weights(task_losses: jax.Array, preference: jax.Array) -> jax.Array:
  """``w = r``: the gradient of ``s(L; r) = rᵀL``."""
  losses, r, _ = _prepare(task_losses, preference, None)
  return r + jnp.zeros_like(losses)


def linear(preference) -> optax.GradientTransformationExtraArgs:
  """Linear scalarization ``s(L; r) = Σ_k r_k L_k`` (weighted sum).

  Finds only the convex part of a front: on a concave stretch every ``r``
  leads to one of its ends (Das & Dennis 1997).

  Args:
    preference: ``r`` (K non-negative numbers; normalised to sum 1).

  Cost: O(K); one backward pass on the one-backward path.
  """
  r = check_preference(preference, "linear")
  return _stateless(lambda l: linear_weights(l, r), r, r.shape[0], "linear")


# ---------------------------------------------------------------------------
# Tchebycheff.
# ---------------------------------------------------------------------------

def tchebycheff_weights(task_losses: jax.Array, preference: jax.Array,
                        ideal: jax.Array | None = None) -> jax.Array:
  """A (sub)gradient of ``max_k r_k (L_k - z_k)``: ``w = r_j e_j`` at the arg-max ``j``
  (the first one on ties)."""
  losses, r, z = _prepare(task_losses, preference, ideal)
  j = jnp.argmax(r * (losses - z))
  return r * jax.nn.one_hot(j, losses.shape[0], dtype=losses.dtype)


def tchebycheff(preference, *, ideal=None) -> optax.GradientTransformationExtraArgs:
  """Weighted Tchebycheff scalarization ``s(L; r) = max_k r_k (L_k - z_k)``.

  Every Pareto-optimal point (also on concave stretches) is the minimiser for
  some ``r``; for a front point ``L*`` with ``L* > z`` the minimiser of the
  preference ``r_k ∝ 1/(L*_k - z_k)`` is ``L*`` (Miettinen 1999, Thm 3.4.5).
  The max is not smooth: gradient descent on it zig-zags around the ray
  ``r_k (L_k - z_k) = const``; use a decaying step size or
  :func:`smooth_tchebycheff`.

  Args:
    preference: ``r`` (normalised to sum 1).
    ideal: the ideal point ``z`` (default 0: losses are non-negative).

  Cost: O(K).
  """
  r = check_preference(preference, "tchebycheff")
  z = _check_ideal(ideal, r.shape[0], "tchebycheff")
  return _stateless(lambda l: tchebycheff_weights(l, r, z), r, r.shape[0], "tchebycheff")


# ---------------------------------------------------------------------------
# Smooth Tchebycheff.
# ---------------------------------------------------------------------------

def smooth_tchebycheff_weights(task_losses: jax.Array, preference: jax.Array,
                               ideal: jax.Array | None = None, mu: float = 0.1) -> jax.Array:
  """``w = r ⊙ softmax(r ⊙ (L - z) / μ)``: the gradient of
  ``μ log Σ_k exp(r_k (L_k - z_k)/μ)``."""
  losses, r, z = _prepare(task_losses, preference, ideal)
  return r * jax.nn.softmax(r * (losses - z) / mu)


def smooth_tchebycheff(preference, *, mu: float = 0.1,
                       ideal=None) -> optax.GradientTransformationExtraArgs:
  """Smooth Tchebycheff scalarization (Lin et al., ICML 2024) of the raw losses.

  .. math::  s_μ(L; r) = μ \\log \\sum_k \\exp\\big(r_k (L_k - z_k)/μ\\big),\\qquad
             \\max_k r_k(L_k - z_k) ≤ s_μ ≤ \\max_k r_k(L_k - z_k) + μ \\log K

  A smooth upper bound of :func:`tchebycheff`, to which its minimisers converge
  as ``μ → 0``. (The deep-MTL variant of the paper, on log losses relative to a
  nadir point without a preference, is ``mtlx.stch``.)

  Args:
    preference: ``r`` (normalised to sum 1).
    mu: ``μ > 0`` the smoothing (in units of ``r_k L_k``; the paper's synthetic
      problems use small values, 0.1 here by default).
    ideal: the ideal point ``z`` (default 0).

  Cost: O(K).
  """
  r = check_preference(preference, "smooth_tchebycheff")
  validation.check_number(mu, "mu", low=0.0, low_open=True, method="smooth_tchebycheff")
  z = _check_ideal(ideal, r.shape[0], "smooth_tchebycheff")
  return _stateless(lambda l: smooth_tchebycheff_weights(l, r, z, mu), r, r.shape[0],
                    "smooth_tchebycheff")


# ---------------------------------------------------------------------------
# Penalty-based boundary intersection.
# ---------------------------------------------------------------------------

def pbi_weights(task_losses: jax.Array, preference: jax.Array,
                ideal: jax.Array | None = None, theta: float = 5.0) -> jax.Array:
  """The gradient of ``d₁ + θ d₂`` (see :func:`pbi`):
  ``w = r̂ + θ (v / ‖v‖)`` with ``v = (L - z) - d₁ r̂`` (``v/‖v‖ := 0`` on the ray)."""
  losses, r, z = _prepare(task_losses, preference, ideal)
  u = r / jnp.linalg.norm(r)
  diff = losses - z
  v = diff - jnp.dot(diff, u) * u
  norm = jnp.linalg.norm(v)
  tiny = jnp.finfo(losses.dtype).tiny
  safe = jnp.where(norm > tiny, norm, 1.0)
  return u + theta * jnp.where(norm > tiny, v / safe, 0.0)


def pbi(preference, *, theta: float = 5.0, ideal=None) -> optax.GradientTransformationExtraArgs:
  """Penalty-based boundary intersection (MOEA/D, Zhang & Li 2007).

  With ``r̂ = r/‖r‖``:

  .. math::  d_1 = (L - z)^T r̂,\\quad d_2 = \\|(L - z) - d_1 r̂\\|,\\quad
             s(L; r) = d_1 + θ d_2

  ``d₁`` moves along the ray ``z + t r`` (PBI reads ``r`` as a direction in loss
  space), ``θ d₂`` pulls the losses onto it. Weights can be negative (a task
  whose loss is below the ray is pushed up).

  Args:
    preference: ``r`` (normalised to sum 1; only its direction matters).
    theta: ``θ ≥ 0``, the penalty (MOEA/D's default 5).
    ideal: the ideal point ``z`` (default 0).

  Cost: O(K).
  """
  r = check_preference(preference, "pbi")
  validation.check_number(theta, "theta", low=0.0, method="pbi")
  z = _check_ideal(ideal, r.shape[0], "pbi")
  return _stateless(lambda l: pbi_weights(l, r, z, theta), r, r.shape[0], "pbi")


# ---------------------------------------------------------------------------
# COSMOS's cosine penalty.
# ---------------------------------------------------------------------------

def cosine_penalty_weights(task_losses: jax.Array, preference: jax.Array,
                           penalty: float = 1.0) -> jax.Array:
  """The gradient of ``rᵀL - λ cos(r, L)``:
  ``w = r - λ (r / (‖r‖‖L‖) - (rᵀL) L / (‖r‖‖L‖³))``."""
  losses, r, _ = _prepare(task_losses, preference, None)
  nr, nl = jnp.linalg.norm(r), jnp.linalg.norm(losses)
  dcos = r / (nr * nl) - jnp.dot(r, losses) * losses / (nr * nl ** 3)
  return r - penalty * dcos


def cosine_penalty(preference, *, penalty: float = 1.0) -> optax.GradientTransformationExtraArgs:
  """COSMOS's scalarization: linear plus a cosine-similarity penalty
  (Ruchte & Grabocka, "Scalable Pareto Front Approximation for Deep Multi-Objective
  Learning", ICDM 2021).

  .. math::  s(L; r) = r^T L - λ \\frac{r^T L}{\\|r\\|\\,\\|L\\|}

  The cosine term pulls the loss vector towards the direction ``r`` (so, unlike
  linear scalarization, different ``r`` give different points on a concave
  front). Losses must be non-zero (``‖L‖ > 0``).

  Args:
    preference: ``r`` (normalised to sum 1; COSMOS draws it from
      ``Dirichlet(1.2)`` per batch, see :mod:`mtlx.pareto.cosmos`).
    penalty: ``λ ≥ 0`` (the paper tunes it per data set; the PaLoRA authors'
      MultiMNIST config uses 8; 1 here by default).

  Cost: O(K).
  """
  r = check_preference(preference, "cosine_penalty")
  validation.check_number(penalty, "penalty", low=0.0, method="cosine_penalty")
  return _stateless(lambda l: cosine_penalty_weights(l, r, penalty), r, r.shape[0],
                    "cosine_penalty")
