"""Task samplers: proportions (chi-square), determinism, exact resume through orbax,
per-host slices, adaptive rules against their definitions."""

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from scipy import stats

from mtlx.data import mixture
from mtlx.data import samplers as S
from mtlx.data import sources

SIZES = [1000, 400, 150]


def _chi2_pvalue(total_counts, p):
  expected = total_counts.sum() * np.asarray(p)
  keep = expected > 0
  assert np.all(total_counts[~keep] == 0)
  stat = np.sum((total_counts[keep] - expected[keep]) ** 2 / expected[keep])
  return stats.chi2.sf(stat, keep.sum() - 1)


def _totals(sampler, steps=400, batch=16, seed=0):
  state = sampler.init()
  return sum(S.draw_counts(sampler, state, t, batch, seed) for t in range(steps))


@pytest.mark.parametrize("cfg,expected", [
    ({"name": "uniform"}, [1 / 3] * 3),
    ({"name": "fixed", "weights": [2, 1, 1]}, [0.5, 0.25, 0.25]),
    ({"name": "fixed", "weights": [1, 0, 3]}, [0.25, 0.0, 0.75]),
    ({"name": "proportional"}, np.array(SIZES) / sum(SIZES)),
    ({"name": "temperature", "temperature": 3.0},
     np.array(SIZES) ** (1 / 3) / np.sum(np.array(SIZES) ** (1 / 3))),
    ({"name": "temperature", "temperature": 1e9}, [1 / 3] * 3),
])
def test_proportions_match_definition(cfg, expected):
  sampler = S.make_sampler(cfg, 3, SIZES)
  np.testing.assert_allclose(sampler.probabilities(sampler.init(), 0), expected, rtol=1e-6)
  totals = _totals(sampler)
  assert totals.sum() == 400 * 16
  assert _chi2_pvalue(totals, expected) > 1e-3
  # and a wrong hypothesis is rejected (the test can fail)
  if cfg["name"] == "proportional":
    assert _chi2_pvalue(totals, [1 / 3] * 3) < 1e-6


def test_unmixed_one_task_per_slice():
  sampler = S.make_sampler({"name": "unmixed", "num_slices": 4,
                            "base": {"name": "fixed", "weights": [3, 1, 0]}}, 3, SIZES)
  slices = np.zeros(3, np.int64)
  for t in range(300):
    c = S.draw_counts(sampler, (), t, 16, 5)
    assert c.sum() == 16 and np.all(c % 4 == 0)
    slices += c // 4
  assert slices[2] == 0 and _chi2_pvalue(slices, [0.75, 0.25, 0.0]) > 1e-3
  one = S.make_sampler({"name": "unmixed"}, 3, SIZES)
  assert all(np.count_nonzero(S.draw_counts(one, (), t, 8, 0)) == 1 for t in range(50))
  with pytest.raises(ValueError, match="num_slices=3"):
    S.draw_counts(S.make_sampler({"name": "unmixed", "num_slices": 3}, 3, SIZES), (), 0, 16, 0)


def test_staged_schedule():
  sampler = S.make_sampler({"name": "staged", "stages": [
      {"steps": 5, "sampler": {"name": "fixed", "weights": [1, 1, 0]}},
      {"steps": 3, "sampler": {"name": "unmixed", "base": {"name": "fixed", "weights": [0, 0, 1]}}},
      {"steps": 0, "sampler": {"name": "uniform"}}]}, 3, SIZES)
  state = sampler.init()
  for t in range(5):
    assert S.draw_counts(sampler, state, t, 32, 0)[2] == 0
  for t in range(5, 8):
    np.testing.assert_array_equal(S.draw_counts(sampler, state, t, 32, 0), [0, 0, 32])
  late = sum(S.draw_counts(sampler, state, t, 32, 0) for t in range(8, 200))
  assert _chi2_pvalue(late, [1 / 3] * 3) > 1e-3


