"""Per-task losses from per-example (or per-token) losses under data imbalance.

MFTCoder (Liu et al., "MFTCoder: Boosting Code LLMs with Multitask Fine-Tuning",
KDD 2024) fine-tunes one model on tasks with very different numbers of examples and
tokens. Averaging the token losses of a mixed batch lets the task with the most tokens
dominate; its data-imbalance loss averages each task over its own tokens first:

.. math::  L_k = \\frac{\\sum_{i ∈ k} m_i ℓ_i}{\\sum_{i ∈ k} m_i}, \\qquad
           L = \\frac{1}{K_{present}} \\sum_{k\\ present} L_k

and its focal variants down-weight what is already learnt: token level
``ℓ_i → (1 - p_i)^γ ℓ_i`` with ``p_i = exp(-ℓ_i)`` the probability of the target
token (Lin et al.'s focal loss), and task level ``L_k → (1 - P_k)^γ L_k`` with
``P_k = exp(-L_k)`` the task's mean target probability (geometric).

Every function returns the ``[K]`` vector the MTO transforms consume, plus a ``[K]``
presence mask (a task with no valid example in the batch gets loss 0 and mask False),
so they compose with every weighting and gradient method.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mtlx import validation


def _check(losses, task_ids, mask):
  validation.check_vector(losses, None, "example_losses")
  validation.check_vector(task_ids, jnp.shape(losses)[0], "task_ids")
  if mask is not None:
    validation.check_vector(mask, jnp.shape(losses)[0], "mask")


def token_normalized_losses(example_losses: jax.Array, task_ids: jax.Array, *,
                            num_tasks: int, mask: jax.Array | None = None
                            ) -> tuple[jax.Array, jax.Array]:
  """MFTCoder's data-imbalance loss: each task's mean over its own valid tokens.

  Args:
    example_losses: ``[N]`` per-token (or per-example) losses ℓ_i.
    task_ids: ``[N]`` ints in ``[0, num_tasks)``.
    num_tasks: K (static).
    mask: ``[N]`` validity (padding, prompt tokens); all valid by default.

  Returns:
    ``(losses [K], present [K] bool)``; ``losses[k] = 0`` where task k has no valid
    token. ``jnp.sum(losses) / jnp.maximum(jnp.sum(present), 1)`` is MFTCoder's
    scalar loss.

  Cost: O(N) (two segment sums).
  """
  _check(example_losses, task_ids, mask)
  validation.check_number(num_tasks, "num_tasks", low=1, integer=True,
                          method="token_normalized_losses")
  ell = jnp.asarray(example_losses)
  m = jnp.ones_like(ell) if mask is None else jnp.asarray(mask).astype(ell.dtype)
  total = jax.ops.segment_sum(ell * m, task_ids, num_tasks)
  count = jax.ops.segment_sum(m, task_ids, num_tasks)
  present = count > 0
  return jnp.where(present, total / jnp.where(present, count, 1.0), 0.0), present


def focal_task_losses(example_losses: jax.Array, task_ids: jax.Array, *, num_tasks: int,
                      gamma: float = 2.0, level: str = "token",
                      mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Focal variants of :func:`token_normalized_losses` for cross-entropy losses.

  ``level='token'``: ``ℓ_i → (1 - e^{-ℓ_i})^γ ℓ_i`` before the per-task mean;
  ``level='task'``: ``L_k → (1 - e^{-L_k})^γ L_k`` after it. γ = 0 is the plain
  data-imbalance loss; γ = 2 is the focal loss's usual default. The focal factor is
  a function of the loss value and is differentiated through, as in the focal loss.

  Returns:
    ``(losses [K], present [K] bool)``.
  """
  validation.check_number(gamma, "gamma", low=0, method="focal_task_losses")
  validation.check_choice(level, ("token", "task"), "level")
  ell = jnp.asarray(example_losses)
  if level == "token":
    ell = (1.0 - jnp.exp(-ell)) ** gamma * ell
    return token_normalized_losses(ell, task_ids, num_tasks=num_tasks, mask=mask)
  losses, present = token_normalized_losses(ell, task_ids, num_tasks=num_tasks, mask=mask)
  return (1.0 - jnp.exp(-losses)) ** gamma * losses, present
