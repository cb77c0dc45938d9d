"""Loss-space methods against float64 NumPy references, the one-backward path and
composition with gradient-space methods."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mtlx
from tests.loss_weighting.sequences import K, flat, run, sequence
from tests.reference import loss_weighting_ref as ref


# name -> (constructor, reference(losses) -> weights[T, K])
LOSS_ONLY = {
    "fixed_weights": (lambda: mtlx.fixed_weights(jnp.array([0.5, 2.0, 1.5])),
                      lambda l: np.tile([0.5, 2.0, 1.5], (len(l), 1))),
    "dwa": (lambda: mtlx.dwa(num_tasks=K), ref.dwa),
    "dwa_t1": (lambda: mtlx.dwa(temperature=1.0, num_tasks=K),
               functools.partial(ref.dwa, temperature=1.0)),
    "scale_invariant": (mtlx.scale_invariant, ref.scale_invariant),
    "geometric_loss": (mtlx.geometric_loss, ref.geometric_loss),
    "uncertainty": (lambda: mtlx.uncertainty_weighting(0.3, num_tasks=K),
                    functools.partial(ref.uncertainty, learning_rate=0.3)),
    "imtl_l": (lambda: mtlx.imtl_l(0.2, num_tasks=K),
               functools.partial(ref.imtl_l, learning_rate=0.2)),
    "normalize_task_scale": (lambda: mtlx.normalize_task_scale(0.9, num_tasks=K),
                             functools.partial(ref.normalize_task_scale, decay=0.9)),
    "stch": (lambda: mtlx.stch(mu=2.0, num_tasks=K), functools.partial(ref.stch, mu=2.0)),
    "stch_warmup": (lambda: mtlx.stch(mu=0.5, warmup_steps=3, num_tasks=K),
                    functools.partial(ref.stch, mu=0.5, warmup_steps=3)),
    "famo": (lambda: mtlx.famo(num_tasks=K), ref.famo),
    "famo_fast": (lambda: mtlx.famo(gamma=0.01, learning_rate=0.3, num_tasks=K),
                  functools.partial(ref.famo, gamma=0.01, learning_rate=0.3)),
}


@pytest.mark.parametrize("name", sorted(LOSS_ONLY))
def test_loss_only_methods_match_reference(name):
  make, reference = LOSS_ONLY[name]
  losses, grads = sequence(seed=len(name))
  outs, _ = run(make(), losses, grads)
  w = reference(losses)
  want = np.stack([wt[:, None] * flat(g) for wt, g in zip(w, grads)])
  np.testing.assert_allclose(outs, want, rtol=1e-6, atol=1e-12)
  # The sequence must exercise the adaptive part: weights change across updates
  # for every stateful method (guards against a reference that equals a constant).
  if name not in ("fixed_weights",):
    assert np.ptp(w[2:] / w[2:].sum(1, keepdims=True), axis=0).max() > 1e-3


# ---- the one-backward path -------------------------------------------------------

def _loss_fn(params, x, y):
  pred = jnp.tanh(x @ params["w1"]) @ params["w2"] + params["b"]
  return jnp.mean((pred - y) ** 2, axis=0) * jnp.array([1.0, 10.0, 0.1])


def _problem(seed=0):
  rng = np.random.default_rng(seed)
  params = {"w1": rng.normal(size=(4, 6)) / 2, "w2": rng.normal(size=(6, K)) / 2,
            "b": np.zeros(K)}
  x = rng.normal(size=(16, 4))
  y = rng.normal(size=(16, K))
  return jax.tree_util.tree_map(jnp.asarray, params), jnp.asarray(x), jnp.asarray(y)


ONE_BACKWARD = {
    "fixed_weights": lambda: mtlx.fixed_weights(jnp.array([0.5, 2.0, 1.5])),
    "dwa": lambda: mtlx.dwa(num_tasks=K),
    "rlw": lambda: mtlx.random_loss_weighting(seed=1),
    "scale_invariant": mtlx.scale_invariant,
    "geometric_loss": mtlx.geometric_loss,
    "uncertainty": lambda: mtlx.uncertainty_weighting(0.3, num_tasks=K),
    "imtl_l": lambda: mtlx.imtl_l(0.2, num_tasks=K),
    "normalize_task_scale": lambda: mtlx.normalize_task_scale(0.9, num_tasks=K),
    "stch": lambda: mtlx.stch(mu=0.5, warmup_steps=2, num_tasks=K),
    "famo": lambda: mtlx.famo(learning_rate=0.3, num_tasks=K),
    "chain_norm_dwa": lambda: mtlx.loss_chain(mtlx.normalize_task_scale(num_tasks=K),
                                          mtlx.dwa(num_tasks=K)),
}


@pytest.mark.parametrize("name", sorted(ONE_BACKWARD))
def test_one_backward_path_equals_stacked_path(name):
  params, x, y = _problem()
  tx = ONE_BACKWARD[name]()
  stacked = optax.chain(tx, mtlx.linear_scalarization())
  vjac = mtlx.value_and_jacobian(_loss_fn)

  @jax.jit
  def stacked_step(p, s):
    losses, tg = vjac(p, x, y)
    upd, s = stacked.update(tg, s, p, task_losses=losses)
    return jax.tree_util.tree_map(lambda a, u: a - 0.05 * u, p, upd), s, upd

  @jax.jit
  def one_backward_step(p, s):
    losses, vjp = jax.vjp(lambda q: _loss_fn(q, x, y), p)
    w, s = mtlx.loss_weights(tx, s, losses)
    upd, = vjp(w)
    # the same as jax.grad of the weighted loss (weights held constant)
    upd_grad = jax.grad(lambda q: jnp.vdot(w, _loss_fn(q, x, y)))(p)
    return jax.tree_util.tree_map(lambda a, u: a - 0.05 * u, p, upd), s, (upd, upd_grad)

  pa, sa = params, stacked.init(params)
  pb, sb = params, tx.init(params)
  for _ in range(5):
    pa, sa, ua = stacked_step(pa, sa)
    pb, sb, (ub, ub_grad) = one_backward_step(pb, sb)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12),
                           ub, ub_grad)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12),
                           ua, ub)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12),
                         sa[0], sb)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-9), pa, pb)


def test_loss_weights_reads_diagonal_of_chain():
  # a chain of loss transforms multiplies their weights
  losses = jnp.array([0.5, 2.0, 4.0])
  parts = [mtlx.fixed_weights(jnp.array([1.0, 2.0, 3.0])), mtlx.scale_invariant()]
  tx = mtlx.loss_chain(*parts)
  w, _ = mtlx.loss_weights(tx, tx.init(None), losses)
  np.testing.assert_allclose(w, [2.0, 1.0, 0.75], rtol=1e-12)
  # a list of weightings with the tuple of their states is the same chain
  w2, _ = mtlx.loss_weights(parts, optax.chain(*parts).init(None), losses)
  np.testing.assert_allclose(w2, [2.0, 1.0, 0.75], rtol=1e-12)


def test_loss_weights_errors():
  losses = jnp.ones(K)
  for tx in (mtlx.gradnorm(num_tasks=K),
             mtlx.loss_chain(mtlx.dwa(num_tasks=K), mtlx.gradnorm(num_tasks=K))):
    with pytest.raises(ValueError, match="gradnorm reads the per-task gradients"):
      mtlx.loss_weights(tx, tx.init(None), losses)
  tx = mtlx.db_mtl(num_tasks=K)  # not a weighting: it replaces the task grads
  with pytest.raises(ValueError, match="got a GradientTransformationExtraArgs"):
    mtlx.loss_weights(tx, tx.init({"a": jnp.zeros(2)}), losses)
  tx = optax.chain(mtlx.dwa(num_tasks=K), mtlx.linear_scalarization())
  with pytest.raises(ValueError, match=r"An optax.chain hides its members: use mtlx.loss_chain"):
    mtlx.loss_weights(tx, tx.init(None), losses)
  with pytest.raises(ValueError, match=r"transform 1 is a GramianWeighting"):
    mtlx.loss_chain(mtlx.dwa(num_tasks=K), mtlx.linear_scalarization())
  with pytest.raises(ValueError, match="pass them as the keyword extra argument `task_losses`"):
    mtlx.loss_weights(mtlx.dwa(num_tasks=K), mtlx.dwa(num_tasks=K).init(None), None)
  with pytest.raises(ValueError, match=r"task_losses has shape \(3, 1\); expected a 1-D vector"):
    mtlx.loss_weights(mtlx.scale_invariant(), optax.EmptyState(), jnp.ones((3, 1)))
  with pytest.raises(ValueError, match="num_tasks=3 but the update received K=2"):
    mtlx.loss_weights(mtlx.dwa(num_tasks=K), mtlx.dwa(num_tasks=K).init(None), jnp.ones(2))
  # a weighting that reads the grads still runs on the stacked path
  tx = mtlx.gradnorm(num_tasks=K)
  out, _ = tx.update({"a": jnp.ones((K, 2))}, tx.init(None), task_losses=losses)
  assert out["a"].shape == (K, 2)


# ---- composition with gradient-space methods --------------------------------------

def _inverse_norm_weighting(gramian):
  return 1.0 / jnp.sqrt(jnp.diag(gramian))


def test_dwa_then_gramian_weighting_then_adam_equals_hand_composition():
  params, x, y = _problem(seed=4)
  tx = optax.chain(mtlx.dwa(temperature=2.0, num_tasks=K),
                   mtlx.gramian_weighting(_inverse_norm_weighting),
                   optax.adam(1e-2))
  vjac = mtlx.value_and_jacobian(_loss_fn)

  @jax.jit
  def step(p, s):
    losses, tg = vjac(p, x, y)
    upd, s = tx.update(tg, s, p, task_losses=losses)
    return optax.apply_updates(p, upd), s, losses, tg, upd

  # hand composition: DWA weights (NumPy reference), the Gramian weighting in
  # NumPy, then Adam by hand on the flat direction.
  names = sorted(params)
  p, s = params, tx.init(params)
  losses_seen = []
  m = v = None
  for t in range(1, 6):
    p, s, losses, tg, upd = step(p, s)
    losses_seen.append(np.asarray(losses))
    w_dwa = ref.dwa(np.stack(losses_seen))[-1]
    jac = np.concatenate([np.asarray(tg[n]).reshape(K, -1) for n in names], axis=1)
    jac = w_dwa[:, None] * jac
    w_g = 1.0 / np.sqrt(np.diag(jac @ jac.T))
    d = w_g @ jac
    m = (1 - 0.9) * d if m is None else 0.9 * m + 0.1 * d
    v = (1 - 0.999) * d * d if v is None else 0.999 * v + 0.001 * d * d
    want = -1e-2 * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
    got = np.concatenate([np.asarray(upd[n]).reshape(-1) for n in names])
    np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-12)
  assert t == 5


def test_registry_builds_every_loss_method():
  names = mtlx.registry.loss_methods()
  for short in ("uncertainty", "dwa", "rlw", "gls", "scale_invariant", "imtl_l",
                "gradnorm", "db_mtl", "famo", "stch", "normalize_task_scale"):
    assert short in names
  tx = mtlx.registry.mto_transform("ls", "famo", num_tasks=K)
  params, x, y = _problem()
  losses, tg = mtlx.value_and_jacobian(_loss_fn)(params, x, y)
  upd, _ = tx.update(tg, tx.init(params), params, task_losses=losses)
  assert upd["w1"].shape == params["w1"].shape
  with pytest.raises(ValueError, match="unknown loss-space method 'nope'"):
    mtlx.registry.get_loss_method("nope")


def test_custom_loss_weighting_builder():
  # A user-written loss weighting (softmax of the losses, scaled to sum K) on the
  # public building block works on both paths; a grad-reading one is refused.
  def weight_fn(state, task_losses):
    return task_losses.shape[0] * jax.nn.softmax(task_losses), state

  tx = mtlx.loss_weighting(weight_fn, name="softmax_losses")
  losses = jnp.array([0.1, 1.0, 2.0])
  tg = {"a": jnp.asarray(np.random.default_rng(0).normal(size=(K, 4)))}
  out, _ = tx.update(tg, tx.init(None), task_losses=losses)
  w_np = K * np.exp([0.1, 1.0, 2.0]) / np.exp([0.1, 1.0, 2.0]).sum()
  np.testing.assert_allclose(out["a"], w_np[:, None] * np.asarray(tg["a"]), rtol=1e-12)
  w, _ = mtlx.loss_weights(tx, tx.init(None), losses)
  np.testing.assert_allclose(w, w_np, rtol=1e-12)
  reads = mtlx.loss_weighting(lambda s, l, g: (jnp.ones(K), s), name="mine", reads_grads=True)
  with pytest.raises(ValueError, match="mine reads the per-task gradients"):
    mtlx.loss_weights(reads, reads.init(None), losses)
