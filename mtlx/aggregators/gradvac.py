"""Gradient Vaccine (Wang et al., ICLR 2021)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from mtlx import jacobian
from mtlx import validation
from mtlx.aggregators.gramian_weighting import gramian_weighting
from mtlx.aggregators.pcgrad import random_orders

GRANULARITIES = ("whole", "leaf")


class GradVacState(NamedTuple):
  """``targets``: the EMA cosine targets ``φ̂_ij`` (``[K, K]``, or ``[L, K, K]``
  per leaf); ``key``: the PRNG key of the task orders."""
  targets: jax.Array
  key: jax.Array


def gradvac_weights(gramian: jax.Array, targets: jax.Array, orders: jax.Array | None = None,
                    beta: float = 0.5) -> tuple[jax.Array, jax.Array]:
  """GradVac as a weighting of the Gramian, for given targets and task orders.

  Works on the coefficient vectors ``c_i`` (``g_i' = c_iᵀJ``, start ``e_i``): for
  ``j`` in ``orders[i]`` (``j ≠ i``), with ``φ_ij = ⟨g_i', g_j⟩/(‖g_i'‖‖g_j‖)`` and
  target ``φ̂ = targets[i, j]``: if ``φ_ij < φ̂``,

  .. math::  g_i' ← g_i' + \\frac{‖g_i'‖(φ̂\\sqrt{1-φ_{ij}^2} - φ_{ij}\\sqrt{1-φ̂^2})}
                             {‖g_j‖\\sqrt{1-φ̂^2}}\\, g_j

  and always ``targets[i, j] ← (1-β) φ̂ + β φ_ij``. Returns ``(Σ_i c_i, targets)``.
  Pairs with a zero gradient are skipped (their target is kept).
  """
  k = gramian.shape[-1]
  if orders is None:
    orders = jnp.tile(jnp.arange(k), (k, 1))
  norm_j = jacobian.task_norms(gramian)
  tiny = jnp.finfo(gramian.dtype).tiny

  def one_task(i, order, row):
    def body(pos, carry):
      c, row = carry
      j = order[pos]
      norm_i = jnp.sqrt(jnp.maximum(c @ gramian @ c, 0.0))
      denom = norm_i * norm_j[j]
      valid = (j != i) & (denom > tiny)
      phi = jnp.where(valid, (gramian[j] @ c) / jnp.where(valid, denom, 1.0), 0.0)
      target = row[j]
      sq_t = jnp.sqrt(jnp.maximum(1.0 - target * target, 0.0))
      sq_p = jnp.sqrt(jnp.maximum(1.0 - phi * phi, 0.0))
      hit = valid & (phi < target) & (sq_t > 0)
      coef = norm_i * (target * sq_p - phi * sq_t) / jnp.where(hit, norm_j[j] * sq_t, 1.0)
      c = c + jnp.where(hit, coef, 0.0) * jax.nn.one_hot(j, k, dtype=c.dtype)
      row = row.at[j].set(jnp.where(valid, (1.0 - beta) * target + beta * phi, target))
      return c, row
    return jax.lax.fori_loop(0, k, body, (jax.nn.one_hot(i, k, dtype=gramian.dtype), row))

  cs, new_targets = jax.vmap(one_task)(jnp.arange(k), orders, targets.astype(gramian.dtype))
  return jnp.sum(cs, axis=0), new_targets


def gradvac(beta: float = 0.5, *, num_tasks: int, granularity: str = "whole",
            seed: int = 0) -> optax.GradientTransformationExtraArgs:
  """Gradient Vaccine as a gradient-space transform.

  Like PCGrad, but instead of removing only negative cosines it raises the
  cosine between ``g_i`` and ``g_j`` to an adaptive target ``φ̂_ij``, an EMA of
  the observed cosines (Wang, Tsvetkov, Firat & Cao, "Gradient Vaccine:
  Investigating and Improving Multi-task Optimization in Massively Multilingual
  Models", ICLR 2021, Alg. 1); the update is ``d = Σ_i g_i'``. Each task visits
  the others in a random order drawn every step; targets start at 0. See
  :func:`gradvac_weights` for the update of one pair.

  Args:
    beta: EMA rate of the targets (LibMTL's default 0.5; the paper tunes it,
      1e-2 in its experiments).
    num_tasks: K (the state holds ``K×K`` targets).
    granularity: ``'whole'``: one Gramian and one target matrix for the whole
      model (a Gramian weighting); ``'leaf'``: the paper's per-parameter-group
      variant, one Gramian, target matrix and weight vector per pytree leaf.
    seed: seeds the PRNG key of the task orders.

  Properties: linear under scaling (cosines are scale-free) over the whole float32
  range, since the weights read the normalised Gramian
  (:func:`mtlx.jacobian.normalized_gramian`); K=1 gives ``g_1``;
  with targets 0 it reduces to PCGrad-like projections for negative cosines;
  random for K>2 (not permutation-invariant step by step); not non-conflicting in
  general; finite for zero or duplicated rows; non-finite rows propagate.

  Raises:
    ValueError: unknown granularity, ``beta`` outside ``[0, 1]``, or an update
      whose K differs from ``num_tasks``.

  The targets follow the input precision: float64 under ``jax_enable_x64``
  (``'leaf'``: the params' dtype, at least float32), else float32.

  Cost: the Gramian (``K² P``; per leaf: the same total), ``K²`` sequential
  ``K``-vector updates (per leaf with ``'leaf'``), the combination ``K P``.
  State: ``K²`` (``L K²`` per leaf) targets and a key.
  """
  validation.check_number(beta, "beta", low=0, high=1, method="gradvac")
  validation.check_number(seed, "seed", integer=True, method="gradvac")
  validation.check_choice(granularity, GRANULARITIES, "granularity")
  if not 0.0 <= beta <= 1.0:
    raise ValueError(f"beta={beta!r}; expected a number in [0, 1].")
  validation.require_num_tasks(num_tasks, "gradvac")

  def step(gramian, state):
    key, sub = jax.random.split(state.key)
    orders = random_orders(sub, gramian.shape[-1])
    w, targets = gradvac_weights(gramian, state.targets, orders, beta)
    return w, GradVacState(targets.astype(state.targets.dtype), key)

  if granularity == "whole":
    # Default float dtype: float64 under x64, else float32 (the Gramian's dtype).
    init = lambda k: GradVacState(jnp.zeros((k, k), jnp.result_type(float)),
                                  jax.random.PRNGKey(seed))
    return gramian_weighting(step, init=init, num_tasks=num_tasks, name="gradvac",
                             scale_invariant=True)

  def init_fn(params):
    leaves = jax.tree_util.tree_leaves(params)
    dtype = jnp.promote_types(jnp.result_type(*leaves) if leaves else jnp.float32, jnp.float32)
    return GradVacState(jnp.zeros((len(leaves), num_tasks, num_tasks), dtype),
                        jax.random.PRNGKey(seed))

  def update_fn(task_grads, state, params=None, **extra):
    del params, extra
    k = validation.num_tasks(task_grads)
    validation.check_num_tasks(k, num_tasks, "gradvac")
    leaves, treedef = jax.tree_util.tree_flatten(task_grads)
    if state.targets.shape[0] != len(leaves):
      raise ValueError(f"gradvac(granularity='leaf') state has targets for "
                       f"{state.targets.shape[0]} leaves but task_grads has {len(leaves)}; "
                       "expected the params structure given to init.")
    grams = jnp.stack([jacobian.normalized_gramian(g)[0] for g in leaves])
    key, sub = jax.random.split(state.key)
    orders = random_orders(sub, k)  # one order per task, shared by all leaves
    ws, targets = jax.vmap(lambda g, t: gradvac_weights(g, t, orders, beta))(
        grams, state.targets)
    out = [jacobian.combine(ws[n], g) for n, g in enumerate(leaves)]
    return (jax.tree_util.tree_unflatten(treedef, out),
            GradVacState(targets.astype(state.targets.dtype), key))

  return optax.GradientTransformationExtraArgs(
      init_fn, validation.guarded_update(update_fn, "gradvac"))
