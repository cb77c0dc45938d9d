"""mtlx.merging: hand-worked examples, float64 NumPy references, invariants, errors."""

import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, strategies as st

from mtlx import merging
from tests.reference import merging_ref as ref

SHAPES = {"a": (3, 4), "b": (5,)}


def _model(rng, scale=1.0):
  return {k: rng.normal(size=s) * scale for k, s in SHAPES.items()}


def _problem(k, seed):
  rng = np.random.default_rng(seed)
  base = _model(rng)
  finetuned = [jax.tree_util.tree_map(lambda x: x + 0.1 * rng.normal(size=x.shape), base)
               for _ in range(k)]
  return base, finetuned


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def _close(tree, ref_leaves, **kw):
  for got, want in zip(_leaves(tree), ref_leaves):
    np.testing.assert_allclose(got, want, **kw)


# Module-level jitted merges, reused across tests (one compile per K).
TA = jax.jit(merging.task_arithmetic)
TIES = jax.jit(merging.ties)
DARE = jax.jit(merging.dare, static_argnames=("combine",))
CRUMBS = jax.jit(merging.breadcrumbs)
PCB = jax.jit(merging.pcb)
CONS = jax.jit(merging.consensus, static_argnames=("merge",))
META = jax.jit(merging.metagpt)
TALL = jax.jit(merging.tall_masks)
TALL_MODELS = jax.jit(merging.tall_mask_models)
COS = jax.jit(merging.cosine_similarity, static_argnames=("per_layer",))
CONFLICTS = jax.jit(merging.sign_conflict_rate)
KS = st.sampled_from([1, 3])
ADA_ZERO = jax.jit(lambda b, f, gran: merging.adamerging(   # a zero loss leaves λ = init = 1
    b, f, lambda p: 0.0 * jnp.sum(p["a"]), granularity=gran, init=1.0, num_steps=2),
                   static_argnums=2)          # few distinct K: one compile per K per merge


# --- hand-worked examples ---------------------------------------------------------

def test_task_vectors_and_arithmetic_by_hand():
  base = {"w": jnp.array([1.0, 2.0])}
  ft = [{"w": jnp.array([2.0, 2.0])}, {"w": jnp.array([1.0, 4.0])}]
  tv = merging.task_vectors(base, ft)
  np.testing.assert_allclose(tv[0]["w"], [1.0, 0.0])
  np.testing.assert_allclose(tv[1]["w"], [0.0, 2.0])
  np.testing.assert_allclose(TA(base, ft, 0.5)["w"], [1.5, 3.0])
  np.testing.assert_allclose(TA(base, ft, jnp.array([1.0, 0.25]))["w"], [2.0, 2.5])


def test_ties_by_hand():
  # τ1 = [3, -1, .5, 2], τ2 = [-2, 2, .1, 1]; density .5 -> k = 4 - 2 = 2,
  # 2nd-smallest magnitudes are 1 and 1: τ̂1 = [3, -1, 0, 2], τ̂2 = [-2, 2, 0, 1].
  # Σ = [1, 1, 0, 3] -> γ = [+, +, 0 -> majority +, +];
  # agreeing entries: [3], [2], none, [2, 1] -> means [3, 2, 0, 1.5].
  base = {"w": jnp.zeros(4)}
  ft = [{"w": jnp.array([3.0, -1.0, 0.5, 2.0])}, {"w": jnp.array([-2.0, 2.0, 0.1, 1.0])}]
  np.testing.assert_allclose(TIES(base, ft, 0.5, 1.0)["w"], [3.0, 2.0, 0.0, 1.5])
  np.testing.assert_allclose(TIES(base, ft, 0.5, 0.5)["w"], [1.5, 1.0, 0.0, 0.75])
  # Whole-model trim: the threshold is shared by both leaves of a task.
  base2 = {"u": jnp.zeros(2), "v": jnp.zeros(2)}
  ft2 = [{"u": jnp.array([5.0, 4.0]), "v": jnp.array([1.0, 0.5])}]
  out = TIES(base2, ft2, 0.25, 1.0)         # k = 4 - 1 = 3 -> t = 4: keeps 5 and 4
  np.testing.assert_allclose(out["u"], [5.0, 4.0])
  np.testing.assert_allclose(out["v"], [0.0, 0.0])


