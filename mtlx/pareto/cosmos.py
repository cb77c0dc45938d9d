"""COSMOS (Ruchte & Grabocka, "Scalable Pareto Front Approximation for Deep
Multi-Objective Learning", ICDM 2021).

One ordinary network that takes the preference ``r`` as an extra input (in the
paper: ``K`` constant channels appended to the image,
:func:`condition_on_preference`), trained on preferences drawn each step from
``Dir(α)`` (paper: ``α = 1.2``) with the cosine-penalised scalarization

.. math::  s(L; r) = r^T L - λ\\, \\frac{r^T L}{\\|r\\|\\,\\|L\\|}

(:func:`mtlx.pareto.cosine_penalty`; its gradient weights are
:func:`mtlx.pareto.cosine_penalty_weights`). At test time the same weights give
the front by varying the input ``r``. Cost: one model (plus ``K`` input
channels); one forward/backward per sampled preference.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from mtlx import validation
from mtlx.pareto.preference import sample_preferences

PyTree = Any


def condition_on_preference(x: jax.Array, preference: jax.Array) -> jax.Array:
  """Appends ``r`` to the last (feature/channel) axis of ``x``, broadcast over the others."""
  r = jnp.asarray(preference, x.dtype)
  return jnp.concatenate([x, jnp.broadcast_to(r, x.shape[:-1] + r.shape)], axis=-1)


def cosmos_objective(loss_fn: Callable[[PyTree, Any, jax.Array], jax.Array], *,
                     num_tasks: int, penalty: float = 1.0, alpha: float = 1.2,
                     num_samples: int = 1):
  """COSMOS's objective ``(params, batch, key) -> (scalar, (losses[B, K], r[B, K]))``.

  ``loss_fn(params, batch, r) -> losses[K]`` evaluates the network with ``r`` as
  an input. ``penalty``: ``λ`` (tuned per data set in the paper).
  """
  validation.require_num_tasks(num_tasks, "cosmos_objective")
  validation.check_number(penalty, "penalty", low=0.0, method="cosmos")
  validation.check_number(alpha, "alpha", low=0.0, low_open=True, method="cosmos")

  def one(params, batch, r):
    losses = loss_fn(params, batch, r)
    cos = jnp.dot(r, losses) / (jnp.linalg.norm(r) * jnp.linalg.norm(losses))
    return jnp.dot(r, losses) - penalty * cos, losses

  def objective(params, batch, key):
    rs = sample_preferences(key, num_tasks, num_samples, alpha)
    values, losses = jax.vmap(lambda r: one(params, batch, r))(rs)
    return jnp.mean(values), (losses, rs)

  return objective
