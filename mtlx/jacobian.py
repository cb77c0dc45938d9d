"""Per-task values and gradients, the Gramian, and their combination.

Notation used throughout mtlx: ``K`` tasks with losses ``L_1..L_K`` of the same
parameters ``θ`` (P numbers in all). The Jacobian ``J`` is the ``K × P`` matrix whose
row ``k`` is ``∇_θ L_k``. mtlx never flattens it: ``task_grads`` is a pytree shaped
like the params with a leading ``K`` axis on every leaf, so it keeps the params'
sharding.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from mtlx import validation

PyTree = Any


def _check_losses(losses: Any) -> int:
  if not hasattr(losses, "shape") or jnp.ndim(losses) != 1:
    raise ValueError(
        f"loss_fn must return a 1-D vector of K task losses; it returned "
        f"shape {jnp.shape(losses)}.")
  if not jnp.issubdtype(losses.dtype, jnp.floating):
    raise ValueError(f"loss_fn must return floating losses; got dtype "
                     f"{losses.dtype}.")
  return int(losses.shape[0])


def _rows(vjp_fn: Callable, k: int, dtype, chunk_size: int | None) -> PyTree:
  """Pulls back the K one-hot cotangents: row k of the Jacobian is vjp(e_k)."""
  eye = jnp.eye(k, dtype=dtype)
  row = lambda e: vjp_fn(e)[0]
  if chunk_size is None or chunk_size >= k:
    return jax.vmap(row)(eye)
  if chunk_size < 1:
    raise ValueError(f"chunk_size={chunk_size}; expected None or an int >= 1.")
  return lax.map(row, eye, batch_size=chunk_size)


def value_and_jacobian(loss_fn: Callable[..., Any], *, has_aux: bool = False,
                       chunk_size: int | None = None) -> Callable[..., Any]:
  """Transforms ``loss_fn`` into a function returning losses and per-task grads.

  ``loss_fn(params, *args)`` returns the vector ``L(θ) ∈ R^K`` (or ``(L, aux)``
  with ``has_aux=True``). The returned function computes

  .. math::  J = \\partial L / \\partial θ,\\qquad J_{k,:} = e_k^T J = \\mathrm{vjp}(e_k)

  by one forward pass and a ``vmap`` of the VJP over the one-hot cotangents
  ``e_1..e_K``.

  Args:
    loss_fn: ``(params, *args) -> losses[K]`` (or ``(losses, aux)``).
    has_aux: whether ``loss_fn`` also returns auxiliary data.
    chunk_size: ``None`` computes all K rows in one batched backward pass
      (memory ``K × P``). An int ``c`` computes them ``c`` at a time with
      ``lax.map`` (peak backward memory ``c × P`` plus the ``K × P`` output).

  Returns:
    ``f(params, *args) -> (losses, task_grads)`` or ``((losses, aux), task_grads)``;
    ``task_grads`` has the structure of ``params`` and every leaf an extra leading
    axis of size ``K``; leaf dtypes follow the params.

  Raises:
    ValueError: at trace time, if ``loss_fn`` does not return a 1-D floating vector.

  Cost: one forward pass and K backward passes, batched (``vmap``) or in
  ``ceil(K / c)`` sequential batches (``chunk_size=c``).
  """

  def wrapped(params, *args):
    fn = lambda p: loss_fn(p, *args)
    if has_aux:
      losses, vjp_fn, aux = jax.vjp(fn, params, has_aux=True)
    else:
      losses, vjp_fn = jax.vjp(fn, params)
    k = _check_losses(losses)
    grads = _rows(vjp_fn, k, losses.dtype, chunk_size)
    return ((losses, aux) if has_aux else losses), grads

  return wrapped


def accumulation_dtype(*dtypes) -> jnp.dtype:
  """The dtype mtlx accumulates in: the promoted dtype, float32 or wider (bf16/f16
  -> float32, float64 stays float64). The one definition every module uses."""
  return jnp.promote_types(jnp.result_type(*dtypes), jnp.float32)


_accumulation_dtype = accumulation_dtype


def task_norms(gram: jax.Array) -> jax.Array:
  """Per-task gradient norms ``‖g_k‖ = sqrt(G_kk)`` from the Gramian (``[K]``; negative
  rounding on the diagonal clipped to 0)."""
  return jnp.sqrt(jnp.maximum(jnp.diagonal(gram), 0.0))


def cosines(gram: jax.Array) -> jax.Array:
  """Pairwise cosines ``G_kl / (‖g_k‖ ‖g_l‖)`` of the task gradients from the Gramian
  (``[K, K]``; a zero gradient's row and column are 0, not NaN)."""
  d = jnp.sqrt(jnp.maximum(jnp.diagonal(gram), 1e-30))
  return gram / (d[:, None] * d[None, :])


def _contract_rows(a: jax.Array, b: jax.Array) -> jax.Array:
  """``[K, ...] × [M, ...] -> [K, M]``, summing every trailing axis, without reshape."""
  dims = tuple(range(1, a.ndim))
  acc = _accumulation_dtype(a.dtype, b.dtype)
  return lax.dot_general(a, b, ((dims, dims), ((), ())),
                         preferred_element_type=acc)


def cross_gramian(task_grads_1: PyTree, task_grads_2: PyTree) -> jax.Array:
  """Cross-matrix ``C = J₁ J₂ᵀ`` of two Jacobians with the same params structure.

  ``C_{kl} = ⟨g¹_k, g²_l⟩`` summed leaf by leaf (``[K₁, K₂]``, float32 or wider).
  Methods that need two independent mini-batches (MoDo, SDMGrad) read it instead
  of the Gramian. Cost: one pass over both Jacobians, no extra memory.
  """
  validation.num_tasks(task_grads_1, "task_grads_1")
  validation.num_tasks(task_grads_2, "task_grads_2")
  s1 = jax.tree_util.tree_structure(task_grads_1)
  s2 = jax.tree_util.tree_structure(task_grads_2)
  if s1 != s2:
    raise ValueError(f"task_grads_1 and task_grads_2 have different pytree "
                     f"structures: {s1} vs {s2}; expected the same params structure.")
  for a, b in zip(jax.tree_util.tree_leaves(task_grads_1),
                  jax.tree_util.tree_leaves(task_grads_2)):
    if a.shape[1:] != b.shape[1:]:
      raise ValueError(f"task_grads_1 and task_grads_2 have leaves of shapes "
                       f"{a.shape} and {b.shape}; expected equal trailing axes.")
  parts = jax.tree_util.tree_leaves(
      jax.tree_util.tree_map(_contract_rows, task_grads_1, task_grads_2))
  return sum(parts[1:], parts[0])


def gramian(task_grads: PyTree) -> jax.Array:
  """The Gramian ``G = J Jᵀ`` (``[K, K]``, ``G_{kl} = ⟨g_k, g_l⟩``) of per-task grads.

  Computed as a sum over leaves of one ``dot_general`` per leaf (each leaf's
  trailing axes contracted in place, never reshaped or copied into a ``K × P``
  matrix, never flattening the model), so for sharded ``task_grads`` XLA
  contracts each shard locally and all-reduces only the ``K × K`` result.
  float32 leaves accumulate in float32 (no upcast), bf16/f16 leaves in float32,
  float64 in float64. The result is symmetrised (``(G + Gᵀ)/2``, exact up to
  the last bit) so that solvers may rely on ``G = Gᵀ``.

  Raises:
    ValueError: if the leaves disagree on their leading K.

  Cost: ``K² P`` multiply-adds, no memory beyond the ``K × K`` output.
  """
  validation.num_tasks(task_grads)
  parts = jax.tree_util.tree_leaves(
      jax.tree_util.tree_map(lambda g: _contract_rows(g, g), task_grads))
  g = sum(parts[1:], parts[0])
  return 0.5 * (g + g.T)


def _power_of_two_scale(amax: jax.Array) -> jax.Array:
  """``2^e`` with ``2^(e-1) ≤ amax < 2^e`` (1 for zero); NaN/inf pass through."""
  _, e = jnp.frexp(jnp.where(amax > 0, amax, jnp.ones_like(amax)))
  s = jnp.ldexp(jnp.ones_like(amax), e)
  return jnp.where(jnp.isfinite(amax), s, amax)


def gradient_scale(task_grads: PyTree) -> jax.Array:
  """``s = 2^⌈log₂ max|J|⌉``: the power of two just above the largest entry of
  every task gradient (1 if all are zero; NaN/inf if an entry is). One max-abs
  reduction per leaf (local on every shard), then a max over leaves."""
  amaxes = [jnp.max(jnp.abs(g)).astype(_accumulation_dtype(g.dtype))
            for g in jax.tree_util.tree_leaves(task_grads)]
  amax = functools.reduce(jnp.maximum, amaxes[1:], amaxes[0])
  return _power_of_two_scale(amax)


def normalized_gramian(task_grads: PyTree, *,
                       rescaled: Callable[[], tuple[jax.Array, jax.Array]] | None = None
                       ) -> tuple[jax.Array, jax.Array]:
  """The Gramian of the rows divided by a power of two near the largest row norm:
  ``(Ĝ, s)`` with ``Ĝ = (J/s)(J/s)ᵀ``, ``G = s² Ĝ`` and ``s/2 ≤ max_k ‖g_k‖ < s``
  (so ``1/4 ≤ max_k Ĝ_kk < 1``; ``s = 1`` when every row is zero).

  ``s`` is a power of two, so dividing by it is exact. ``Ĝ`` neither underflows
  nor overflows in float32 for any finite ``J``, while ``J Jᵀ`` underflows to 0
  for rows of size ``1e-20`` and overflows for ``1e20``. Weightings that are
  invariant to the scale of the rows (UPGrad, MGDA, DualProj, IMTL-G, CAGrad,
  PCGrad, Krum, ...) read ``Ĝ`` (``mtlx.gramian_weighting(fn,
  scale_invariant=True)``) and are then scale-linear over the whole float32 range.

  The Gramian ``G = gramian(task_grads)`` is computed first (one contraction, no
  extra pass over ``J``); when its largest diagonal entry is in the range where
  the float32 sums are exact to rounding (``P · tiny/ε ≤ max_k G_kk ≤ max/4``:
  every ordinary gradient) ``Ĝ = G / s²``. Otherwise (rows near the ends of the
  float range, all-zero or non-finite rows) ``lax.cond`` takes the rescaled
  branch: ``J`` is divided by the power of two above ``max|J|``
  (:func:`gradient_scale`, one max-abs pass) before a second contraction, so
  that extra ``K × P`` work is paid only then. Non-finite entries give a
  non-finite ``Ĝ`` and ``s``.

  ``rescaled``: optional ``() -> (Ĝ, s)`` that computes the same pair without
  reading ``task_grads`` (the train step passes
  :func:`mtlx.autogram.value_and_normalized_gramian` of its loss), called by the
  rare rescaled branch instead. A ``K × P`` operand of the ``lax.cond`` makes XLA
  keep copies of it (XLA:CPU, measured: twice the temporaries, +70 % bytes moved
  and a 1.4–1.6× slower Jacobian train step); with ``rescaled`` only ``K × K``
  values enter the conditional (under ``vmap`` the conditional becomes a select
  and both branches run).

  Cost: the Gramian (``K² P`` multiply-adds, one read of ``J``) and ``K × K``
  work; two more reads of ``J`` only in the rescaled branch.
  """
  validation.num_tasks(task_grads)
  leaves = jax.tree_util.tree_leaves(task_grads)
  acc = _accumulation_dtype(*[g.dtype for g in leaves])
  info = jnp.finfo(acc)
  p = sum(math.prod(g.shape[1:]) for g in leaves)
  low = float(max(p, 1) * info.tiny / info.eps)
  high = float(info.max) / 4.0
  g = gramian(task_grads).astype(acc)
  dmax = jnp.max(jnp.diagonal(g))
  safe = (dmax >= low) & (dmax <= high)  # False for NaN

  def unit(gram):
    """``(gram / t², t)`` with ``t`` the power of two just above ``sqrt(max diag)``."""
    t = _power_of_two_scale(jnp.sqrt(jnp.max(jnp.diagonal(gram))))
    return gram / (t * t), t

  def direct(_):
    return unit(g)

  def rescale(_):
    if rescaled is not None:
      g1, s1 = rescaled()
      return g1.astype(acc), s1.astype(acc)
    s1 = gradient_scale(task_grads).astype(acc)
    inv = jnp.where(jnp.isfinite(s1), 1.0 / s1, s1)
    g1, s2 = unit(gramian(jax.tree_util.tree_map(lambda x: x * inv.astype(x.dtype),
                                                 task_grads)).astype(acc))
    return g1, s1 * s2

  return lax.cond(safe, direct, rescale, None)


def combine(weights: jax.Array, task_grads: PyTree) -> PyTree:
  """``Σ_k w_k g_k`` as a params-shaped pytree (``wᵀ J``, leaf by leaf).

  Each leaf is contracted in float32 or wider and cast back to its dtype.
  ``weights`` may be any array-like (a list, a NumPy array, a JAX array).

  Raises:
    ValueError: if ``weights`` is not a ``[K]`` vector for the K of ``task_grads``.
  """
  k = validation.num_tasks(task_grads)
  weights = jnp.asarray(weights)
  validation.check_vector(weights, k, "weights")
  if not jnp.issubdtype(weights.dtype, jnp.inexact):
    weights = weights.astype(jnp.promote_types(weights.dtype, jnp.float32))

  def leaf(g):
    acc = _accumulation_dtype(g.dtype, weights.dtype)
    out = lax.dot_general(weights.astype(acc), g, (((0,), (0,)), ((), ())),
                          preferred_element_type=acc)
    return out.astype(g.dtype)

  return jax.tree_util.tree_map(leaf, task_grads)


class RepresentationJacobian(NamedTuple):
  """What :func:`value_and_representation_jacobian` returns.

  Attributes:
    losses: ``[K]`` task losses (or ``(losses, aux)`` with ``has_aux``).
    rep_grads: ``∂L_k/∂z`` for every task, shaped like ``z`` with a leading K axis.
    encoder_vjp: ``d_z -> ∂⟨d_z, z⟩/∂θ_enc``: pulls a combined representation
      direction back to an encoder gradient (one backward pass of the encoder).
    heads_vjp: ``w -> ∇_{θ_heads} Σ_k w_k L_k`` (one backward pass of the heads).
  """
  losses: Any
  rep_grads: PyTree
  encoder_vjp: Callable[[PyTree], PyTree]
  heads_vjp: Callable[[jax.Array], PyTree]


def value_and_representation_jacobian(
    encoder_fn: Callable[..., PyTree], heads_fn: Callable[..., Any], *,
    has_aux: bool = False, chunk_size: int | None = None) -> Callable[..., RepresentationJacobian]:
  """Per-task gradients w.r.t. a shared representation instead of the params.

  For a model split as ``z = encoder_fn(enc_params, x)`` and
  ``L = heads_fn(head_params, z, *head_args) ∈ R^K``, computes the K rows of
  ``∂L/∂z`` (``K × |z|`` instead of ``K × |θ|``). Any Gramian method picks weights
  ``w = f(Z Zᵀ)`` from them (``mtlx.gramian(rep_grads)``); the encoder gradient is
  then one VJP of the combined direction ``d_z = Σ_k w_k ∂L_k/∂z`` and the head
  gradient one VJP of ``Σ_k w_k L_k``. This is MGDA-UB's upper bound
  (Sener & Koltun, NeurIPS 2018) and LibMTL's ``rep_grad`` mode.

  Since ``∂L_k/∂θ_enc = (∂z/∂θ_enc)ᵀ ∂L_k/∂z``, any linear combination of rows gives
  exactly the parameter-mode result; only the weights differ (they are computed
  from the representation Gramian).

  Args:
    encoder_fn: ``(enc_params, x) -> z`` (any pytree ``z``; usually ``[B, D]``).
    heads_fn: ``(head_params, z, *head_args) -> losses[K]`` (or ``(losses, aux)``).
    has_aux: whether ``heads_fn`` also returns auxiliary data.
    chunk_size: as in :func:`value_and_jacobian`, for the K rows w.r.t. ``z``.

  Returns:
    ``f(enc_params, head_params, x, *head_args) -> RepresentationJacobian``.

  Cost: one forward pass, K backward passes through the heads only, then one
  backward pass through the encoder and one through the heads. Memory
  ``K × |z|`` for the rows.
  """

  def wrapped(enc_params, head_params, x, *head_args):
    z, enc_vjp = jax.vjp(lambda p: encoder_fn(p, x), enc_params)
    heads = lambda hp, zz: heads_fn(hp, zz, *head_args)
    if has_aux:
      losses, vjp_fn, aux = jax.vjp(heads, head_params, z, has_aux=True)
    else:
      losses, vjp_fn = jax.vjp(heads, head_params, z)
    k = _check_losses(losses)
    rep_grads = _rows(lambda e: (vjp_fn(e)[1],), k, losses.dtype, chunk_size)

    def encoder_vjp(d_z):
      return enc_vjp(d_z)[0]

    def heads_vjp(weights):
      validation.check_vector(weights, k, "weights")
      return vjp_fn(jnp.asarray(weights, losses.dtype))[0]

    return RepresentationJacobian((losses, aux) if has_aux else losses,
                                  rep_grads, encoder_vjp, heads_vjp)

  return wrapped
