"""Shared pytree plumbing for the merging functions (private).

Conventions used by every merge in ``mtlx.merging``:

* ``base`` is a params pytree ``θ₀``; ``finetuned`` a non-empty list (or tuple)
  of ``K`` pytrees ``θ_1..θ_K`` with the same structure and leaf shapes.
* Task vectors ``τ_k = θ_k − θ₀`` are held *stacked*: a pytree shaped like the
  params whose every leaf has a leading ``K`` axis (the layout of ``task_grads``
  in the rest of mtlx), so every merge is a few leaf-wise ops plus, for the
  "whole model" methods, reductions over leaves (sharding-friendly: each leaf
  reduces locally and only scalars cross devices).
* Arithmetic runs in ``promote(leaf dtype, float32)``; the merged leaf is cast
  back to the base leaf's dtype.
* Whole-model quantiles (TIES trim, PCB drop) use an exact bisection on the
  order-preserving integer image of the floats (:func:`kth_smallest`): a fixed
  number of counting passes (32 for float32, 64 for float64) and no gather or
  sort of the flattened model.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from mtlx import jacobian

PyTree = Any


def _paths(tree: PyTree):
  return jax.tree_util.tree_flatten_with_path(tree)


def check_finetuned(base: PyTree, finetuned: Sequence[PyTree],
                    name: str = "finetuned", single: bool = False) -> int:
  """Checks structures and shapes; returns K.

  Raises:
    ValueError: ``finetuned`` is not a non-empty list/tuple, or one of its
      models differs from ``base`` in structure or leaf shape; the message
      names the first differing path.
  """
  if not isinstance(finetuned, (list, tuple)) or len(finetuned) == 0:
    raise ValueError(
        f"{name} must be a non-empty list of params pytrees shaped like base; "
        f"got {type(finetuned).__name__}"
        + (" of length 0" if isinstance(finetuned, (list, tuple)) else "") + ".")
  base_leaves, base_def = _paths(base)
  if not base_leaves:
    raise ValueError("base has no array leaves; expected a params pytree.")
  for i, model in enumerate(finetuned):
    label = name if single else f"{name}[{i}]"
    leaves, treedef = _paths(model)
    for (pb, lb), (pf, lf) in zip(base_leaves, leaves):
      if pb != pf:
        raise ValueError(
            f"{label} differs from base in structure at the first differing "
            f"path: base has {jax.tree_util.keystr(pb)} where {label} has "
            f"{jax.tree_util.keystr(pf)}; expected the same pytree structure.")
      if jnp.shape(lb) != jnp.shape(lf):
        raise ValueError(
            f"{label}{jax.tree_util.keystr(pf)} has shape {jnp.shape(lf)} but "
            f"base{jax.tree_util.keystr(pb)} has shape {jnp.shape(lb)}; expected "
            "the same shape.")
    if len(leaves) != len(base_leaves):
      if len(leaves) > len(base_leaves):
        extra = jax.tree_util.keystr(leaves[len(base_leaves)][0])
        msg = f"{label} has an extra leaf at {extra} that base lacks"
      else:
        extra = jax.tree_util.keystr(base_leaves[len(leaves)][0])
        msg = f"{label} lacks the leaf base{extra}"
      raise ValueError(f"{label} differs from base in structure at the first "
                       f"differing path: {msg}; expected the same pytree structure.")
    if treedef != base_def:
      raise ValueError(
          f"{label} has the same leaf paths as base but different containers "
          f"(base: {base_def}, {label}: {treedef}); expected the same "
          "pytree structure.")
  return len(finetuned)


def compute_dtype(dtype) -> jnp.dtype:
  return jacobian.accumulation_dtype(dtype)


def stack_task_vectors(base: PyTree, finetuned: Sequence[PyTree]) -> PyTree:
  """``τ`` stacked: each leaf ``[K, *shape]`` in float32 or wider."""
  check_finetuned(base, finetuned)

  def leaf(b, *fs):
    dt = compute_dtype(jnp.result_type(b, *fs))
    b = jnp.asarray(b, dt)
    return jnp.stack([jnp.asarray(f, dt) - b for f in fs])

  return jax.tree_util.tree_map(leaf, base, *finetuned)


def apply_delta(base: PyTree, delta: PyTree, tau: PyTree | None = None) -> PyTree:
  """``θ₀ + δ`` leaf by leaf, cast back to the base dtypes.

  With the stacked task vectors ``tau``, adds ``0 · Σ_k τ_k``: exactly zero for
  finite inputs, but a non-finite entry of any fine-tuned model stays
  non-finite in the merge even where a mask dropped it (XLA lowers
  ``x * mask`` to a select, which would otherwise silently repair it).
  """
  def leaf(b, d, *t):
    dt = compute_dtype(jnp.result_type(b, d))
    d = jnp.asarray(d, dt)
    if t:
      d = d + jnp.zeros((), dt) * jnp.sum(t[0], 0).astype(dt)
    return (jnp.asarray(b, dt) + d).astype(jnp.result_type(b))
  if tau is None:
    return jax.tree_util.tree_map(leaf, base, delta)
  return jax.tree_util.tree_map(leaf, base, delta, tau)


def task_coefficients(scaling: Any, k: int, name: str = "scaling") -> jax.Array:
  """A scalar or a ``[K]`` vector of coefficients -> ``[K]``."""
  s = jnp.asarray(scaling)
  if s.ndim == 0:
    return jnp.broadcast_to(s, (k,))
  if s.shape != (k,):
    raise ValueError(f"{name} has shape {s.shape}; expected a scalar or shape "
                     f"({k},) (one coefficient per fine-tuned model).")
  return s


def weighted_sum(coeffs: jax.Array, stacked: PyTree) -> PyTree:
  """``Σ_k c_k τ_k`` leaf by leaf."""
  def leaf(t):
    return jnp.tensordot(coeffs.astype(t.dtype), t, axes=1)
  return jax.tree_util.tree_map(leaf, stacked)


def tree_sum_per_task(fn, stacked: PyTree) -> jax.Array:
  """``Σ_leaves Σ_entries fn(leaf)`` per task -> ``[K]``."""
  leaves = jax.tree_util.tree_leaves(stacked)
  parts = [jnp.sum(fn(x).reshape(x.shape[0], -1), axis=1) for x in leaves]
  return sum(parts[1:], parts[0])


def num_entries(stacked: PyTree) -> int:
  return sum(int(x[0].size) for x in jax.tree_util.tree_leaves(stacked))


def _sortable_key(x: jax.Array) -> jax.Array:
  """Monotone map float -> unsigned int (order-preserving; -0 mapped to +0)."""
  x = jnp.where(x == 0, jnp.zeros_like(x), x)
  if x.dtype == jnp.float64:
    ut, sign = jnp.uint64, jnp.uint64(1 << 63)
  else:
    x = x.astype(jnp.float32)
    ut, sign = jnp.uint32, jnp.uint32(1 << 31)
  u = lax.bitcast_convert_type(x, ut)
  neg = (u & sign) != 0
  return jnp.where(neg, ~u, u | sign)


def _key_to_float(key: jax.Array, dtype) -> jax.Array:
  ut = key.dtype
  sign = ut.type(1 << (8 * jnp.dtype(ut).itemsize - 1))
  pos = (key & sign) != 0
  u = jnp.where(pos, key & ~sign, ~key)
  return lax.bitcast_convert_type(u, dtype)


def kth_smallest(stacked: PyTree, k: jax.Array) -> jax.Array:
  """Exact ``k``-th smallest value (1-indexed) of each task's entries -> ``[K]``.

  ``stacked`` has a leading ``K`` axis on every leaf; ``k`` is an int (or
  ``[K]`` ints) in ``[1, d]`` with ``d`` the entries per task. Works by
  bisection on the order-preserving unsigned-integer image of the floats:
  ``bits`` counting passes over the leaves (32 for float32, 64 for float64),
  each a local reduction per leaf, so a sharded model is never gathered.
  """
  leaves = jax.tree_util.tree_leaves(stacked)
  dt = jnp.result_type(*leaves)
  dt = jnp.float64 if dt == jnp.float64 else jnp.float32
  keys = [_sortable_key(x.astype(dt)) for x in leaves]
  kdim = leaves[0].shape[0]
  ut = keys[0].dtype
  bits = 8 * jnp.dtype(ut).itemsize
  count_dt = jnp.int64 if bits == 64 else jnp.int32
  k = jnp.broadcast_to(jnp.asarray(k, count_dt), (kdim,))

  def count_le(mid):
    parts = [jnp.sum((key.reshape(kdim, -1) <= mid[:, None]).astype(count_dt), 1)
             for key in keys]
    return sum(parts[1:], parts[0])

  def body(_, lohi):
    lo, hi = lohi
    mid = lo + (hi - lo) // ut.type(2)
    ok = count_le(mid) >= k
    return jnp.where(ok, lo, mid + ut.type(1)), jnp.where(ok, mid, hi)

  lo = jnp.zeros((kdim,), ut)
  hi = jnp.full((kdim,), jnp.iinfo(ut).max, ut)
  lo, _ = lax.fori_loop(0, bits, body, (lo, hi))
  return _key_to_float(lo, dt)


def per_task(values: jax.Array, leaf: jax.Array) -> jax.Array:
  """Broadcasts a ``[K]`` vector against a ``[K, ...]`` leaf."""
  return values.reshape((-1,) + (1,) * (leaf.ndim - 1)).astype(leaf.dtype)


def unstack(base: PyTree, stacked: PyTree, k: int) -> list:
  """Stacked ``[K, ...]`` pytree -> list of K pytrees."""
  return [jax.tree_util.tree_map(lambda x: x[i], stacked) for i in range(k)]


def check_fraction(value: Any, name: str, *, low_open: bool = False,
                   high_open: bool = False) -> None:
  """Checks a Python-number fraction in [0, 1] (skipped for traced values)."""
  if isinstance(value, (int, float)):
    lo_ok = value > 0 if low_open else value >= 0
    hi_ok = value < 1 if high_open else value <= 1
    if not (lo_ok and hi_ok):
      lo = "(0" if low_open else "[0"
      hi = "1)" if high_open else "1]"
      raise ValueError(f"{name}={value!r}; expected a fraction in {lo}, {hi}.")


def count_from_fraction(d: int, fraction: Any, complement: bool = False):
  """``⌊d·fraction⌋`` (or ``max(d − ⌊d·fraction⌋, 1)`` with ``complement``).

  Exact Python arithmetic for Python numbers (as the reference codes compute
  it); a traced fraction is floored in float32/float64.
  """
  if isinstance(fraction, (int, float)):
    n = int(d * fraction)
    return max(d - n, 1) if complement else n
  idt = jnp.int64 if jax.config.jax_enable_x64 else jnp.int32
  fdt = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
  n = jnp.floor(d * jnp.asarray(fraction, fdt)).astype(idt)
  return jnp.clip(d - n, 1, d) if complement else n
