"""Helpers of the per-method tests of moco, sdmgrad, modo, fairgrad, excess_mtl, pcd
and crmogm (tests/aggregators/test_<name>.py): stacked-Jacobian pytrees, vmapped
multi-step runs, the matrix families of their property tests and two conflicting
quadratics for their convergence tests. References: tests/reference/aggregators_b_ref.py
(float64 NumPy from the papers' equations)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import strategies as st

import mtlx

P = 7  # parameters, split into two leaves: "a" [K, 3] and "b" [K, 2, 2]


def to_tree(jac):
  jac = jnp.asarray(jac)
  lead = jac.shape[:-1]
  return {"a": jac[..., :3], "b": jac[..., 3:].reshape(lead + (2, 2))}


def from_tree(tree):
  a, b = np.asarray(tree["a"], np.float64), np.asarray(tree["b"], np.float64)
  return np.concatenate([a, b.reshape(b.shape[:-2] + (4,))], axis=-1)


PARAMS = {"a": jnp.zeros(3), "b": jnp.zeros((2, 2))}


def rel_err(x, y):
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  return np.linalg.norm(x - y, axis=-1) / np.maximum(np.linalg.norm(y, axis=-1), 1e-300)


def broadcast_state(state, n):
  return jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (n,) + jnp.shape(x)), state)


# Small weightings (JAX + NumPy twins) to wrap with crmogm in the tests.
def inv_norm_jax(gramian):
  w = 1.0 / jnp.sqrt(jnp.diagonal(gramian))
  return w / jnp.sum(w)


def inv_norm_np(gramian):
  w = 1.0 / np.sqrt(np.diag(gramian))
  return w / w.sum()


def mgda2_jax(gramian):
  """Closed-form min-norm weights for K = 2."""
  d = gramian[0, 0] + gramian[1, 1] - 2 * gramian[0, 1]
  lam = jnp.clip((gramian[1, 1] - gramian[0, 1]) / jnp.where(d > 0, d, 1.0), 0.0, 1.0)
  return jnp.stack([lam, 1.0 - lam])


N = 50


STEPS = 4


def random_jacs(seed, n, k, steps):
  return np.random.default_rng(seed).normal(size=(steps, n, k, P))


def run_steps(tx, jacs, extras=None):
  """Runs tx over `steps` Jacobians for `n` problems at once (vmap), float64."""
  steps, n = jacs.shape[:2]
  state = broadcast_state(tx.init(PARAMS), n)
  upd = jax.jit(jax.vmap(lambda tg, s, ex: tx.update(tg, s, None, **ex)))
  outs = []
  for t in range(steps):
    ex = {} if extras is None else {name: to_tree(v[t]) for name, v in extras.items()}
    out, state = upd(to_tree(jacs[t]), state, ex)
    outs.append(from_tree(out))
  return np.stack(outs), state


FAMILIES = ("normal", "rank_deficient", "duplicated", "zero_row", "all_zero", "conflicting")


# (K, dtype) pairs: K from 1 to 64 and both float widths, four compilations per method.
SHAPES = ((1, np.float64), (2, np.float32), (5, np.float64), (64, np.float32))


SCALES = (1e-8, 1e-4, 1.0, 1e4, 1e8)


def make_jacobian(family, k, seed, scale):
  rng = np.random.default_rng(seed)
  jac = rng.normal(size=(k, P))
  if family == "rank_deficient":
    r = max(1, min(k, P) // 2)
    jac = rng.normal(size=(k, r)) @ rng.normal(size=(r, P)) / np.sqrt(r)
  elif family == "duplicated" and k > 1:
    jac[-1] = jac[0]
  elif family == "zero_row":
    jac[k // 2] = 0.0
  elif family == "all_zero":
    jac[:] = 0.0
  elif family == "conflicting":
    v = rng.normal(size=P)
    signs = np.where(np.arange(k) % 2 == 0, 1.0, -1.0)
    jac = signs[:, None] * (1.0 + np.arange(k)[:, None] % 3) * v + 1e-2 * rng.normal(size=(k, P))
  return jac * scale


@st.composite
def problems(draw):
  k, dtype = draw(st.sampled_from(SHAPES))
  return dict(family=draw(st.sampled_from(FAMILIES)), k=k, dtype=dtype,
              seed=draw(st.integers(0, 2**16)), scale=draw(st.sampled_from(SCALES)))


# One transform and one jitted two-step runner per (method, K), reused across tests.
def _make(name, k):
  return {
      "moco": lambda: mtlx.moco(num_tasks=k),
      "sdmgrad": lambda: mtlx.sdmgrad(num_tasks=k),
      "modo": lambda: mtlx.modo(gamma=0.1, num_tasks=k),
      "fairgrad": lambda: mtlx.fairgrad(num_tasks=k),
      "excess_mtl": lambda: mtlx.excess_mtl(step_size=0.5, num_tasks=k),
      "pcd": lambda: mtlx.pcd(),
      "crmogm": lambda: mtlx.crmogm(inv_norm_jax, beta=0.5, num_tasks=k),
  }[name]()


@functools.lru_cache(maxsize=None)
def transform(name, k):
  """(tx, jit(tx.update)) per (method, K), reused across examples and tests."""
  tx = _make(name, k)
  return tx, jax.jit(lambda tg, s, p: tx.update(tg, s, p, task_grads_2=tg))


def evaluate(name, jac1, jac2):
  """Two steps of the method -> (first update, second update, final state)."""
  dtype = jac1.dtype
  params = jax.tree_util.tree_map(lambda x: x.astype(dtype), PARAMS)
  tx, update = transform(name, jac1.shape[0])
  state = tx.init(params)
  o1, state = update(to_tree(jac1), state, params)
  o2, state = update(to_tree(jac2), state, params)
  return from_tree(o1), from_tree(o2), state


def tol_for(dtype, loose=1.0):
  return (1e-4 if dtype == np.float32 else 1e-9) * loose


def check_common(name, prob, *, scale_linear, perm, loose=1.0, perm_loose=1.0):
  """Finite output, K=1 behaviour, linearity under scaling, permutation invariance
  (within ``tol_for(dtype, loose * perm_loose)``)."""
  k, dtype = prob["k"], prob["dtype"]
  jac1 = make_jacobian(prob["family"], k, prob["seed"], prob["scale"]).astype(dtype)
  jac2 = make_jacobian(prob["family"], k, prob["seed"] + 1, prob["scale"]).astype(dtype)
  o1, o2, state = evaluate(name, jac1, jac2)
  assert np.all(np.isfinite(o1)) and np.all(np.isfinite(o2)), (name, prob)
  size = max(np.max(np.linalg.norm(jac1.astype(np.float64), axis=1)),
             np.max(np.linalg.norm(jac2.astype(np.float64), axis=1)), 1e-300)
  tol = tol_for(dtype, loose)
  if scale_linear:
    s = 8.0
    p1, p2, _ = evaluate(name, (jac1 * s).astype(dtype), (jac2 * s).astype(dtype))
    assert np.linalg.norm(p2 - s * o2) <= tol * s * (np.linalg.norm(o2) + size), (name, prob)
  if perm and k > 1:
    order = np.random.default_rng(prob["seed"]).permutation(k)
    if name == "pcd":  # task 0 is the primary task: permute the others only
      order = np.concatenate([[0], 1 + np.random.default_rng(prob["seed"]).permutation(k - 1)])
    p1, p2, _ = evaluate(name, jac1[order], jac2[order])
    assert np.linalg.norm(p2 - o2) <= tol * perm_loose * (np.linalg.norm(o2) + size), (
        name, prob)
  return jac1, jac2, o1, o2, state



def assert_simplex_state_and_single_task(prob, jac1, o1, weights):
  """The state's weights lie on the simplex; with K = 1 the update is the one gradient."""
  w = np.asarray(weights, np.float64)
  assert np.all(w >= 0) and abs(w.sum() - 1) < 1e-5
  if prob["k"] == 1:
    np.testing.assert_allclose(o1, jac1[0], rtol=1e-5, atol=1e-30)

