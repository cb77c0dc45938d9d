"""DB-MTL: dual-balancing multi-task learning (Lin et al., 2023)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from mtlx import validation
from mtlx.loss_weighting import base


class DBMTLState(NamedTuple):
  """``count`` updates seen; ``buffer`` the EMA of the log-loss gradients
  (params-shaped with a leading K axis)."""
  count: jax.Array
  buffer: Any


def db_mtl(beta: float = 0.9, beta_sigma: float = 0.5, eps: float = 1e-8, *,
           num_tasks: int | None = None) -> optax.GradientTransformationExtraArgs:
  """DB-MTL: log-loss scale balancing plus gradient-magnitude balancing.

  Loss part: the log transform ``L_k -> log(L_k + ε)``, whose gradient is
  ``h_k = g_k / (L_k + ε)`` (a negative finite loss counts as 0, so ``h_k`` stays
  finite). Gradient part: an EMA of the ``h_k`` with a
  decaying coefficient ``β_t = β / t^{σ}`` (``t`` = 1, 2, ... the update count),
  then every task is rescaled to the largest EMA norm:

  .. math::

     \\hat g_k ← h_k + β_t(\\hat g_k - h_k)\\quad(\\hat g_k = 0 \\text{ initially}),
     \\qquad α_k = \\frac{\\max_i \\|\\hat g_i\\|}{\\|\\hat g_k\\| + ε},
     \\qquad \\text{row } k \\text{ of the output} = α_k \\hat g_k .

  Followed by ``mtlx.linear_scalarization()`` this is the paper's update
  ``Σ_k α_k ĝ_k``; another aggregator combines the balanced rows instead. Norms
  are over all parameters (the paper/LibMTL: the shared ones; there the
  task-specific heads receive plain log-loss gradients).

  Args:
    beta: ``β`` (paper: 0.9).
    beta_sigma: ``σ`` of the decay ``β / t^σ`` (paper: 0.5).
    eps: ``ε`` inside the log and in the norm ratio (official code: 1e-8).
    num_tasks: K (required: the state holds a ``K × P`` gradient buffer).

  Returns:
    A loss-space ``optax.GradientTransformationExtraArgs`` that reads the stacked
    grads (``init(params)`` needs the params); state :class:`DBMTLState`. Not
    usable with ``mtlx.loss_weights`` (raises ``ValueError``; its loss part alone
    is ``mtlx.scale_invariant()``).

  Reference: B. Lin, W. Jiang, F. Ye, Y. Zhang, P. Chen, Y.-C. Chen, S. Liu,
  J. T. Kwok, "Dual-Balancing for Multi-Task Learning", arXiv:2308.12029, 2023.

  Cost: the K per-task gradients (K backward passes) and a ``K × P`` buffer.
  """
  validation.check_number(beta, "beta", low=0, high=1, method="db_mtl")
  validation.check_number(beta_sigma, "beta_sigma", low=0, method="db_mtl")
  validation.check_number(eps, "eps", low=0, low_open=True, method="db_mtl")
  k = validation.require_num_tasks(num_tasks, "db_mtl")
  name = "db_mtl"

  def init(params):
    if params is None or not jax.tree_util.tree_leaves(params):
      raise ValueError("db_mtl keeps an EMA of the per-task gradients: init(params) "
                       "needs the params (got no array leaves).")
    buffer = jax.tree_util.tree_map(
        lambda p: jnp.zeros((k,) + jnp.shape(p), jnp.asarray(p).dtype), params)
    return DBMTLState(jnp.zeros((), jnp.int32), buffer)

  def update(task_grads, state, params=None, *, task_losses=None, **extra):
    del params, extra
    kk = validation.num_tasks(task_grads)
    validation.check_num_tasks(kk, k, name)
    task_losses = base.check_losses(task_losses, kk, name)
    validation.check_state_structure(task_grads, state.buffer, name)
    dtype = base.compute_dtype(task_losses)
    count = optax.safe_int32_increment(state.count)
    beta_t = beta / count.astype(dtype) ** beta_sigma
    inv = 1.0 / (jnp.maximum(task_losses.astype(dtype), 0.0) + eps)
    inv = inv + jnp.zeros_like(inv) * task_losses.astype(dtype)  # inf loss -> NaN, not 0
    h = base.scale_rows(inv, task_grads)

    def ema(hh, buf):
      acc = jnp.promote_types(hh.dtype, jnp.float32)
      out = hh.astype(acc) + beta_t.astype(acc) * (buf.astype(acc) - hh.astype(acc))
      return out.astype(buf.dtype)

    buffer = jax.tree_util.tree_map(ema, h, state.buffer)
    sq = [jnp.sum(jnp.square(b.astype(jnp.promote_types(b.dtype, jnp.float32))),
                  axis=tuple(range(1, b.ndim))) for b in jax.tree_util.tree_leaves(buffer)]
    norms = jnp.sqrt(sum(sq[1:], sq[0])).astype(dtype)
    alphas = jnp.max(norms) / (norms + eps)
    out = base.scale_rows(alphas, buffer)
    out = jax.tree_util.tree_map(lambda o, g: o.astype(g.dtype), out, task_grads)
    return out, DBMTLState(count, buffer)

  return optax.GradientTransformationExtraArgs(init, validation.guarded_update(update, name))
