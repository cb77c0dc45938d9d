"""ConFIG: conflict-free inverse gradients (Liu et al., 2024)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from mtlx import jacobian
from mtlx.aggregators.gramian_weighting import gramian_weighting


def config_weights(gramian: jax.Array) -> jax.Array:
  """ConFIG weights of the Gramian.

  With ``N = diag(1/‖g_k‖)`` (0 for a zero row) the unit rows are ``A = N J``,
  ``M = N G N = A Aᵀ = V Λ Vᵀ`` and ``A⁺ 1 = Jᵀ c`` with ``c = N M⁺ 1``. The update
  is ``d = (Σ_k ⟨g_k, ĝ⟩) ĝ`` with ``ĝ = Jᵀc/‖Jᵀc‖``, so
  ``w = (1ᵀ G c)/(cᵀ G c) · c``. The pseudo-inverse drops eigenvalues of ``M``
  at or below ``32 K ε λ_max`` (rounding noise of the computed Gramian).

  Relative guard: when the projection of ``1`` on the range of ``M`` (the kept
  eigenvectors) is at rounding level, ``‖V_Rᵀ 1‖² ≤ ε K``, the unit rows cancel
  (e.g. parallel rows of opposite signs, ``[[1,3],[-2,-6],[3,9],[-7,-21]]``),
  the ConFIG direction ``A⁺1`` is 0 and so are the weights; dividing by its
  rounding-noise norm would return an arbitrary update (TorchJD returns ≈ 0
  through ``normalize``'s ``1e-12`` floor). An all-zero ``J`` gives zero weights.
  """
  norms = jacobian.task_norms(gramian)
  inv = jnp.where(norms > 0, 1.0 / jnp.where(norms > 0, norms, 1.0), 0.0)
  unit_gram = gramian * inv[:, None] * inv[None, :]
  k = gramian.shape[-1]
  eps = jnp.finfo(gramian.dtype).eps
  lam, vec = jnp.linalg.eigh(unit_gram)
  keep = lam > 32 * k * eps * jnp.maximum(lam[-1], 0.0)
  proj = jnp.where(keep, vec.T @ jnp.ones_like(inv), 0.0)      # V_Rᵀ 1
  c = inv * (vec @ jnp.where(keep, proj / jnp.where(keep, lam, 1.0), 0.0))
  sq = c @ gramian @ c
  length = jnp.sum(gramian @ c)
  ok = (jnp.sum(proj * proj) > eps * k) & (sq > 0)
  coef = jnp.where(ok, length / jnp.where(ok, sq, 1.0), 0.0)
  # Non-finite Gramians propagate (eigh may return finite garbage for them).
  return coef * c + 0.0 * jnp.sum(gramian)


def config() -> optax.GradientTransformationExtraArgs:
  """ConFIG as a gradient-space transform.

  .. math::  g_c = A^{+}\\mathbf 1,\\ A = [u_1; …; u_K],\\ u_k = g_k/\\|g_k\\|,\\qquad
             d = \\Big(\\sum_k g_kᵀ \\hat g_c\\Big) \\hat g_c,\\ \\hat g_c = g_c/\\|g_c\\|

  (Liu, Chu & Thuerey, "ConFIG: Towards Conflict-free Training of Physics
  Informed Neural Networks", 2024; TorchJD's ``ConFIG`` with the default sum
  preference): the direction has equal cosine with every task gradient, the
  length is the sum of the projections. A Gramian weighting
  (:func:`config_weights`). No hyperparameters, no state.

  Properties: non-conflicting when the non-zero unit gradients are linearly
  independent (and ≈ 0 when the unit rows cancel: see :func:`config_weights`) (then ``⟨u_k, g_c⟩ = 1``; duplicated rows keep it); not for
  rank-deficient ``J`` in general (``A A⁺ 1`` is then a projection of ``1``);
  linear under scaling and permutation-invariant (for rank-deficient ``J`` only
  up to the rank decision of the pseudo-inverse, which rounding can flip); K=1 gives ``g_1``; finite for zero
  or duplicated rows; non-finite rows propagate.

  Cost: the Gramian (``K² P``), one ``K×K`` eigendecomposition (``O(K³)``), the
  combination ``K P``. Forming ``(NGN)⁺`` squares the condition number compared
  with ``pinv(A)``: in float32 expect lower accuracy for nearly dependent rows.
  """
  return gramian_weighting(config_weights, name="config", scale_invariant=True)