def test_dare_by_hand_with_fixed_seed():
  base = {"w": jnp.zeros(64)}
  tau = jnp.arange(1.0, 65.0)
  ft = [{"w": tau}]
  out = DARE(base, ft, 0.5, 7, "task_arithmetic", 1.0)["w"]
  keep = jax.random.bernoulli(jax.random.fold_in(jax.random.key(7), 0), 0.5, (1, 64))[0]
  np.testing.assert_allclose(out, np.where(keep, 2.0 * tau, 0.0))
  assert 10 < int(keep.sum()) < 54
  # Another seed gives another mask; the same seed the same merge.
  other = DARE(base, ft, 0.5, 8, "task_arithmetic", 1.0)["w"]
  assert not np.array_equal(np.asarray(out), np.asarray(other))
  np.testing.assert_array_equal(DARE(base, ft, 0.5, 7, "task_arithmetic", 1.0)["w"], out)


def test_breadcrumbs_by_hand():
  # One layer, |τ| = 1..10 (signs alternate): drop_small .5 drops 1-5,
  # drop_large .1 drops 10; 6..9 survive with their signs.
  tau = jnp.array([1.0, -2, 3, -4, 5, -6, 7, -8, 9, -10])
  out = CRUMBS({"w": jnp.zeros(10)}, [{"w": tau}], 0.5, 0.1, 1.0)["w"]
  np.testing.assert_allclose(out, [0, 0, 0, 0, 0, -6, 7, -8, 9, 0])
  # Per layer: a second leaf with tiny values keeps its own middle band.
  out2 = CRUMBS({"w": jnp.zeros(10), "b": jnp.zeros(10)},
                [{"w": tau, "b": tau * 1e-3}], 0.5, 0.1, 1.0)
  np.testing.assert_allclose(out2["b"], np.asarray(out) * 1e-3)


def test_pcb_by_hand():
  # K = 1, τ = [0, 1, 2, 4]: β = exp(1·(|τ|/4)²)·tanh(τ²) = [0, .813, 1.284, 2.718].
  # ratio .5: c = 3rd smallest = 1.284; β̂ = Norm(max(β, c)) = [0, 0, 0, 1].
  out = PCB({"w": jnp.zeros(4)}, [{"w": jnp.array([0.0, 1.0, 2.0, 4.0])}], 0.5, 1.0)
  np.testing.assert_allclose(out["w"], [0.0, 0.0, 0.0, 4.0])
  # Two tasks, ratio 1: task 1 |τ| = [1, 1] has zero range -> intra = [1, 1];
  # Σ τ = [.9, 2] -> inter1 = tanh([.9, 2]); task 2 |τ| = [.1, 1] -> intra = [1, e²],
  # inter2 = tanh([-.09, 2]). Each task's lowest score normalises to 0, so entry 0
  # (where the tasks conflict) is dropped by both and entry 1 averages 1 and 1.
  ft = [{"w": jnp.array([1.0, 1.0])}, {"w": jnp.array([-0.1, 1.0])}]
  np.testing.assert_allclose(PCB({"w": jnp.zeros(2)}, ft, 1.0, 1.0)["w"], [0.0, 1.0])


