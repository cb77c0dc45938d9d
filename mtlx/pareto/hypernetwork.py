"""Pareto HyperNetworks (PHN; Navon, Shamsian, Chechik & Fetaya, ICLR 2021).

A hypernetwork ``h_φ`` maps a preference ``r ∈ Δ_K`` to the weights of the
target network, ``θ(r) = h_φ(r)``; ``φ`` is trained on preferences drawn each
step from ``Dir(α)`` (paper: ``α = 0.2``), with either

* PHN-LS: the linear scalarization ``rᵀ L(h_φ(r))`` (:func:`phn_objective`), or
* PHN-EPO: the EPO direction for the ray of ``r`` (EPO's reading, ``L ∝ 1/r``):
  per-task gradients w.r.t. ``φ`` (K backward passes), EPO's weights
  :func:`mtlx.pareto.epo_weights` of their Gramian, then ``Σ_k α_k ∇_φ L_k``
  (:func:`phn_epo_grads`).

The hypernetwork here is an MLP ``r → hidden → … → P`` whose output is
unravelled into the target's params pytree (the paper's per-tensor linear heads
are one linear layer split by tensor, which is what the last layer is). The
last layer starts at ``W = 0`` and the target's initial params as its bias,
so ``h_φ(r) = θ₀`` for every ``r`` at step 0.

Cost: the last layer holds ``hidden × P`` weights (so PHN suits small targets,
as in the paper); one forward/backward per step (LS) or K (EPO).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from mtlx import jacobian
from mtlx import validation
from mtlx.pareto.epo import epo_weights
from mtlx.pareto.preference import sample_preferences

PyTree = Any


class Hypernetwork(NamedTuple):
  """``init(key) -> φ`` and ``apply(φ, r) -> target params``."""
  init: Callable[[jax.Array], PyTree]
  apply: Callable[[PyTree, jax.Array], PyTree]


def hypernetwork(target_params: PyTree, num_tasks: int,
                 hidden: Sequence[int] = (100, 100)) -> Hypernetwork:
  """An MLP hypernetwork ``r ∈ R^K → θ``, shaped after ``target_params`` (ReLU hidden layers)."""
  validation.require_num_tasks(num_tasks, "hypernetwork")
  flat, unravel = ravel_pytree(target_params)
  sizes = [num_tasks, *hidden]

  def init(key):
    keys = jax.random.split(key, len(sizes))
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
      w = jax.random.normal(keys[i], (a, b), flat.dtype) * jnp.sqrt(2.0 / a)
      layers.append({"w": w, "b": jnp.zeros((b,), flat.dtype)})
    layers.append({"w": jnp.zeros((sizes[-1], flat.shape[0]), flat.dtype), "b": flat})
    return layers

  def apply(phi, r):
    h = jnp.asarray(r, flat.dtype)
    for layer in phi[:-1]:
      h = jax.nn.relu(h @ layer["w"] + layer["b"])
    return unravel(h @ phi[-1]["w"] + phi[-1]["b"])

  return Hypernetwork(init, apply)


def phn_objective(hnet: Hypernetwork, loss_fn: Callable[[PyTree, Any], jax.Array], *,
                  num_tasks: int, alpha: float = 0.2, num_samples: int = 1):
  """PHN-LS: ``(φ, batch, key) -> (mean_b r_bᵀ L(h_φ(r_b)), (losses[B, K], r[B, K]))``."""
  validation.check_number(alpha, "alpha", low=0.0, low_open=True, method="phn")

  def objective(phi, batch, key):
    rs = sample_preferences(key, num_tasks, num_samples, alpha)
    losses = jax.vmap(lambda r: loss_fn(hnet.apply(phi, r), batch))(rs)
    return jnp.mean(jnp.sum(rs * losses, axis=-1)), (losses, rs)

  return objective


def phn_epo_grads(hnet: Hypernetwork, loss_fn: Callable[[PyTree, Any], jax.Array], *,
                  num_tasks: int, alpha: float = 0.2, eps: float = 1e-4):
  """PHN-EPO: ``(φ, batch, key) -> (grads, (losses[K], r[K]))`` with
  ``grads = Σ_k α_k ∇_φ L_k(h_φ(r))``, ``α`` EPO's weights for the ray of ``r``.
  Preferences are clipped below at 1e-3 (EPO needs ``r > 0``) and renormalised."""
  validation.check_number(alpha, "alpha", low=0.0, low_open=True, method="phn")

  def grads_fn(phi, batch, key):
    r = sample_preferences(key, num_tasks, None, alpha)
    r = jnp.maximum(r, 1e-3)
    r = r / jnp.sum(r)
    losses, task_grads = jacobian.value_and_jacobian(
        lambda p: loss_fn(hnet.apply(p, r), batch))(phi)
    w = epo_weights(jacobian.gramian(task_grads), losses, r, eps=eps)
    return jacobian.combine(w, task_grads), (losses, r)

  return grads_fn
