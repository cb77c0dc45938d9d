"""mtlx.rl: hand-computed advantages, and the scale invariances each method claims."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtlx import rl

REWARDS = np.array([1.0, 2.0, 3.0, 10.0, 10.0, 10.0, 0.0, 4.0])
GROUPS = np.array([0, 0, 0, 1, 1, 1, 2, 2])
TASKS = np.array([0, 0, 0, 0, 0, 0, 1, 1])


def test_group_advantages_hand_values():
  adv = np.asarray(rl.group_advantages(jnp.asarray(REWARDS), jnp.asarray(GROUPS),
                                       num_groups=3, eps=0.0 + 1e-12))
  s = np.sqrt(2.0 / 3.0)
  np.testing.assert_allclose(adv[:3], [-1 / s, 0.0, 1 / s], rtol=1e-6)
  np.testing.assert_allclose(adv[3:6], 0.0, atol=1e-6)  # equal rewards: no signal
  np.testing.assert_allclose(adv[6:], [-1.0, 1.0], rtol=1e-6)  # mean 2, std 2
  centred = rl.group_advantages(jnp.asarray(REWARDS), jnp.asarray(GROUPS), num_groups=3,
                                scale=False)
  np.testing.assert_allclose(centred, [-1, 0, 1, 0, 0, 0, -2, 2], atol=1e-6)


def test_task_normalized_hand_values_and_affine_invariance():
  adv = np.array([-1.0, 0.0, 1.0, 3.0, -3.0])
  tasks = np.array([0, 0, 0, 1, 1])
  out = np.asarray(rl.task_normalized_advantages(jnp.asarray(adv), jnp.asarray(tasks),
                                                 num_tasks=2, eps=0.0))
  np.testing.assert_allclose(out, [-np.sqrt(1.5), 0.0, np.sqrt(1.5), 1.0, -1.0], rtol=1e-6)
  rng = np.random.default_rng(0)
  rewards = rng.normal(size=48)
  tasks = np.repeat(np.arange(3), 16)
  groups = np.repeat(np.arange(12), 4)
  base, _ = rl.task_advantages(rewards, jnp.asarray(tasks), jnp.asarray(groups),
                               method="task_norm", num_tasks=3, num_groups=12, eps=0.0)
  scaled = rewards * np.array([1e3, 1.0, 1e-3])[tasks] + np.array([5.0, -2.0, 0.0])[tasks]
  again, _ = rl.task_advantages(scaled, jnp.asarray(tasks), jnp.asarray(groups),
                                method="task_norm", num_tasks=3, num_groups=12, eps=0.0)
  np.testing.assert_allclose(again, base, rtol=1e-4, atol=1e-4)


def _np_quantile_norm(rewards, tasks, k):
  med = np.array([np.median(rewards[tasks == t]) for t in range(k)])
  q1 = np.array([np.quantile(rewards[tasks == t], 0.25) for t in range(k)])
  q3 = np.array([np.quantile(rewards[tasks == t], 0.75) for t in range(k)])
  return med, 0.5 * (q3 - q1)


def test_medgrpo_median_maps_to_half_and_matches_numpy():
  rng = np.random.default_rng(1)
  tasks = np.repeat(np.arange(3), [7, 10, 5])
  rewards = rng.normal(size=22) * np.array([100.0, 1.0, 0.01])[tasks] + 3.0 * tasks
  norm = rl.fit_reward_normalization(jnp.asarray(rewards), jnp.asarray(tasks), num_tasks=3)
  med, half_iqr = _np_quantile_norm(rewards, tasks, 3)
  np.testing.assert_allclose(norm.medians, med, rtol=1e-5)
  np.testing.assert_allclose(norm.scales, half_iqr, rtol=1e-4)
  out = rl.normalize_rewards(jnp.asarray(med), jnp.arange(3), norm)
  np.testing.assert_allclose(out, 0.5, atol=1e-6)
  # invariant to a positive affine map of one task's rewards (fit and apply on the same scale)
  scaled = rewards * np.where(tasks == 1, 1e4, 1.0) + np.where(tasks == 1, 7.0, 0.0)
  norm2 = rl.fit_reward_normalization(jnp.asarray(scaled), jnp.asarray(tasks), num_tasks=3)
  np.testing.assert_allclose(rl.normalize_rewards(jnp.asarray(scaled), jnp.asarray(tasks), norm2),
                             rl.normalize_rewards(jnp.asarray(rewards), jnp.asarray(tasks), norm),
                             atol=1e-5)


def test_ema_grpo_hand_values_state_and_scale_invariance():
  state = rl.ema_std_init(2)
  adv, state = rl.ema_task_advantages(jnp.asarray(REWARDS), jnp.asarray(TASKS),
                                      jnp.asarray(GROUPS), state, num_groups=3, decay=0.5,
                                      eps=0.0)
  # task 0: group stds sqrt(2/3) and 0 -> batch std sqrt(2/3)/2; EMA 0.5*that, corrected /0.5
  s0 = np.sqrt(2 / 3) / 2
  np.testing.assert_allclose(state.ema_std, [0.5 * s0, 0.5 * 2.0], rtol=1e-6)
  np.testing.assert_allclose(adv[:3], np.array([-1, 0, 1]) / s0, rtol=1e-5)
  np.testing.assert_allclose(adv[6:], [-1.0, 1.0], rtol=1e-6)
  # a task absent from the batch keeps its state; NaN rewards leave the state as it was
  only0 = rl.ema_task_advantages(jnp.asarray(REWARDS[:3]), jnp.zeros(3, jnp.int32),
                                 jnp.zeros(3, jnp.int32), state, num_groups=1, decay=0.5)[1]
  np.testing.assert_allclose(only0.ema_std[1], state.ema_std[1])
  np.testing.assert_allclose(only0.decay_power, [0.25, 0.5])
  bad = REWARDS.copy(); bad[0] = np.nan
  adv_bad, kept = rl.ema_task_advantages(jnp.asarray(bad), jnp.asarray(TASKS),
                                         jnp.asarray(GROUPS), state, num_groups=3, decay=0.5)
  assert not np.all(np.isfinite(adv_bad))
  np.testing.assert_array_equal(kept.ema_std, state.ema_std)
  # scaling one task's rewards by c scales nothing in its advantages (same sequence, scaled)
  rng = np.random.default_rng(2)
  seq = rng.normal(size=(4, 8))
  s_a, s_b = rl.ema_std_init(2), rl.ema_std_init(2)
  for r in seq:
    a, s_a = rl.ema_task_advantages(jnp.asarray(r), jnp.asarray(TASKS), jnp.asarray(GROUPS),
                                    s_a, num_groups=3, eps=0.0)
    b, s_b = rl.ema_task_advantages(jnp.asarray(r * np.where(TASKS == 1, 1e3, 1.0)),
                                    jnp.asarray(TASKS), jnp.asarray(GROUPS), s_b,
                                    num_groups=3, eps=0.0)
  np.testing.assert_allclose(a, b, rtol=1e-4)


def test_jit_and_errors():
  fn = jax.jit(lambda r, t, g: rl.task_advantages(r, t, g, method="task_norm", num_tasks=2,
                                                  num_groups=3)[0])
  assert fn(jnp.asarray(REWARDS), jnp.asarray(TASKS), jnp.asarray(GROUPS)).shape == (8,)
  with pytest.raises(ValueError, match="method='bogus'"):
    rl.task_advantages(REWARDS, TASKS, GROUPS, method="bogus", num_tasks=2, num_groups=3)
  with pytest.raises(ValueError, match="normalization"):
    rl.task_advantages(REWARDS, TASKS, GROUPS, method="medgrpo", num_tasks=2, num_groups=3)
  with pytest.raises(ValueError, match="decay=1.5"):
    rl.ema_task_advantages(REWARDS, TASKS, GROUPS, rl.ema_std_init(2), num_groups=3, decay=1.5)
  with pytest.raises(ValueError, match="task_ids has shape"):
    rl.task_normalized_advantages(REWARDS, TASKS[:3], num_tasks=2)