def test_tall_masks_and_consensus_by_hand():
  # τ1 = [1, .1, 1], τ2 = [.2, 1, 2]; τ_MTL = [1.2, 1.1, 3], λ = .4:
  # m1 = |τ1| > .4|τ2| = [T, F, T]; m2 = |τ2| > .4|τ1| = [F, T, T].
  base = {"w": jnp.zeros(3)}
  ft = [{"w": jnp.array([1.0, 0.1, 1.0])}, {"w": jnp.array([0.2, 1.0, 2.0])}]
  m = TALL(base, ft, 0.4)
  np.testing.assert_array_equal(m[0]["w"], [True, False, True])
  np.testing.assert_array_equal(m[1]["w"], [False, True, True])
  models = TALL_MODELS(base, ft, 0.4)
  np.testing.assert_allclose(models[0]["w"], [1.2, 0.0, 3.0])
  np.testing.assert_allclose(models[1]["w"], [0.0, 1.1, 3.0])
  # k = 2: only entry 2 is used by both tasks (entries 0, 1 are selfish).
  np.testing.assert_allclose(CONS(base, ft, 2, 0.4, 1.0)["w"], [0.0, 0.0, 3.0])
  np.testing.assert_allclose(CONS(base, ft, 1, 0.4, 0.5)["w"], [0.6, 0.55, 1.5])
  np.testing.assert_allclose(CONS(base, ft, 0, 0.4, 1.0)["w"], [1.2, 1.1, 3.0])


def test_metagpt_and_diagnostics_by_hand():
  base = {"w": jnp.array([1.0, 1.0])}
  ft = [{"w": jnp.array([4.0, 5.0])}, {"w": jnp.array([1.0, 6.0])}]  # ‖τ‖² = 25, 25
  np.testing.assert_allclose(merging.metagpt_coefficients(base, ft), [0.5, 0.5])
  np.testing.assert_allclose(META(base, ft)["w"], [2.5, 5.5])
  cos = merging.cosine_similarity(base, ft, per_layer=False)
  np.testing.assert_allclose(cos, [[1.0, 0.8], [0.8, 1.0]], rtol=1e-12)
  ft3 = [{"w": jnp.array([2.0, 0.0])}, {"w": jnp.array([0.0, 2.0])}]   # τ = [1,-1], [-1,1]
  assert float(merging.sign_conflict_rate(base, ft3)) == 1.0
  assert float(merging.sign_conflict_rate(base, [ft3[0], ft3[0]])) == 0.0
  np.testing.assert_allclose(merging.normalized_accuracy(jnp.array([0.9, 0.5]),
                                                         jnp.array([1.0, 0.8])),
                             [0.9, 0.625])


# --- against the float64 NumPy references -----------------------------------------

@given(k=KS, seed=st.integers(0, 2**16),
       density=st.sampled_from([0.1, 0.2, 0.5, 1.0]))
def test_ties_and_task_arithmetic_match_reference(k, seed, density):
  base, ft = _problem(k, seed)
  b, f = _leaves(base), [_leaves(m) for m in ft]
  _close(TIES(base, ft, density, 0.7), ref.ties(b, f, density, 0.7), rtol=1e-10)
  lam = np.random.default_rng(seed).uniform(0, 1, k)
  _close(TA(base, ft, lam), ref.task_arithmetic(b, f, lam), rtol=1e-10)


@functools.partial(jax.jit, static_argnums=2)
def _jax_masks(seed, keep, k):
  # The documented scheme: leaf i draws bernoulli(fold_in(key(seed), i), 1 - p, (K, *shape)).
  return [jax.random.bernoulli(jax.random.fold_in(jax.random.key(seed), i), keep, (k,) + s)
          for i, s in enumerate(SHAPES.values())]


def _documented_dare_masks(seed, keep, k):
  return np.concatenate([np.asarray(m).reshape(k, -1) for m in _jax_masks(seed, keep, k)],
                        1).astype(float)


@given(k=KS, seed=st.integers(0, 2**16),
       combine=st.sampled_from(["task_arithmetic", "ties"]))
def test_dare_matches_reference(k, seed, combine):
  base, ft = _problem(k, seed)
  b, f = _leaves(base), [_leaves(m) for m in ft]
  p = 0.6
  masks = _documented_dare_masks(seed, 1 - p, k)
  got = DARE(base, ft, p, seed, combine, 0.8, 0.5)
  want = ref.dare(b, f, masks, p, combine, 0.8, density=0.5)
  _close(got, want, rtol=1e-10)


