"""Model Breadcrumbs: sparse masks without outliers (Davari & Belilovsky, ECCV 2024)."""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp

from mtlx.merging import _common

PyTree = Any


def breadcrumbs_masks(tau: PyTree, drop_small: Any = 0.85,
                      drop_large: Any = 0.007) -> PyTree:
  """Per-layer, per-task masks that drop the smallest and the largest entries.

  For each leaf (layer) with ``n`` entries and each task, rank ``|τ_k|``
  ascending (stable: ties by flat index); keep ranks in
  ``[⌊n·drop_small⌋, n − ⌊n·drop_large⌋)``. When the two cuts overlap the large
  cut shrinks first (as mergekit's ``magnitude_outliers``).
  """
  def leaf(t):
    kdim, n = t.shape[0], int(t[0].size)
    flat = jnp.abs(t.reshape(kdim, n))
    rank = jnp.argsort(jnp.argsort(flat, axis=1, stable=True), axis=1, stable=True)
    n_bot = _common.count_from_fraction(n, drop_small)
    n_top = _common.count_from_fraction(n, drop_large)
    if isinstance(n_bot, int) and isinstance(n_top, int):
      n_top = min(n_top, n - n_bot)
    else:
      n_top = jnp.minimum(n_top, n - n_bot)
    keep = (rank >= n_bot) & (rank < n - n_top)
    return keep.reshape(t.shape)
  return jax.tree_util.tree_map(leaf, tau)


def breadcrumbs(base: PyTree, finetuned: Sequence[PyTree], drop_small: Any = 0.85,
                drop_large: Any = 0.007, scaling: Any = 0.3) -> PyTree:
  """Model Breadcrumbs: task arithmetic on per-layer masked task vectors.

  For every layer ``l`` (pytree leaf) and task ``k``, the mask ``m^l_k`` drops
  the ``drop_small`` fraction of entries of ``τ^l_k`` with the smallest
  magnitude (negligible perturbations) and the ``drop_large`` fraction with the
  largest (outliers); then

  .. math::  θ = θ₀ + λ \\sum_k m_k \\odot τ_k .

  Args:
    base: the pre-trained params ``θ₀``.
    finetuned: a list of ``K`` fine-tuned params pytrees shaped like ``base``.
    drop_small: bottom fraction dropped per layer; default 0.85 (the paper's
      β = 85th percentile).
    drop_large: top fraction dropped per layer; default 0.007 (the paper's
      γ = 99.3rd percentile), so about 14.3% of each layer survives.
    scaling: ``λ``, a scalar (default 0.3, tuned on validation in the paper) or
      a ``[K]`` vector.

  Returns:
    The merged params, shaped and typed like ``base``. With
    ``drop_small = drop_large = 0`` it is task arithmetic.

  Raises:
    ValueError: on structure/shape mismatch, fractions outside [0, 1], or
      ``drop_small + drop_large > 1``.

  Reference: M. Davari and E. Belilovsky, "Model Breadcrumbs: Scaling Multi-Task
  Model Merging with Sparse Masks", ECCV 2024.

  Cost: two stable argsorts per layer and task (``O(K P log n)``), all local to
  a leaf.
  """
  _common.check_fraction(drop_small, "drop_small")
  _common.check_fraction(drop_large, "drop_large")
  if (isinstance(drop_small, (int, float)) and isinstance(drop_large, (int, float))
      and drop_small + drop_large > 1):  # traced fractions are not checked
    raise ValueError(f"breadcrumbs: drop_small={drop_small!r} + drop_large={drop_large!r} "
                     "> 1 drops every entry (the merge would be the base); expected "
                     "drop_small + drop_large <= 1.")
  tau = _common.stack_task_vectors(base, finetuned)
  masks = breadcrumbs_masks(tau, drop_small, drop_large)
  masked = jax.tree_util.tree_map(lambda t, m: t * m.astype(t.dtype), tau, masks)
  lam = _common.task_coefficients(scaling, len(finetuned))
  return _common.apply_delta(base, _common.weighted_sum(lam, masked), tau)
