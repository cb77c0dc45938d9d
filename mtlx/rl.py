"""Per-task reward and advantage normalisation for multi-task policy-gradient RL.

In multi-task RL fine-tuning (GRPO-style: G sampled completions per prompt, the
advantage of each is its reward against the group's baseline) tasks with large or
easy rewards dominate the gradient. These pure functions map
``(rewards, task_ids, groups[, state])`` to advantages, jittable, with explicit state:

* :func:`group_advantages` — GRPO's group baseline (Shao et al., 2024):
  ``A_i = (r_i - mean_{g(i)} r) / (std_{g(i)} r + eps)``.
* :func:`fit_reward_normalization` / :func:`normalize_rewards` — MedGRPO's
  cross-dataset reward normalisation (Su et al., CVPR 2026): a logistic map per
  task that sends the task's median reward to 0.5:
  ``r̃ = σ((r - m_k) / s_k)``.
* :func:`task_normalized_advantages` — AgentRL's task advantage normalisation
  (Zhang et al., 2025): the advantages of each task are standardised over the
  task's samples in the batch: ``Â = (A - mean_k A) / (std_k A + eps)``.
* :func:`ema_task_advantages` — OneThinker's EMA-GRPO: the group-centred reward is
  divided by a per-task exponential moving average of reward standard deviations
  (state ``[K]``) instead of the group's own std, so groups with identical
  rewards do not blow up and a task's scale is tracked across steps.
* :func:`task_advantages` — one entry point: ``method`` picks one of the above.

Conventions: ``rewards`` ``[N]`` (one scalar per sampled completion),
``task_ids`` ``[N]`` int in ``[0, K)``, ``groups`` ``[N]`` int in ``[0, G)`` (the
prompt each sample answers; groups never span two tasks). Segment statistics use
``jax.ops.segment_sum`` with static ``num_tasks`` / ``num_groups``, so everything
traces once. Statistics are population (``ddof=0``) standard deviations, as in
GRPO implementations that use ``std(unbiased=False)``; TRL uses the unbiased one
(differs by ``sqrt(G/(G-1))``).

Cost: O(N) per call; no backward pass.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from mtlx import validation

METHODS = ("grpo", "medgrpo", "task_norm", "ema_grpo")


def _segment_mean_std(values, segment_ids, num_segments):
  """Per-segment mean and population std, gathered back to the samples."""
  ones = jnp.ones_like(values)
  count = jax.ops.segment_sum(ones, segment_ids, num_segments)
  safe = jnp.maximum(count, 1.0)
  mean = jax.ops.segment_sum(values, segment_ids, num_segments) / safe
  centred = values - mean[segment_ids]
  var = jax.ops.segment_sum(centred ** 2, segment_ids, num_segments) / safe
  return mean, jnp.sqrt(var), count


def _check(rewards, ids, name):
  validation.check_vector(rewards, None, "rewards")
  validation.check_vector(ids, jnp.shape(rewards)[0], name)
  if not jnp.issubdtype(jnp.asarray(ids).dtype, jnp.integer):
    raise ValueError(f"{name} has dtype {jnp.asarray(ids).dtype}; expected integers.")


def group_advantages(rewards: jax.Array, groups: jax.Array, *, num_groups: int,
                     eps: float = 1e-6, scale: bool = True) -> jax.Array:
  """GRPO's group-relative advantages.

  .. math::  A_i = \\frac{r_i - \\bar r_{g(i)}}{σ_{g(i)} + ε}

  Args:
    rewards: ``[N]`` rewards.
    groups: ``[N]`` group (prompt) index of each sample in ``[0, num_groups)``.
    num_groups: G, static.
    eps: added to the std (GRPO's 1e-6... 1e-4 in implementations; 1e-6 here).
    scale: divide by the group std (``False``: Dr. GRPO's centring only).

  Returns:
    ``[N]`` advantages (zero for a group whose rewards are all equal).
  """
  _check(rewards, groups, "groups")
  validation.check_number(num_groups, "num_groups", low=1, integer=True)
  rewards = jnp.asarray(rewards)
  mean, std, _ = _segment_mean_std(rewards, groups, num_groups)
  adv = rewards - mean[groups]
  return adv / (std[groups] + eps) if scale else adv


class RewardNormalization(NamedTuple):
  """MedGRPO's per-task logistic map: medians ``m_k`` and scales ``s_k`` (``[K]``)."""
  medians: jax.Array
  scales: jax.Array


def fit_reward_normalization(rewards: jax.Array, task_ids: jax.Array, *,
                             num_tasks: int, min_scale: float = 1e-6
                             ) -> RewardNormalization:
  """Fits MedGRPO's normalisation on reference rewards (e.g. the SFT model's).

  ``m_k`` is the median of task k's rewards and ``s_k`` half its interquartile
  range (floored at ``min_scale``), so the task's median maps to 0.5 and its
  quartiles to ``σ(±1) ≈ 0.27 / 0.73`` after :func:`normalize_rewards`. (MedGRPO
  fixes the median at 0.5; the spread parameter is our documented choice, as the
  paper's is per dataset-task and hand-set.) Host-side NumPy-free: jittable, with
  each task's statistics from a masked sort.
  """
  _check(rewards, task_ids, "task_ids")
  validation.check_number(num_tasks, "num_tasks", low=1, integer=True)
  rewards = jnp.asarray(rewards)
  dtype = jnp.promote_types(rewards.dtype, jnp.float32)

  def stats(k):
    mask = task_ids == k
    n = jnp.sum(mask)
    vals = jnp.sort(jnp.where(mask, rewards, jnp.inf).astype(dtype))

    def quantile(q):  # linear interpolation, as numpy's default
      pos = q * (n - 1)
      lo = jnp.floor(pos).astype(jnp.int32)
      hi = jnp.minimum(lo + 1, jnp.maximum(n - 1, 0))
      frac = pos - lo
      return vals[lo] * (1 - frac) + vals[hi] * frac

    return quantile(0.5), 0.5 * (quantile(0.75) - quantile(0.25))

  med, half_iqr = jax.vmap(stats)(jnp.arange(num_tasks))
  return RewardNormalization(med, jnp.maximum(half_iqr, min_scale))


def normalize_rewards(rewards: jax.Array, task_ids: jax.Array,
                      normalization: RewardNormalization) -> jax.Array:
  """``r̃ = σ((r - m_k) / s_k)``: MedGRPO's map of each task's median to 0.5."""
  _check(rewards, task_ids, "task_ids")
  m = normalization.medians[task_ids]
  s = normalization.scales[task_ids]
  return jax.nn.sigmoid((jnp.asarray(rewards) - m) / s)


def task_normalized_advantages(advantages: jax.Array, task_ids: jax.Array, *,
                               num_tasks: int, eps: float = 1e-6) -> jax.Array:
  """AgentRL's task advantage normalisation: standardise advantages per task.

  .. math::  \\hat A_i = \\frac{A_i - μ_{k(i)}}{σ_{k(i)} + ε}

  over the samples of task ``k(i)`` in the batch, so every task contributes
  advantages of unit scale whatever its reward scale.
  """
  _check(advantages, task_ids, "task_ids")
  validation.check_number(num_tasks, "num_tasks", low=1, integer=True)
  advantages = jnp.asarray(advantages)
  mean, std, _ = _segment_mean_std(advantages, task_ids, num_tasks)
  return (advantages - mean[task_ids]) / (std[task_ids] + eps)


class EmaStdState(NamedTuple):
  """EMA-GRPO's state: per-task running mean of reward stds and the bias-correction
  product ``β^t`` of each task (tasks absent from a batch are not updated)."""
  ema_std: jax.Array
  decay_power: jax.Array


def ema_std_init(num_tasks: int, dtype=jnp.float32) -> EmaStdState:
  """Zeros, with ``β^0 = 1`` per task."""
  validation.check_number(num_tasks, "num_tasks", low=1, integer=True)
  return EmaStdState(jnp.zeros((num_tasks,), dtype), jnp.ones((num_tasks,), dtype))


def ema_task_advantages(rewards: jax.Array, task_ids: jax.Array, groups: jax.Array,
                        state: EmaStdState, *, num_groups: int, decay: float = 0.99,
                        eps: float = 1e-6) -> tuple[jax.Array, EmaStdState]:
  """OneThinker's EMA-GRPO: group-centred rewards over a per-task EMA of stds.

  .. math::
     σ̄_k ← β σ̄_k + (1-β)\\, \\mathrm{mean}_{g ∈ k} σ_g, \\qquad
     A_i = \\frac{r_i - \\bar r_{g(i)}}{σ̄_{k(i)} / (1 - β^{t_k}) + ε}

  (bias-corrected like Adam's moments; ``t_k`` counts the batches that held task k).
  Non-finite rewards give non-finite advantages and leave the state unchanged.

  Args:
    rewards, task_ids, groups: ``[N]`` each.
    state: :func:`ema_std_init` (``num_tasks`` entries).
    num_groups: G, static.
    decay: β in ``[0, 1)``.
    eps: added to the denominator.

  Returns:
    ``(advantages [N], new_state)``.
  """
  _check(rewards, task_ids, "task_ids")
  _check(rewards, groups, "groups")
  validation.check_number(num_groups, "num_groups", low=1, integer=True)
  validation.check_number(decay, "decay", low=0, high=1, high_open=True)
  k = state.ema_std.shape[0]
  rewards = jnp.asarray(rewards)
  mean, std, _ = _segment_mean_std(rewards, groups, num_groups)
  group_task = jax.ops.segment_max(task_ids, groups, num_groups)
  present_group = jax.ops.segment_sum(jnp.ones_like(rewards), groups, num_groups) > 0
  gid = jnp.where(present_group, group_task, k)  # empty groups to a dropped segment
  task_std_sum = jax.ops.segment_sum(std, gid, k + 1)[:k]
  task_groups = jax.ops.segment_sum(present_group.astype(std.dtype), gid, k + 1)[:k]
  present = task_groups > 0
  batch_std = task_std_sum / jnp.maximum(task_groups, 1.0)
  dt = state.ema_std.dtype
  new_ema = jnp.where(present, decay * state.ema_std + (1 - decay) * batch_std.astype(dt),
                      state.ema_std)
  new_pow = jnp.where(present, state.decay_power * decay, state.decay_power)
  finite = jnp.all(jnp.isfinite(rewards))
  new_state = EmaStdState(jnp.where(finite, new_ema, state.ema_std),
                          jnp.where(finite, new_pow, state.decay_power))
  corrected = new_ema / jnp.maximum(1 - new_pow, jnp.finfo(dt).tiny)
  adv = (rewards - mean[groups]) / (corrected[task_ids] + eps)
  return adv, new_state


def task_advantages(rewards: jax.Array, task_ids: jax.Array, groups: jax.Array,
                    state=None, *, method: str = "grpo", num_tasks: int,
                    num_groups: int, normalization: RewardNormalization | None = None,
                    decay: float = 0.99, eps: float = 1e-6):
  """Advantages of a multi-task GRPO batch, by ``method``; returns ``(adv, state)``.

  * ``'grpo'``: :func:`group_advantages` (no task treatment; the baseline);
  * ``'medgrpo'``: :func:`normalize_rewards` with ``normalization`` (from
    :func:`fit_reward_normalization`), then :func:`group_advantages`;
  * ``'task_norm'``: :func:`group_advantages` then :func:`task_normalized_advantages`;
  * ``'ema_grpo'``: :func:`ema_task_advantages` (``state`` from :func:`ema_std_init`).

  ``state`` is passed through unchanged by the stateless methods.
  """
  validation.check_choice(method, METHODS, "method")
  if method == "grpo":
    return group_advantages(rewards, groups, num_groups=num_groups, eps=eps), state
  if method == "medgrpo":
    if normalization is None:
      raise ValueError("method='medgrpo' needs normalization= (from "
                       "mtlx.rl.fit_reward_normalization on reference rewards); got None.")
    r = normalize_rewards(rewards, task_ids, normalization)
    return group_advantages(r, groups, num_groups=num_groups, eps=eps), state
  if method == "task_norm":
    adv = group_advantages(rewards, groups, num_groups=num_groups, eps=eps)
    return task_normalized_advantages(adv, task_ids, num_tasks=num_tasks, eps=eps), state
  if state is None:
    raise ValueError("method='ema_grpo' needs state= (mtlx.rl.ema_std_init(num_tasks)); "
                     "got None.")
  return ema_task_advantages(rewards, task_ids, groups, state, num_groups=num_groups,
                             decay=decay, eps=eps)