def _ref_exp3(losses_seq, counts_seq, k, gamma):
  """EXP3 with loss-decrease rewards, written from the definition (float64)."""
  score, last, seen = np.zeros(k), np.zeros(k), np.zeros(k, bool)
  for losses, counts in zip(losses_seq, counts_seq):
    e = np.exp(gamma / k * (score - score.max()))
    p = (1 - gamma) * e / e.sum() + gamma / k
    for j in range(k):
      if counts[j] > 0:
        r = 0.5 if not seen[j] else (np.clip((last[j] - losses[j]) / abs(last[j]), -1, 1) + 1) / 2
        score[j] += r * counts[j] / (sum(counts) * p[j])
        last[j], seen[j] = losses[j], True
  e = np.exp(gamma / k * (score - score.max()))
  return (1 - gamma) * e / e.sum() + gamma / k


def test_exp3_matches_definition_and_prefers_the_improving_task():
  sampler = S.bandit(3, "exp3", gamma=0.2)
  state = sampler.init()
  losses_seq, counts_seq = [], []
  for t in range(100):
    counts = S.draw_counts(sampler, state, t, 8, 0)
    # task 0 stalls, task 1 keeps improving (-20 % a step), task 2 gets worse (+25 %)
    losses = np.array([1.0, 0.8 ** t, 1.25 ** min(t, 50)])
    state = sampler.update(state, counts, losses, t)
    losses_seq.append(losses)
    counts_seq.append(counts)
  p = sampler.probabilities(state, 100)
  np.testing.assert_allclose(p, _ref_exp3(losses_seq, counts_seq, 3, 0.2), rtol=1e-10)
  assert p[1] > p[0] > p[2] and np.all(p >= 0.2 / 3 - 1e-12)


def test_ucb_tries_every_task_then_the_best():
  sampler = S.bandit(3, "ucb", c=0.1)
  state = sampler.init()
  firsts = []
  for t in range(30):
    counts = S.draw_counts(sampler, state, t, 4, 0)
    assert np.count_nonzero(counts) == 1
    firsts.append(int(np.argmax(counts)))
    losses = np.array([1.0, 1.0, 0.5 ** t])  # task 2's loss halves every step
    pulls_before = state[3].copy()
    state = sampler.update(state, counts, losses, t)
    np.testing.assert_array_equal(state[3] - pulls_before, counts > 0)
  assert firsts[:3] == [0, 1, 2]
  assert firsts[10:].count(2) >= 15, firsts  # mean reward 0.75 beats 0.5 plus the bonus


def test_loss_proportional():
  sampler = S.loss_proportional(3, alpha=1.0, epsilon=0.1)
  state = sampler.init()
  np.testing.assert_allclose(sampler.probabilities(state, 0), [1 / 3] * 3)
  state = sampler.update(state, np.array([2, 2, 0]), np.array([1.0, 3.0, np.nan]), 0)
  np.testing.assert_allclose(sampler.probabilities(state, 1), [1 / 3] * 3)  # task 2 unseen
  state = sampler.update(state, np.array([0, 0, 4]), np.array([9.0, 9.0, 4.0]), 1)
  np.testing.assert_allclose(sampler.probabilities(state, 2),
                             0.9 * np.array([1, 3, 4]) / 8 + 0.1 / 3)


def test_bad_configs():
  with pytest.raises(ValueError, match="expected one of"):
    S.make_sampler({"name": "softmax"}, 3, SIZES)
  with pytest.raises(ValueError, match="sizes=None"):
    S.make_sampler({"name": "proportional"}, 3, [10, None, 5])
  with pytest.raises(ValueError, match="weights"):
    S.make_sampler({"name": "fixed", "weights": [1, 2]}, 3, SIZES)
  with pytest.raises(ValueError, match="temperature=0"):
    S.make_sampler({"name": "temperature", "temperature": 0.0}, 3, SIZES)
  with pytest.raises(ValueError, match="algorithm"):
    S.make_sampler({"name": "bandit", "algorithm": "thompson"}, 3, SIZES)


