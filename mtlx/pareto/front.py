"""Shared pieces of whole-front learning: preference-weighted objectives and evaluation.

A *front model* maps a preference ``r`` to a point of the Pareto set. PaMaL
(:mod:`mtlx.pareto.manifold`), PaLoRA (:mod:`mtlx.pareto.palora`), Pareto
HyperNetworks (:mod:`mtlx.pareto.hypernetwork`) and Rewarded soups
(:mod:`mtlx.pareto.soups`) produce *parameters* ``θ(r)`` of an ordinary model;
COSMOS (:mod:`mtlx.pareto.cosmos`) instead feeds ``r`` to the model as an input.
Each method's training objective is a scalar function of the front model's own
parameters, so any optax optimizer trains it.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

PyTree = Any


def convex_combination(stacked: PyTree, preference: jax.Array) -> PyTree:
  """``Σ_k r_k θ_k`` for a pytree whose leaves have a leading K axis."""
  r = jnp.asarray(preference)

  def leaf(x):
    w = r.astype(jnp.promote_types(x.dtype, jnp.float32))
    return jnp.tensordot(w, x.astype(w.dtype), axes=1).astype(x.dtype)

  return jax.tree_util.tree_map(leaf, stacked)


def linear_objective(losses: jax.Array, preferences: jax.Array) -> jax.Array:
  """``mean_b r_bᵀ L_b`` for losses and preferences of shape ``[B, K]`` (or ``[K]``)."""
  return jnp.mean(jnp.sum(jnp.atleast_2d(preferences) * jnp.atleast_2d(losses), axis=-1))


def front_losses(params_at: Callable[[PyTree, jax.Array], PyTree], front_params: PyTree,
                 preferences: jax.Array, loss_fn: Callable[[PyTree], jax.Array]) -> jax.Array:
  """``[N, K]`` losses ``loss_fn(θ(r_n))`` of a front model at ``N`` preferences (vmapped)."""
  return jax.vmap(lambda r: loss_fn(params_at(front_params, r)))(jnp.asarray(preferences))
