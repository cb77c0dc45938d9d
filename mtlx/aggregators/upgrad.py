"""UPGrad: unconflicting projection of gradients (Quinton & Rey, 2024)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from mtlx import validation
from mtlx import solvers
from mtlx import validation
from mtlx.aggregators.gramian_weighting import gramian_weighting


def project_weights(gramian: jax.Array, u: jax.Array, *, max_iters: int | None = None,
                    reg_eps: float = 0.0) -> jax.Array:
  """Weights of the projection of ``uᵀJ`` onto the dual cone ``{x : J x ≥ 0}``.

  By duality (Quinton & Rey, Prop. 4; TorchJD's ``project_weights``) the
  projection is ``vᵀJ`` with ``v = argmin_{v ≥ u} vᵀ G v``, solved as the
  non-negative QP ``min_{x ≥ 0} ½ xᵀGx + (Gu)ᵀx`` in ``x = v - u`` by
  :func:`mtlx.solvers.nonneg_qp`.
  ``u``: ``[K]`` or a batch ``[M, K]``: all M QPs share ``G`` and are solved
  together (one batched active-set loop).

  ``reg_eps``: solve on ``G/tr(G) + reg_eps I`` instead of ``G`` (TorchJD and
  LibMTL use ``1e-4``; 0 keeps the exact projection). ``max_iters`` caps the
  active-set face solves (default ``K + 8``, see :func:`mtlx.solvers.nonneg_qp`).
  """
  if reg_eps:
    tr = jnp.trace(gramian)
    gramian = gramian / jnp.where(tr > 0, tr, jnp.ones_like(tr)) + reg_eps * jnp.eye(
        gramian.shape[-1], dtype=gramian.dtype)
  u = jnp.asarray(u, gramian.dtype)
  return u + solvers.nonneg_qp(gramian, u @ gramian, num_refine=max_iters)


def upgrad_weights(gramian: jax.Array, *, pref_vector: Any = None,
                   max_iters: int | None = None, reg_eps: float = 0.0) -> jax.Array:
  """UPGrad weights: ``w = Σ_i p_i v_i``, ``v_i = argmin_{v ≥ e_i} vᵀ G v``
  (``p`` the preference vector, default ``1/K``; the projection is positively
  homogeneous, so ``p_i v_i`` is the projection of ``p_i g_i``)."""
  k = gramian.shape[-1]
  p = (jnp.full((k,), 1.0 / k, gramian.dtype) if pref_vector is None
       else jnp.asarray(pref_vector, gramian.dtype))
  v = project_weights(gramian, jnp.eye(k, dtype=gramian.dtype), max_iters=max_iters,
                      reg_eps=reg_eps)
  return p @ v


def upgrad(*, pref_vector: Any = None, reg_eps: float = 0.0,
           num_iters: int | None = None) -> optax.GradientTransformationExtraArgs:
  """UPGrad as a gradient-space transform.

  .. math::  d = \\sum_{i=1}^K p_i\\, π_{J}(g_i),\\qquad
             π_J(g) = \\arg\\min_{x:\\, Jx ≥ 0} \\|x - g\\|

  each task gradient is projected onto the dual cone of the rows (the
  directions that conflict with no task) and the projections are combined with
  the preference vector ``p`` (Quinton & Rey, "Jacobian Descent for
  Multi-Objective Optimization", 2024; TorchJD's ``UPGrad``). Each projection is
  a non-negative QP on the Gramian; the K of them share ``G`` and are solved
  together, exactly, by one batched active-set loop
  (:func:`project_weights`, :func:`mtlx.solvers.nonneg_qp`).

  Args:
    pref_vector: ``[K]`` non-negative weights of the projected gradients
      (TorchJD's ``pref_vector``); ``None`` (default) is the mean ``1/K``.
    reg_eps: ridge added to the trace-normalised Gramian ``G/tr(G)`` before
      solving. TorchJD (``reg_eps=1e-4``) and LibMTL add one; mtlx's default 0
      solves the exact projection (the active-set solver handles singular
      Gramians), so its updates are exactly non-conflicting. Use ``1e-4`` to
      reproduce TorchJD's numbers.
    num_iters: cap on the active-set face solves of the batched QP (default
      ``None``: ``K + 8``; a few are used in practice).

  Properties (Quinton & Rey, Prop. 1-3): non-conflicting (``J d ≥ 0``); linear
  under scaling; permutation-invariant (with the default preference); weighted
  (``d = wᵀJ``); K=1 gives ``g_1``; ``d = mean`` when no pair conflicts; finite
  for zero or duplicated rows; non-finite rows propagate. Scale-invariant
  weights: the transform reads the Gramian of the rows divided by their largest
  entry (:func:`mtlx.jacobian.normalized_gramian`), so it holds over the whole
  float32 range.

  Raises:
    ValueError: negative ``reg_eps``, a ``num_iters`` below 1, or a
      ``pref_vector`` that is not a non-negative ``[K]`` vector.

  Cost: the Gramian (``K² P``), K QPs of size K solved together (each
  active-set iteration one batched Cholesky of ``K`` matrices ``K×K`` for
  ``K ≤ 96``, conjugate gradients above), the combination ``K P``; no extra
  backward pass.
  """
  validation.check_number(reg_eps, "reg_eps", low=0.0, method="upgrad")
  if num_iters is not None:
    validation.check_number(num_iters, "num_iters", low=1, integer=True, method="upgrad")
  if pref_vector is not None:
    p = jnp.asarray(pref_vector)
    if p.ndim != 1 or not bool(jnp.all(p >= 0)):
      raise ValueError(f"upgrad: pref_vector={pref_vector!r} is not valid; expected a "
                       "1-D vector of K non-negative numbers.")

  def weighting(gramian):
    if pref_vector is not None:
      validation.check_vector(pref_vector, gramian.shape[-1], "pref_vector")
    return upgrad_weights(gramian, pref_vector=pref_vector, max_iters=num_iters,
                          reg_eps=reg_eps)

  return gramian_weighting(weighting, name="upgrad", scale_invariant=True)
