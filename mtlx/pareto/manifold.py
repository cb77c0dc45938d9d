"""Pareto Manifold Learning (PaMaL; Dimitriadis, Frossard & Fleuret, ICML 2023).

A weight-space ensemble of ``K`` anchors ``θ_1..θ_K`` (one per task, initialised
independently); the model at a preference ``r ∈ Δ_K`` is their convex combination

.. math::  θ(r) = \\sum_k r_k θ_k,

and the anchors are trained jointly on ``E_{r ∼ Dir(α)}[ r^T L(θ(r)) ]``, estimated
each step with ``num_samples`` preferences (the paper's "window"; one forward and
backward pass each). Preferences are read as linear-scalarization weights. The
paper's optional multi-forward regularisation and loss/gradient balancing are
not included. Cost: K times the parameters of one model; ``num_samples``
forward/backward passes per step; one model's cost at inference.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from mtlx import validation
from mtlx.pareto.front import convex_combination
from mtlx.pareto.front import linear_objective
from mtlx.pareto.preference import sample_preferences

PyTree = Any


def pamal_init(init_fn: Callable[[jax.Array], PyTree], key: jax.Array,
               num_tasks: int) -> PyTree:
  """``K`` independently initialised anchors, stacked on a leading K axis
  (``init_fn(key) -> params``, called once per anchor on the host, so it may
  build a model; the paper's ``reinit_flag=True``)."""
  validation.require_num_tasks(num_tasks, "pamal_init")
  anchors = [init_fn(k) for k in jax.random.split(key, num_tasks)]
  return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *anchors)


def pamal_params(anchors: PyTree, preference: jax.Array) -> PyTree:
  """The model at ``r``: ``θ(r) = Σ_k r_k θ_k``."""
  return convex_combination(anchors, preference)


def pamal_objective(loss_fn: Callable[[PyTree, Any], jax.Array], *, num_tasks: int,
                    num_samples: int = 1, alpha: float = 1.0):
  """PaMaL's training objective ``(anchors, batch, key) -> (scalar, (losses[B, K], r[B, K]))``.

  ``loss_fn(params, batch) -> losses[K]`` is the ordinary multi-task loss of one
  model. ``alpha``: the Dirichlet concentration of the sampled preferences (the
  paper's default 1, uniform on the simplex). Differentiate the scalar with
  ``jax.grad(..., has_aux=True)`` and feed any optax optimizer.
  """
  validation.require_num_tasks(num_tasks, "pamal_objective")
  validation.check_number(num_samples, "num_samples", low=1, integer=True, method="pamal")
  validation.check_number(alpha, "alpha", low=0.0, low_open=True, method="pamal")

  def objective(anchors, batch, key):
    rs = sample_preferences(key, num_tasks, num_samples, alpha)
    losses = jax.vmap(lambda r: loss_fn(pamal_params(anchors, r), batch))(rs)
    return linear_objective(losses, rs), (losses, rs)

  return objective
