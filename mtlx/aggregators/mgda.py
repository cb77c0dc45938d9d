"""MGDA: the min-norm point of the convex hull of the task gradients.

Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS
2018 (MGDA-UB), after Désidéri's multiple-gradient descent algorithm (2012).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from mtlx import jacobian
from mtlx import solvers
from mtlx import validation
from mtlx.aggregators.gramian_weighting import gramian_weighting

NORMALIZATIONS = ("none", "l2", "loss", "loss+")


def _normalizers(gramian, normalization, task_losses):
  """The per-task divisor ``n_k`` of MGDA-UB's gradient normalisation."""
  norms = jacobian.task_norms(gramian)
  if normalization == "none":
    return jnp.ones_like(norms)
  if normalization == "l2":
    return norms
  losses = jnp.asarray(task_losses, gramian.dtype)
  return losses if normalization == "loss" else losses * norms


def restricted_min_norm(gramian: jax.Array, task_mask: jax.Array | None = None,
                        **kwargs) -> jax.Array:
  """``argmin_{α ∈ Δ, α_k = 0 for absent k} αᵀ G α`` (the min-norm point of the
  present tasks' rows; every task present without ``task_mask``).

  Static shapes: the absent rows and columns of ``G`` are replaced by
  ``c · I`` (``c`` the present tasks' mean diagonal, 1 if none is present: an
  orthogonal phantom task). The QP then splits as ``s² V*(u) + c (1-s)² / n_a`` with
  ``α_present = s u``, so its present part renormalised to sum 1 is exactly the
  restricted optimum ``u``. No present task: all-zero weights. ``kwargs`` go to
  :func:`mtlx.solvers.min_norm_simplex`.
  """
  if task_mask is None:
    return solvers.min_norm_simplex(gramian, **kwargs)
  k = gramian.shape[-1]
  validation.check_vector(task_mask, k, "task_mask")
  m = jnp.asarray(task_mask).astype(bool)
  mf = m.astype(gramian.dtype)
  diag = jnp.diagonal(gramian)
  count = jnp.sum(mf)
  c = jnp.sum(jnp.where(m, diag, 0)) / jnp.maximum(count, 1)
  c = jnp.where(c > 0, c, jnp.ones_like(c))
  phantom = gramian * (mf[:, None] * mf[None, :]) + jnp.diag((1 - mf) * c)
  alpha = jnp.where(m, solvers.min_norm_simplex(phantom, **kwargs), 0)
  total = jnp.sum(alpha)
  return jnp.where(total > 0, alpha / jnp.where(total > 0, total, 1), 0)


def mgda_weights(gramian: jax.Array, *, normalization: str = "none",
                 task_losses: jax.Array | None = None,
                 max_iters: int | None = None,
                 task_mask: jax.Array | None = None) -> jax.Array:
  """MGDA weights of the Gramian: ``w = α / n`` with ``α = argmin_{α ∈ Δ} ‖Σ α_k g_k / n_k‖²``.

  ``n_k`` is the normalisation of MGDA-UB: ``'none'`` 1, ``'l2'`` ``‖g_k‖``,
  ``'loss'`` ``L_k``, ``'loss+'`` ``L_k ‖g_k‖`` (losses read from ``task_losses``,
  assumed positive). The min-norm point is found on ``N⁻¹ G N⁻¹`` by
  :func:`mtlx.solvers.min_norm_simplex`. A zero divisor (a zero gradient under
  ``'l2'``) is replaced by 1: the weight then multiplies a zero gradient.

  ``task_mask`` ([K] bool, optional): the tasks present in the step; the simplex is
  restricted to them (:func:`restricted_min_norm`) and absent tasks get weight 0.
  Without it an absent task's zero gradient is a vertex of the hull and the
  min-norm point is 0 (no step).
  """
  validation.check_choice(normalization, NORMALIZATIONS, "normalization")
  if normalization in ("loss", "loss+"):
    validation.check_task_losses(task_losses, gramian.shape[-1], "mgda")
  n = _normalizers(gramian, normalization, task_losses)
  n = jnp.where(n == 0, jnp.ones_like(n), n)
  alpha = restricted_min_norm(gramian / (n[:, None] * n[None, :]), task_mask,
                              num_refine=max_iters)
  return alpha / n


def mgda(normalization: str = "none", *,
         num_iters: int | None = None) -> optax.GradientTransformationExtraArgs:
  """MGDA as a gradient-space transform.

  .. math::  α^* = \\arg\\min_{α ∈ Δ_K} \\Big\\|\\sum_k α_k \\frac{g_k}{n_k}\\Big\\|^2,\\qquad
             d = \\sum_k α^*_k \\frac{g_k}{n_k}

  the min-norm element of the convex hull of the (normalised) task gradients: a
  common descent direction, zero exactly at Pareto-stationary points.

  Args:
    normalization: MGDA-UB's gradient normalisation (Sener & Koltun 2018, §3.2 and
      their code): ``'none'`` (default, the paper's algorithm), ``'l2'``
      (``g_k/‖g_k‖``), ``'loss'`` (``g_k/L_k``) or ``'loss+'`` (``g_k/(L_k‖g_k‖)``);
      the last two read the keyword extra argument ``task_losses``. As in LibMTL,
      the update combines the normalised gradients (the reference code re-used
      ``α`` on the raw losses instead, which loses the non-conflict guarantee).
    num_iters: cap on the active-set face solves of the simplex QP (default
      ``None``: ``K + 8``; see :func:`mtlx.solvers.simplex_qp`, exact at
      convergence, a few solves in practice).

  Properties: non-conflicting (``g_k·d ≥ ‖d‖² ≥ 0`` for every k); permutation-
  invariant; K=1 gives ``g_1`` (``'none'``/``'loss'``: ``g_1/L_1``); linear under
  scaling for ``'none'`` and ``'loss'`` (``'l2'``, ``'loss+'`` return unit-scale
  combinations); finite for zero or duplicated rows; non-finite rows propagate.
  Given the keyword extra ``task_mask`` ([K] bool; `mtlx.train.make_step` passes it
  when built with ``task_mask=``), the min-norm point is taken over the present
  tasks only (absent tasks: weight 0), so a step without some task still moves.
  With ``'none'`` and ``'loss'`` the weights are scale-invariant: the transform
  reads the Gramian of the rows divided by their largest entry
  (:func:`mtlx.jacobian.normalized_gramian`), so these hold over the whole
  float32 range.

  Raises:
    ValueError: unknown ``normalization`` (at construction), missing or
      wrong-shaped ``task_losses`` for the loss normalisations (at trace time).

  Cost: the Gramian (``K² P``), the QP (a few ``K×K`` Cholesky solves), the
  combination ``K P``.
  No extra backward pass.
  """
  validation.check_choice(normalization, NORMALIZATIONS, "normalization")
  if num_iters is not None:
    validation.check_number(num_iters, "num_iters", low=1, integer=True, method="mgda")

  def weighting(gramian, *, task_losses=None, task_mask=None):
    return mgda_weights(gramian, normalization=normalization, task_losses=task_losses,
                        max_iters=num_iters, task_mask=task_mask)

  reads_losses = normalization in ("loss", "loss+")
  return gramian_weighting(weighting, name="mgda",
                           extras=(("task_losses",) if reads_losses else ()) + ("task_mask",),
                           scale_invariant=normalization in ("none", "loss"))