@given(k=KS, seed=st.integers(0, 2**16),
       cuts=st.sampled_from([(0.85, 0.007), (0.5, 0.1), (0.0, 0.0), (0.3, 0.8)]))
def test_breadcrumbs_matches_reference(k, seed, cuts):
  base, ft = _problem(k, seed)
  b, f = _leaves(base), [_leaves(m) for m in ft]
  _close(CRUMBS(base, ft, cuts[0], cuts[1], 0.4),
         ref.breadcrumbs(b, f, cuts[0], cuts[1], 0.4), rtol=1e-10)


@given(k=KS, seed=st.integers(0, 2**16),
       ratio=st.sampled_from([0.05, 0.1, 0.3, 1.0]))
def test_pcb_matches_reference(k, seed, ratio):
  base, ft = _problem(k, seed)
  b, f = _leaves(base), [_leaves(m) for m in ft]
  lam = np.random.default_rng(seed).uniform(0.8, 1.3, k)
  _close(PCB(base, ft, ratio, lam), ref.pcb(b, f, ratio, lam), rtol=1e-9, atol=1e-12)


@given(k=KS, seed=st.integers(0, 2**16),
       lam=st.sampled_from([0.2, 0.4, 0.6]), kk=st.integers(0, 3),
       merge=st.sampled_from(["task_arithmetic", "ties"]))
def test_tall_consensus_metagpt_match_reference(k, seed, lam, kk, merge):
  base, ft = _problem(k, seed)
  b, f = _leaves(base), [_leaves(m) for m in ft]
  masks = TALL(base, ft, lam)
  want = ref.tall_masks(b, f, lam)
  np.testing.assert_array_equal(
      np.stack([np.concatenate([x.ravel() for x in _leaves(m)]) for m in masks]), want)
  for got_m, want_m in zip(TALL_MODELS(base, ft, lam), ref.tall_mask_models(b, f, lam)):
    _close(got_m, want_m, rtol=1e-10)
  kk = min(kk, k)  # k > K is refused (it would keep nothing)
  _close(CONS(base, ft, kk, lam, 0.3, merge, 0.3),
         ref.consensus(b, f, kk, lam, 0.3, merge, 0.3), rtol=1e-10)
  _close(META(base, ft), ref.metagpt(b, f), rtol=1e-10)


@given(k=st.sampled_from([2, 3]), seed=st.integers(0, 2**16))
def test_diagnostics_match_reference(k, seed):
  base, ft = _problem(k, seed)
  tv = ref.task_vectors(_leaves(base), [_leaves(m) for m in ft])
  np.testing.assert_allclose(COS(base, ft, per_layer=False), ref.cosine(tv), rtol=1e-10)
  per = COS(base, ft)
  na = SHAPES["a"][0] * SHAPES["a"][1]
  np.testing.assert_allclose(per["a"], ref.cosine(tv[:, :na]), rtol=1e-10)
  np.testing.assert_allclose(per["b"], ref.cosine(tv[:, na:]), rtol=1e-10)
  np.testing.assert_allclose(CONFLICTS(base, ft, 1.0), ref.sign_conflict_rate(tv), rtol=1e-12)
  np.testing.assert_allclose(CONFLICTS(base, ft, 0.3),
                             ref.sign_conflict_rate(ref.ties_trim(tv, 0.3)), rtol=1e-12)


