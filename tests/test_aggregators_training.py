"""Every part-A method inside optax.chain(method, adam) under jit; jaxprs; trace-time errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mtlx
from tests import registry_lines
from tests.reference import aggregators_ref as ref

STEPS = 300
# Centres and curvatures of the quadratic tasks f_k(x) = ½ Σ_i a_ki (x_i - c_ki)².
CENTRES = np.array([[2.0, 0.0, 1.0], [-2.0, 1.0, 0.0], [0.0, -2.0, 0.5], [1.0, 2.0, -1.0]])
CURV = np.array([[1.0, 2.0, 0.5], [3.0, 1.0, 1.0], [1.0, 1.0, 2.0], [0.5, 1.5, 1.0]])


# Registry lines whose convergence test is their own (tests/aggregators/test_<name>.py:
# two noisy or two-batch quadratics), left out here explicitly.
OWN_CONVERGENCE_TEST = ("moco", "sdmgrad", "modo", "fairgrad", "excess_mtl", "pcd", "crmogm")
# K for registry defaults that need more tasks (krum n_byzantine=1: 4; trimmed_mean: 3).
MIN_K = {"krum": 4, "trimmed_mean": 4}
# What a run reaches: "mean" (a stationary point of the mean loss: LS, the mean, CAGrad,
# Liu et al. Thm 3.2) or, the default for any new registry line, "pareto".
CONDITION = {"ls": "mean", "mean": "mean", "cagrad": "mean"}
# Variants beyond the registry defaults: name -> (constructor, K, condition).
VARIANTS = {
    "mgda_loss": (lambda: mtlx.mgda("loss+"), 2, "pareto"),
    "gradvac_leaf": (lambda: mtlx.gradvac(num_tasks=2, granularity="leaf"), 2, "pareto"),
}


def _method(name):
  """(constructor, K, condition) of a registry line (built with its defaults) or variant."""
  if name in VARIANTS:
    return VARIANTS[name]
  k = MIN_K.get(name, 2)
  return (lambda: registry_lines.build(name, k)), k, CONDITION.get(name, "pareto")


METHODS = sorted(set(registry_lines.names("gradient")) - set(OWN_CONVERGENCE_TEST)) + sorted(VARIANTS)


def _losses(params, k):
  x = jnp.concatenate([params["a"], params["b"]])
  c, a = jnp.asarray(CENTRES[:k]), jnp.asarray(CURV[:k])
  return 0.5 * jnp.sum(a * (x[None] - c) ** 2, axis=1) + 1.0  # +1: positive losses


def _train(tx, k):
  value_and_jac = mtlx.value_and_jacobian(lambda p: _losses(p, k))

  def run(params):
    state = tx.init(params)

    def step(carry, _):
      params, state = carry
      losses, grads = value_and_jac(params)
      updates, state = tx.update(grads, state, params, task_losses=losses)
      return (optax.apply_updates(params, updates), state), None

    (params, _), _ = jax.lax.scan(step, (params, state), None, length=STEPS)
    return params

  return jax.jit(run)({"a": jnp.array([3.0, 3.0]), "b": jnp.array([-3.0])})


def _task_grads(x, k):
  return CURV[:k] * (x[None] - CENTRES[:k])


@pytest.mark.parametrize("name", METHODS)
def test_converges_to_its_stationary_point(name):
  ctor, k, condition = _method(name)
  tx = optax.chain(ctor(), optax.adam(optax.cosine_decay_schedule(0.1, STEPS)))
  params = _train(tx, k)
  x = np.concatenate([params["a"], params["b"]]).astype(np.float64)
  grads = _task_grads(x, k)
  g0 = _task_grads(np.array([3.0, 3.0, -3.0]), k)
  start = np.linalg.norm(g0, axis=1).max()
  assert np.linalg.norm(ref.min_norm_point(g0)) > 0.1 * start  # the start is far from it
  if condition == "mean":
    # Linear scalarization / mean / CAGrad (Liu et al. Thm 3.2): a stationary point of the mean loss.
    assert np.linalg.norm(grads.mean(0)) < 1e-2 * start
  # Pareto-stationary: the min-norm point of the convex hull of the task gradients is ~0.
  assert np.linalg.norm(ref.min_norm_point(grads)) < 1e-2 * start


def _task_grads_tree(k=3, dtype=jnp.float32):
  rng = np.random.default_rng(0)
  return {"w": jnp.asarray(rng.normal(size=(k, 3, 2)), dtype),
          "b": jnp.asarray(rng.normal(size=(k, 2)), dtype)}


PART_A = {
    "mean": mtlx.mean, "mgda": mtlx.mgda, "pcgrad": mtlx.pcgrad,
    "gradvac": lambda: mtlx.gradvac(num_tasks=3),
    "gradvac_leaf": lambda: mtlx.gradvac(num_tasks=3, granularity="leaf"),
    "graddrop": mtlx.graddrop, "cagrad": mtlx.cagrad, "imtl_g": mtlx.imtl_g,
    "nash_mtl": lambda: mtlx.nash_mtl(num_tasks=3, update_weights_every=2),
    "aligned_mtl": mtlx.aligned_mtl, "upgrad": mtlx.upgrad, "dualproj": mtlx.dualproj,
    "config": mtlx.config, "krum": lambda: mtlx.krum(0), "trimmed_mean": lambda: mtlx.trimmed_mean(1),
}


def test_jaxprs_have_no_callbacks():
  tg = _task_grads_tree()
  params = jax.tree_util.tree_map(lambda g: g[0], tg)
  for name, ctor in PART_A.items():
    tx = ctor()
    text = str(jax.make_jaxpr(lambda g, s: tx.update(g, s, params, task_losses=jnp.ones(3)))(
        tg, tx.init(params)))
    assert "callback" not in text, name
    assert "while" in text or "scan" in text or name in (
        "mean", "imtl_g", "aligned_mtl", "config", "krum", "trimmed_mean", "graddrop"), name


def test_registry_defaults():
  tg = _task_grads_tree(k=4)
  krum_tx = mtlx.registry.get_gradient_method("krum")  # n_byzantine=1: needs K >= 4
  out, _ = krum_tx.update(tg, krum_tx.init(None))
  assert out["w"].shape == (3, 2)
  tm = mtlx.registry.get_gradient_method("trimmed_mean", trim_number=0)
  out, _ = tm.update(tg, tm.init(None))
  np.testing.assert_allclose(out["b"], np.mean(tg["b"], 0), rtol=1e-6)
  tx = mtlx.registry.mto_transform("nash_mtl", num_tasks=4)
  out, state = tx.update(tg, tx.init(None))
  assert state.alpha.shape == (4,)


def test_trace_time_errors():
  tg = _task_grads_tree()
  bad = {"w": tg["w"], "b": tg["b"][:2]}
  for name, ctor in PART_A.items():
    tx = ctor()
    with pytest.raises(ValueError, match="disagree on the task axis"):
      tx.update(bad, tx.init(tg))
  tg2 = jax.tree_util.tree_map(lambda g: g[:2], tg)
  for ctor in (lambda: mtlx.nash_mtl(num_tasks=3), lambda: mtlx.gradvac(num_tasks=3),
               lambda: mtlx.gradvac(num_tasks=3, granularity="leaf")):
    tx = ctor()
    with pytest.raises(ValueError, match="num_tasks=3 but the update received K=2"):
      tx.update(tg2, tx.init(tg))
  with pytest.raises(ValueError, match=r"normalization='l1' is not valid; expected one of \['l2', 'loss', 'loss\+', 'none'\]"):
    mtlx.mgda("l1")
  with pytest.raises(ValueError, match="task_losses"):
    mtlx.mgda("loss").update(tg, optax.EmptyState())
  with pytest.raises(ValueError, match=r"task_losses has shape \(2,\); expected shape \(3,\)"):
    mtlx.mgda("loss+").update(tg, optax.EmptyState(), task_losses=jnp.ones(2))
  with pytest.raises(ValueError, match=r"granularity='layer' is not valid"):
    mtlx.gradvac(num_tasks=3, granularity="layer")
  with pytest.raises(ValueError, match=r"returned weights of shape \(2,\); expected shape \(3,\)"):
    tx = mtlx.gramian_weighting(lambda g: jnp.ones(2))
    tx.update(tg, tx.init(None))
  with pytest.raises(ValueError, match=r"leak has shape \(2,\); expected shape \(3,\)"):
    tx = mtlx.graddrop(leak=jnp.array([0.1, 0.2]))
    tx.update(tg, tx.init(None))
  with pytest.raises(ValueError, match=r"krum with n_byzantine=1 needs K >= n_byzantine \+ 3 = 4"):
    tx = mtlx.krum(1)
    tx.update(tg, tx.init(None))
  with pytest.raises(ValueError, match=r"trimmed_mean with trim_number=2 needs K >= 5"):
    tx = mtlx.trimmed_mean(2)
    tx.update(tg, tx.init(None))
  for bad_ctor in (lambda: mtlx.cagrad(c=-1.0), lambda: mtlx.graddrop(leak=1.5),
                   lambda: mtlx.nash_mtl(update_weights_every=0, num_tasks=2),
                   lambda: mtlx.gradvac(beta=2.0, num_tasks=2)):
    with pytest.raises(ValueError):
      bad_ctor()


def test_nash_mtl_reuses_weights_between_solves():
  tg = _task_grads_tree(dtype=jnp.float64)
  tx = mtlx.nash_mtl(max_norm=0.0, update_weights_every=3, num_tasks=3)
  step = jax.jit(tx.update)
  s = tx.init(None)
  _, s = step(tg, s)
  a1 = np.asarray(s.alpha)
  tg2 = jax.tree_util.tree_map(lambda g: g * jnp.arange(1.0, 4.0).reshape((3,) + (1,) * (g.ndim - 1)), tg)
  _, s = step(tg2, s)
  np.testing.assert_array_equal(np.asarray(s.alpha), a1)  # step 1: reused
  _, s = step(tg2, s)
  _, s = step(tg2, s)  # step 3: solved again on the new gradients
  assert not np.allclose(np.asarray(s.alpha), a1)
  assert int(s.step) == 4


def test_randomised_methods_advance_their_key_and_are_reproducible():
  tg = _task_grads_tree(k=5)
  for ctor in (mtlx.pcgrad, mtlx.graddrop, lambda: mtlx.gradvac(num_tasks=5)):
    tx = ctor()
    step = jax.jit(tx.update)
    s0 = tx.init(None)
    u1, s1 = step(tg, s0)
    u1b, _ = step(tg, tx.init(None))
    np.testing.assert_array_equal(u1["w"], u1b["w"])
    assert not np.array_equal(np.asarray(s1.key), np.asarray(s0.key))


def test_gradvac_leaf_granularity_on_one_leaf_equals_whole():
  tg = {"x": _task_grads_tree(k=4, dtype=jnp.float64)["w"].reshape(4, 6)}
  whole, leaf = mtlx.gradvac(num_tasks=4, seed=3), mtlx.gradvac(num_tasks=4, seed=3, granularity="leaf")
  sw, sl = whole.init(tg), leaf.init(tg)
  for _ in range(2):  # the second step uses the EMA targets of the first
    uw, sw = whole.update(tg, sw)
    ul, sl = leaf.update(tg, sl)
    np.testing.assert_allclose(ul["x"], uw["x"], rtol=1e-12)
  np.testing.assert_allclose(sl.targets[0], sw.targets, rtol=1e-12)
  assert np.abs(np.asarray(sw.targets)).max() > 0
