"""Learned merging coefficients: AdaMerging and aTLAS, trained with any optax optimizer.

Both learn the coefficients ``λ`` of a task-arithmetic merge

.. math::  θ(λ) = θ₀ + \\sum_k λ_k^{(b)} τ_k^{(b)}

by gradient descent on a user loss of the merged params; only the ``λ`` (a few
numbers per task) are trained, the task vectors stay fixed. The loop is one
``lax.scan`` of ``num_steps`` optimizer steps, so the whole call traces once and
runs under ``jit``.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax
import optax

from mtlx import validation
from mtlx.merging import _common

PyTree = Any

GRANULARITIES = ("task", "layer")


def entropy(logits: jax.Array) -> jax.Array:
  """Mean Shannon entropy ``−Σ_c p_c log p_c`` of ``softmax(logits)`` over the batch.

  AdaMerging's unsupervised surrogate: summed over tasks (each task's unlabeled
  batch through its own head) it is the loss whose minimisation picks the
  merging coefficients.
  """
  logp = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.mean(jnp.sum(jnp.exp(logp) * logp, axis=-1))


def merge_with_coefficients(base: PyTree, tau: PyTree, coefficients: Any) -> PyTree:
  """``θ₀ + Σ_k λ_k τ_k`` for stacked ``τ`` and task-wise ``[K]`` or per-leaf coefficients.

  ``coefficients`` is a ``[K]`` array (one per task) or a pytree shaped like the
  params whose every leaf is a ``[K]`` array (one per task per leaf/block).
  """
  if isinstance(coefficients, jax.Array) or hasattr(coefficients, "shape"):
    delta = _common.weighted_sum(jnp.asarray(coefficients), tau)
  else:
    delta = jax.tree_util.tree_map(
        lambda c, t: jnp.tensordot(c.astype(t.dtype), t, axes=1), coefficients, tau)
  return _common.apply_delta(base, delta)


def _learn(base, finetuned, loss_fn, data, init_coeffs, optimizer, num_steps, clip):
  tau = _common.stack_task_vectors(base, finetuned)
  if data is not None:
    sizes = {jnp.shape(x)[0] for x in jax.tree_util.tree_leaves(data)}
    if len(sizes) != 1:
      raise ValueError(f"data leaves disagree on the leading (batch index) axis: "
                       f"{sorted(sizes)}; expected one number of batches.")
    num_batches = sizes.pop()

  def effective(raw):
    if clip is None:
      return raw
    return jax.tree_util.tree_map(lambda c: jnp.clip(c, clip[0], clip[1]), raw)

  # Coefficients are learned on the finite entries of the task vectors: a NaN/inf
  # entry of one fine-tuned model would otherwise make every loss, gradient and
  # coefficient NaN; it stays non-finite in the final merge, at its position only.
  tau_learn = jax.tree_util.tree_map(lambda t: jnp.where(jnp.isfinite(t), t, 0.0), tau)

  def objective(raw, batch):
    merged = merge_with_coefficients(base, tau_learn, effective(raw))
    return loss_fn(merged) if batch is None else loss_fn(merged, batch)

  def step(carry, i):
    raw, opt_state = carry
    batch = None if data is None else jax.tree_util.tree_map(
        lambda x: x[i % num_batches], data)
    loss, grads = jax.value_and_grad(objective)(raw, batch)
    updates, new_opt_state = optimizer.update(grads, opt_state, raw)
    new_raw = optax.apply_updates(raw, updates)
    # a step with a non-finite loss or gradient (a bad batch) is skipped
    new_raw, new_opt_state = validation.guard_step(
        None, (new_raw, new_opt_state), (raw, opt_state), loss, grads)[1]
    return (new_raw, new_opt_state), loss

  (raw, _), _ = lax.scan(step, (init_coeffs, optimizer.init(init_coeffs)),
                         jnp.arange(num_steps))
  coeffs = effective(raw)
  return merge_with_coefficients(base, tau, coeffs), coeffs


def _check_steps(num_steps):
  if not isinstance(num_steps, int) or num_steps < 0:
    raise ValueError(f"num_steps={num_steps!r}; expected a non-negative int.")


def adamerging(base: PyTree, finetuned: Sequence[PyTree],
               loss_fn: Callable[..., jax.Array], data: PyTree | None = None, *,
               granularity: str = "layer", init: float = 0.3,
               optimizer: optax.GradientTransformation | None = None,
               num_steps: int = 500, clip: tuple[float, float] | None = (0.0, 1.0)):
  """AdaMerging: task-wise or layer-wise coefficients by entropy minimisation.

  .. math::  θ(λ) = θ₀ + \\sum_k λ_k^{l} τ_k^{l}, \\qquad
     λ^\\star = \\arg\\min_λ \\sum_t \\mathbb{E}_{x \\sim \\mathcal{D}_t}
     H\\big(f_t(x; θ(λ))\\big)

  ``granularity="task"`` learns one ``λ_k`` per task; ``"layer"`` one per task
  per params leaf (``λ^l_k``). ``loss_fn`` is the user's objective of the merged
  params, usually the summed prediction entropy (:func:`entropy`) of every
  task's unlabeled batch through its head; any differentiable loss works.

  Args:
    base: the pre-trained params ``θ₀``.
    finetuned: a list of ``K`` fine-tuned params pytrees shaped like ``base``.
    loss_fn: ``loss_fn(merged_params, batch) -> scalar`` (or
      ``loss_fn(merged_params)`` when ``data`` is ``None``).
    data: ``None`` or a pytree of arrays whose leading axis indexes batches;
      step ``i`` uses batch ``i mod num_batches``.
    granularity: ``"task"`` or ``"layer"`` (default, the paper's best).
    init: initial coefficient, default 0.3 (the paper's, task arithmetic's λ).
    optimizer: any optax optimizer; default ``optax.adam(1e-3)`` (the paper's
      Adam, lr 1e-3, betas (0.9, 0.999)).
    num_steps: optimizer steps, default 500 (the paper's).
    clip: the coefficients are clipped to this range in the forward pass (as
      the reference code's ``clamp(λ, 0, 1)``); ``None`` disables.

  Non-finite inputs: the coefficients are learned on the finite entries of the
  task vectors, and a step whose loss or gradient is non-finite is skipped, so a
  NaN/inf entry of one fine-tuned model stays non-finite at its own position in
  the merge and does not spread (the same holds for :func:`atlas`).

  Returns:
    ``(merged_params, coefficients)``: coefficients ``[K]`` (task-wise) or a
    params-shaped pytree of ``[K]`` vectors (layer-wise), after clipping.

  Raises:
    ValueError: on structure/shape mismatch, unknown ``granularity`` (listing the
      valid ones), a bad ``num_steps`` or ``data`` leaves with different numbers
      of batches.

  Reference: E. Yang et al., "AdaMerging: Adaptive Model Merging for Multi-Task
  Learning", ICLR 2024.

  Cost: ``num_steps`` forward and backward passes of ``loss_fn`` through the
  merged model (plus ``O(K P)`` to rebuild it each step); memory ``K P`` for the
  task vectors.
  """
  validation.check_choice(granularity, GRANULARITIES, "granularity")
  _check_steps(num_steps)
  k = _common.check_finetuned(base, finetuned)
  if granularity == "task":
    init_coeffs = jnp.full((k,), init, jnp.float32)
  else:
    init_coeffs = jax.tree_util.tree_map(lambda _: jnp.full((k,), init, jnp.float32), base)
  optimizer = optax.adam(1e-3) if optimizer is None else optimizer
  return _learn(base, finetuned, loss_fn, data, init_coeffs, optimizer, num_steps, clip)


def atlas(base: PyTree, finetuned: Sequence[PyTree],
          loss_fn: Callable[..., jax.Array], data: PyTree | None = None, *,
          init: float = 0.0, optimizer: optax.GradientTransformation | None = None,
          num_steps: int = 500):
  """aTLAS: one learned coefficient per parameter block per task vector.

  .. math::  θ(Λ) = θ₀ + \\sum_k \\sum_b λ_{k,b}\\, τ_k^{(b)}, \\qquad
     Λ^\\star = \\arg\\min_Λ \\mathcal{L}(θ(Λ))

  Each parameter block ``b`` (a params leaf: a weight matrix or bias) of each
  task vector gets its own unconstrained coefficient, so the composition is
  anisotropic; ``\\mathcal{L}`` is any differentiable loss of the merged params,
  typically cross-entropy on a few labeled validation examples (few-shot) or an
  unsupervised loss (test-time adaptation).

  Args:
    base: the pre-trained params ``θ₀``.
    finetuned: a list of ``K`` fine-tuned params pytrees shaped like ``base``.
    loss_fn: ``loss_fn(merged_params, batch) -> scalar`` (or
      ``loss_fn(merged_params)`` when ``data`` is ``None``).
    data: ``None`` or a pytree of arrays whose leading axis indexes batches.
    init: initial coefficient, default 0.0 (start from the pre-trained model).
    optimizer: any optax optimizer; default ``optax.adam(1e-3)``.
    num_steps: optimizer steps, default 500.

  Returns:
    ``(merged_params, coefficients)`` with coefficients a params-shaped pytree of
    ``[K]`` vectors (unconstrained).

  Raises:
    ValueError: on structure/shape mismatch or a bad ``num_steps``.

  Reference: F. Z. Zhang et al., "Knowledge Composition using Task Vectors with
  Learned Anisotropic Scaling", NeurIPS 2024.

  Cost: as :func:`adamerging` (``K ×`` number of leaves coefficients).
  """
  _check_steps(num_steps)
  k = _common.check_finetuned(base, finetuned)
  init_coeffs = jax.tree_util.tree_map(lambda _: jnp.full((k,), init, jnp.float32), base)
  optimizer = optax.adam(1e-3) if optimizer is None else optimizer
  return _learn(base, finetuned, loss_fn, data, init_coeffs, optimizer, num_steps, None)