@pytest.mark.parametrize("layerwise", [False, True])
def test_learned_coefficients_match_sgd_reference(layerwise):
  base, ft = _problem(3, 11)
  target = _problem(1, 12)[1][0]
  b, f, t = _leaves(base), [_leaves(m) for m in ft], _leaves(target)

  def loss_fn(params, batch):
    sq = jax.tree_util.tree_map(lambda p, q: jnp.sum((p - q) ** 2), params, batch)
    return 0.5 * sum(jax.tree_util.tree_leaves(sq))

  data = jax.tree_util.tree_map(lambda x: jnp.stack([x, x]), target)  # 2 equal batches
  _, coeffs = merging.adamerging(
      base, ft, loss_fn, data, granularity="layer" if layerwise else "task",
      init=0.3, optimizer=optax.sgd(0.05), num_steps=40, clip=(0.0, 1.0))
  want = ref.learned_coefficients_sgd(b, f, t, 0.3, 0.05, 40, (0.0, 1.0), layerwise)
  got = np.stack(_leaves(coeffs)) if layerwise else np.asarray(coeffs)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  merged, coeffs = merging.atlas(base, ft, loss_fn, data, init=0.0,
                                 optimizer=optax.sgd(0.05), num_steps=40)
  want = ref.learned_coefficients_sgd(b, f, t, 0.0, 0.05, 40, None, True)
  np.testing.assert_allclose(np.stack(_leaves(coeffs)), want, rtol=1e-5, atol=1e-6)
  # The returned params are the merge with the returned coefficients.
  tau = [[fi - bi for fi, bi in zip(fm, b)] for fm in f]
  for li, leaf in enumerate(_leaves(merged)):
    np.testing.assert_allclose(leaf, b[li] + sum(want[li, j] * tau[j][li] for j in range(3)),
                               rtol=1e-5, atol=1e-6)


def test_adamerging_entropy_lowers_loss():
  # Two "heads" reading the merged vector; entropy minimisation moves λ.
  base, ft = _problem(2, 3)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 12)))

  def loss_fn(params):
    return merging.entropy(x @ params["a"].reshape(12, 1) * jnp.ones((1, 3)) * jnp.arange(3.0))

  merged, c = merging.adamerging(base, ft, loss_fn, granularity="task", num_steps=30,
                                 optimizer=optax.adam(0.05))
  start = merging.task_arithmetic(base, ft, 0.3)
  assert float(loss_fn(merged)) < float(loss_fn(start))
  assert c.shape == (2,) and np.all((np.asarray(c) >= 0) & (np.asarray(c) <= 1))
  np.testing.assert_allclose(merging.entropy(jnp.zeros((2, 4))), np.log(4.0), rtol=1e-12)


# --- invariants ---------------------------------------------------------------------

@given(seed=st.integers(0, 2**16))
def test_one_task_vector_with_coefficient_one_returns_the_finetuned_model(seed):
  base, ft = _problem(1, seed)
  ft[0]["b"][2] = base["b"][2]                     # one zero entry (PCB drops the minimum)
  want = _leaves(ft[0])
  _close(TA(base, ft, 1.0), want, rtol=1e-12)
  _close(TIES(base, ft, 1.0, 1.0), want, rtol=1e-12)
  _close(DARE(base, ft, 0.0, 0, "task_arithmetic", 1.0), want, rtol=1e-12)
  _close(DARE(base, ft, 0.0, 0, "ties", 1.0), want, rtol=1e-12)
  _close(CRUMBS(base, ft, 0.0, 0.0, 1.0), want, rtol=1e-12)
  _close(PCB(base, ft, 1.0, 1.0), want, rtol=1e-12)
  _close(CONS(base, ft, 1, 0.4, 1.0), want, rtol=1e-12)
  _close(META(base, ft), want, rtol=1e-12)
  _close(TALL_MODELS(base, ft, 0.4)[0], want, rtol=1e-12)
  for gran in ("task", "layer"):
    merged, _ = ADA_ZERO(base, ft, gran)
    _close(merged, want, rtol=1e-12)


