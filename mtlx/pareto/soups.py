"""Rewarded soups: a front from weight interpolation of fine-tuned models
(Ramé et al., "Rewarded soups: towards Pareto-optimal alignment by interpolating
weights fine-tuned on diverse rewards", NeurIPS 2023).

Fine-tune one model per task from a shared initialisation ``θ₀``; the model at
a preference ``r ∈ Δ_K`` is the interpolation

.. math::  θ(r) = \\sum_k r_k θ_k = θ_0 + \\sum_k r_k (θ_k - θ_0),

i.e. task arithmetic (:func:`mtlx.merging.task_arithmetic`) with the
coefficients ``r``. It works when the fine-tunes stay linearly mode connected
(shared pre-training, short fine-tuning). Cost: K fine-tunings; no extra
training for the front; one model at inference.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from mtlx import merging

PyTree = Any


def soup(base: PyTree, finetuned: Sequence[PyTree], preference: jax.Array) -> PyTree:
  """``θ(r) = θ₀ + Σ_k r_k (θ_k - θ₀)`` (``= Σ_k r_k θ_k`` on the simplex)."""
  return merging.task_arithmetic(base, list(finetuned), scaling=jnp.asarray(preference))


def soup_front(base: PyTree, finetuned: Sequence[PyTree], preferences: jax.Array,
               loss_fn: Callable[[PyTree], jax.Array]) -> jax.Array:
  """``[N, K]`` losses of the soups at ``N`` preferences (vmapped)."""
  return jax.vmap(lambda r: loss_fn(soup(base, finetuned, r)))(jnp.asarray(preferences))
