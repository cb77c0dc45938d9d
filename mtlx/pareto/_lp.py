"""A small linear program on the simplex, solved exactly in JAX by a dense simplex method.

.. math::  \\max_{α ∈ Δ_K}\\ c^T α \\quad \\text{s.t.}\\quad A_i α ≥ b_i \\ \\ (i : \\text{active}_i)

Written as a standard-form LP in ``(α, s, a) ≥ 0`` with slacks ``s`` (``Aα - s = b``),
``1ᵀα = 1`` and one artificial variable per row, and solved by the two-phase
tableau simplex method (Dantzig; Bland's smallest-index rule, so it cannot cycle):
phase 1 minimises the sum of the artificials, phase 2 maximises ``cᵀα`` with the
artificials barred from entering (one still basic at level 0 blocks any pivot
that would raise it). Inactive rows are ``0ᵀα ≥ 0`` (always satisfied).

Fixed cost, jittable: each phase runs ``max_pivots`` pivot steps in a
``fori_loop`` (a step after the optimum is a no-op); the default
``4 (K + m) + 8`` is well above what Bland's rule needs on these LPs (the
tests compare the optimum with scipy's HiGHS). Data are divided by
``max(|A|, |b|, |c|)`` first; pivot and optimality tolerance ``0.1 √ε``
(float32 ≈ 3e-5, float64 ≈ 1.5e-9). An infeasible LP (phase 1 ends with a
positive sum of artificials) returns phase 1's point, the feasible-for-the-
simplex ``α`` of least total constraint violation. Non-finite data give
non-finite ``α``. Cost: ``2 × max_pivots`` rank-1 updates of an
``(m+2) × (K + 2m + 2)`` tableau.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _pivot(tab, row, col):
  piv = tab[row] / tab[row, col]
  tab = tab - tab[:, col][:, None] * piv[None, :]
  return tab.at[row].set(piv)


def _phase(tab, basis, cost, allowed, num_pivots, tol, num_rows, art_start):
  """Runs ``num_pivots`` Bland pivots minimising ``cost`` over the ``allowed`` columns.

  ``tab`` is ``[R, N + 1]`` (constraint rows, last column the right-hand side).
  """
  n = tab.shape[1] - 1

  def body(_, carry):
    tab, basis, done = carry
    reduced = cost - cost[basis] @ tab[:, :n]
    candidates = allowed & (reduced < -tol)
    optimal = ~jnp.any(candidates)
    col = jnp.argmax(candidates)  # Bland: the smallest improving index
    column = tab[:, col]
    rhs = tab[:, n]
    art_basic = basis >= art_start
    # Rows that bound the step: positive entries, and artificials at level 0 that
    # the pivot would move (a negative entry would make them positive).
    bounding = (column > tol) | (art_basic & (jnp.abs(column) > tol) & (rhs <= tol))
    ratios = jnp.where(bounding, jnp.where(column > tol, rhs / jnp.where(column > tol, column,
                                                                         1.0), 0.0), jnp.inf)
    best = jnp.min(ratios)
    ties = bounding & (ratios <= best + tol)
    # Bland: among tied rows, the one whose basic variable has the smallest index.
    row = jnp.argmin(jnp.where(ties, basis, jnp.iinfo(basis.dtype).max))
    unbounded = ~jnp.any(bounding)
    stop = done | optimal | unbounded
    new_tab = _pivot(tab, row, col)
    tab = jnp.where(stop, tab, new_tab)
    basis = jnp.where(stop, basis, basis.at[row].set(col.astype(basis.dtype)))
    return tab, basis, stop

  del num_rows
  tab, basis, _ = jax.lax.fori_loop(0, num_pivots, body, (tab, basis, jnp.array(False)))
  return tab, basis


def simplex_lp(c: jax.Array, a_mat: jax.Array, b: jax.Array, active: jax.Array, *,
               max_pivots: int | None = None) -> jax.Array:
  """``argmax_{α ∈ Δ} cᵀα`` subject to ``(Aα)_i ≥ b_i`` for the ``active`` rows."""
  k = c.shape[0]
  m = a_mat.shape[0]
  dtype = jnp.result_type(c, a_mat, b, jnp.float32)
  c, a_mat, b = c.astype(dtype), a_mat.astype(dtype), b.astype(dtype)
  act = active.astype(dtype)
  a_mat = a_mat * act[:, None]
  b = jnp.where(active, b, 0.0)
  scale = jnp.maximum(jnp.maximum(jnp.max(jnp.abs(a_mat)), jnp.max(jnp.abs(c))),
                      jnp.max(jnp.abs(b)))
  scale = jnp.where(scale > 0, scale, 1.0)
  c, a_mat, b = c / scale, a_mat / scale, b / scale
  tol = 0.1 * jnp.sqrt(jnp.finfo(dtype).eps)

  # Rows: A α - s = b (m rows), 1ᵀα = 1; right-hand sides made non-negative.
  rows = m + 1
  coef = jnp.concatenate([
      jnp.concatenate([a_mat, -jnp.eye(m, dtype=dtype)], axis=1),
      jnp.concatenate([jnp.ones((1, k), dtype), jnp.zeros((1, m), dtype)], axis=1)])
  rhs = jnp.concatenate([b, jnp.ones((1,), dtype)])
  sign = jnp.where(rhs < 0, -1.0, 1.0).astype(dtype)
  coef, rhs = coef * sign[:, None], rhs * sign
  art_start = k + m
  n = art_start + rows
  tab = jnp.concatenate([coef, jnp.eye(rows, dtype=dtype), rhs[:, None]], axis=1)
  basis = jnp.arange(art_start, n, dtype=jnp.int32)
  pivots = 4 * (k + m) + 8 if max_pivots is None else max_pivots

  cost1 = jnp.concatenate([jnp.zeros((art_start,), dtype), jnp.ones((rows,), dtype)])
  allowed1 = jnp.ones((n,), bool)
  tab, basis = _phase(tab, basis, cost1, allowed1, pivots, tol, rows, art_start)

  cost2 = jnp.concatenate([-c, jnp.zeros((n - k,), dtype)])
  allowed2 = jnp.arange(n) < art_start
  infeasible = jnp.sum(jnp.where(basis >= art_start, tab[:, -1], 0.0)) > 1e3 * tol
  tab2, basis2 = _phase(tab, basis, cost2, allowed2, pivots, tol, rows, art_start)
  tab = jnp.where(infeasible, tab, tab2)
  basis = jnp.where(infeasible, basis, basis2)

  x = jnp.zeros((n,), dtype).at[basis].set(tab[:, -1])
  alpha = jnp.maximum(x[:k], 0.0)
  return alpha / jnp.sum(alpha)
