"""The engines of ``mtlx.train.make_step`` agree in their numbers and refuse what they
cannot serve; ``engine='auto'`` picks the cheapest valid one; the logged weights are
the weights the method used.

Every Gramian method of the registry runs 5 steps on the Gramian engine and on the
Jacobian engine (float64 tiny MLP, with DWA, FAMO and uncertainty weighting chained
in front) and must reach the same parameters to 1e-10 (relative).
"""

import jax
import jax.extend  # noqa: F401  (jax.extend.core for the jaxpr walk)
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mtlx
from mtlx import registry
from mtlx import train as T
from tests import registry_lines
from tests.reference import aggregators_ref as ref

K = 4
STEPS = 5


def _mlp_problem(bias=True, seed=0, dtype=jnp.float64):
  rng = np.random.default_rng(seed)
  params = {"w1": jnp.asarray(rng.normal(size=(4, 6)) / 2, dtype),
            "w2": jnp.asarray(rng.normal(size=(6, K)) / 2, dtype)}
  if bias:
    params["b1"] = jnp.asarray(rng.normal(size=(6,)) / 4, dtype)
  batch = {"x": jnp.asarray(rng.normal(size=(8, 4)), dtype),
           "y": jnp.asarray(rng.normal(size=(8, K)), dtype)}
  return params, batch


def mlp_loss(p, b):
  h = jnp.tanh(b["x"] @ p["w1"] + p.get("b1", 0.0))
  return jnp.mean((h @ p["w2"] - b["y"]) ** 2, axis=0) * jnp.arange(1.0, K + 1.0)


def _run(loss_tx, grad_tx, engine, params, batch, steps=STEPS):
  st = T.make_step(mlp_loss, loss_tx=loss_tx, grad_tx=grad_tx, optimizer=optax.sgd(0.1),
                   engine=engine, params=params)
  assert st.engine == engine
  state = st.init(params, batch)
  for _ in range(steps):
    state, info = st.step(state, batch)
  return state, info


def _max_rel(a, b):
  return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))) /
                   max(float(np.max(np.abs(np.asarray(y, np.float64)))), 1e-300))
             for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


GRAMIAN_METHODS = registry_lines.names("gradient", lambda m: "gramian" in m.engines)


@pytest.mark.parametrize("name", GRAMIAN_METHODS)
def test_gramian_engine_equals_jacobian_engine_with_loss_weightings_in_front(name):
  params, batch = _mlp_problem()
  loss_tx, grad_tx = registry.build(name, "dwa+famo+uncertainty", K)
  s_j, i_j = _run(loss_tx, grad_tx, "jacobian", params, batch)
  s_g, i_g = _run(loss_tx, grad_tx, "gramian", params, batch)
  assert _max_rel(s_g.params, s_j.params) <= 1e-10
  assert _max_rel(s_g.loss_state, s_j.loss_state) <= 1e-10
  np.testing.assert_allclose(i_g["weights"], i_j["weights"], rtol=1e-9)
  assert bool(i_g["weights_exact"]) and bool(i_j["weights_exact"])
  assert not np.allclose(s_g.params["w1"], params["w1"])  # it moved


# float32: Nash-MTL here; DWA + UPGrad in float32 is the multi-digits CNN test below.
@pytest.mark.parametrize("name", ["nash_mtl"])
def test_engines_agree_in_float32(name):
  params, batch = _mlp_problem(dtype=jnp.float32)
  loss_tx, grad_tx = registry.build(name, "dwa", K)
  s_j, _ = _run(loss_tx, grad_tx, "jacobian", params, batch)
  s_g, _ = _run(loss_tx, grad_tx, "gramian", params, batch)
  assert _max_rel(s_g.params, s_j.params) <= 1e-5


def _flat(tree):
  return np.concatenate([np.asarray(x).reshape(K, -1)
                         for x in jax.tree_util.tree_leaves(tree)], axis=1)


_jacobian_of_mlp = jax.jit(mtlx.value_and_jacobian(mlp_loss))


@pytest.mark.parametrize("name,reference", [
    ("upgrad", ref.upgrad), ("mgda", ref.mgda), ("imtl_g", ref.imtl_g),
    ("nash_mtl", None)])
def test_logged_weights_are_the_weights_the_method_used(name, reference):
  """The weights a Gramian-engine step logs equal, to 1e-6, the method's own weights
  (its transform's weighting of the float64 NumPy Gramian ``J Jᵀ``, at its initial
  state), and their update ``wᵀJ`` is the paper's (independent NumPy reference). The
  Jacobian engine logs the same weights (to 1e-9: the equivalence test above)."""
  params, batch = _mlp_problem(seed=1)
  _, grad_tx = registry.build(name, "none", K)
  _, tg = _jacobian_of_mlp(params, batch)
  jac = _flat(tg)
  own, _ = jax.jit(grad_tx.weights)(jnp.asarray(jac @ jac.T), grad_tx.init(params))
  own = np.asarray(own)
  _, info = _run(None, grad_tx, "gramian", params, batch, steps=1)
  w = np.asarray(info["weights"])
  assert bool(info["weights_exact"])
  np.testing.assert_allclose(w, own, rtol=1e-6, atol=1e-6 * np.abs(own).max())
  assert np.abs(own).max() > 1e-3  # not a trivial zero
  if reference is not None:  # and the paper's update (independent NumPy)
    want = reference(jac)
    np.testing.assert_allclose(w @ jac, want, rtol=1e-6, atol=1e-6 * np.abs(want).max())


