"""Sparse top-k mixture-of-experts MLP with a load-balancing loss.

``E`` two-layer GELU experts ``f_e(x) = gelu(x W1_e + b1_e) W2_e + b2_e`` and a
router ``p(x) = softmax(x W_r)`` over the experts. Each token goes to the ``k``
experts of largest ``p``, with weights renormalised over those ``k``
(Mixtral; for ``k = 1`` the Switch Transformer's gate is ``p`` itself, here 1)::

  y(x) = Σ_{e ∈ topk(p(x))} g_e(x) f_e(x),   g_e = p_e / Σ_{e' ∈ topk} p_e'

With per-task routers (``num_routers = K``, the task-level MoE / M³ViT setting) the
router of stream ``s`` (task ``s``) is ``W_r[s]``; the experts are shared.

**Load-balancing auxiliary loss** (Switch Transformer, Fedus et al. JMLR 2022,
eq. 4, with GShard's top-k count), per router over its ``N`` tokens::

  aux = E · Σ_e f_e · P_e,   f_e = (1 / (N k)) Σ_n [e ∈ topk(p(x_n))],
                             P_e = (1 / N) Σ_n p_e(x_n)

(1 for a perfectly uniform router; averaged over routers). It is an *extra* term
of the objective, outside the K task losses: models return it as
``outputs['aux/moe_balance']`` (see :func:`mtlx.models.transformer.aux_losses`)
and the training step adds ``aux_weight × aux`` to the combined update (a
plain gradient, not a task the MTO method balances).

Dispatch: every expert is evaluated on every token and combined with the sparse
gates (exact, simple, and the autogram engine sees plain ``dot_general`` s over
``[E, ...]`` kernels); its FLOPs are ``E/k`` times a capacity-based dispatch, so
it is meant for the tests and the engine benchmarks, not for large ``E``.
"""

from __future__ import annotations

import math

from flax import nnx
import jax
import jax.numpy as jnp


def balance_loss(probs: jax.Array, top_idx: jax.Array) -> jax.Array:
  """Switch/GShard load-balancing loss ``E Σ_e f_e P_e`` for one router.

  Args:
    probs: ``[N, E]`` router softmax.
    top_idx: ``[N, k]`` chosen experts.
  """
  n, e = probs.shape
  k = top_idx.shape[-1]
  counts = jnp.sum(jax.nn.one_hot(top_idx, e, dtype=probs.dtype), axis=(0, 1))
  frac = counts / (n * k)
  mean_p = jnp.mean(probs, axis=0)
  return e * jnp.sum(frac * mean_p)


class SparseMoEMLP(nnx.Module):
  """Top-``k`` MoE MLP on ``[S, ..., D]`` streams (see the module docstring).

  Args:
    dim: model width ``D``.
    hidden: expert hidden width.
    num_experts: ``E``.
    top_k: experts per token ``k`` (``1 ≤ k ≤ E``).
    num_routers: 1 (shared router) or ``S`` (one per stream / task).
    dtype: compute dtype (the router softmax and the aux loss are float32).
  """

  def __init__(self, dim: int, hidden: int, *, num_experts: int, top_k: int = 2,
               num_routers: int = 1, dtype=jnp.float32, rngs: nnx.Rngs):
    if num_experts < 1 or not 1 <= top_k <= num_experts:
      raise ValueError(f"num_experts={num_experts}, top_k={top_k}; expected "
                       "1 <= top_k <= num_experts.")
    self.num_experts, self.top_k, self.num_routers = num_experts, top_k, num_routers
    self.dtype = jnp.dtype(dtype)
    e = num_experts
    self.router = nnx.Param(jax.random.normal(rngs.params(), (num_routers, dim, e),
                                              jnp.float32) / math.sqrt(dim))
    self.w1 = nnx.Param(jax.random.normal(rngs.params(), (e, dim, hidden), jnp.float32)
                        / math.sqrt(dim))
    self.b1 = nnx.Param(jnp.zeros((e, hidden), jnp.float32))
    self.w2 = nnx.Param(jax.random.normal(rngs.params(), (e, hidden, dim), jnp.float32)
                        / math.sqrt(hidden))
    self.b2 = nnx.Param(jnp.zeros((e, dim), jnp.float32))

  def route(self, x):
    """``x [S, N, D] -> (probs [S, N, E] float32, top_idx [S, N, k], gates [S, N, E])``;
    ``gates`` is zero outside the top-k and sums to 1 over it."""
    s = x.shape[0]
    w_r = self.router.value
    if self.num_routers == 1:
      w_r = jnp.broadcast_to(w_r, (s,) + w_r.shape[1:])
    elif self.num_routers != s:
      raise ValueError(f"SparseMoEMLP has {self.num_routers} routers but got {s} streams; "
                       "expected one router per stream.")
    acc = jnp.promote_types(x.dtype, jnp.float32)
    logits = jnp.einsum("snd,sde->sne", x, w_r.astype(x.dtype)).astype(acc)
    probs = jax.nn.softmax(logits, axis=-1)
    top_p, top_idx = jax.lax.top_k(probs, self.top_k)
    top_g = top_p / jnp.sum(top_p, axis=-1, keepdims=True)
    gates = jnp.sum(jax.nn.one_hot(top_idx, self.num_experts, dtype=acc)
                    * top_g[..., None], axis=-2)
    return probs, top_idx, gates

  def __call__(self, x):
    """``x [S, ..., D] -> (y [S, ..., D], aux)`` with the balance loss ``aux`` (float32)."""
    shape = x.shape
    x = x.astype(self.dtype).reshape(shape[0], -1, shape[-1])
    probs, top_idx, gates = self.route(x)
    h = jnp.einsum("snd,edh->sneh", x, self.w1.value.astype(self.dtype))
    h = jax.nn.gelu(h + self.b1.value.astype(self.dtype))
    out = jnp.einsum("sneh,ehd->sned", h, self.w2.value.astype(self.dtype))
    out = out + self.b2.value.astype(self.dtype)
    y = jnp.einsum("sned,sne->snd", out, gates.astype(self.dtype))
    aux = jnp.mean(jax.vmap(balance_loss)(probs, top_idx))
    return y.reshape(shape), aux