# ---- the stream: determinism, resume, hosts ------------------------------------------


def _sources():
  return sources.digits_mixture_sources("train", sizes={"digit": 40, "rotated": 24,
                                                        "value": 12})


def _fake_losses(batch):
  """Deterministic per-task 'losses' that depend on the batch content."""
  return np.array([batch["image"][batch["task_id"] == k].mean() if np.any(batch["task_id"] == k)
                   else np.nan for k in range(3)])


def _run(cfg, steps, seed=0, state=None, batch=8, start=0):
  srcs = _sources()
  it = mixture.MixtureIterator(srcs, S.make_sampler(cfg, 3, [s.num_examples for s in srcs]),
                               batch_size=batch, seed=seed, process_index=0, process_count=1,
                               state=state)
  out = []
  for _ in range(start, steps):
    b = next(it)
    it.update(_fake_losses(b))
    out.append(b)
  return out, it


CONFIGS = [{"name": "temperature", "temperature": 2.0}, {"name": "bandit"},
           {"name": "loss_proportional"},
           {"name": "staged", "stages": [{"steps": 4, "sampler": {"name": "bandit",
                                                                   "algorithm": "ucb"}},
                                         {"steps": 1, "sampler": {"name": "unmixed"}}]}]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c["name"])
def test_same_seed_same_batches_and_exact_resume(cfg, tmp_path):
  full, _ = _run(cfg, 14)
  again, _ = _run(cfg, 14)
  other, _ = _run(cfg, 14, seed=1)
  for a, b in zip(full, again):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  assert any(not np.array_equal(a["image"], b["image"]) for a, b in zip(full, other))
  # "Kill" after 6 steps: the state goes through an orbax checkpoint and back.
  _, it = _run(cfg, 6)
  path = tmp_path / "ckpt"
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(path, {"mixture": it.state})
  ckptr.wait_until_finished()
  template = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, {"mixture": it.state})
  restored = ckptr.restore(path, template)["mixture"]
  rest, _ = _run(cfg, 14, state=restored, start=6)
  for a, b in zip(full[6:], rest):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


def test_host_slices_are_disjoint_and_cover_the_epoch():
  srcs = _sources()
  cfg = {"name": "fixed", "weights": [1, 0, 0]}  # one task: 40 examples, global batch 8
  single = mixture.MixtureIterator(srcs, S.make_sampler(cfg, 3), batch_size=8, seed=3,
                                   process_index=0, process_count=1)
  hosts = [mixture.MixtureIterator(srcs, S.make_sampler(cfg, 3), batch_size=2, seed=3,
                                   process_index=p, process_count=4) for p in range(4)]
  seen = []
  for _ in range(5):  # one epoch of task 0
    _, _, examples = single.plan()
    g = next(single)
    parts = [next(h) for h in hosts]
    for key in g:
      np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), g[key])
    seen.extend(examples)
  assert sorted(seen) == list(range(40))  # every example of the epoch exactly once
  # mixed tasks: hosts read disjoint rows whose union is the global plan
  mixed = {"name": "uniform"}
  single = mixture.MixtureIterator(srcs, S.make_sampler(mixed, 3), batch_size=12, seed=0,
                                   process_index=0, process_count=1)
  hosts = [mixture.MixtureIterator(srcs, S.make_sampler(mixed, 3), batch_size=4, seed=0,
                                   process_index=p, process_count=3) for p in range(3)]
  for _ in range(4):
    g = next(single)
    parts = [next(h) for h in hosts]
    np.testing.assert_array_equal(np.concatenate([p["image"] for p in parts]), g["image"])
    np.testing.assert_array_equal(np.concatenate([p["task_id"] for p in parts]), g["task_id"])
    np.testing.assert_array_equal(hosts[0].last_counts, single.last_counts)
