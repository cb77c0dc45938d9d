"""UPGrad: unconflicting projection of gradients (Quinton & Rey, 2024)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from mtlx import validation
from mtlx import solvers
from mtlx.aggregators.gramian_weighting import gramian_weighting


def project_weights(gramian: jax.Array, u: jax.Array, *,
                    num_iters: int = solvers.QP_ITERS) -> jax.Array:
  """Weights of the projection of ``uᵀJ`` onto the dual cone ``{x : J x ≥ 0}``.

  By duality (Quinton & Rey, Prop. 4; TorchJD's ``project_weights``) the
  projection is ``vᵀJ`` with ``v = argmin_{v ≥ u} vᵀ G v``, solved as the
  non-negative QP ``min_{x ≥ 0} ½ xᵀGx + (Gu)ᵀx`` in ``x = v - u`` by
  :func:`mtlx.solvers.nonneg_qp`.
  ``u``: ``[K]`` or a batch ``[M, K]`` (one QP per row, one eigenvalue problem).
  """
  s = solvers._trace_scale(gramian)  # pylint: disable=protected-access
  lip = solvers._lipschitz(gramian / s)  # pylint: disable=protected-access
  solve = lambda uu: uu + solvers.nonneg_qp(gramian, gramian @ uu, num_iters=num_iters,
                                            lipschitz=lip)
  return solve(u) if u.ndim == 1 else jax.vmap(solve)(u)


def upgrad_weights(gramian: jax.Array, *, num_iters: int = solvers.QP_ITERS) -> jax.Array:
  """UPGrad weights: ``w = (1/K) Σ_i v_i``, ``v_i = argmin_{v ≥ e_i} vᵀ G v``."""
  k = gramian.shape[-1]
  return jnp.mean(project_weights(gramian, jnp.eye(k, dtype=gramian.dtype),
                                  num_iters=num_iters), axis=0)


def upgrad(*, num_iters: int = solvers.QP_ITERS) -> optax.GradientTransformationExtraArgs:
  """UPGrad as a gradient-space transform.

  .. math::  d = \\frac1K \\sum_{i=1}^K π_{J}(g_i),\\qquad
             π_J(g) = \\arg\\min_{x:\\, Jx ≥ 0} \\|x - g\\|

  each task gradient is projected onto the dual cone of the rows (the
  directions that conflict with no task) and the projections are averaged
  (Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", 2024;
  TorchJD's ``UPGrad`` with the default mean preference). Each projection is a
  non-negative QP on the Gramian (:func:`project_weights`); TorchJD also adds
  ``1e-4 I`` to the normalised Gramian, which mtlx does not (the active-set
  refinement handles singular Gramians).

  Args:
    num_iters: FISTA iterations of each QP (see :func:`mtlx.solvers.nonneg_qp`).

  Properties (Quinton & Rey, Prop. 1-3): non-conflicting (``J d ≥ 0``); linear
  under scaling; permutation-invariant; weighted (``d = wᵀJ``); K=1 gives ``g_1``;
  ``d = mean`` when no pair conflicts; finite for zero or duplicated rows;
  non-finite rows propagate.

  Cost: the Gramian (``K² P``), one ``K×K`` eigenvalue problem and K QPs of size
  K (``num_iters`` × ``K²`` each, batched), the combination ``K P``; no extra
  backward pass.
  """
  validation.check_number(num_iters, "num_iters", low=1, integer=True, method="upgrad")
  return gramian_weighting(lambda gramian: upgrad_weights(gramian, num_iters=num_iters),
                           name="upgrad")
