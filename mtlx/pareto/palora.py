"""PaLoRA: Pareto low-rank adapters (Dimitriadis, Frossard & Fleuret, ICLR 2025).

A shared model ``W`` plus one low-rank adapter per task on every matrix-shaped
parameter; the model at a preference ``r ∈ Δ_K`` is

.. math::  W(r) = W + \\frac{α}{ρ} \\sum_k r_k\\, U_k V_k,\\qquad U_k ∈ R^{m×ρ},\\ V_k ∈ R^{ρ×n},

so the front lies in the convex hull of the ``K`` adapted models; the shared
weights learn general features and the adapters task-specific ones. A leaf of
shape ``(..., n)`` with at least 2 dimensions is viewed as an ``m × n`` matrix
(``m`` the product of the leading dimensions); vectors (biases, norms) are
shared without adapters. Initialisation as the authors' code: the factor on the
input side (``U_k``, for a Flax ``(in, out)`` kernel) Kaiming-uniform, bound
``1/√m``, and ``V_k = 0``, so ``W(r) = W`` at step 0.
Both the shared weights and the adapters are trained (the authors' code does not
freeze ``W``; it also multiplies the adapters' learning rate by K, which can be
done with ``optax.multi_transform``).

Training uses a *deterministic* preference schedule (the authors'
``AnnealingSampler``): ``N`` evenly spaced preferences ``p_n`` (for two tasks
``(s, 1-s)``, ``s`` from ``ε`` to ``1-ε``) sharpened over training,

.. math::  r_n(t) = p_n^{\\,μ t} / \\textstyle\\sum_k p_{n,k}^{\\,μ t},\\qquad t = \\min(\\text{step}/T, 1),

from all-uniform at ``t = 0`` (shared weights first) to the spread grid at
``t = 1`` (``μ = 5``, ``ε = 0.01`` by default), with the loss
``mean_n r_nᵀ L(W(r_n))`` (``N`` forward/backward passes per step).

Cost: ``K ρ (m + n)`` extra parameters per adapted matrix; ``N`` passes a step.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mtlx import validation
from mtlx.pareto.front import linear_objective
from mtlx.pareto.preference import simplex_grid

PyTree = Any


class PaLoRAParams(NamedTuple):
  """``shared``: the model's params; ``u``/``v``: per-leaf adapters ``[K, m, ρ]`` and
  ``[K, ρ, n]`` (``None`` for leaves without an adapter)."""
  shared: PyTree
  u: PyTree
  v: PyTree


def palora_init(params: PyTree, key: jax.Array, num_tasks: int, rank: int = 1) -> PaLoRAParams:
  """Adds ``num_tasks`` rank-``rank`` adapters to every leaf with ``ndim >= 2``."""
  validation.require_num_tasks(num_tasks, "palora_init")
  validation.check_number(rank, "rank", low=1, integer=True, method="palora_init")
  leaves, treedef = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(key, max(len(leaves), 1))
  us, vs = [], []
  for leaf, k in zip(leaves, keys):
    if jnp.ndim(leaf) < 2:
      us.append(None)
      vs.append(None)
      continue
    n = leaf.shape[-1]
    m = int(np.prod(leaf.shape[:-1]))
    bound = 1.0 / np.sqrt(m)  # Kaiming-uniform (a=√5) with fan-in m
    us.append(jax.random.uniform(k, (num_tasks, m, rank), leaf.dtype, -bound, bound))
    vs.append(jnp.zeros((num_tasks, rank, n), leaf.dtype))
  return PaLoRAParams(params, jax.tree_util.tree_unflatten(treedef, us),
                      jax.tree_util.tree_unflatten(treedef, vs))


def palora_params(p: PaLoRAParams, preference: jax.Array, alpha: float = 1.0) -> PyTree:
  """The model at ``r``: ``W + (α/ρ) Σ_k r_k U_k V_k`` on every adapted leaf."""
  r = jnp.asarray(preference)
  leaves, treedef = jax.tree_util.tree_flatten(p.shared)
  us = treedef.flatten_up_to(p.u)
  vs = treedef.flatten_up_to(p.v)
  out = []
  for w, u, v in zip(leaves, us, vs):
    if u is None:
      out.append(w)
      continue
    scale = alpha / u.shape[-1]
    delta = jnp.einsum("k,kmr,krn->mn", r.astype(u.dtype), u, v) * scale
    out.append(w + delta.reshape(w.shape).astype(w.dtype))
  return jax.tree_util.tree_unflatten(treedef, out)


def palora_schedule(step: jax.Array, total_steps: int, num_tasks: int, num_points: int,
                    mul: float = 5.0, epsilon: float = 0.01) -> jax.Array:
  """The deterministic preferences ``r_n(t)`` at ``step`` (``[N, K]``; traceable ``step``).

  The grid: for ``K = 2``, ``(s, 1 - s)`` with ``s`` evenly from ``ε`` to ``1 - ε``;
  for ``K > 2``, :func:`mtlx.pareto.simplex_grid` mixed with ``ε`` of uniform
  (so no entry is 0).
  """
  if num_tasks == 2:
    s = np.linspace(epsilon, 1 - epsilon, num_points)
    grid = np.stack([s, 1 - s], axis=1)
  else:
    grid = simplex_grid(num_tasks, num_points)
    grid = (1 - num_tasks * epsilon) * grid + epsilon
  t = jnp.minimum(jnp.asarray(step, jnp.float32) / total_steps, 1.0)
  rays = jnp.asarray(grid, jnp.float32) ** (mul * t)
  return rays / jnp.sum(rays, axis=1, keepdims=True)


def palora_objective(loss_fn: Callable[[PyTree, Any], jax.Array], *, num_tasks: int,
                     total_steps: int, num_points: int = 5, mul: float = 5.0,
                     epsilon: float = 0.01, alpha: float = 1.0):
  """PaLoRA's objective ``(p, batch, step) -> (scalar, (losses[N, K], r[N, K]))`` with the
  deterministic schedule :func:`palora_schedule` (``loss_fn(params, batch) -> [K]``)."""
  validation.require_num_tasks(num_tasks, "palora_objective")
  validation.check_number(total_steps, "total_steps", low=1, integer=True, method="palora")
  validation.check_number(num_points, "num_points", low=2, integer=True, method="palora")

  def objective(p, batch, step):
    rs = palora_schedule(step, total_steps, num_tasks, num_points, mul, epsilon)
    losses = jax.vmap(lambda r: loss_fn(palora_params(p, r, alpha), batch))(rs)
    return linear_objective(losses, rs.astype(losses.dtype)), (losses, rs)

  return objective
