"""Pareto MTL: multi-task learning as multi-objective optimisation with reference
vectors (Lin, Zhen, Li, Zhang & Kwong, NeurIPS 2019)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mtlx import solvers
from mtlx import validation
from mtlx.aggregators.gramian_weighting import gramian_weighting


class PMTLState(NamedTuple):
  """``count`` updates seen; ``feasible`` whether the initial phase has ended."""
  count: jax.Array
  feasible: jax.Array


def _constraints(task_losses, refs, index):
  """``W_j = u_j - u_i`` and the active set ``(u_j - u_i)ᵀ L/‖L‖ > 0``."""
  w = refs - refs[index][None, :]
  gx = w @ (task_losses / jnp.linalg.norm(task_losses))
  return w, gx > 0


def pmtl_init_weights(gramian, task_losses, reference_vectors, index, *,
                      num_iters: int = solvers.QP_ITERS) -> jax.Array:
  """Phase 1 (find a point of the sub-region): ``w = Σ_j β_j (u_j - u_i)`` with ``β``
  the min-norm point of the hull of the active constraints' gradients
  ``∇G_j = Σ_k (u_j - u_i)_k g_k``; ``w = 0`` when no constraint is active."""
  dtype = gramian.dtype
  refs = jnp.asarray(reference_vectors, dtype)
  losses = jnp.asarray(task_losses, dtype)
  w, active = _constraints(losses, refs, index)
  # An inactive row is replaced by a copy of the first active one: the convex
  # hull (so the min-norm point) does not change and shapes stay static.
  first = jnp.argmax(active)
  rows = jnp.where(active[:, None], w, w[first][None, :])
  beta = solvers.min_norm_simplex(rows @ gramian @ rows.T, num_iters=num_iters)
  return jnp.where(jnp.any(active), beta @ rows, jnp.zeros_like(losses))


def pmtl_weights(gramian, task_losses, reference_vectors, index, *,
                 num_iters: int = solvers.QP_ITERS) -> jax.Array:
  """Phase 2: the min-norm point of the hull of ``{g_k} ∪ {∇G_j : j active}``
  mapped back to task weights, ``w = λ + Σ_j β_j (u_j - u_i)``, then scaled so
  ``Σ_k |w_k| = K`` (the authors' normalisation)."""
  dtype = gramian.dtype
  k = gramian.shape[-1]
  refs = jnp.asarray(reference_vectors, dtype)
  losses = jnp.asarray(task_losses, dtype)
  w, active = _constraints(losses, refs, index)
  # Inactive constraints become copies of g_1 (hull unchanged, shapes static).
  e1 = jax.nn.one_hot(0, k, dtype=dtype)
  rows = jnp.concatenate([jnp.eye(k, dtype=dtype),
                          jnp.where(active[:, None], w, e1[None, :])])
  sol = solvers.min_norm_simplex(rows @ gramian @ rows.T, num_iters=num_iters)
  weights = sol @ rows
  return weights * k / jnp.sum(jnp.abs(weights))


def pmtl(reference_vectors, index: int, *, init_steps: int = 0,
         num_iters: int = solvers.QP_ITERS) -> optax.GradientTransformationExtraArgs:
  """Pareto MTL for sub-problem ``index`` of the reference vectors, as a
  gradient-space transform.

  The loss space is split by unit reference vectors ``u_1..u_M`` (for two tasks
  :func:`mtlx.pareto.circle_points`); sub-problem ``i`` minimises every loss
  under the constraints ``G_j(θ) = (u_j - u_i)ᵀ L(θ) ≤ 0`` (``j ≠ i``): ``L``
  stays in the cone closest in angle to ``u_i``. Reference vectors are read as
  directions in loss space.

  * Initial phase (at most ``init_steps`` updates, ended early at the first
    feasible point): descend on the active constraints only
    (:func:`pmtl_init_weights`; zero update once feasible).
  * Main phase: ``d = -(Σ_k λ_k g_k + Σ_{j active} β_j ∇G_j)`` with ``(λ, β)`` the
    min-norm point of their hull (Fliege & Svaiter's constrained MGDA), active
    meaning ``G_j ≥ 0`` (the authors' code tests ``(u_j - u_i)ᵀL/‖L‖ > 0``);
    weights normalised to ``Σ|w| = K`` (:func:`pmtl_weights`).

  Args:
    reference_vectors: ``[M, K]`` directions (normalised to unit length here).
    index: ``i``, which sub-problem (``0 ≤ i < M``).
    init_steps: updates of the initial phase (the authors run up to 2 epochs;
      0 skips it).
    num_iters: iterations of the min-norm solver (:func:`mtlx.solvers.simplex_qp`).

  Extra arguments of ``update``: ``task_losses`` (``[K]``; required).

  Reference: X. Lin, H.-L. Zhen, Z. Li, Q. Zhang, S. Kwong, "Pareto Multi-Task
  Learning", NeurIPS 2019 (and the authors' ``get_d_paretomtl``).

  Cost: the Gramian (``K² P``), one min-norm QP of size ``K + M`` (``M`` in the
  initial phase), the combination (``K P``); no extra backward pass.
  """
  refs = np.asarray(reference_vectors, np.float64)
  if refs.ndim != 2 or refs.shape[0] < 2 or not np.all(np.isfinite(refs)) or np.any(
      np.linalg.norm(refs, axis=1) == 0):
    raise ValueError(f"pmtl: reference_vectors has shape {refs.shape}; expected an "
                     "[M, K] array (M >= 2) of finite, non-zero directions.")
  refs = refs / np.linalg.norm(refs, axis=1, keepdims=True)
  m, k = refs.shape
  validation.check_number(index, "index", low=0, high=m - 1, integer=True, method="pmtl")
  validation.check_number(init_steps, "init_steps", low=0, integer=True, method="pmtl")

  def init(num_tasks):
    del num_tasks
    return PMTLState(jnp.zeros((), jnp.int32), jnp.asarray(init_steps == 0))

  def weighting(gramian, state, task_losses=None):
    validation.check_task_losses(task_losses, k, "pmtl")
    losses = jnp.asarray(task_losses, gramian.dtype)
    _, active = _constraints(losses, jnp.asarray(refs, gramian.dtype), index)
    feasible = state.feasible | ~jnp.any(active) | (state.count >= init_steps)
    w_init = pmtl_init_weights(gramian, losses, refs, index, num_iters=num_iters)
    w_main = pmtl_weights(gramian, losses, refs, index, num_iters=num_iters)
    weights = jnp.where(feasible, w_main, w_init)
    finite = jnp.all(jnp.isfinite(losses)) & jnp.all(jnp.isfinite(gramian))
    new = PMTLState(optax.safe_int32_increment(state.count), feasible)
    new = jax.tree_util.tree_map(lambda a, b: jnp.where(finite, a, b), new, state)
    return weights, new

  return gramian_weighting(weighting, init=init, num_tasks=k, name="pmtl",
                           extras=("task_losses",))
