"""The one step builder with a task mask (`mtlx.train.make_step(..., task_mask=...)`):
every engine gives the stacked reference's numbers on steps where a task is absent,
keeps the absent task's method state, and is exactly the unmasked step when every
task is present."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mtlx
from mtlx import train as mtrain
from mtlx.data.specs import classification_task, regression_task
from mtlx.train import task_mask as TM

TASKS = (classification_task("a", 4), classification_task("b", 3), regression_task("c", 2))
K, B, D, H = 3, 12, 5, 6


def _params():
  r = np.random.default_rng(0)
  return {"encoder": {"w": jnp.asarray(r.normal(size=(D, H)) / 2, jnp.float32)},
          "decoder": {t.name: jnp.asarray(r.normal(size=(H, t.num_outputs)) / 2, jnp.float32)
                      for t in TASKS}}


def _batch(seed, task_id):
  r = np.random.default_rng(seed)
  return {"x": jnp.asarray(r.normal(size=(B, D)), jnp.float32),
          "a": jnp.asarray(r.integers(0, 4, B), jnp.int32),
          "b": jnp.asarray(r.integers(0, 3, B), jnp.int32),
          "c": jnp.asarray(r.normal(size=(B, 2)), jnp.float32),
          "task_id": jnp.asarray(task_id, jnp.int32)}


def encode(enc, batch):
  return jnp.tanh(batch["x"] @ enc["w"])


def heads(dec, z, batch):
  return TM.masked_task_losses(TASKS, {n: z @ w for n, w in dec.items()}, batch)[0]


def loss_fn(p, batch):
  return heads(p["decoder"], encode(p["encoder"], batch), batch)


ALL = np.repeat(np.arange(K), B // K)
NO_B = np.array([0] * 6 + [2] * 6)       # task 1 absent
NO_A = np.array([1] * 5 + [2] * 7)       # task 0 absent
SCHEDULE = [ALL, NO_B, NO_A]

CASES = {  # engine: (loss_tx, grad_tx) factories
    "one_backward": lambda: (mtlx.dwa(num_tasks=K), mtlx.linear_scalarization()),
    "gramian": lambda: (mtlx.dwa(num_tasks=K), mtlx.upgrad()),
    "jacobian": lambda: (mtlx.dwa(num_tasks=K), mtlx.gradvac(beta=0.5, num_tasks=K)),
}


def _reference(engine):
  """The stacked path: per-task grads, the chain wrapped in `mask_absent_tasks`, SGD."""
  loss_tx, grad_tx = CASES[engine]()
  mto = TM.mask_absent_tasks(optax.chain(loss_tx, grad_tx), num_tasks=K)
  opt = optax.sgd(0.1)

  @jax.jit
  def step(p, s, o, batch):
    _, mask = TM.task_presence(batch["task_id"], K)
    losses, tg = mtlx.value_and_jacobian(loss_fn)(p, batch)
    grads, s = mto.update(tg, s, p, task_losses=losses, task_mask=mask)
    u, o = opt.update(grads, o, p)
    return optax.apply_updates(p, u), s, o, losses

  p = _params()
  s, o = mto.init(p), opt.init(p)
  out = []
  for t, tid in enumerate(SCHEDULE):
    p, s, o, losses = step(p, s, o, _batch(t, tid))
    out.append((p, s, losses))
  return out


@pytest.mark.parametrize("engine", ["one_backward", "gramian", "jacobian"])
def test_every_engine_matches_the_stacked_reference(engine):
  loss_tx, grad_tx = CASES[engine]()
  st = mtrain.make_step(loss_fn, loss_tx=loss_tx, grad_tx=grad_tx, optimizer=optax.sgd(0.1),
                        engine=engine, task_mask="task_id")
  plain = mtrain.make_step(loss_fn, loss_tx=loss_tx, grad_tx=grad_tx,
                           optimizer=optax.sgd(0.1), engine=engine)
  state = st.init(_params(), _batch(0, ALL))
  ref = _reference(engine)
  for t, tid in enumerate(SCHEDULE):
    batch = _batch(t, tid)
    before = state
    state, info = st.step(state, batch)
    if t == 0:  # every task present: exactly the unmasked step
      p_state, _ = plain.step(before, batch)
      jax.tree_util.tree_map(np.testing.assert_array_equal, p_state, state)
    p_ref, s_ref, l_ref = ref[t]
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6),
                           state.params, p_ref)
    present = np.asarray(TM.task_presence(batch["task_id"], K)[1])
    np.testing.assert_array_equal(info["task_mask"], present)
    np.testing.assert_allclose(info["losses"], np.where(present, l_ref, 0), rtol=1e-6)
    assert not np.any(np.asarray(info["weights"])[~present])
    dwa_old, dwa_new = before.loss_state[0], state.loss_state[0]
    for k in np.flatnonzero(~present):  # the absent task's method state is kept
      np.testing.assert_array_equal(dwa_new.prev[k], dwa_old.prev[k])
      np.testing.assert_array_equal(dwa_new.prev2[k], dwa_old.prev2[k])
      if engine == "jacobian":
        np.testing.assert_array_equal(np.asarray(state.grad_state.targets)[k],
                                      np.asarray(before.grad_state.targets)[k])
    for k in np.flatnonzero(present):
      np.testing.assert_allclose(dwa_new.prev[k], l_ref[k], rtol=1e-6)


def test_bad_task_mask():
  with pytest.raises(ValueError, match="task_mask"):
    mtrain.make_step(loss_fn, grad_tx=mtlx.upgrad(), optimizer=optax.sgd(0.1),
                     engine="jacobian", task_mask=3)
  st = mtrain.make_step(loss_fn, grad_tx=mtlx.upgrad(), optimizer=optax.sgd(0.1),
                        engine="jacobian", task_mask=lambda b: jnp.ones(2, bool))
  with pytest.raises(ValueError, match=r"task_mask\(batch\)"):
    st.step(st.init(_params(), _batch(0, ALL)), _batch(0, ALL))


def test_param_aware_task_axes():
  params = {"conv": jnp.zeros((3, 3, 1, 4)), "bias": jnp.zeros(3)}
  axes = TM.param_aware_task_axes(params, 3)
  leaf = lambda *s: jnp.zeros(s)
  assert axes(None, leaf(3)) == (0,)                      # [K]
  assert axes(None, leaf(3, 3)) == (0, 1)                 # [K, K]
  assert axes(None, leaf(2, 3, 3)) == (1, 2)              # per-leaf [L, K, K]
  assert axes(None, leaf(3, 3, 1, 4)) == ()               # a moment of the conv kernel
  assert axes(None, leaf(3, 3, 3, 1, 4)) == (0,)          # [K, *conv]: tracked task grads
  assert axes(None, jnp.zeros(3, jnp.bool_)) == ()


def _restricted_weights(method, rows):
  """The float64 NumPy reference's weights of the rows ``rows`` (the present tasks)."""
  from tests.reference import aggregators_ref as ref
  if method == "mgda":
    return ref.simplex_qp(rows @ rows.T, np.zeros(len(rows)))
  # CAGrad (c = 0.4, rescaled): its direction written on the (independent) rows.
  return np.linalg.lstsq(rows.T, ref.cagrad(rows, 0.4), rcond=None)[0]


