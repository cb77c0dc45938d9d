"""IMTL-G: impartial multi-task learning, gradient part (Liu et al., ICLR 2021)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from mtlx import jacobian
from mtlx.aggregators.gramian_weighting import gramian_weighting


def _pinv_psd(mat: jax.Array, rtol: float) -> tuple[jax.Array, jax.Array]:
  """``(M⁺, λ_max)`` of a symmetric PSD ``M`` by ``eigh``, eigenvalues at or below
  ``rtol λ_max`` treated as zero."""
  lam, vec = jnp.linalg.eigh(mat)
  lam_max = jnp.maximum(lam[-1], 0.0)
  keep = lam > rtol * lam_max
  inv = jnp.where(keep, 1.0 / jnp.where(keep, lam, 1.0), 0.0)
  return (vec * inv[None, :]) @ vec.T, lam_max


def imtl_g_weights(gramian: jax.Array) -> jax.Array:
  """IMTL-G weights of the Gramian, in the pseudo-inverse form.

  The update ``d = Jᵀw`` has equal projections ``⟨d, u_k⟩ = ⟨d, g_k⟩/‖g_k‖`` on
  every unit task gradient and ``Σ w = 1``: ``G w = c n`` with ``n_k = ‖g_k‖``,
  so ``w = v/Σ_k v_k`` with ``v = G⁺ n`` (the minimum-norm solution, which equals
  the paper's ``w_{2..K} = g_1 Uᵀ (D Uᵀ)⁻¹`` when the rows are linearly
  independent, and is its permutation-invariant generalisation otherwise — the
  form of Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization",
  2024, and of TorchJD's ``IMTLG``). Example: ``J = [[1, 0], [2, 0]]`` gives
  ``w = (1/3, 2/3)``, ``d = (5/3, 0)`` in either row order.

  Numerics: ``G`` is divided by its largest diagonal entry (the weights are
  scale-free), eigenvalues at or below ``32 K ε λ_max`` are dropped from the
  pseudo-inverse (rounding noise of a rank-deficient Gramian), and the weights
  are zero when ``|Σ v| ≤ √ε (‖v‖₁ + ‖n‖₁/λ_max)`` — ``n`` has no component in the
  range of ``G`` that a direction could meet equally (e.g. ``[g, -g]``). TorchJD
  uses ``|Σ v| < 1e-12`` on the raw Gramian, which is not scale-invariant. A zero
  gradient has ``n_k = 0``.
  """
  k = gramian.shape[-1]
  dtype = jnp.promote_types(gramian.dtype, jnp.float32)
  eps = jnp.finfo(dtype).eps
  g = gramian.astype(dtype)
  diag = jnp.maximum(jnp.diag(g), 0.0)
  scale = jnp.max(diag)
  g = g / jnp.where(scale > 0, scale, jnp.ones_like(scale))
  n = jacobian.task_norms(g)
  pinv, lam_max = _pinv_psd(g, 32 * k * eps)
  v = pinv @ n
  total = jnp.sum(v)
  floor = jnp.sqrt(eps) * (jnp.sum(jnp.abs(v))
                           + jnp.sum(n) / jnp.where(lam_max > 0, lam_max, jnp.ones_like(lam_max)))
  ok = jnp.abs(total) > floor
  weights = jnp.where(ok, v / jnp.where(ok, total, jnp.ones_like(total)), 0.0)
  # Non-finite Gramians propagate (eigh may return finite garbage for them).
  return weights + 0.0 * jnp.sum(gramian)


def imtl_g() -> optax.GradientTransformationExtraArgs:
  """IMTL-G as a gradient-space transform.

  Finds weights ``w`` with ``Σ w = 1`` such that ``d = Σ_k w_k g_k`` has equal
  projections on every unit task gradient: ``⟨d, u_1⟩ = … = ⟨d, u_K⟩``
  (Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021, §3.2).
  Closed form ``w ∝ G⁺ n`` (``n_k = ‖g_k‖``): see :func:`imtl_g_weights`. For
  linearly independent rows this is the paper's formula; for dependent rows it
  is the permutation-invariant minimum-norm generalisation (as TorchJD's
  ``IMTLG``), non-zero unless the norms ``n`` have no part in the range of ``G``.
  No hyperparameters, no state.

  Properties: linear under scaling and permutation-invariant (for
  rank-deficient ``J`` up to the rank decision of the pseudo-inverse, which
  rounding can flip for nearly dependent rows); K=1 gives ``g_1``; finite for
  zero or duplicated rows; non-finite rows propagate. Not non-conflicting in
  general: the common projection ``⟨d, u_k⟩ = 1/Σv`` can be negative when the
  gradients conflict strongly.

  Cost: the Gramian (``K² P``), one ``K×K`` symmetric eigendecomposition
  (``O(K³)``), the combination ``K P``; no extra backward pass.
  """
  return gramian_weighting(imtl_g_weights, name="imtl_g", scale_invariant=True)