@given(k=st.sampled_from([2, 3]), seed=st.integers(0, 2**16))
def test_identical_task_vectors_are_idempotent(k, seed):
  base, ft = _problem(1, seed)
  same = ft * k
  want = _leaves(ft[0])
  _close(TIES(base, same, 1.0, 1.0), want, rtol=1e-12)           # disjoint mean
  _close(META(base, same), want, rtol=1e-12)                      # λ = 1/K each
  _close(TA(base, same, 1.0 / k), want, rtol=1e-12)               # weight averaging
  _close(DARE(base, same, 0.0, 0, "ties", 1.0), want, rtol=1e-12)
  # TIES at any density returns the trim of the common vector.
  _close(TIES(base, same, 0.2, 1.0), ref.ties(_leaves(base), [want], 0.2, 1.0), rtol=1e-12)


def test_dare_rescaling_keeps_the_expectation():
  """E[τ̃] = τ: two statistical checks at 5 standard deviations (p ≈ 6e-7 each).

  (1) Over 100 000 entries of τ = 1 and p = 0.9, mean(τ̃) has sd
  sqrt(p / ((1 - p) n)) = 0.0095; tolerance 0.047. (2) Per entry over 2 000
  seeds, mean(τ̃_j) has sd |τ_j| · sqrt(p / (1 - p)) / sqrt(2000) = 0.067 |τ_j|;
  tolerance 0.34 |τ_j|.
  """
  n, p = 100_000, 0.9
  out = DARE({"w": jnp.zeros(n)}, [{"w": jnp.ones(n)}], p, 3, "task_arithmetic", 1.0)["w"]
  sd = np.sqrt(p / ((1 - p) * n))
  assert abs(float(jnp.mean(out)) - 1.0) < 5 * sd
  assert set(np.unique(np.asarray(out)).round(9)) <= {0.0, 10.0}
  tau = jnp.array([1.0, -2.0, 0.5, 3.0])
  draws = jax.jit(jax.vmap(lambda s: merging.dare(
      {"w": jnp.zeros(4)}, [{"w": tau}], drop_rate=p, seed=s, scaling=1.0)["w"]))(
          jnp.arange(2000))
  sd = np.abs(np.asarray(tau)) * np.sqrt(p / (1 - p)) / np.sqrt(2000)
  assert np.all(np.abs(np.asarray(draws.mean(0)) - np.asarray(tau)) < 5 * sd)


ALL_MERGES = (merging.task_arithmetic, merging.ties, merging.dare, merging.breadcrumbs,
              merging.pcb, merging.consensus, merging.metagpt)


@jax.jit
def _all_merges(base, ft):
  return [fn(base, ft) for fn in ALL_MERGES]


def test_dtypes_follow_base_and_non_finite_propagates():
  rng = np.random.default_rng(0)
  base = {"w": jnp.asarray(rng.normal(size=(4, 4)), jnp.bfloat16),
          "b": jnp.asarray(rng.normal(size=4), jnp.float32)}
  ft = [jax.tree_util.tree_map(lambda x: x + jnp.asarray(0.1, x.dtype), base) for _ in range(2)]
  for fn, out in zip(ALL_MERGES, _all_merges(base, ft)):
    assert out["w"].dtype == jnp.bfloat16 and out["b"].dtype == jnp.float32, fn.__name__
  # A NaN in one fine-tuned entry stays NaN in that entry of every merge, even
  # where a mask drops the entry.
  bad = [dict(m) for m in ft]
  bad[1]["b"] = bad[1]["b"].at[1].set(jnp.nan)
  for fn, out in zip(ALL_MERGES, _all_merges(base, bad)):
    assert np.isnan(np.asarray(out["b"])[1]), fn.__name__


def test_float32_whole_model_quantiles_match_reference():
  # float32 keys (32 bisection passes) select the same entries as a float64 sort.
  rng = np.random.default_rng(4)
  base = {k: np.zeros(s, np.float32) for k, s in SHAPES.items()}
  ft = [{k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}
        for _ in range(3)]
  b, f = _leaves(base), [_leaves(m) for m in ft]
  for density in (0.1, 0.3, 0.75):
    got = merging.ties(base, ft, density, 1.0)
    assert got["a"].dtype == np.float32
    _close(got, ref.ties(b, f, density, 1.0), rtol=1e-6, atol=1e-7)
  _close(merging.pcb(base, ft, 0.2), ref.pcb(b, f, 0.2, 1.0), rtol=1e-5, atol=1e-6)


