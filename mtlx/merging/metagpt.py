"""MetaGPT: model-exclusive task arithmetic (Zhou et al., 2024)."""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp

from mtlx.merging import _common

PyTree = Any


def _coefficients(tau: PyTree) -> jnp.ndarray:
  """``‖τ_k‖² / Σ_j ‖τ_j‖²`` of stacked task vectors, robust in float32.

  Every entry is divided by the largest finite ``|τ|`` first (the ratio is
  scale-free), so task vectors of size 1e-30 or 1e25 neither underflow nor
  overflow; non-finite entries are left out of the norms (they stay non-finite in
  the merge, at their own position only); all-zero task vectors give ``1/K``.
  """
  leaves = jax.tree_util.tree_leaves(tau)
  k = leaves[0].shape[0]
  finite = [jnp.where(jnp.isfinite(t), t, 0.0) for t in leaves]
  scale = jnp.max(jnp.stack([jnp.max(jnp.abs(t)) for t in finite]))
  scale = jnp.where(scale > 0, scale, 1.0)
  sq = sum(jnp.sum(jnp.square(t / scale).reshape(k, -1), axis=1) for t in finite)
  total = jnp.sum(sq)
  return jnp.where(total > 0, sq / jnp.where(total > 0, total, 1.0), 1.0 / k)


def metagpt_coefficients(base: PyTree, finetuned: Sequence[PyTree]) -> jnp.ndarray:
  """The closed-form MetaGPT coefficients ``λ_k = ‖τ_k‖² / Σ_j ‖τ_j‖²`` (``[K]``).

  Norms are over the whole model (all leaves), computed after dividing by the
  largest ``|τ|`` (so float32 task vectors of any scale give finite ``λ``) and
  over the finite entries only. All-zero task vectors (fine-tunes equal to the
  base) give ``λ = 1/K`` (the merge is then the base).
  """
  return _coefficients(_common.stack_task_vectors(base, finetuned))


def metagpt(base: PyTree, finetuned: Sequence[PyTree]) -> PyTree:
  """MetaGPT: task arithmetic with closed-form, data-free coefficients.

  Assuming local linearity of each task's loss around ``θ₀`` and orthogonal task
  vectors, minimising the average gap to the fine-tuned models gives

  .. math::  λ_k = \\frac{\\|τ_k\\|^2}{\\sum_j \\|τ_j\\|^2}, \\qquad
     θ = θ₀ + \\sum_k λ_k τ_k .

  No hyperparameters. ``K = 1`` returns the fine-tuned model and identical task
  vectors merge to that model (idempotent). Finite inputs give a finite merge
  at any float32 scale (fine-tunes equal to the base return the base); a
  non-finite entry of a fine-tuned model stays non-finite at its position only
  (see :func:`metagpt_coefficients`).

  Args:
    base: the pre-trained params ``θ₀``.
    finetuned: a list of ``K`` fine-tuned params pytrees shaped like ``base``.

  Returns:
    The merged params, shaped and typed like ``base``.

  Raises:
    ValueError: on structure/shape mismatch (naming the first differing path).

  Reference: Y. Zhou et al., "MetaGPT: Merging Large Language Models Using Model
  Exclusive Task Arithmetic", EMNLP 2024.

  Cost: one ``K``-vector of squared norms (``O(K P)``) and the weighted sum.
  """
  tau = _common.stack_task_vectors(base, finetuned)
  return _common.apply_delta(base, _common.weighted_sum(_coefficients(tau), tau))
