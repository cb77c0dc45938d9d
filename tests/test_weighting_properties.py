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
from tests import registry_lines

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

# Every loss-space registry line, plus fixed weights (not in the registry: it needs
# its weights as an argument).
ALL = dict({n: (lambda k, n=n: registry_lines.build(n, k)) for n in registry_lines.names("loss")},
           fixed_weights=lambda k: mtlx.fixed_weights(jnp.ones(k)))
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


