"""Diagnostics of task vectors and merges: similarity, sign conflicts, normalized accuracy."""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp

from mtlx import jacobian
from mtlx.merging import _common
from mtlx.merging import ties_merging as ties_lib

PyTree = Any


def cosine_similarity(base: PyTree, finetuned: Sequence[PyTree],
                      per_layer: bool = True):
  """Cosine similarity between task vectors, per layer or over the whole model.

  .. math::  C_{kl} = \\frac{⟨τ_k, τ_l⟩}{\\|τ_k\\|\\, \\|τ_l\\|}

  Args:
    base: the pre-trained params ``θ₀``.
    finetuned: a list of ``K`` fine-tuned params pytrees shaped like ``base``.
    per_layer: ``True`` returns a params-shaped pytree whose every leaf is the
      ``[K, K]`` matrix of that leaf's task vectors; ``False`` one ``[K, K]``
      matrix over the whole model.

  Returns:
    ``[K, K]`` matrices; 0 where a task vector is zero on that layer (no
    direction); finite for finite inputs at any float32 scale.

  Cost: ``K² P`` multiply-adds (a per-leaf Gramian, as ``mtlx.gramian``).
  """
  tau = _common.stack_task_vectors(base, finetuned)
  # Divide by the largest |τ| first (cosines are scale-free): no float32
  # underflow/overflow of the Gramian for task vectors of size 1e-30 or 1e25.
  scale = jnp.max(jnp.stack([jnp.max(jnp.where(jnp.isfinite(t), jnp.abs(t), 0.0))
                             for t in jax.tree_util.tree_leaves(tau)]))
  scale = jnp.where(scale > 0, scale, 1.0)

  def gram(t):
    f = t.reshape(t.shape[0], -1) / scale
    return f @ f.T

  if per_layer:
    return jax.tree_util.tree_map(lambda t: jacobian.cosines(gram(t)), tau)
  grams = [gram(t) for t in jax.tree_util.tree_leaves(tau)]
  return jacobian.cosines(sum(grams[1:], grams[0]))


def sign_conflict_rate(base: PyTree, finetuned: Sequence[PyTree],
                       density: Any = 1.0) -> jax.Array:
  """Fraction of entries where the (trimmed) task vectors disagree in sign.

  An entry conflicts when at least one task vector is positive and another is
  negative there; the rate is over all ``P`` entries of the model. With
  ``density < 1`` the task vectors are first trimmed as in TIES (top-``density``
  by magnitude over the whole model), the setting of the TIES paper's
  interference analysis.

  Cost: ``O(K P)`` (plus the TIES quantile when ``density < 1``).
  """
  tau = _common.stack_task_vectors(base, finetuned)
  if not (isinstance(density, (int, float)) and density >= 1):
    tau = ties_lib.trim_top_fraction(tau, density)
  leaves = jax.tree_util.tree_leaves(tau)
  conflicts = sum(jnp.sum(jnp.any(t > 0, 0) & jnp.any(t < 0, 0)) for t in leaves)
  return conflicts / _common.num_entries(tau)


def normalized_accuracy(merged_accuracy: Any, finetuned_accuracy: Any) -> jax.Array:
  """Per-task normalized accuracy: merged accuracy / the task's fine-tuned accuracy.

  .. math::  \\mathrm{NA}_k = \\mathrm{acc}_k(θ_{merged}) / \\mathrm{acc}_k(θ_k)

  The metric of the TIES, TALL-masks and AdaMerging papers (average it over
  tasks for one number). Arrays of shape ``[K]``; 1 means no loss from merging.

  Raises:
    ValueError: if the two are not 1-D vectors of the same length K.
  """
  merged, finetuned = jnp.asarray(merged_accuracy), jnp.asarray(finetuned_accuracy)
  if merged.ndim != 1 or merged.shape != finetuned.shape:
    raise ValueError(f"normalized_accuracy: merged_accuracy has shape {merged.shape} and "
                     f"finetuned_accuracy has shape {finetuned.shape}; expected two [K] "
                     "vectors of the same length (one accuracy per task).")
  return merged / finetuned
