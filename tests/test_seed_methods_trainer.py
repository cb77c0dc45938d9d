"""The seed-paper methods in the trainer: flat regions in the step (ρ = 0 is today's step,
ρ > 0 is a direct mtlx.flat_regions computation), FULLER's branch calibration from
config, and the lookahead affinity logged by experiments/train.py."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mtlx
from mtlx import train as T
from mtlx.train.step import calibrated_methods
from configs import multi_digits as md_config
from experiments import train as train_exp

K = 3


def loss_fn(params, batch):
  h = jnp.tanh(batch["x"] @ params["encoder"]["w"])
  out = h @ params["decoder"]["w"]  # [B, K]
  return jnp.mean((out - batch["y"]) ** 2, axis=0)


def _problem(seed=0):
  rng = np.random.default_rng(seed)
  f = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)
  return {"encoder": {"w": f(4, 5)}, "decoder": {"w": f(5, K)}}, {"x": f(8, 4), "y": f(8, K)}


def _one_step(rho, grad_tx, loss_tx=None, engine="jacobian"):
  params, batch = _problem()
  st = T.make_step(loss_fn, loss_tx=loss_tx, grad_tx=grad_tx, optimizer=optax.sgd(1.0),
                   engine=engine, params=params, example_batch=batch,
                   flat_regions_rho=rho)
  state, info = st.step(st.init(params, batch), batch)
  return st, params, batch, state, info


@pytest.mark.parametrize("make", [mtlx.aligned_mtl, mtlx.linear_scalarization])
def test_flat_regions_in_the_step_equals_a_direct_computation(make):
  rho = 0.05
  st, params, batch, state, info = _one_step(rho, make())
  assert st.engine == "jacobian"
  losses, tg, sharp = mtlx.value_and_sharpness_jacobian(loss_fn, rho)(params, batch)
  tx = mtlx.flat_regions(make())
  d, _ = jax.jit(lambda tg, sharp: tx.update(tg, tx.init(params), params, task_grads_sharp=sharp,
                                             task_losses=losses))(tg, sharp)
  want = jax.tree_util.tree_map(lambda p, g: p - g, params, d)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6),
                         state.params, want)
  assert not bool(info["weights_exact"])  # two aggregations: the weights are a fit


def test_flat_regions_scales_both_jacobians_by_the_loss_weights():
  rho, w = 0.05, jnp.asarray([0.5, 1.0, 2.0], jnp.float32)
  from mtlx.loss_weighting.fixed_weights import fixed_weights  # noqa: PLC0415
  _, params, batch, state, _ = _one_step(rho, mtlx.aligned_mtl(), loss_tx=fixed_weights(w))
  losses, tg, sharp = mtlx.value_and_sharpness_jacobian(loss_fn, rho)(params, batch)
  scale = lambda t: jax.tree_util.tree_map(lambda g: g * w.reshape((K,) + (1,) * (g.ndim - 1)), t)
  tx = mtlx.flat_regions(mtlx.aligned_mtl())
  d, _ = jax.jit(lambda a, b: tx.update(a, tx.init(params), params, task_grads_sharp=b,
                                        task_losses=losses))(scale(tg), scale(sharp))
  want = jax.tree_util.tree_map(lambda p, g: p - g, params, d)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6),
                         state.params, want)


def test_rho_zero_is_todays_step_bit_for_bit():
  _, _, _, s0, i0 = _one_step(0.0, mtlx.linear_scalarization())
  params, batch = _problem()
  st = T.make_step(loss_fn, grad_tx=mtlx.linear_scalarization(), optimizer=optax.sgd(1.0),
                   engine="jacobian")
  s1, i1 = st.step(st.init(params, batch), batch)
  for a, b in zip(jax.tree_util.tree_leaves((s0, i0)), jax.tree_util.tree_leaves((s1, i1))):
    np.testing.assert_array_equal(a, b)


def test_engines_that_cannot_serve_flat_regions_are_refused():
  params, batch = _problem()
  for engine in ("one_backward", "gramian", "representation"):
    with pytest.raises(ValueError, match=r"flat_regions_rho=0\.1.*'jacobian'"):
      T.check_engine(engine, None, mtlx.upgrad(), flat_regions_rho=0.1)
  with pytest.raises(ValueError, match="flat_regions_rho"):
    T.make_step(loss_fn, grad_tx=mtlx.upgrad(), optimizer=optax.sgd(1.0), engine="gramian",
                flat_regions_rho=0.1)
  with pytest.raises(ValueError, match="flat_regions_rho=-1"):
    T.make_step(loss_fn, grad_tx=mtlx.upgrad(), optimizer=optax.sgd(1.0), flat_regions_rho=-1)
  # 'auto' takes the jacobian engine, also for LS (one_backward without ρ)
  st = T.make_step(loss_fn, grad_tx=mtlx.linear_scalarization(), optimizer=optax.sgd(1.0),
                   params=params, example_batch=batch, flat_regions_rho=0.1)
  assert st.engine == "jacobian"


def test_calibrated_methods_equalise_branch_norms():
  params = {"encoder": {"branch_a": {"w": jnp.zeros((3, 2))}, "branch_b": {"w": jnp.zeros(4)},
                        "fuse": {"w": jnp.zeros(2)}}, "decoder": {"w": jnp.zeros(2)}}
  rng = np.random.default_rng(0)
  tg = jax.tree_util.tree_map(lambda p: jnp.asarray(rng.normal(size=(K,) + p.shape)), params)
  ident = optax.GradientTransformationExtraArgs(lambda p: optax.EmptyState(),
                                                lambda u, s, p=None, **kw: (u, s))
  tx = calibrated_methods(ident, "encoder/branch_a,encoder/branch_b", params)
  out, _ = tx.update(tg, tx.init(params), params)
  na = np.linalg.norm(np.asarray(out["encoder"]["branch_a"]["w"]).reshape(K, -1), axis=1)
  nb = np.linalg.norm(np.asarray(out["encoder"]["branch_b"]["w"]).reshape(K, -1), axis=1)
  np.testing.assert_allclose(na, nb, rtol=1e-6)
  np.testing.assert_array_equal(out["encoder"]["fuse"]["w"], tg["encoder"]["fuse"]["w"])
  with pytest.raises(ValueError, match="encoder/nope"):
    calibrated_methods(ident, "encoder/branch_a,encoder/nope", params)


def _tiny_config(tmp_path, data_dir, **kw):
  c = md_config.get_config()
  c.update(dict(num_steps=4, eval_every=4, log_every=2, checkpoint_every=4, batch_size=16,
                eval_batch_size=64, data_dir=str(data_dir), progress=False, tensorboard=False,
                workdir=str(tmp_path / "run"), val_split=""))
  c.builder_kwargs.update(dict(num_train=128, num_validation=32, num_test=64))
  c.model_kwargs.update(dict(widths=(4, 8), hidden=8, head_hidden=8))
  with c.unlocked():
    c.update(kw)
  return c


def test_trainer_fuller_and_affinity(tmp_path_factory):
  """One tiny run: two_branch + method_groups + calibrate_branches (FULLER), with the
  affinity logged every 2 steps and its summary written at the end (config.flat_regions
  reaches the step through build_trainer in test_compare_accepts_every_seed_method_line)."""
  tmp = tmp_path_factory.mktemp("seed")
  config = _tiny_config(tmp, tmp / "data", model="two_branch", method="ls",
                        method_groups={"aligned_mtl": "encoder/fuse"},
                        calibrate_branches="encoder/branch_a,encoder/branch_b",
                        affinity_every=2, affinity_learning_rate=0.1)
  train_exp.train_and_evaluate(config)
  rows = T.read_jsonl(os.path.join(config.workdir, "metrics.jsonl"))
  aff = [r for r in rows if r["split"] == "affinity"]
  assert [r["step"] for r in aff] == [2, 4]
  names = ["left", "right"]
  mats = np.array([[[r[f"affinity/{a}/{b}"] for b in names] for a in names] for r in aff])
  assert np.all(np.isfinite(mats))
  summary = json.load(open(os.path.join(config.workdir, "affinity.json")))
  np.testing.assert_allclose(summary["mean_affinity"], mats.mean(0), rtol=1e-12)
  assert summary["num_measurements"] == 2 and summary["tasks"] == names
  assert sorted(sum(summary["groups"], [])) == names
  # config errors name the key
  for key, value, pattern in (("affinity_every", -1, "config.affinity_every"),
                              ("affinity_learning_rate", -0.5, "config.affinity_learning_rate")):
    bad = _tiny_config(tmp, tmp / "data", **{key: value})
    with pytest.raises(ValueError, match=pattern):
      train_exp.validate(bad)
  bad = _tiny_config(tmp, tmp / "data", engine="gramian", method="upgrad")
  bad.flat_regions.rho = 0.1
  with pytest.raises(ValueError, match="flat_regions_rho"):
    train_exp.validate(bad)


def test_compare_accepts_every_seed_method_line(tmp_path_factory):
  """Every line of experiments/compare.SEED_LINES passes the compare tool's checks and
  its step traces (jax.eval_shape: no compilation) on the two_branch model."""
  from experiments import compare  # noqa: PLC0415
  tmp = tmp_path_factory.mktemp("lines")
  base = _tiny_config(tmp, tmp / "data", model="two_branch")
  # `curriculum` is the in-context function classes' line (tests/test_train_mixture.py):
  # on a one-dataset config it is a ValueError naming what it needs.
  with pytest.raises(ValueError, match="function-class config"):
    compare.seed_line_config(base, "curriculum", 2)
  specs = compare.parse_methods([n for n in compare.SEED_LINES if n != "curriculum"])
  info, tasks = train_exp.validate(base)
  batch = next(mtlx.data.make_iterator("multi_digits", "train", batch_size=8, seed=0,
                                       data_dir=base.data_dir,
                                       builder_kwargs=dict(base.builder_kwargs)))
  for label, method, weighting in specs:
    c = compare.seed_line_config(base, label, len(tasks))
    assert (c.method, c.weighting) == (method, weighting)
    train_exp.check_numbers(c)
    train_exp.build_methods(c, len(tasks))
    trainer, params = train_exp.build_trainer(c, info, tasks, train_exp.make_mesh(c),
                                              example_batch=batch)
    state = trainer.init(params, batch, 0)
    _, out = jax.eval_shape(trainer.step, state, batch)
    assert out["losses"].shape == (2,), label
    if label == "focal":  # MFTCoder's token-level focal loss, by hand in NumPy
      fns, _ = mtlx.models.split(mtlx.models.get_model(
          "two_branch", input_shape=info.input_shape, tasks=tasks, seed=c.seed,
          **dict(c.model_kwargs)))
      outs = fns.apply(params, batch[info.input_key])
      want = []
      for t in tasks:
        z = np.asarray(outs[t.name], np.float64)
        lab = np.asarray(batch[t.label_key]).reshape(-1).astype(int)
        logp = z - np.log(np.sum(np.exp(z - z.max(1, keepdims=True)), 1, keepdims=True)) \
            - z.max(1, keepdims=True)
        ce = -logp[np.arange(len(lab)), lab]
        want.append(np.mean((1 - np.exp(-ce)) ** 2.0 * ce))
      np.testing.assert_allclose(trainer.loss_fn(params, batch), want, rtol=2e-5)
  line = compare.seed_line_config(base, "aligned_mtl_pref", 2)
  assert list(line.method_kwargs.pref_vector) == [2.0, 1.0]
  assert compare.seed_line_config(base, "ls_affinity", 2).affinity_every == base.log_every


def test_rep_mtl_on_the_representation_engine_is_the_objectives_gradient():
  """LS of rep_mtl_heads' losses on the representation engine takes exactly the step
  of jax.grad(rep_mtl_objective) (the penalties reach the encoder only through z)."""
  from mtlx import rep_mtl  # noqa: PLC0415
  params, batch = _problem(3)
  encode = lambda enc, b: jnp.tanh(b["x"] @ enc["w"])
  heads = lambda dec, z, b: jnp.mean((z @ dec["w"] - b["y"]) ** 2, axis=0)
  kw = dict(tsr_weight=0.3, csa_weight=0.2, temperature=0.5)
  reg = rep_mtl.rep_mtl_heads(heads, **kw)
  st = T.make_step(lambda p, b: reg(p["decoder"], encode(p["encoder"], b), b),
                   grad_tx=mtlx.linear_scalarization(), optimizer=optax.sgd(1.0),
                   engine="representation", representation=T.Representation(encode, reg))
  state, _ = st.step(st.init(params, batch), batch)
  objective = rep_mtl.rep_mtl_objective(lambda enc, x: encode(enc, {"x": x}),
                                        lambda dec, z, b: heads(dec, z, b), **kw)
  g_enc, g_dec = jax.jit(jax.grad(lambda e, d: objective(e, d, batch["x"], batch)[0],
                                  argnums=(0, 1)))(params["encoder"], params["decoder"])
  want = {"encoder": jax.tree_util.tree_map(lambda p, g: p - g, params["encoder"], g_enc),
          "decoder": jax.tree_util.tree_map(lambda p, g: p - g, params["decoder"], g_dec)}
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                         state.params, want)
  c = md_config.get_config("method=upgrad")
  c.rep_mtl.tsr_weight = 0.1
  with pytest.raises(ValueError, match="config.rep_mtl.*'ls'"):
    train_exp.rep_mtl_kwargs(c)


def test_rep_mtl_penalties_have_finite_gradients_at_a_zero_saliency():
  """A saturated sample has an exactly zero saliency row; the CSA normalisation must not
  turn it into a NaN gradient (it stopped a 1000-step multi_digits run at step ~950)."""
  from mtlx import rep_mtl  # noqa: PLC0415
  s = jnp.asarray(np.random.default_rng(0).normal(size=(2, 4, 3)), jnp.float32)
  s = s.at[:, 1].set(0.0)
  g = jax.jit(jax.grad(lambda x: sum(rep_mtl.rep_mtl_penalties(x))))(s)
  assert np.all(np.isfinite(np.asarray(g)))


def test_affinity_fn_moves_the_shared_part_only_first_order():
  """Z_{i→j} ≈ η ⟨g_i, g_j⟩_enc / L_j for a small lookahead (only the encoder moves)."""
  params, batch = _problem(4)
  eta = 1e-3
  shared = lambda p: {"encoder": {"w": True}, "decoder": {"w": False}}
  z = jax.jit(mtlx.affinity.affinity_fn(loss_fn, learning_rate=eta, shared=shared))(params, batch)
  losses, tg = mtlx.value_and_jacobian(loss_fn)(params, batch)
  g = np.asarray(tg["encoder"]["w"], np.float64).reshape(K, -1)
  want = eta * (g @ g.T) / np.asarray(losses, np.float64)[None, :]
  np.testing.assert_allclose(z, want, rtol=0.05, atol=2e-5)
  summary = mtlx.affinity.affinity_summary([np.asarray(z), np.full((K, K), np.nan)],
                                           ["a", "b", "c"])
  assert summary["num_measurements"] == 1 and summary["num_nonfinite"] == 1
  np.testing.assert_allclose(summary["mean_affinity"], z, rtol=1e-6)
  assert set(summary["groups_by_count"]) == {"2"}
  with pytest.raises(ValueError, match="learning_rate"):
    mtlx.affinity.affinity_fn(loss_fn, learning_rate=0.0)