A = jnp.array([1.0, 0.0, 0.5])


B = jnp.array([-1.0, 0.0, 0.5])


X0 = {"u": jnp.array([0.6, 2.0]), "v": jnp.array([-1.0])}


def quadratic_grads(params, key, noise):
  """Two conflicting quadratics L_k = ½‖x - a_k‖² (+ noise): stacked task grads."""
  x = jnp.concatenate([params["u"], params["v"]])
  rows = jnp.stack([x - A, x - B]) + noise * jax.random.normal(key, (2, 3))
  return {"u": rows[:, :2], "v": rows[:, 2:]}


def pareto_stationarity(params):
  """min_{λ∈[0,1]} ‖λ g_1 + (1-λ) g_2‖ (0 exactly on the Pareto set [a, b])."""
  x = np.concatenate([np.asarray(params["u"]), np.asarray(params["v"])])
  g1, g2 = x - np.asarray(A), x - np.asarray(B)
  lam = np.clip((g2 - g1) @ g2 / max((g1 - g2) @ (g1 - g2), 1e-300), 0, 1)
  return np.linalg.norm(lam * g1 + (1 - lam) * g2)


def train(method, steps=300, noise=0.0, two_batch=False, lr=0.05):
  tx = optax.chain(method, optax.adam(optax.cosine_decay_schedule(lr, steps)))

  @jax.jit
  def run(key):
    def step(carry, key):
      params, state = carry
      k1, k2 = jax.random.split(key)
      tg = quadratic_grads(params, k1, noise)
      extra = {"task_grads_2": quadratic_grads(params, k2, noise)} if two_batch else {}
      upd, state = tx.update(tg, state, params, **extra)
      return (optax.apply_updates(params, upd), state), None

    (params, _), _ = jax.lax.scan(step, (X0, tx.init(X0)), jax.random.split(key, steps))
    return params

  return run(jax.random.PRNGKey(0))


