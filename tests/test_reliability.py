"""Reliability (issue 15): bad steps never poison state, bad settings and shapes fail
early with one clear ValueError, finite-but-awkward losses never give NaN."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mtlx
from mtlx import registry

K = 4
PARAMS = {"a": jnp.zeros((3,)), "b": jnp.zeros((2, 2))}
TWO_BATCH = ("modo", "sdmgrad")


def _grads(t, scale=1.0):
  rng = np.random.default_rng(100 + t)
  return {"a": jnp.asarray(scale * rng.normal(size=(K, 3))),
          "b": jnp.asarray(scale * rng.normal(size=(K, 2, 2)))}


def _losses(t):
  return jnp.asarray(np.random.default_rng(200 + t).uniform(0.5, 2.0, size=K))


def _first(tx):
  return tx.method


class _Chain:
  def __init__(self, method):
    self.method = method
    self.tx = optax.chain(method, optax.apply_if_finite(optax.sgd(0.1), 5))
    self.init, self.update = self.tx.init, self.tx.update


def _chain(kind, name):
  if kind == "gradient":
    method = registry.mto_transform(name, "none", num_tasks=K)
  else:
    method = registry.mto_transform("ls", name, num_tasks=K)
  return _Chain(method)


def _unique(table):
  """One name per constructor (the registry has aliases: ls, rlw, gls ...)."""
  seen, names = set(), []
  for n in sorted(table, key=len):
    key = getattr(table[n], "func", table[n])
    if key not in seen:
      seen.add(key)
      names.append(n)
  return sorted(names)


ALL = ([("gradient", n) for n in _unique(registry.gradient_methods())]
       + [("loss", n) for n in _unique(registry.loss_methods())])


def _run(tx, update, method_update, name, bad):
  """Params after clean steps 0..4, with a non-finite step (``bad``) after step 1."""
  params = PARAMS
  state = tx.init(params)
  schedule = [0, 1] + ([bad] if bad else []) + [2, 3, 4]
  for t in schedule:
    if t in ("grads", "losses"):
      g, l, g2 = _grads(9), _losses(9), _grads(19)
      if t == "grads":
        g = {"a": g["a"].at[1, 0].set(jnp.nan), "b": g["b"]}
      else:
        l = l.at[0].set(jnp.inf)
    else:
      g, l, g2 = _grads(t), _losses(t), _grads(10 + t)
    extra = {"task_grads_2": g2} if name in TWO_BATCH else {}
    if t in ("grads", "losses"):  # the method's own update is non-finite
      out, _ = method_update(g, state[0], params, task_losses=l, **extra)
      assert not all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree_util.tree_leaves(out))
    updates, state = update(g, state, params, task_losses=l, **extra)
    params = optax.apply_updates(params, updates)
  return params


@pytest.mark.parametrize("kind,name", ALL)
def test_non_finite_step_leaves_no_trace(kind, name):
  """Rule 1: a NaN grad or an inf loss leaves the state as it was, and the update
  is non-finite, so apply_if_finite skips it: the run ends exactly as without it."""
  tx = _chain(kind, name)
  update, method_update = jax.jit(tx.update), jax.jit(tx.method.update)
  clean = _run(tx, update, method_update, name, None)
  for bad in ("grads", "losses"):
    skipped = _run(tx, update, method_update, name, bad)
    for a, b in zip(jax.tree_util.tree_leaves(clean), jax.tree_util.tree_leaves(skipped)):
      assert np.all(np.isfinite(np.asarray(b))), (name, bad, b)
      np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-12, atol=1e-14)


# --- Item 6: shapes of task grads against params, array-like weights ------------------

BUILDERS = {
    "upgrad": lambda: mtlx.upgrad(), "mgda": lambda: mtlx.mgda(),
    "excess_mtl": lambda: mtlx.excess_mtl(num_tasks=K), "moco": lambda: mtlx.moco(num_tasks=K),
    "db_mtl": lambda: mtlx.db_mtl(num_tasks=K), "graddrop": lambda: mtlx.graddrop(),
    "dwa": lambda: mtlx.dwa(num_tasks=K), "mean": lambda: mtlx.mean(),
}


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_task_grad_shape_checked_against_params(name):
  tx = BUILDERS[name]()
  params = {"a": jnp.zeros((3,)), "b": jnp.zeros((2, 2))}
  state = tx.init(params)
  bad = {"a": jnp.ones((K, 3)), "b": jnp.ones((K, 1, 2))}
  with pytest.raises(ValueError, match=r"task_grads\['b'\] has shape \(4, 1, 2\); expected "
                     r"\(K,\) \+ params\['b'\]\.shape = \(4, 2, 2\)"):
    jax.eval_shape(lambda g, s: tx.update(g, s, params, task_losses=jnp.ones(K)), bad, state)


def test_combine_accepts_array_like_weights():
  tg = {"a": jnp.arange(8.0).reshape(4, 2)}
  out = mtlx.combine([1, 1, 1, 1], tg)
  np.testing.assert_allclose(out["a"], [12.0, 16.0])
  np.testing.assert_allclose(mtlx.combine(np.ones(4), tg)["a"], [12.0, 16.0])
  with pytest.raises(ValueError, match="weights has shape"):
    mtlx.combine([1, 1], tg)


def test_normalized_accuracy_length_mismatch():
  np.testing.assert_allclose(mtlx.merging.normalized_accuracy([0.5, 0.9], [1.0, 0.9]), [0.5, 1])
  with pytest.raises(ValueError, match=r"shape \(3,\).*shape \(2,\)"):
    mtlx.merging.normalized_accuracy([0.5, 0.6, 0.7], [1.0, 1.0])
