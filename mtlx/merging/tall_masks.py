"""TALL masks and Consensus merging (Wang et al., ICML 2024)."""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp

from mtlx import validation
from mtlx.merging import _common
from mtlx.merging import ties_merging as ties_lib

PyTree = Any

MERGES = ("task_arithmetic", "ties")


def _multi_task_vector(base, finetuned, tau, merged):
  """``τ_MTL``: ``merged − θ₀`` when given, else ``Σ_k τ_k``."""
  if merged is None:
    return jax.tree_util.tree_map(lambda t: jnp.sum(t, 0), tau)
  _common.check_finetuned(base, [merged], name="merged", single=True)
  return jax.tree_util.tree_map(
      lambda m, b, t: jnp.asarray(m, t.dtype) - jnp.asarray(b, t.dtype), merged, base,
      jax.tree_util.tree_map(lambda t: t[0], tau))


def _masks_stacked(tau, mtl, tall_lambda):
  lam = _common.task_coefficients(tall_lambda, jax.tree_util.tree_leaves(tau)[0].shape[0],
                                  "tall_lambda")
  return jax.tree_util.tree_map(
      lambda t, m: jnp.abs(t) > _common.per_task(lam, t) * jnp.abs(m[None] - t),
      tau, mtl)


def tall_masks(base: PyTree, finetuned: Sequence[PyTree], tall_lambda: Any = 0.4,
               merged: PyTree | None = None) -> list:
  """TALL masks: the per-task support of the multi-task vector.

  .. math::  m_k = \\mathbb{1}\\{|τ_k| > λ_k\\, |τ_{MTL} − τ_k|\\}

  An entry belongs to task ``k`` when the task's own vector is larger than
  ``λ_k`` times what the other tasks add there; ``θ₀ + m_k ⊙ τ_{MTL}``
  (:func:`tall_mask_models`) then recovers most of the fine-tuned accuracy of
  task ``k`` from one stored multi-task vector plus ``K`` binary masks.

  Args:
    base: the pre-trained params ``θ₀``.
    finetuned: a list of ``K`` fine-tuned params pytrees shaped like ``base``.
    tall_lambda: ``λ``, a scalar or ``[K]``; default 0.4 (the middle of the
      paper's per-task validation grid {0.2, 0.3, 0.4, 0.5, 0.6}).
    merged: the merged model whose vector is ``τ_MTL = merged − θ₀`` (e.g. a
      TIES merge); default ``None`` uses the task-arithmetic sum
      ``τ_MTL = Σ_k τ_k`` as the reference code does.

  Returns:
    A list of ``K`` boolean pytrees shaped like ``base``.

  Raises:
    ValueError: on structure/shape mismatch (of ``finetuned`` or ``merged``).

  Reference: K. Wang, N. Dimitriadis et al., "Localizing Task Information for
  Improved Model Merging and Compression", ICML 2024.

  Cost: ``O(K P)`` elementwise.
  """
  tau = _common.stack_task_vectors(base, finetuned)
  mtl = _multi_task_vector(base, finetuned, tau, merged)
  return _common.unstack(base, _masks_stacked(tau, mtl, tall_lambda), len(finetuned))


def tall_mask_models(base: PyTree, finetuned: Sequence[PyTree], tall_lambda: Any = 0.4,
                     merged: PyTree | None = None) -> list:
  """The ``K`` per-task models ``θ_k = θ₀ + m_k ⊙ τ_{MTL}`` of TALL masks.

  Same arguments as :func:`tall_masks`; returns a list of ``K`` params pytrees.
  ``K = 1`` returns the fine-tuned model (``m = 1{τ ≠ 0}``, ``τ_MTL = τ``).
  """
  tau = _common.stack_task_vectors(base, finetuned)
  mtl = _multi_task_vector(base, finetuned, tau, merged)
  masks = _masks_stacked(tau, mtl, tall_lambda)
  return [_common.apply_delta(base, jax.tree_util.tree_map(
      lambda m, v: m[i].astype(v.dtype) * v, masks, mtl), tau)
          for i in range(len(finetuned))]


def consensus(base: PyTree, finetuned: Sequence[PyTree], k: Any = 2,
              tall_lambda: Any = 0.4, scaling: Any = 0.3,
              merge: str = "task_arithmetic", density: Any = 0.2) -> PyTree:
  """Consensus merging: keep only the weights that at least ``k`` tasks use.

  With the TALL masks ``m_t`` of the multi-task vector ``τ_MTL``,

  .. math::  m_{cons} = \\mathbb{1}\\{\\textstyle\\sum_t m_t \\ge k\\}, \\qquad
     θ = θ₀ + λ\\, m_{cons} \\odot τ_{MTL} .

  ``k = 2`` removes both *catastrophic* weights (used by no task) and *selfish*
  weights (used by one task only); ``k = 1`` only the catastrophic ones;
  ``k = 0`` reduces to the underlying merge.

  Args:
    base: the pre-trained params ``θ₀``.
    finetuned: a list of ``K`` fine-tuned params pytrees shaped like ``base``.
    k: the consensus threshold, default 2 (the paper's).
    tall_lambda: the TALL-mask ``λ`` (see :func:`tall_masks`), default 0.4.
    scaling: ``λ`` on the masked vector, default 0.3 (task arithmetic's value;
      for ``merge="ties"`` the paper uses TIES's own, about 1.0).
    merge: ``"task_arithmetic"`` (``τ_MTL = Σ_t τ_t``) or ``"ties"``
      (``τ_MTL`` the TIES merged vector at ``density``).
    density: the TIES trim density for ``merge="ties"``.

  Returns:
    The merged params, shaped and typed like ``base``.

  Raises:
    ValueError: on structure/shape mismatch, an unknown ``merge``, or ``k``
      outside ``0..K`` (``k > K`` would keep nothing and silently return the base).

  Reference: K. Wang, N. Dimitriadis et al., "Localizing Task Information for
  Improved Model Merging and Compression", ICML 2024 (Consensus Merging).

  Cost: ``O(K P)`` elementwise (plus the TIES quantile for ``merge="ties"``).
  """
  validation.check_choice(merge, MERGES, "merge")
  if isinstance(k, (int, float)):  # a traced k is not checked
    validation.check_number(k, "k", low=0, high=len(finetuned), integer=True,
                            method="consensus (k tasks of K = len(finetuned))")
  tau = _common.stack_task_vectors(base, finetuned)
  if merge == "task_arithmetic":
    mtl = jax.tree_util.tree_map(lambda t: jnp.sum(t, 0), tau)
  else:
    trimmed = ties_lib.trim_top_fraction(tau, density)
    mtl = ties_lib.disjoint_mean(trimmed, ties_lib.elect_sign(trimmed))
  masks = _masks_stacked(tau, mtl, tall_lambda)
  scale = jnp.asarray(scaling)

  def leaf(m, v):
    count = jnp.sum(m.astype(jnp.int32), 0)
    return scale.astype(v.dtype) * (count >= k).astype(v.dtype) * v

  return _common.apply_delta(base, jax.tree_util.tree_map(leaf, masks, mtl), tau)