def test_dare_accepts_a_prng_key_and_traced_seeds():
  base, ft = _problem(2, 0)
  key = jax.random.key(3)
  np.testing.assert_array_equal(_leaves(merging.dare(base, ft, 0.5, key))[0],
                                _leaves(DARE(base, ft, 0.5, 3, "task_arithmetic", None))[0])


def test_search_scaling_picks_the_best_grid_point():
  base, ft = _problem(2, 1)
  target = merging.task_arithmetic(base, ft, 0.35)

  def eval_fn(params):
    return -sum(float(jnp.sum((p - q) ** 2)) for p, q in
                zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(target)))

  best, scores = merging.search_scaling(base, ft, eval_fn)
  assert best == 0.35 and len(scores) == 21 and scores[7] == max(scores)
  best, _ = merging.search_scaling(base, ft, eval_fn, grid=[0.1, 1.0], merge_fn=TIES,
                                   density=0.2)
  assert best in (0.1, 1.0)


# --- errors ----------------------------------------------------------------------------

def test_mismatches_name_the_first_differing_path():
  base = {"enc": {"w": jnp.zeros((2, 3)), "b": jnp.zeros(3)}, "head": jnp.zeros(2)}
  good = jax.tree_util.tree_map(jnp.ones_like, base)
  wrong_shape = {"enc": {"w": jnp.zeros((2, 3)), "b": jnp.zeros(4)}, "head": jnp.zeros(2)}
  with pytest.raises(ValueError, match=r"finetuned\[1\]\['enc'\]\['b'\] has shape \(4,\) "
                                       r"but base\['enc'\]\['b'\] has shape \(3,\)"):
    merging.ties(base, [good, wrong_shape])
  missing = {"enc": {"w": jnp.zeros((2, 3))}, "head": jnp.zeros(2)}
  with pytest.raises(ValueError, match=r"finetuned\[0\] differs from base in structure.*"
                                       r"base has \['enc'\]\['b'\] where finetuned\[0\] has "
                                       r"\['enc'\]\['w'\]"):
    merging.task_arithmetic(base, [missing])
  extra = dict(good, tail=jnp.zeros(1))
  with pytest.raises(ValueError, match=r"extra leaf at \['tail'\]"):
    merging.metagpt(base, [good, extra])
  with pytest.raises(ValueError, match=r"non-empty list"):
    merging.dare(base, [])
  with pytest.raises(ValueError, match=r"non-empty list"):
    merging.pcb(base, good)
  with pytest.raises(ValueError, match=r"scaling has shape \(3,\); expected a scalar or "
                                       r"shape \(2,\)"):
    merging.task_arithmetic(base, [good, good], jnp.ones(3))
  with pytest.raises(ValueError, match=r"combine='mean' is not valid; expected one of "
                                       r"\['task_arithmetic', 'ties'\]"):
    merging.dare(base, [good], combine="mean")
  with pytest.raises(ValueError, match=r"drop_rate=1.0; expected a fraction in \[0, 1\)"):
    merging.dare(base, [good], drop_rate=1.0)
  with pytest.raises(ValueError, match=r"density=1.5"):
    merging.ties(base, [good], density=1.5)
  with pytest.raises(ValueError, match=r"granularity='block' is not valid"):
    merging.adamerging(base, [good], lambda p: 0.0, granularity="block")
  with pytest.raises(ValueError, match=r"merged differs from base in structure"):
    merging.tall_masks(base, [good], merged=missing)


# --- sharding (one subprocess with 8 emulated CPU devices) -----------------------------

def test_sharded_merges_match_unsharded_in_a_subprocess():
  script = os.path.join(os.path.dirname(__file__), "merging_sharded_check.py")
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
  proc = subprocess.run([sys.executable, script], env=env, cwd=root,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert "all sharded merges match" in proc.stdout
