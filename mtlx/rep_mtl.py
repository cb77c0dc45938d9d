"""Rep-MTL: representation-level task saliency as a regulariser (Wang, Li & Xu, ICCV 2025).

The task saliency of sample b is the gradient of task k's loss w.r.t. the shared
representation, ``S_{k,b} = ∂L_k/∂z_b`` (the rows of
:func:`mtlx.value_and_representation_jacobian`). Rep-MTL keeps the plain
(equal-weight) loss and adds two penalties on the saliencies:

* task-specific saliency regulation (TSR): for every sample and feature, the
  distribution over tasks of the saliency magnitudes,
  ``p_{k|b,f} = |S_{k,b,f}| / Σ_l |S_{l,b,f}|``, should not be blurred: penalise its
  entropy, ``R_TSR = mean_{b,f} H(p_{·|b,f}) / log K`` (in [0, 1]);
* cross-task saliency alignment (CSA): the saliencies of the same sample under two
  tasks should be closer to each other than to other samples' (an InfoNCE over the
  batch for every ordered task pair, on unit-normalised saliency vectors
  ``u_{k,b}``, temperature τ): ``R_CSA = mean_{k≠l} mean_b [logsumexp_{b'} ⟨u_{k,b},
  u_{l,b'}⟩/τ - ⟨u_{k,b}, u_{l,b}⟩/τ]``.

Objective: ``Σ_k L_k + λ_TSR R_TSR + λ_CSA R_CSA``; its gradient differentiates
through the saliencies (a second-order term through the heads only).

Conventions: the paper aggregates saliencies channel-wise into spatial maps for dense
tasks and does not publish default weights in the abstract; here ``z`` is flattened
per sample (features ``f``), and λ are arguments (0.1 and 0.1 by default, ours).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from mtlx import validation

PyTree = Any


def _per_sample(rep_grads: PyTree) -> jax.Array:
  """``[K, B, F]`` from a pytree of ``[K, B, ...]`` saliency leaves."""
  leaves = jax.tree_util.tree_leaves(rep_grads)
  k, b = leaves[0].shape[:2]
  return jnp.concatenate([jnp.reshape(x, (k, b, -1)) for x in leaves], axis=-1)


def rep_mtl_penalties(rep_grads: PyTree, *, temperature: float = 0.1,
                      eps: float = 1e-12) -> tuple[jax.Array, jax.Array]:
  """``(R_TSR, R_CSA)`` of the saliencies ``rep_grads`` (leaves ``[K, B, ...]``).

  Both are 0 for K = 1. Cost: ``O(K B F + K² B² F)`` (the pairwise similarities).
  """
  validation.check_number(temperature, "temperature", low=0, low_open=True,
                          method="rep_mtl_penalties")
  s = _per_sample(rep_grads)
  k = s.shape[0]
  if k == 1:
    zero = jnp.zeros((), s.dtype)
    return zero, zero
  a = jnp.abs(s)
  p = a / (jnp.sum(a, axis=0, keepdims=True) + eps)
  entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0), axis=0)
  tsr = jnp.mean(entropy) / jnp.log(k)
  # ‖s‖ with a finite gradient at s = 0 (a sample whose loss saturated has an exactly
  # zero saliency; jnp.linalg.norm's gradient there is NaN): same value otherwise.
  sq = jnp.sum(s * s, axis=-1, keepdims=True)
  norm = jnp.where(sq > 0, jnp.sqrt(jnp.where(sq > 0, sq, 1.0)), 0.0)
  u = s / (norm + eps)
  logits = jnp.einsum("kbf,lcf->klbc", u, u) / temperature  # [K, K, B, B]
  nce = jax.nn.logsumexp(logits, axis=-1) - jnp.diagonal(logits, axis1=-2, axis2=-1)
  off = 1.0 - jnp.eye(k, dtype=s.dtype)
  csa = jnp.sum(jnp.mean(nce, axis=-1) * off) / (k * (k - 1))
  return tsr, csa


def rep_mtl_objective(encoder_fn: Callable[..., PyTree], heads_fn: Callable[..., jax.Array], *,
                      tsr_weight: float = 0.1, csa_weight: float = 0.1,
                      temperature: float = 0.1) -> Callable[..., Any]:
  """``f(enc_params, head_params, x, *head_args) -> (objective, aux)``.

  ``objective = Σ_k L_k + tsr_weight R_TSR + csa_weight R_CSA`` with the saliencies
  ``∂L_k/∂z`` taken differentiably (``jax.grad`` of ``f`` w.r.t. both parameter sets
  gives Rep-MTL's update under linear scalarization); ``aux`` is
  ``{'losses': [K], 'tsr': R_TSR, 'csa': R_CSA}``.

  Cost: one forward pass, K backward passes through the heads for the saliencies
  (``K × |z|`` memory), and their differentiation: about twice the representation
  engine's cost.
  """
  validation.check_number(tsr_weight, "tsr_weight", low=0, method="rep_mtl_objective")
  validation.check_number(csa_weight, "csa_weight", low=0, method="rep_mtl_objective")

  def objective(enc_params, head_params, x, *head_args):
    z = encoder_fn(enc_params, x)
    losses, vjp_fn = jax.vjp(lambda zz: heads_fn(head_params, zz, *head_args), z)
    k = losses.shape[0]
    saliency = jax.vmap(lambda e: vjp_fn(e)[0])(jnp.eye(k, dtype=losses.dtype))
    tsr, csa = rep_mtl_penalties(saliency, temperature=temperature)
    total = jnp.sum(losses) + tsr_weight * tsr + csa_weight * csa
    return total, {"losses": losses, "tsr": tsr, "csa": csa}

  return objective


def rep_mtl_heads(heads_fn: Callable[..., jax.Array], *, tsr_weight: float = 0.1,
                  csa_weight: float = 0.1, temperature: float = 0.1) -> Callable[..., jax.Array]:
  """``heads_fn`` with Rep-MTL's penalties spread over the K losses (for the trainer).

  ``f(head_params, z, *args) = L(z) + (λ_TSR R_TSR + λ_CSA R_CSA) / K`` with the
  saliencies ``∂L_k/∂z`` taken inside (differentiably), so ``Σ_k f_k`` is
  :func:`rep_mtl_objective`'s objective and linear scalarization of ``f`` is
  Rep-MTL's update on every engine; on the ``representation`` engine the encoder
  gets ``(∂z/∂θ)ᵀ ∂(Σ_k f_k)/∂z``, exactly the objective's encoder gradient (the
  penalties reach the encoder only through ``z``). The losses it returns (and the
  trainer logs) include the penalty share; the eval losses do not.

  Cost: K VJPs through the heads in every forward and their differentiation.
  """
  validation.check_number(tsr_weight, "tsr_weight", low=0, method="rep_mtl_heads")
  validation.check_number(csa_weight, "csa_weight", low=0, method="rep_mtl_heads")

  def heads(head_params, z, *args):
    losses, vjp_fn = jax.vjp(lambda zz: heads_fn(head_params, zz, *args), z)
    k = losses.shape[0]
    saliency = jax.vmap(lambda e: vjp_fn(e)[0])(jnp.eye(k, dtype=losses.dtype))
    tsr, csa = rep_mtl_penalties(saliency, temperature=temperature)
    return losses + (tsr_weight * tsr + csa_weight * csa) / k

  return heads