def test_methods_that_are_not_weightings_log_the_least_squares_fit():
  params, batch = _mlp_problem()
  _, info = _run(None, mtlx.graddrop(), "jacobian", params, batch, steps=1)
  assert not bool(info["weights_exact"]) and info["weights"].shape == (K,)


def test_one_backward_equals_jacobian_for_loss_weightings():
  params, batch = _mlp_problem()
  loss_tx, grad_tx = registry.build("ls", "dwa+famo+uncertainty", K)
  s_o, i_o = _run(loss_tx, grad_tx, "one_backward", params, batch)
  s_j, i_j = _run(loss_tx, grad_tx, "jacobian", params, batch)
  assert _max_rel(s_o.params, s_j.params) <= 1e-10
  np.testing.assert_allclose(i_o["weights"], i_j["weights"], rtol=1e-10)


def test_auto_picks_the_cheapest_valid_engine():
  params, batch = _mlp_problem(bias=False)
  big_bias, _ = _mlp_problem(bias=True)

  def choose(method, weighting="none", p=params, **kw):
    loss_tx, grad_tx = registry.build(method, weighting, K)
    return T.choose_engine(loss_tx, grad_tx, loss_fn=mlp_loss, params=p,
                           example_batch=batch, **kw)

  assert choose("ls") == "one_backward"
  assert choose("ls", "dwa+famo") == "one_backward"
  assert choose("mean", "uncertainty") == "one_backward"
  assert choose("upgrad") == "gramian"  # every parameter is a dense layer's
  assert choose("upgrad", "dwa") == "gramian"
  # b1 (6 of 54 parameters) falls back to per-task grads: coverage 0.89 < 0.9
  assert T.gramian_coverage(mlp_loss, big_bias, batch) == pytest.approx(1 - 6 / 54)
  assert choose("upgrad", p=big_bias) == "jacobian"
  assert choose("graddrop") == "jacobian"
  assert choose("ls", "gradnorm") == "jacobian"
  assert choose("modo") == "jacobian"
  assert choose("upgrad", rep_grad=True) == "representation"
  st = T.make_step(mlp_loss, grad_tx=mtlx.upgrad(), optimizer=optax.sgd(0.1),
                   params=params, example_batch=batch)
  assert st.engine == "gramian"


@pytest.mark.parametrize("engine,method,weighting,why,can", [
    ("gramian", "graddrop", "none", "not a weighting of the Gramian",
     "['jacobian', 'representation']"),
    ("one_backward", "upgrad", "none", "reads the Gramian",
     "['gramian', 'jacobian', 'representation']"),
    ("one_backward", "ls", "gradnorm", "read the per-task gradients", "['jacobian']"),
    ("gramian", "upgrad", "db_mtl", "not weightings of the losses", "['jacobian']"),
    ("gramian", "modo", "none", "two independent mini-batches", "['jacobian']"),
])
def test_an_engine_that_cannot_serve_fails_before_building(engine, method, weighting,
                                                           why, can):
  loss_tx, grad_tx = registry.build(method, weighting, K)
  with pytest.raises(ValueError, match=f"engine='{engine}' cannot serve .*{why}.*"
                                       f"{can.replace('[', '.').replace(']', '.')}"):
    T.make_step(mlp_loss, loss_tx=loss_tx, grad_tx=grad_tx, optimizer=optax.sgd(0.1),
                engine=engine, representation=T.Representation(None, None))
  assert set(registry.engines(method, weighting)) == set(eval(can))  # noqa: S307
  with pytest.raises(ValueError, match=r"engine='nope'; expected 'auto' or one of"):
    T.check_engine("nope", loss_tx, grad_tx)


def test_registry_engines_match_what_the_transforms_say():
  """The engines declared in each registry line are those the built transform serves."""
  for name, m in registry.METHODS.items():
    tx = m.build(K if m.takes_num_tasks else None)
    if m.kind == "gradient":
      reasons = T.engine_reasons(None, tx)
    else:
      reasons = T.engine_reasons(tx, mtlx.linear_scalarization())
    served = {e for e, why in reasons.items() if why is None}
    assert served == set(m.engines), (name, served, m.engines)


def _primitives(jaxpr):
  for eqn in jaxpr.eqns:
    yield eqn.primitive.name
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else (param,):
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          yield from _primitives(sub.jaxpr)
        elif isinstance(sub, jax.extend.core.Jaxpr):
          yield from _primitives(sub)


