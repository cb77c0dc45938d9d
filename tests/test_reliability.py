"""Reliability (issue 15): bad steps never poison state, bad settings and shapes fail
early with one clear ValueError, finite-but-awkward losses never give NaN."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mtlx
from mtlx import registry
from tests import registry_lines

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


ALL = ([("gradient", n) for n in registry_lines.names("gradient")]
       + [("loss", n) for n in registry_lines.names("loss")])


BAD = ("grads", "inf_grads", "losses")  # a NaN grad, an inf grad, an inf loss


def _run(tx, update, method_update, name, bad):
  """Params after clean steps 0..4, with a non-finite step (``bad``) after step 1."""
  params = PARAMS
  state = tx.init(params)
  schedule = [0, 1] + ([bad] if bad else []) + [2, 3, 4]
  for t in schedule:
    if t in BAD:
      g, l, g2 = _grads(9), _losses(9), _grads(19)
      if t in ("grads", "inf_grads"):
        g = {"a": g["a"].at[1, 0].set(jnp.nan if t == "grads" else jnp.inf), "b": g["b"]}
      else:
        l = l.at[0].set(jnp.inf)
    else:
      g, l, g2 = _grads(t), _losses(t), _grads(10 + t)
    extra = {"task_grads_2": g2} if name in TWO_BATCH else {}
    if t in BAD:  # the method's own update is non-finite
      out, _ = method_update(g, state[0], params, task_losses=l, **extra)
      assert not all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree_util.tree_leaves(out))
    updates, state = update(g, state, params, task_losses=l, **extra)
    params = optax.apply_updates(params, updates)
  return params


@pytest.mark.parametrize("kind,name", ALL)
def test_non_finite_step_leaves_no_trace(kind, name):
  """Rule 1: a NaN or inf grad or an inf loss leaves the state as it was, and the
  update is non-finite, so apply_if_finite skips it: the run ends exactly as without it."""
  tx = _chain(kind, name)
  update, method_update = jax.jit(tx.update), jax.jit(tx.method.update)
  clean = _run(tx, update, method_update, name, None)
  for bad in BAD:
    skipped = _run(tx, update, method_update, name, bad)
    for a, b in zip(jax.tree_util.tree_leaves(clean), jax.tree_util.tree_leaves(skipped)):
      assert np.all(np.isfinite(np.asarray(b))), (name, bad, b)
      np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-12, atol=1e-14)


# --- Item 6: shapes of task grads against params, array-like weights ------------------

@pytest.mark.parametrize("kind,name", ALL)  # every registry line (aliases left out)
def test_task_grad_shape_checked_against_params(kind, name):
  tx = registry_lines.build(name, K)
  params = {"a": jnp.zeros((3,)), "b": jnp.zeros((2, 2))}
  state = tx.init(params)
  bad = {"a": jnp.ones((K, 3)), "b": jnp.ones((K, 1, 2))}
  with pytest.raises(ValueError, match=r"task_grads\['b'\] has shape \(4, 1, 2\); expected "
                     r"\(K,\) \+ params\['b'\]\.shape = \(4, 2, 2\)"):
    extra = {"task_grads_2": bad} if name in TWO_BATCH else {}
    jax.eval_shape(lambda g, s: tx.update(g, s, params, task_losses=jnp.ones(K), **extra),
                   bad, state)


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


# --- Item 9: every constructor validates its hyperparameters ---------------------------

BAD_SETTINGS = [
    ("dwa", lambda: mtlx.dwa(temperature=0, num_tasks=2), "temperature=0"),
    ("fairgrad", lambda: mtlx.fairgrad(max_weight=0, num_tasks=2), "max_weight=0"),
    ("sdmgrad", lambda: mtlx.sdmgrad(lam=-1, num_tasks=2), "lam=-1"),
    ("mgda", lambda: mtlx.mgda(num_iters=-5), "num_iters=-5"),
    ("upgrad", lambda: mtlx.upgrad(num_iters=0), "num_iters=0"),
    ("dualproj", lambda: mtlx.dualproj(num_iters=2.5), "num_iters=2.5"),
    ("pcd", lambda: mtlx.pcd(max_iters=0), "max_iters=0"),
    ("pcd", lambda: mtlx.pcd(epsilon=-1), "epsilon=-1.0"),
    ("moco", lambda: mtlx.moco(beta=-1, num_tasks=2), "beta=-1"),
    ("moco", lambda: mtlx.moco(gamma=-1, num_tasks=2), "gamma=-1"),
    ("famo", lambda: mtlx.famo(gamma=-1, num_tasks=2), "gamma=-1"),
    ("famo", lambda: mtlx.famo(learning_rate=-1, num_tasks=2), "learning_rate=-1"),
    ("normalize_task_scale", lambda: mtlx.normalize_task_scale(decay=1.5, num_tasks=2),
     "decay=1.5"),
    ("db_mtl", lambda: mtlx.db_mtl(beta=2, num_tasks=2), "beta=2"),
    ("geometric_loss", lambda: mtlx.geometric_loss(eps=-1), "eps=-1"),
    ("gradnorm", lambda: mtlx.gradnorm(alpha=-1, num_tasks=2), "alpha=-1"),
    ("gradnorm", lambda: mtlx.gradnorm(learning_rate=-1, num_tasks=2), "learning_rate=-1"),
    ("nash_mtl", lambda: mtlx.nash_mtl(max_norm=-1, num_tasks=2), "max_norm=-1"),
    ("cagrad", lambda: mtlx.cagrad(c=-0.1), "c=-0.1"),
    ("modo", lambda: mtlx.modo(gamma=float("nan"), num_tasks=2), "gamma=nan"),
    ("excess_mtl", lambda: mtlx.excess_mtl(step_size=-1, num_tasks=2), "step_size=-1"),
    ("stch", lambda: mtlx.stch(mu=float("inf"), num_tasks=2), "mu=inf"),
    ("uncertainty_weighting", lambda: mtlx.uncertainty_weighting(learning_rate=0, num_tasks=2),
     "learning_rate=0"),
    ("imtl_l", lambda: mtlx.imtl_l(learning_rate=-1, num_tasks=2), "learning_rate=-1"),
    ("crmogm", lambda: mtlx.crmogm(beta=1.5), "beta=1.5"),
    ("make_optimizer", lambda: mtlx.train.make_optimizer("adam", -1.0), "learning_rate=-1.0"),
    ("make_optimizer", lambda: mtlx.train.make_optimizer("adam", float("nan")),
     "learning_rate=nan"),
    ("make_optimizer", lambda: mtlx.train.make_optimizer("adam", 1e-3, grad_clip=-1),
     "grad_clip=-1"),
    ("make_optimizer", lambda: mtlx.train.make_optimizer("adamw", 1e-3, weight_decay=-5),
     "weight_decay=-5"),
]


@pytest.mark.parametrize("name,build,needle", BAD_SETTINGS,
                         ids=[f"{n}-{s}" for n, _, s in BAD_SETTINGS])
def test_bad_hyperparameter_refused(name, build, needle):
  with pytest.raises(ValueError, match=re.escape(needle) + " is not valid; expected"):
    build()


def test_merging_and_data_settings_refused():
  base = {"w": jnp.zeros((4,))}
  fts = [{"w": jnp.full((4,), float(i))} for i in range(1, 4)]
  with pytest.raises(ValueError, match="k=5 is not valid; expected an int >= 0 and <= 3"):
    mtlx.merging.consensus(base, fts, k=5)
  with pytest.raises(ValueError, match=r"drop_small \+ drop_large"):
    mtlx.merging.breadcrumbs(base, fts, drop_small=0.7, drop_large=0.5)
  from mtlx.data import pipeline
  with pytest.raises(ValueError, match="batch_size=2.5; expected a positive int"):
    pipeline.BatchPlan(10, batch_size=2.5)


# --- Item 2: finite losses that used to break a method for good ------------------------

def _loss_run(tx, losses_seq, grads_seq=None):
  params = {"w": jnp.zeros((2,))}
  state = tx.init(params)
  update = jax.jit(tx.update)
  outs = []
  for t, l in enumerate(losses_seq):
    g = {"w": jnp.asarray(np.random.default_rng(t).normal(size=(len(l), 2)))}
    out, state = update(g, state, params, task_losses=jnp.asarray(l, jnp.float64))
    outs.append(out)
  return outs, state


def _all_finite(tree):
  return all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(tree)
             if jnp.issubdtype(x.dtype, jnp.inexact))


@pytest.mark.parametrize("losses_seq", [
    [[0.0, 1.0], [0.5, 1.0], [0.4, 0.9]],      # zero loss at the first update
    [[1.0, 2.0], [0.0, 0.0], [0.5, 1.0]],      # all losses zero once
    [[0.0, 0.0], [0.0, 0.0], [1.0, 2.0]],      # all zero from the start
], ids=["first-zero", "all-zero-once", "zero-start"])
def test_gradnorm_zero_losses_stay_finite(losses_seq):
  outs, state = _loss_run(mtlx.gradnorm(num_tasks=2), losses_seq)
  assert all(_all_finite(o) for o in outs) and _all_finite(state)
  np.testing.assert_allclose(float(jnp.sum(state.weights)), 2.0, rtol=1e-12)
  # L(0) of a task is its first positive loss
  assert float(state.initial_losses[0]) == next(l[0] for l in losses_seq if l[0] > 0)


@pytest.mark.parametrize("build", [
    lambda: mtlx.famo(num_tasks=2), lambda: mtlx.geometric_loss(),
    lambda: mtlx.scale_invariant(), lambda: mtlx.stch(num_tasks=2, warmup_steps=1),
    lambda: mtlx.stch(num_tasks=2), lambda: mtlx.db_mtl(num_tasks=2),
    lambda: mtlx.gradnorm(num_tasks=2), lambda: mtlx.dwa(num_tasks=2),
    lambda: mtlx.imtl_l(num_tasks=2), lambda: mtlx.uncertainty_weighting(num_tasks=2),
    lambda: mtlx.normalize_task_scale(num_tasks=2)],
    ids=["famo", "gls", "si", "stch-warmup", "stch", "db_mtl", "gradnorm", "dwa", "imtl_l",
         "uncertainty", "normalize_task_scale"])
def test_negative_and_zero_losses_never_nan(build):
  """Negative finite losses (a Gaussian NLL) and zeros: finite weights and state, and
  the method keeps working afterwards (no NaN carried in its state)."""
  seq = [[-0.5, 1.0], [0.0, -2.0], [0.0, 0.0], [1.0, 0.5], [0.8, 0.4]]
  outs, state = _loss_run(build(), seq)
  assert all(_all_finite(o) for o in outs), outs
  assert _all_finite(state)


def test_famo_min_losses_shift():
  """With min_losses below the (negative) losses, FAMO sees D = L - L* > 0."""
  tx = mtlx.famo(num_tasks=2, min_losses=[-3.0, -3.0])
  outs, state = _loss_run(tx, [[-1.0, -2.0], [-1.5, -2.1], [-1.7, -2.2]])
  assert all(_all_finite(o) for o in outs) and _all_finite(state)
  assert not np.allclose(np.asarray(state.logits), 0.0)  # it learns


# --- Item 8: merging stays finite at any float32 scale; NaN stays local -----------------

def _merge_inputs(scale=1.0, dtype=jnp.float32):
  rng = np.random.default_rng(0)
  base = {"w": jnp.asarray(rng.normal(size=(4, 3)), dtype), "b": jnp.zeros((3,), dtype)}
  fts = [jax.tree_util.tree_map(
      lambda x, i=i: x + jnp.asarray(scale * rng.normal(size=x.shape), dtype), base)
      for i in range(3)]
  return base, fts


@pytest.mark.parametrize("scale", [1e-30, 1e-20, 1.0, 1e25])
def test_metagpt_and_cosine_finite_at_every_scale(scale):
  rng = np.random.default_rng(1)
  base = {"w": jnp.zeros((4, 3), jnp.float32)}
  taus = [rng.normal(size=(4, 3)) for _ in range(3)]
  fts = [{"w": jnp.asarray(scale * t, jnp.float32)} for t in taus]
  lam = np.asarray(mtlx.merging.metagpt_coefficients(base, fts))
  sq = np.array([np.sum(t ** 2) for t in taus])  # float64 reference, scale-free
  np.testing.assert_allclose(lam, sq / sq.sum(), rtol=1e-5)
  merged = mtlx.merging.metagpt(base, fts)
  assert np.all(np.isfinite(np.asarray(merged["w"])))
  cos = np.asarray(mtlx.merging.cosine_similarity(base, fts, per_layer=False))
  flat = np.stack([t.ravel() for t in taus])
  ref = flat @ flat.T / np.outer(np.linalg.norm(flat, axis=1), np.linalg.norm(flat, axis=1))
  np.testing.assert_allclose(cos, ref, rtol=1e-5, atol=1e-6)


def test_metagpt_finetunes_equal_to_base():
  base, _ = _merge_inputs()
  fts = [base, base, base]
  merged = mtlx.merging.metagpt(base, fts)
  np.testing.assert_array_equal(np.asarray(merged["w"]), np.asarray(base["w"]))
  np.testing.assert_allclose(mtlx.merging.metagpt_coefficients(base, fts), 1 / 3)
  cos = mtlx.merging.cosine_similarity(base, fts)
  assert all(np.all(np.asarray(c) == 0) for c in jax.tree_util.tree_leaves(cos))


def _with_nan(fts):
  bad = [dict(f) for f in fts]
  bad[1] = {"w": fts[1]["w"].at[2, 1].set(jnp.nan), "b": fts[1]["b"]}
  return bad


def _nan_stays_local(merged, clean):
  w, w0 = np.asarray(merged["w"]), np.asarray(clean["w"])
  assert np.isnan(w[2, 1])
  mask = np.ones_like(w, bool)
  mask[2, 1] = False
  assert np.all(np.isfinite(w[mask])) and np.all(np.isfinite(np.asarray(merged["b"])))
  return w[mask], w0[mask]


def test_nan_entry_stays_local_in_metagpt():
  base, fts = _merge_inputs()
  clean = mtlx.merging.metagpt(base, fts)
  _nan_stays_local(mtlx.merging.metagpt(base, _with_nan(fts)), clean)


@pytest.mark.parametrize("method", ["adamerging", "atlas"])
def test_nan_entry_stays_local_in_learned_merges(method):
  base, fts = _merge_inputs()
  target = jax.tree_util.tree_map(lambda *x: sum(x) / 3, *fts)

  def loss_fn(p):
    return sum(jnp.sum(jnp.square(a - b)) for a, b in
               zip(jax.tree_util.tree_leaves(p), jax.tree_util.tree_leaves(target)))

  fn = getattr(mtlx.merging, method)
  merged, coeffs = fn(base, _with_nan(fts), loss_fn, num_steps=20)
  assert all(np.all(np.isfinite(np.asarray(c))) for c in jax.tree_util.tree_leaves(coeffs))
  clean, _ = fn(base, fts, loss_fn, num_steps=20)
  _nan_stays_local(merged, clean)