def assert_two_batch_reference(tx, reference, third, k=3):
  """``tx`` (a two-batch method with K = k) against ``reference(batches)`` over STEPS
  steps of N problems: correlated first and second batches, the third batch (for the
  direction) given or not."""
  rng = np.random.default_rng(1)
  j1, j2, j3 = (rng.normal(size=(STEPS, N, k, P)) for _ in range(3))
  j2 = j1 + 0.5 * j2  # correlated batches, like two samples of the same tasks
  extras = {"task_grads_2": j2}
  if third:
    extras["task_grads_3"] = j3
  outs, _ = run_steps(tx, j1, extras)
  for i in range(N):
    batches = [(j1[t, i], j2[t, i], (j3 if third else j1)[t, i]) for t in range(STEPS)]
    assert np.max(rel_err(outs[:, i], np.stack(reference(batches)))) <= 1e-5


def assert_missing_second_batch_says_what_to_pass(name):
  tx = mtlx.registry.get_gradient_method(name, num_tasks=2)
  tg = to_tree(make_jacobian("normal", 2, 0, 1.0))
  with pytest.raises(ValueError, match=r"keyword extra argument `task_grads_2`"):
    tx.update(tg, tx.init(PARAMS), PARAMS)
  bad = to_tree(make_jacobian("normal", 3, 0, 1.0))
  with pytest.raises(ValueError, match=r"task_grads_2 has K=3 tasks but task_grads has K=2"):
    tx.update(tg, tx.init(PARAMS), PARAMS, task_grads_2=bad)


def assert_reaches_pareto_stationarity(method, **train_kwargs):
  """Trains ``method`` on the two quadratics: from far off the Pareto set to within
  1e-2 (3e-2 with gradient noise) of Pareto stationarity."""
  assert pareto_stationarity(X0) > 1.0
  final = pareto_stationarity(train(method, **train_kwargs))
  assert final < (3e-2 if train_kwargs.get("noise") else 1e-2), final