@pytest.mark.parametrize("name", registry_lines.names())  # every line, aliases left out
def test_every_registered_method_traces_under_jit_without_callbacks(name):
  """The shared suite every registry line joins: built with its registry defaults, the
  transform traces (jaxpr) on stacked grads with no host callback, and its update has
  the right structure (one update for gradient-space methods, stacked rows for
  loss-space ones). Traced once: the jaxpr checked (every nested jaxpr, primitive by
  primitive) is the one compiled and run."""
  m = registry.METHODS[name]
  tx = m.build(K if m.takes_num_tasks else None)
  rng = np.random.default_rng(0)
  tg = {"w": jnp.asarray(rng.normal(size=(K, 3, 2))), "b": jnp.asarray(rng.normal(size=(K, 2)))}
  params = jax.tree_util.tree_map(lambda g: g[0], tg)
  extra = {"task_losses": jnp.arange(1.0, K + 1.0)}
  if "jacobian" in m.engines and len(m.engines) == 1 and m.kind == "gradient":
    extra["task_grads_2"] = tg  # the two-batch methods (MoDo, SDMGrad)
  fn = lambda g, s: tx.update(g, s, params, **extra)  # noqa: E731
  traced = jax.jit(fn).trace(tg, tx.init(params))
  prims = set(_primitives(traced.jaxpr.jaxpr))  # every nested jaxpr (loops, conds, pjit)
  assert prims and not any("callback" in p for p in prims), prims
  out, _ = traced.lower().compile()(tg, tx.init(params))
  want = params if m.kind == "gradient" else tg
  assert jax.tree_util.tree_map(jnp.shape, out) == jax.tree_util.tree_map(jnp.shape, want)


def test_engines_agree_on_the_multi_digits_cnn_in_float32():
  """The hps CNN on multi_digits' input shape (convs, dense layers, biases), two
  classification tasks, DWA + UPGrad: Gramian and Jacobian engines, 5 steps."""
  from mtlx import models
  from mtlx.data.specs import TaskSpec
  tasks = [TaskSpec(n, "classification", 10, ("accuracy",), (True,), n)
           for n in ("left", "right")]
  fns, params = models.split(models.get_model("hps", input_shape=(8, 12, 1), tasks=tasks,
                                              widths=(4, 8), hidden=16, head_hidden=8, seed=0))
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.normal(size=(16, 8, 12, 1)), jnp.float32),
           "left": jnp.asarray(rng.integers(0, 10, 16)),
           "right": jnp.asarray(rng.integers(0, 10, 16))}

  def loss_fn(p, b):
    return T.task_losses(tasks, fns.apply(p, b["image"]), b)

  loss_tx, grad_tx = registry.build("upgrad", "dwa", 2)
  out = {}
  for engine in ("jacobian", "gramian"):
    st = T.make_step(loss_fn, loss_tx=loss_tx, grad_tx=grad_tx, optimizer=optax.sgd(0.1),
                     engine=engine, params=params)
    state = st.init(params, batch)
    for _ in range(STEPS):
      state, _ = st.step(state, batch)
    out[engine] = state.params
  assert _max_rel(out["gramian"], out["jacobian"]) <= 1e-5
  assert _max_rel(out["gramian"], params) > 1e-4  # it moved


def test_config_kwargs_are_data_and_unknown_keys_fail_before_training():
  import ml_collections
  from configs import multi_digits as md_config
  from experiments import train as train_exp
  c = md_config.get_config("method=cagrad,weighting=dwa")
  assert c.method_kwargs.c == 0.4 and c.weighting_kwargs.temperature == 2.0
  c.method_kwargs.c = 0.5
  loss_tx, grad_tx = train_exp.build_methods(c, 2)
  assert isinstance(loss_tx, mtlx.LossWeighting) and isinstance(grad_tx, mtlx.GramianWeighting)
  cases = [("method_kwargs", {"cc": 0.5}, r"'cagrad' got unknown argument\(s\) \['cc'\]; "
                                          r"expected some of \['c', 'num_iters'"),
           ("weighting_kwargs", {"temp": 1.0}, r"'dwa' got unknown argument\(s\) \['temp'\]; "
                                              r"expected some of \['temperature'\]"),
           ("model_kwargs", {"widths": (4,), "num_experts": 2},
            r"\['num_experts'\] that model 'hps' does not take; expected some of "
            r"\['head_hidden', 'hidden', 'widths'\]")]
  for key, value, pattern in cases:
    bad = md_config.get_config("method=cagrad,weighting=dwa")
    bad[key] = ml_collections.ConfigDict(value)
    with pytest.raises(ValueError, match=pattern):
      train_exp.validate(bad)
  bad = md_config.get_config("method=graddrop")
  bad.engine = "gramian"
  with pytest.raises(ValueError, match=r"engine='gramian' cannot serve config.weighting='none', "
                                       r"config.method='graddrop': .*\['jacobian'"):
    train_exp.validate(bad)
  bad.engine = "fast"
  with pytest.raises(ValueError, match=r"config.engine='fast'; expected 'auto' or one of"):
    train_exp.validate(bad)
  assert md_config.get_config("model=mmoe").model_kwargs.num_experts == 4
