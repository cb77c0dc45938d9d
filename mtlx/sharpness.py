"""Task-based flat regions: per-task sharpness-aware gradients, aggregated in two parts.

Phan et al., "Improving Multi-task Learning via Seeking Task-based Flat Regions"
(2022): every task takes its own SAM perturbation and the worst-case gradient is split
into a loss part and a flatness part, each aggregated by a gradient-space method:

.. math::
   ε_k = ρ\\, g_k / \\|g_k\\|, \\qquad g^{SAM}_k = ∇L_k(θ + ε_k), \\qquad
   d = A(\\{g_k\\}) + A'(\\{g^{SAM}_k - g_k\\})

with ``A`` and ``A'`` any gradient-space methods (by default the same one). For K = 1
and linear scalarization ``d = g^{SAM}``: plain SAM (Foret et al., ICLR 2021; in optax
as ``optax.contrib.sam``). With ρ = 0 the flatness part is ``A'(0)``, i.e. 0 for every
weighting, and the step is the plain method's.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from mtlx import jacobian
from mtlx import validation

PyTree = Any


def value_and_sharpness_jacobian(loss_fn: Callable[..., Any], rho: float, *,
                                 chunk_size: int | None = None, eps: float = 1e-12
                                 ) -> Callable[..., Any]:
  """``f(params, *args) -> (losses, task_grads, sharp_task_grads)``.

  ``task_grads`` is :func:`mtlx.value_and_jacobian`'s ``J``; row k of
  ``sharp_task_grads`` is ``∇L_k`` at ``θ + ρ g_k / (‖g_k‖ + eps)`` (the norm over
  every leaf), one perturbed parameter set per task, vmapped.

  Args:
    loss_fn: ``(params, *args) -> losses[K]``.
    rho: the perturbation radius ρ ≥ 0 (Phan et al. tune it per dataset; SAM's
      usual 0.05).
    chunk_size: for the first Jacobian (see :func:`mtlx.value_and_jacobian`).
    eps: guards the norm of a zero gradient.

  Cost: a second Jacobian: K more forward and K more backward passes (the k-th
  perturbed forward is vmapped over k; memory K × the activations and K × P for
  the second Jacobian).
  """
  validation.check_number(rho, "rho", low=0, method="value_and_sharpness_jacobian")
  value_and_jac = jacobian.value_and_jacobian(loss_fn, chunk_size=chunk_size)

  def wrapped(params, *args):
    losses, task_grads = value_and_jac(params, *args)
    k = losses.shape[0]
    norms = jacobian.task_norms(jacobian.gramian(task_grads))

    def sharp_row(i):
      scale = rho / (norms[i] + eps)
      moved = jax.tree_util.tree_map(lambda p, g: p + (scale * g[i]).astype(p.dtype),
                                     params, task_grads)
      _, vjp_fn = jax.vjp(lambda p: loss_fn(p, *args), moved)
      return vjp_fn(jax.nn.one_hot(i, k, dtype=losses.dtype))[0]

    return losses, task_grads, jax.vmap(sharp_row)(jnp.arange(k))

  return wrapped


class FlatRegionsState(NamedTuple):
  """States of the loss-part and the flatness-part methods."""
  loss_part: Any
  flat_part: Any


def flat_regions(method: optax.GradientTransformation,
                 flat_method: optax.GradientTransformation | None = None
                 ) -> optax.GradientTransformationExtraArgs:
  """The two-part aggregation of task-based flat regions.

  ``update(task_grads, state, params, *, task_grads_sharp, **extras)`` returns
  ``method(J) + flat_method(J^{SAM} - J)``; ``task_grads_sharp`` comes from
  :func:`value_and_sharpness_jacobian`. Other extras (``task_losses`` ...) reach
  both methods. ``flat_method`` defaults to ``method`` (with its own state).

  Raises:
    ValueError: if ``task_grads_sharp`` is missing or shaped unlike ``task_grads``.

  Cost: the method twice (two Gramians for a Gramian method) on top of the second
  Jacobian of :func:`value_and_sharpness_jacobian`.
  """
  second = method if flat_method is None else flat_method

  def init(params):
    return FlatRegionsState(method.init(params), second.init(params))

  def update(task_grads, state, params=None, *, task_grads_sharp=None, **extra):
    if task_grads_sharp is None:
      raise ValueError("flat_regions reads the perturbed task grads: pass "
                       "task_grads_sharp= (from mtlx.value_and_sharpness_jacobian).")
    s1 = jax.tree_util.tree_structure(task_grads)
    s2 = jax.tree_util.tree_structure(task_grads_sharp)
    shapes1 = [jnp.shape(x) for x in jax.tree_util.tree_leaves(task_grads)]
    shapes2 = [jnp.shape(x) for x in jax.tree_util.tree_leaves(task_grads_sharp)]
    if s1 != s2 or shapes1 != shapes2:
      raise ValueError(f"task_grads_sharp has leaf shapes {shapes2}; expected those of "
                       f"task_grads {shapes1}.")
    flat_parts = jax.tree_util.tree_map(lambda s, g: s - g, task_grads_sharp, task_grads)
    d_loss, loss_state = method.update(task_grads, state.loss_part, params, **extra)
    d_flat, flat_state = second.update(flat_parts, state.flat_part, params, **extra)
    updates = jax.tree_util.tree_map(lambda a, b: a + b, d_loss, d_flat)
    return updates, FlatRegionsState(loss_state, flat_state)

  return optax.GradientTransformationExtraArgs(init, update)
