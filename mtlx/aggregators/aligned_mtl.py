"""Aligned-MTL (Senushkin et al., CVPR 2023)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

import numpy as np

from mtlx import validation
from mtlx.aggregators.gramian_weighting import gramian_weighting


def aligned_mtl_weights(gramian: jax.Array, pref_vector: jax.Array | None = None) -> jax.Array:
  """Aligned-MTL weights of the Gramian.

  Eigen-decomposition ``G = V Λ Vᵀ`` restricted to the rank ``R`` (eigenvalues
  above ``λ_max K ε``); the balance transformation
  ``B = √λ_R V_R Λ_R^{-1/2} V_Rᵀ`` (``λ_R`` the smallest kept eigenvalue) makes
  the combined Jacobian ``Bᵀ J = √λ_R Q_Rᵀ`` orthogonal with equal singular values
  ``√λ_R``. The weights are ``w = B p`` with the pre-defined task weights
  ``p`` (``pref_vector``; default ``1``: the authors' code sums the aligned
  gradients, TorchJD's ``AlignedMTL`` averages them, i.e. its default weights
  are ``1/K`` times these; ``pref_vector=jnp.full(K, 1/K)`` matches it). An
  all-zero Gramian gives zero weights.
  """
  k = gramian.shape[-1]
  lam, vec = jnp.linalg.eigh(gramian)
  tol = lam[-1] * k * jnp.finfo(gramian.dtype).eps
  keep = lam > jnp.maximum(tol, 0.0)
  lam_min = jnp.min(jnp.where(keep, lam, jnp.inf))
  lam_min = jnp.where(jnp.isfinite(lam_min), lam_min, 0.0)
  scale = jnp.where(keep, jnp.sqrt(lam_min) / jnp.sqrt(jnp.where(keep, lam, 1.0)), 0.0)
  b = (vec * scale[None, :]) @ vec.T
  # Non-finite Gramians propagate (eigh may return finite garbage for them).
  weights = jnp.sum(b, axis=1) if pref_vector is None else b @ jnp.asarray(pref_vector, b.dtype)
  return weights + 0.0 * jnp.sum(gramian)


def aligned_mtl(pref_vector=None) -> optax.GradientTransformationExtraArgs:
  """Aligned-MTL as a gradient-space transform.

  .. math::  G = VΛVᵀ,\\quad B = \\sqrt{λ_{min}}\\, V Λ^{-1/2} Vᵀ,\\quad
             d = \\sum_k (B\\mathbf 1)_k\\, g_k

  (Senushkin et al., "Independent Component Alignment for Multi-Task Learning",
  CVPR 2023): the task gradients are replaced by an orthogonal system with equal
  norms (the condition number of the aligned system is 1), scaled by the
  smallest singular value, then combined with the pre-defined task weights
  ``p`` (the paper's abstract: "pre-defined task-specific weights"; default
  ``p = 1``, a sum). Eigenvalues below ``λ_max K ε`` are treated as zero
  (rank-deficient Jacobians). No state.

  Args:
    pref_vector: ``[K]`` task weights ``p`` (finite), or ``None`` for ``p = 1``
      (the authors' sum; TorchJD's default is ``p = 1/K``, so its updates are K
      times smaller).

  Raises:
    ValueError: ``pref_vector`` not a finite 1-D vector; an update whose K
      differs from its length.

  Properties: linear under scaling; permutation-invariant (with ``p`` permuted
  alike; for the default ``p = 1`` exactly); K=1 gives ``p_1 g_1``;
  finite for zero, duplicated or all-zero rows; non-finite rows propagate. Not
  non-conflicting in general.

  Cost: the Gramian (``K² P``), one ``K×K`` symmetric eigendecomposition
  (``O(K³)``), the combination ``K P``; no extra backward pass.
  """
  if pref_vector is None:
    return gramian_weighting(aligned_mtl_weights, name="aligned_mtl", scale_invariant=True)
  p = np.asarray(pref_vector, dtype=np.float64)
  if p.ndim != 1 or p.size == 0 or not np.all(np.isfinite(p)):
    raise ValueError(f"aligned_mtl: pref_vector={pref_vector!r}; expected a non-empty 1-D "
                     "vector of finite task weights (one per task) or None.")

  def weighting(gramian):
    validation.check_vector(p, gramian.shape[-1], "aligned_mtl pref_vector")
    return aligned_mtl_weights(gramian, p.astype(np.promote_types(gramian.dtype, np.float32)))

  return gramian_weighting(weighting, name="aligned_mtl", scale_invariant=True)
