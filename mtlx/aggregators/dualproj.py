"""DualProj: projection of the mean gradient onto the dual cone (Quinton & Rey, 2024)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from mtlx import validation
from mtlx import solvers
from mtlx.aggregators.gramian_weighting import gramian_weighting
from mtlx.aggregators.upgrad import project_weights


def dualproj_weights(gramian: jax.Array, *, max_iters: int | None = None,
                     reg_eps: float = 0.0) -> jax.Array:
  """DualProj weights: ``w = argmin_{v ≥ 1/K} vᵀ G v``."""
  k = gramian.shape[-1]
  return project_weights(gramian, jnp.full((k,), 1.0 / k, gramian.dtype),
                         max_iters=max_iters, reg_eps=reg_eps)


def dualproj(*, reg_eps: float = 0.0,
             num_iters: int | None = None) -> optax.GradientTransformationExtraArgs:
  """DualProj as a gradient-space transform.

  .. math::  d = \\arg\\min_{x:\\, Jx ≥ 0} \\Big\\|x - \\frac1K\\sum_k g_k\\Big\\|

  the mean gradient projected onto the dual cone of the rows (Quinton & Rey,
  "Jacobian Descent for Multi-Objective Optimization", 2024; TorchJD's
  ``DualProj``; the idea of A-GEM / Lopez-Paz & Ranzato 2017 for K constraints).
  One non-negative QP on the Gramian, solved exactly by the active-set solver
  :func:`mtlx.solvers.nonneg_qp`.

  Args:
    reg_eps: ridge on the trace-normalised Gramian (TorchJD: ``1e-4``; mtlx's
      default 0 solves the exact projection).
    num_iters: cap on the active-set face solves (default ``K + 8``).

  Properties: non-conflicting; linear under scaling; permutation-invariant;
  K=1 gives ``g_1``; equals the mean when no task conflicts with it; finite for
  zero or duplicated rows; non-finite rows propagate; scale-invariant weights
  (read from :func:`mtlx.jacobian.normalized_gramian`).

  Cost: the Gramian (``K² P``), one QP (a few ``K×K`` Cholesky solves), the
  combination ``K P``; no extra backward pass.
  """
  validation.check_number(reg_eps, "reg_eps", low=0.0, method="dualproj")
  if num_iters is not None:
    validation.check_number(num_iters, "num_iters", low=1, integer=True, method="dualproj")
  return gramian_weighting(
      lambda gramian: dualproj_weights(gramian, max_iters=num_iters, reg_eps=reg_eps),
      name="dualproj", scale_invariant=True)