@pytest.mark.parametrize("method,engine", [("mgda", "gramian"), ("mgda", "jacobian"),
                                           ("mgda", "representation"),
                                           ("cagrad", "gramian"), ("cagrad", "jacobian")])
def test_simplex_methods_act_on_the_present_tasks_on_every_engine(method, engine):
  """Without the mask MGDA's min-norm point is the absent task's zero row (no step)
  and CAGrad's mean and simplex include it; the step hands them the mask: their
  weights are those of the present rows alone (absent: 0)."""
  params = jax.tree_util.tree_map(lambda x: x.astype(jnp.float64), _params())
  batch = jax.tree_util.tree_map(
      lambda x: x.astype(jnp.float64) if x.dtype == jnp.float32 else x, _batch(1, NO_B))
  rep = mtrain.Representation(encode, heads) if engine == "representation" else None
  grad_tx = mtlx.mgda() if method == "mgda" else mtlx.cagrad(0.4)
  st = mtrain.make_step(loss_fn, grad_tx=grad_tx, optimizer=optax.sgd(0.1),
                        engine=engine, representation=rep, task_mask="task_id")
  state, info = st.step(st.init(params, batch), batch)
  present = np.array([True, False, True])
  if engine == "representation":
    z = encode(params["encoder"], batch)
    rows = np.asarray(jax.jacrev(lambda z: heads(params["decoder"], z, batch))(z)).reshape(K, -1)
  else:
    _, tg = mtlx.value_and_jacobian(loss_fn)(params, batch)
    rows = np.concatenate([np.asarray(x).reshape(K, -1) for x in jax.tree_util.tree_leaves(tg)],
                          axis=1)
  assert np.all(rows[1] == 0)
  np.testing.assert_allclose(np.asarray(info["weights"])[present],
                             _restricted_weights(method, rows[present]), rtol=1e-7, atol=1e-9)
  assert np.asarray(info["weights"])[1] == 0
  moved = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(
      jax.tree_util.tree_leaves(state.params), jax.tree_util.tree_leaves(params)))
  assert moved > 1e-4
