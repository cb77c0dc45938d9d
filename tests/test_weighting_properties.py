"""Invariants of the loss-space methods (hypothesis), input errors, non-finite
propagation, and GradNorm on a small version of its paper's synthetic problem."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, strategies as st

import mtlx
from mtlx import registry

# Methods whose weights read only the losses, built for K tasks.
BUILD = {
    "dwa": lambda k: mtlx.dwa(num_tasks=k),
    "rlw": lambda k: mtlx.random_loss_weighting(seed=3),
    "gls": lambda k: mtlx.geometric_loss(),
    "scale_invariant": lambda k: mtlx.scale_invariant(),
    "uncertainty": lambda k: mtlx.uncertainty_weighting(0.5, num_tasks=k),
    "imtl_l": lambda k: mtlx.imtl_l(0.5, num_tasks=k),
    "famo": lambda k: mtlx.famo(learning_rate=0.5, num_tasks=k),
    "stch": lambda k: mtlx.stch(mu=0.3, warmup_steps=1, num_tasks=k),
    "normalize_task_scale": lambda k: mtlx.normalize_task_scale(num_tasks=k),
}
STEPS = 4


@functools.lru_cache(maxsize=None)
def _weights_fn(name, k, dtype=jnp.float64):
  """Jitted: STEPS updates of ``loss_weights`` on a [STEPS, K] loss sequence."""
  tx = BUILD[name](k)

  @jax.jit
  def run(losses):
    state = tx.init(None)
    out = []
    for t in range(STEPS):
      w, state = mtlx.loss_weights(tx, state, losses[t].astype(dtype))
      out.append(w)
    return jnp.stack(out)

  return run


def _losses(seed, k, low=-3.0, high=3.0):
  rng = np.random.default_rng(seed)
  return 10.0 ** rng.uniform(low, high, size=(STEPS, k))


@given(name=st.sampled_from(sorted(BUILD)), k=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_weights_finite_and_non_negative(name, k, seed):
  w = np.asarray(_weights_fn(name, k)(_losses(seed, k)))
  assert np.all(np.isfinite(w)), (name, w)
  assert np.all(w >= 0), (name, w)


@given(name=st.sampled_from(["dwa", "rlw"]), k=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_rlw_and_dwa_weights_sum_to_k(name, k, seed):
  w = np.asarray(_weights_fn(name, k)(_losses(seed, k)))
  np.testing.assert_allclose(w.sum(axis=1), k, rtol=1e-12)
  if name == "dwa" and k > 1:
    # DWA is exactly 1 for the first two updates, then not uniform in general
    np.testing.assert_array_equal(w[:2], 1.0)


def test_rlw_weights_are_random_with_unit_mean():
  tx = mtlx.random_loss_weighting(seed=0)
  run = jax.jit(lambda s: mtlx.loss_weights(tx, s, jnp.ones(4)))
  s = tx.init(None)
  ws = []
  for _ in range(400):
    w, s = run(s)
    ws.append(np.asarray(w))
  ws = np.stack(ws)
  # E[K softmax(z)_k] = 1 by symmetry; 400 draws: standard error ~0.04
  np.testing.assert_allclose(ws.mean(0), 1.0, atol=0.15)
  assert ws.std(0).min() > 0.3


@given(k=st.integers(2, 4), seed=st.integers(0, 2**16),
       tiny=st.sampled_from([0.0, 1e-30, 1e-12, 1e-6]),
       dtype=st.sampled_from([jnp.float32, jnp.float64]))
def test_stch_and_gls_handle_zero_or_tiny_loss(k, seed, tiny, dtype):
  losses = _losses(seed, k, -1.0, 1.0)
  losses[1:, seed % k] = tiny
  for name in ("stch", "gls"):
    w = np.asarray(_weights_fn(name, k, dtype)(losses))
    assert w.dtype == np.dtype(dtype)
    assert np.all(np.isfinite(w)) and np.all(w >= 0), (name, tiny, w)


@given(k=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_stch_mu_one_on_raw_log_losses_is_uniform(k, seed):
  # K μ log Σ exp(log L_k / μ) with μ = 1 is K log Σ L_k: weights K / Σ L for all k.
  losses = _losses(seed, k, -2, 2)
  w = np.asarray(_stch_mu_one(k)(losses))
  np.testing.assert_allclose(w, np.broadcast_to(k / np.sum(losses, axis=1, keepdims=True), w.shape),
                             rtol=1e-10)


@functools.lru_cache(maxsize=None)
def _stch_mu_one(k):
  tx = mtlx.stch(mu=1.0, num_tasks=k)

  @jax.jit
  def run(losses):
    state, out = tx.init(None), []
    for t in range(STEPS):
      w, state = mtlx.loss_weights(tx, state, losses[t])
      out.append(w)
    return jnp.stack(out)

  return run


def test_gls_and_scale_invariant_are_scale_invariant():
  # Rescaling task k's loss by c_k rescales its weight by 1/c_k for SI, and the
  # weighted gradient direction of GLS changes only by a common factor.
  losses = jnp.array([0.3, 2.0, 7.0])
  c = jnp.array([10.0, 0.1, 3.0])
  for tx in (mtlx.scale_invariant(), mtlx.geometric_loss()):
    w1, _ = mtlx.loss_weights(tx, tx.init(None), losses)
    w2, _ = mtlx.loss_weights(tx, tx.init(None), c * losses)
    ratio = np.asarray(w2 * c / w1)
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-12)


# ---- errors -------------------------------------------------------------------

def _loss_registry_lines():
  """Loss-space registry lines, one per constructor (aliases such as ``rlw`` for
  ``random_loss_weighting`` left out): name -> ``build(k)``."""
  seen, out = set(), {}
  for name, m in sorted(registry.METHODS.items(), key=lambda nm: len(nm[0])):
    if m.kind == "loss" and m.constructor not in seen:
      seen.add(m.constructor)
      out[name] = lambda k, m=m: m.build(k if m.takes_num_tasks else None)
  return out


# Every loss-space registry line, plus fixed weights (not in the registry: it needs
# its weights as an argument).
ALL = dict(_loss_registry_lines(), fixed_weights=lambda k: mtlx.fixed_weights(jnp.ones(k)))
STATEFUL = sorted(n for n in ALL if n in registry.METHODS and registry.METHODS[n].takes_num_tasks)
PARAMS = {"a": jnp.zeros(2)}


@pytest.mark.parametrize("name", sorted(ALL))
def test_bad_task_losses_raise_at_trace_time(name):
  tx = ALL[name](3)
  state = tx.init(PARAMS)
  tg = {"a": jnp.ones((3, 2))}
  update = jax.jit(tx.update)
  with pytest.raises(ValueError, match="pass them as the keyword extra argument `task_losses`"):
    update(tg, state, PARAMS)
  with pytest.raises(ValueError, match=r"task_losses has shape \(2,\); expected shape \(3,\)"):
    update(tg, state, PARAMS, task_losses=jnp.ones(2))
  with pytest.raises(ValueError, match=r"task_losses has shape \(3, 1\); expected shape \(3,\)"):
    update(tg, state, PARAMS, task_losses=jnp.ones((3, 1)))
  with pytest.raises(ValueError, match="task_losses has dtype int"):
    update(tg, state, PARAMS, task_losses=jnp.ones(3, jnp.int32))
  if name in STATEFUL or name == "fixed_weights":
    with pytest.raises(ValueError, match="num_tasks=3 but the update received K=2"):
      update({"a": jnp.ones((2, 2))}, state, PARAMS, task_losses=jnp.ones(2))


@pytest.mark.parametrize("name", STATEFUL)  # the registry lines that take num_tasks
def test_stateful_methods_require_num_tasks(name):
  ctor = registry.METHODS[name].constructor
  with pytest.raises(ValueError, match="construct it with num_tasks=K"):
    ctor()
  with pytest.raises(ValueError, match="num_tasks=0 is not valid"):
    ctor(num_tasks=0)


def test_other_constructor_errors():
  with pytest.raises(ValueError, match=r"weights has shape \(2, 2\); expected a 1-D vector"):
    mtlx.fixed_weights(jnp.ones((2, 2)))
  with pytest.raises(ValueError, match=r"min_losses has shape \(2,\); expected shape \(3,\)"):
    mtlx.famo(min_losses=jnp.zeros(2), num_tasks=3)
  with pytest.raises(ValueError, match="mu=0"):
    mtlx.stch(mu=0, num_tasks=2)
  with pytest.raises(ValueError, match="init\\(params\\) needs the params"):
    mtlx.db_mtl(num_tasks=2).init(None)
  tx = mtlx.gradnorm(mask={"a": False}, num_tasks=2)
  with pytest.raises(ValueError, match="mask selects no parameters"):
    tx.update({"a": jnp.ones((2, 3))}, tx.init(None), task_losses=jnp.ones(2))
  tx = mtlx.gradnorm(mask={"zzz": True}, num_tasks=2)
  with pytest.raises(ValueError, match="prefix of the params' structure"):
    tx.update({"a": jnp.ones((2, 3))}, tx.init(None), task_losses=jnp.ones(2))


# ---- non-finite losses propagate --------------------------------------------------

@pytest.mark.parametrize("name", sorted(ALL))
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_loss_propagates(name, bad):
  k = 3
  tx = ALL[name](k)
  update = jax.jit(tx.update)
  state = tx.init(PARAMS)
  rng = np.random.default_rng(0)
  tg = {"a": jnp.asarray(rng.normal(size=(k, 2)))}
  out, state = update(tg, state, PARAMS, task_losses=jnp.array([1.0, 2.0, 3.0]))
  assert np.all(np.isfinite(out["a"]))
  out, _ = update(tg, state, PARAMS, task_losses=jnp.array([1.0, bad, 3.0]))
  assert not np.all(np.isfinite(out["a"])), name


def test_apply_if_finite_skips_a_nan_loss_and_the_weighting_state_stays_clean():
  # A NaN loss makes the aggregated update non-finite, so apply_if_finite around
  # the optimizer skips it; the loss-space state is not advanced (no NaN stored).
  tx = optax.chain(mtlx.famo(learning_rate=0.3, num_tasks=2), mtlx.linear_scalarization(),
                   optax.apply_if_finite(optax.sgd(0.1), max_consecutive_errors=5))
  params = {"a": jnp.ones(2)}
  tg = {"a": jnp.eye(2)}
  update = jax.jit(tx.update)
  state = tx.init(params)
  _, state = update(tg, state, params, task_losses=jnp.array([1.0, 2.0]))
  before = state[0]
  upd, state = update(tg, state, params, task_losses=jnp.array([1.0, jnp.nan]))
  np.testing.assert_array_equal(upd["a"], 0.0)
  assert int(state[2].notfinite_count) == 1
  jax.tree_util.tree_map(np.testing.assert_array_equal, state[0], before)
  upd, state = update(tg, state, params, task_losses=jnp.array([1.0, 2.0]))
  assert np.all(np.isfinite(upd["a"])) and np.abs(upd["a"]).min() > 0
  assert int(state[0].count) == 2
  # the one-backward path: NaN weights, state unchanged
  w, s2 = mtlx.loss_weights(mtlx.famo(num_tasks=2), before, jnp.array([jnp.inf, 1.0]))
  assert not np.all(np.isfinite(w))
  jax.tree_util.tree_map(np.testing.assert_array_equal, s2, before)


def test_dtypes_are_preserved():
  tg = {"a": jnp.ones((2, 3), jnp.bfloat16), "b": jnp.ones((2,), jnp.float32)}
  for tx in (mtlx.dwa(num_tasks=2), mtlx.famo(num_tasks=2), mtlx.gradnorm(num_tasks=2)):
    out, _ = jax.jit(tx.update)(tg, tx.init(None), task_losses=jnp.array([1.0, 2.0], jnp.float32))
    assert out["a"].dtype == jnp.bfloat16 and out["b"].dtype == jnp.float32
  w, _ = mtlx.loss_weights(mtlx.scale_invariant(), optax.EmptyState(),
                           jnp.array([1.0, 2.0], jnp.bfloat16))
  assert w.dtype == jnp.float32


def test_vmap_over_independent_runs():
  # Updates trace once and vmap: a batch of 3 loss vectors with a batched state.
  tx = mtlx.famo(learning_rate=0.3, num_tasks=2)
  states = jax.vmap(lambda _: tx.init(None))(jnp.arange(3))
  losses = jnp.array([[1.0, 2.0], [2.0, 1.0], [1.0, 1.0]])
  f = jax.vmap(lambda s, l: mtlx.loss_weights(tx, s, l))
  w, states = f(states, losses)
  w, states = f(states, losses * jnp.array([[0.5, 1.0], [1.0, 0.5], [1.0, 1.0]]))
  for i in range(3):
    wi, si = mtlx.loss_weights(tx, tx.init(None), losses[i])
    wi, si = mtlx.loss_weights(tx, si, losses[i] * jnp.array([[0.5, 1.0], [1.0, 0.5], [1.0, 1.0]])[i])
    np.testing.assert_allclose(w[i], wi, rtol=1e-12)


# ---- GradNorm on its paper's synthetic problem ---------------------------------------

N_TASKS, D_IN, D_OUT, HIDDEN, N = 4, 16, 8, 32, 128
SIGMAS = (1.0, 2.0, 4.0, 8.0)


def _synthetic(seed=0):
  """Chen et al. 2018, Sec. 4: f_i(x) = σ_i tanh((B + ε_i) x), B ~ N(0, 10),
  ε_i ~ N(0, 3.5) (scaled by 1/sqrt(D_IN) here), a ReLU trunk shared by all
  tasks and one affine head per task; L2 losses. Small: 4 tasks, 128 points."""
  rng = np.random.default_rng(seed)
  b = rng.normal(0, np.sqrt(10.0), (D_IN, D_OUT)) / np.sqrt(D_IN)
  eps = rng.normal(0, np.sqrt(3.5), (N_TASKS, D_IN, D_OUT)) / np.sqrt(D_IN)
  x = rng.normal(size=(N, D_IN))
  y = np.stack([s * np.tanh(x @ (b + e)) for s, e in zip(SIGMAS, eps)])
  params = {"trunk": {"l1": rng.normal(size=(D_IN, HIDDEN)) / np.sqrt(D_IN),
                      "l2": rng.normal(size=(HIDDEN, HIDDEN)) / np.sqrt(HIDDEN)},
            "heads": rng.normal(size=(N_TASKS, HIDDEN, D_OUT)) / np.sqrt(HIDDEN)}
  return jnp.asarray(x), jnp.asarray(y), jax.tree_util.tree_map(jnp.asarray, params)


def _synthetic_loss(p, x, y):
  h = jax.nn.relu(jax.nn.relu(x @ p["trunk"]["l1"]) @ p["trunk"]["l2"])
  pred = jnp.einsum("nh,thd->tnd", h, p["heads"])
  return jnp.mean((pred - y) ** 2, axis=(1, 2))


LAST_SHARED = {"trunk": {"l1": False, "l2": True}, "heads": False}


def _weighted_norm_spread(tx, steps=300):
  """Trains chain(tx, ls, adam(1e-3)) in one lax.scan; returns the coefficient of
  variation (std/mean over tasks) of ‖w_k ∇_W L_k‖ on the last shared layer W,
  averaged over the last 50 steps."""
  x, y, params = _synthetic()
  vjac = mtlx.value_and_jacobian(_synthetic_loss)
  full = optax.chain(tx, mtlx.linear_scalarization(), optax.adam(1e-3))

  def body(carry, _):
    p, s = carry
    losses, tg = vjac(p, x, y)
    weighted, _ = tx.update(tg, s[0], p, task_losses=losses)
    norms = jnp.sqrt(jnp.sum(weighted["trunk"]["l2"] ** 2, axis=(1, 2)))
    upd, s = full.update(tg, s, p, task_losses=losses)
    return (optax.apply_updates(p, upd), s), norms

  _, norms = jax.jit(lambda p: jax.lax.scan(body, (p, full.init(p)), None, length=steps))(params)
  norms = np.asarray(norms)
  return float(np.mean(norms.std(1)[-50:] / norms.mean(1)[-50:]))


def test_gradnorm_equalises_weighted_gradient_norms_on_synthetic_tasks():
  # Measured (seed 0, 300 Adam steps): equal weights leave the tasks' gradient
  # norms on the last shared layer spread with CV ≈ 0.81 (the σ_i differ 8x, so
  # the losses and their gradients differ by ~64x); GradNorm (α = 0.12, the
  # paper's value for this problem, w stepped at 0.025) pulls every w_k ‖∇_W L_k‖
  # to the common target Ḡ r_k^α and the CV drops to ≈ 0.08, about 10x lower.
  # The bound 0.25x leaves margin for platform differences, and a broken sign or
  # a missing update (weights stuck at 1) reproduces the equal-weights CV.
  cv_equal = _weighted_norm_spread(mtlx.fixed_weights(jnp.ones(N_TASKS)))
  cv_gradnorm = _weighted_norm_spread(
      mtlx.gradnorm(alpha=0.12, mask=LAST_SHARED, num_tasks=N_TASKS))
  assert cv_equal > 0.5
  assert cv_gradnorm < 0.25 * cv_equal, (cv_gradnorm, cv_equal)


def test_famo_uses_the_previous_updates_losses_for_its_logit_step():
  # Update 0 stores L(0) and uses uniform z; update 1 first moves the logits with
  # δ = log L(0) - log L(1) (task 0 improved 4x, task 1 not at all), so the
  # task that improved less (1) gains logit mass before its weights are formed.
  tx = mtlx.famo(gamma=0.0, learning_rate=0.1, num_tasks=2)
  s = tx.init(None)
  w0, s = mtlx.loss_weights(tx, s, jnp.array([1.0, 1.0]))
  np.testing.assert_allclose(w0, [0.5, 0.5], rtol=1e-12)
  np.testing.assert_array_equal(s.logits, 0.0)
  np.testing.assert_array_equal(s.prev_losses, [1.0, 1.0])
  w1, s = mtlx.loss_weights(tx, s, jnp.array([0.25, 1.0]))
  # the first Adam step moves each logit by lr·sign(grad): ξ = (-0.1, +0.1)
  np.testing.assert_allclose(s.logits, [-0.1, 0.1], rtol=1e-6)
  z = np.exp([-0.1, 0.1]) / np.exp([-0.1, 0.1]).sum()
  want = (z / np.array([0.25, 1.0])) / np.sum(z / np.array([0.25, 1.0]))
  np.testing.assert_allclose(w1, want, rtol=1e-6)
  np.testing.assert_array_equal(s.prev_losses, [0.25, 1.0])
