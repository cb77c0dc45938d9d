"""The trainer in-process: each path of the step lowers the loss and computes what
it claims; config errors name the valid choices; the compare writes its table."""

import csv
import json
import logging
import os

import jax
import numpy as np
import optax
import pytest

import mtlx.data
from mtlx import metrics as M
from mtlx import models
from mtlx import train as T
from configs import multi_digits as md_config
from experiments import compare
from experiments import train as train_exp

KW = dict(num_train=512, num_validation=64, num_test=128)
SMALL = dict(widths=(8, 16), hidden=32, head_hidden=32)
STEPS = 40


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("train_data"))


@pytest.fixture(scope="module")
def setup(data_dir):
  info = mtlx.data.get_info("multi_digits", **KW)
  it = mtlx.data.make_iterator("multi_digits", "train", batch_size=64, seed=0,
                               data_dir=data_dir, builder_kwargs=KW, process_index=0,
                               process_count=1)
  batches = [next(it) for _ in range(STEPS)]
  return info, batches


def _trainer(info, model="hps", **kw):
  fns, params = models.split(models.get_model(model, input_shape=info.input_shape,
                                              tasks=info.tasks, seed=0, **SMALL))
  tr = T.make_trainer(fns, info.tasks, info.input_key, params,
                      optimizer=optax.adam(1e-2), **kw)
  return tr, params


def _train(tr, params, batches, steps):
  state = tr.init(params, batches[0], 0)
  infos = []
  for i in range(steps):
    state, info = tr.step(state, batches[i % len(batches)])
    infos.append(jax.device_get(info))
  return state, infos


def _close(a, b, **kw):
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_allclose(x, y, **kw)


def test_ls_one_backward_lowers_loss(setup):
  info, batches = setup
  tr, params = _trainer(info)
  assert tr.path == "one_backward"
  before = np.asarray(tr.loss_fn(params, batches[0]))
  state, infos = _train(tr, params, batches, STEPS)
  after = np.asarray(tr.loss_fn(state.params, batches[0]))
  assert np.all(after < 0.8 * before), (before, after)
  assert int(state.step) == STEPS
  np.testing.assert_array_equal(infos[-1]["weights"], [1.0, 1.0])


def test_loss_weighting_one_backward_equals_stacked_chain_and_learns(setup):
  info, batches = setup
  one, params = _trainer(info, weighting="uncertainty")
  stacked, _ = _trainer(info, weighting="uncertainty", path="jacobian")
  assert one.path == "one_backward" and stacked.path == "jacobian"
  s1, s2 = one.init(params, batches[0]), stacked.init(params, batches[0])
  for b in batches[:3]:  # same updates, states and weights: one backward vs K
    s1, i1 = one.step(s1, b)
    s2, i2 = stacked.step(s2, b)
    _close(s1.params, s2.params, rtol=2e-4, atol=1e-6)
    _close(s1.loss_state, s2.loss_state, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(i1["weights"], i2["weights"], rtol=1e-3)
  assert "cosines" in i2 and "cosines" not in i1
  np.testing.assert_allclose(np.diag(i2["cosines"]), 1.0, rtol=1e-5)
  before = np.asarray(one.loss_fn(params, batches[0]))
  state, _ = _train(one, params, batches, STEPS)
  assert np.all(np.asarray(one.loss_fn(state.params, batches[0])) < 0.8 * before)


def test_representation_path_ls_equals_one_backward_and_learns(setup):
  info, batches = setup
  rep, params = _trainer(info, model="mmoe", rep_grad=True)
  one, _ = _trainer(info, model="mmoe")
  assert rep.path == "representation"
  sr, so = rep.init(params, batches[0]), one.init(params, batches[0])
  for b in batches[:2]:  # Σ_k rows pulled back = gradient of Σ_k L_k
    sr, ir = rep.step(sr, b)
    so, _ = one.step(so, b)
    _close(sr.params, so.params, rtol=2e-4, atol=1e-6)
  np.testing.assert_allclose(ir["weights"], [1.0, 1.0], rtol=1e-3)
  assert ir["cosines"].shape == (2, 2)
  before = np.asarray(rep.loss_fn(params, batches[0]))
  state, _ = _train(rep, params, batches, STEPS)
  assert np.all(np.asarray(rep.loss_fn(state.params, batches[0])) < 0.8 * before)


def test_fixed_weights_log_the_weights_used_on_both_engines(setup):
  info, batches = setup
  tr, params = _trainer(info, method="ls", method_kwargs={"weights": [1.0, 0.25]})
  assert tr.engine == "one_backward"  # a fixed weighting needs no per-task grads
  _, infos = _train(tr, params, batches, 2)
  np.testing.assert_array_equal(infos[-1]["weights"], [1.0, 0.25])
  assert infos[-1]["weights_exact"]
  tr, params = _trainer(info, method="ls", method_kwargs={"weights": [1.0, 0.25]},
                        engine="jacobian")
  _, infos = _train(tr, params, batches, 2)
  np.testing.assert_array_equal(infos[-1]["weights"], [1.0, 0.25])
  c = infos[-1]["cosines"]
  assert c.shape == (2, 2) and abs(c[0, 1]) <= 1 and c[0, 1] == pytest.approx(c[1, 0])


def test_engine_auto_picks_the_cheapest_valid_engine_and_records_it(setup, data_dir,
                                                                     tmp_path, caplog):
  """``config.engine='auto'`` on the multi-digits CNN (every parameter in the autogram
  plan): one_backward for loss-only weightings with LS, gramian for a Gramian method
  (alone or after DWA), jacobian for what reads per-task grads; the choice is in
  config.json (``engine_used``) and the log."""
  info, batches = setup
  config = md_config.get_config()
  config.update(dict(num_steps=2, eval_every=2, log_every=1, checkpoint_every=2,
                     batch_size=32, eval_batch_size=64, data_dir=data_dir, progress=False,
                     tensorboard=False, workdir=str(tmp_path / "run")))
  config.builder_kwargs.update(KW)
  config.model_kwargs.update(dict(widths=(4, 8), hidden=16, head_hidden=16))
  _, tasks = train_exp.validate(config)
  for method, weighting, want in [("ls", "dwa", "one_backward"), ("upgrad", "none", "gramian"),
                                  ("upgrad", "dwa", "gramian"), ("graddrop", "none", "jacobian"),
                                  ("ls", "gradnorm", "jacobian")]:
    c = md_config.get_config(f"method={method},weighting={weighting}")
    c.builder_kwargs.update(KW)
    c.model_kwargs.update(dict(widths=(4, 8), hidden=16, head_hidden=16))
    assert c.engine == "auto"
    trainer, _ = train_exp.build_trainer(c, info, tasks, None, example_batch=batches[0])
    assert trainer.engine == want, (method, weighting, trainer.engine)
  config.method = "upgrad"
  config.method_kwargs = md_config.get_config("method=upgrad").method_kwargs
  with caplog.at_level(logging.INFO):
    train_exp.train_and_evaluate(config)
  saved = json.load(open(tmp_path / "run" / "config.json"))
  assert (saved["engine"], saved["engine_used"]) == ("auto", "gramian")
  assert "engine gramian (config.engine='auto')" in caplog.text


def test_config_errors_list_valid_names(data_dir):
  base = md_config.get_config()
  cases = [("method", "pcgradd", r"expected one of \[.*'ls'"),
           ("method", "famo", r"is not a gradient-space method.*config.weighting"),
           ("weighting", "dwaa", r"expected 'none' or one of \[.*'dwa'"),
           ("model", "resnet", r"expected one of \['cgc', 'cross_stitch'"),
           ("dataset", "mnist", r"expected one of \[.*'multi_digits'"),
           ("eval_split", "dev", r"expected one of \['train', 'validation', 'test'\]"),
           ("tasks", "left,middle", r"\['middle'\].*\['left', 'right'\]"),
           ("optimizer", "lamb", r"expected one of \['adam', 'adamw', 'sgd'\]")]
  for key, value, pattern in cases:
    config = base.copy_and_resolve_references()
    config[key] = value
    with pytest.raises(ValueError, match=pattern):
      train_exp.validate(config)
  with pytest.raises(ValueError, match=r"unknown method 'pcgradd'"):
    compare.parse_methods(["ls", "pcgradd"])
  assert compare.parse_methods(["ls", "dwa", "dwa+ls"]) == [
      ("ls", "ls", "none"), ("dwa", "ls", "dwa"), ("dwa+ls", "ls", "dwa")]


def test_compare_end_to_end(data_dir, tmp_path):
  config = md_config.get_config()
  config.update(dict(num_steps=20, eval_every=10, log_every=5, checkpoint_every=20,
                     batch_size=32, eval_batch_size=64, data_dir=data_dir, progress=False,
                     tensorboard=False, last_k=2))
  config.builder_kwargs.update(KW)
  config.model_kwargs.update(dict(widths=(4, 8), hidden=16, head_hidden=16))
  config.engine = "gramian"  # --config.engine=gramian reaches every run of the compare
  out = compare.compare(config, ["ls", "dwa"], seeds=2, workdir=str(tmp_path),
                        compilation_cache=False)
  saved = [json.load(open(p)) for p in (tmp_path / "runs").glob("*/seed*/config.json")]
  assert len(saved) == 8  # 2 single-task + 2 methods, 2 seeds each
  assert {(c["engine"], c["engine_used"]) for c in saved} == {("gramian", "gramian")}
  with open(out["csv"]) as f:
    rows = list(csv.DictReader(f))
  assert [r["method"] for r in rows] == ["single-task", "ls", "dwa"]
  for p in out["plots"]:
    assert os.path.getsize(p) > 1000
  md = open(out["table"]).read()
  assert "| ls |" in md and "Δm%" in md and "protocol last_k" in md
  # recompute ls's Δm by hand from the runs' metrics.jsonl (last 2 evals, 2 seeds)
  keys = ["accuracy/left", "accuracy/right"]

  def last2(path, ks=keys):
    (path,) = path.parent.parent.glob(path.parent.name + "_*/metrics.jsonl")
    ev = [r for r in T.read_jsonl(str(path)) if r["split"] == "eval"][-2:]
    return [np.mean([r[k] for r in ev]) for k in ks]

  runs = tmp_path / "runs"
  stl = [np.mean([last2(runs / f"stl_{t}" / f"seed{s}" / "metrics.jsonl", [k])[0]
                  for s in (0, 1)]) for t, k in zip(["left", "right"], keys)]
  per_seed = [last2(runs / "ls" / f"seed{s}" / "metrics.jsonl") for s in (0, 1)]
  dms = [100 * np.mean([-(m[i] - stl[i]) / stl[i] for i in range(2)]) for m in per_seed]
  assert float(rows[1]["delta_m"]) == pytest.approx(np.mean(dms), rel=1e-9, abs=1e-9)
  assert float(rows[1]["accuracy/left mean"]) == pytest.approx(
      np.mean([p[0] for p in per_seed]))
  # the STL runs trained on one task only
  (stl_path,) = (runs / "stl_left").glob("seed0_*/metrics.jsonl")
  stl_rows = T.read_jsonl(str(stl_path))
  assert "loss/left" in stl_rows[0] and "loss/right" not in stl_rows[0]
  # a second call reuses the finished runs (same numbers, nothing retrained)
  mtime = os.path.getmtime(stl_path)
  again = compare.compare(config, ["ls", "dwa"], seeds=2, workdir=str(tmp_path),
                        compilation_cache=False)
  assert again["summary"]["ls"]["delta_m"] == out["summary"]["ls"]["delta_m"]
  assert os.path.getmtime(stl_path) == mtime


def test_protocols_pick_the_documented_rows():
  Task = __import__("collections").namedtuple("Task", "name metrics higher_is_better")
  tasks = (Task("a", ("accuracy",), (True,)), Task("b", ("abs_err",), (False,)))

  def rows(evals, vals):
    out = [{"step": s, "split": "train", "time/step_s": 0.01} for s in (10, 20, 30)]
    for split, table in (("eval", evals), ("val", vals)):
      out += [dict({"step": s, "split": split}, **r) for s, r in table.items()]
    return out

  stl_a = rows({10: {"accuracy/a": 80.0}, 20: {"accuracy/a": 90.0}, 30: {"accuracy/a": 85.0}},
               {10: {"accuracy/a": 70.0}, 20: {"accuracy/a": 60.0}, 30: {"accuracy/a": 65.0}})
  stl_b = rows({10: {"abs_err/b": 1.0}, 20: {"abs_err/b": 0.5}, 30: {"abs_err/b": 0.8}},
               {10: {"abs_err/b": 0.9}, 20: {"abs_err/b": 0.7}, 30: {"abs_err/b": 0.4}})
  m = rows({10: {"accuracy/a": 88.0, "abs_err/b": 0.6},
            20: {"accuracy/a": 70.0, "abs_err/b": 0.9},
            30: {"accuracy/a": 84.0, "abs_err/b": 0.4}},
           # val Δm against the STL val (70, 0.4): (-7.14 + 25) / 2 = 8.9,
           # (-10 + 5) / 2 = -2.5 (the lowest), (14.3 + 0) / 2 = 7.1
           {10: {"accuracy/a": 75.0, "abs_err/b": 0.5},
            20: {"accuracy/a": 77.0, "abs_err/b": 0.42},
            30: {"accuracy/a": 60.0, "abs_err/b": 0.4}})
  results = {("stl", "a", 0): stl_a, ("stl", "b", 0): stl_b, ("m", 0): m}
  # best_val: STL a at its best val step 10 (acc 70), STL b at step 30 (err 0.4);
  # the multi-task run at step 20, its lowest validation Δm.
  s = compare.summarize(results, tasks, ["m"], [0], "best_val", 1)
  assert s["single-task"]["mean"] == {"accuracy/a": 80.0, "abs_err/b": 0.8}
  assert s["m"]["mean"] == {"accuracy/a": 70.0, "abs_err/b": 0.9}
  assert s["m"]["delta_m"] == pytest.approx(M.delta_m([70.0, 0.9], [80.0, 0.8], [True, False]))
  # last_k=2: means of the last two eval rows
  s = compare.summarize(results, tasks, ["m"], [0], "last_k", 2)
  assert s["single-task"]["mean"] == {"accuracy/a": 87.5, "abs_err/b": 0.65}
  assert s["m"]["mean"] == pytest.approx({"accuracy/a": 77.0, "abs_err/b": 0.65})
  assert s["m"]["sec_per_step"] == pytest.approx(0.01)


def test_extra_batches_reach_the_method_as_task_grads_2(setup, monkeypatch):
  """A method that steps along the summed grads of the SECOND mini-batch only."""
  from mtlx import jacobian, registry

  def second_only():
    def update(task_grads, state, params=None, **extra):
      return jacobian.combine(np.ones(2, np.float32), extra["task_grads_2"]), state
    return optax.GradientTransformationExtraArgs(lambda p: optax.EmptyState(), update)

  monkeypatch.setitem(registry.METHODS, "second_only",
                      registry.Method("second_only", second_only, "gradient",
                                      engines=registry.JACOBIAN_ONLY))
  info, batches = setup
  fns, params = models.split(models.get_model("hps", input_shape=info.input_shape,
                                              tasks=info.tasks, seed=0, **SMALL))
  tr = T.make_trainer(fns, info.tasks, info.input_key, params, method="second_only",
                      optimizer=optax.sgd(0.5), extra_batches=1)
  assert tr.path == "jacobian"
  big = jax.tree_util.tree_map(lambda a, b: np.concatenate([a, b]), batches[0], batches[1])
  state, _ = tr.step(tr.init(params, big), big)
  g = jax.grad(lambda p: jax.numpy.sum(tr.loss_fn(p, batches[1])))(params)
  _close(state.params, jax.tree_util.tree_map(lambda p, d: p - 0.5 * d, params, g),
         rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="extra_batches=3"):
    T.make_trainer(fns, info.tasks, info.input_key, params, optimizer=optax.sgd(0.5),
                   extra_batches=3)


def test_gradnorm_in_the_trainer_takes_norms_over_the_shared_encoder(setup):
  info, batches = setup
  default, params = _trainer(info, weighting="gradnorm")
  encoder_only, _ = _trainer(info, weighting="gradnorm",
                             weighting_kwargs={"mask": {"encoder": True, "decoder": False}})
  everything, _ = _trainer(info, weighting="gradnorm", weighting_kwargs={"mask": None})
  states = [tr.init(params, batches[0], 0) for tr in (default, encoder_only, everything)]
  for b in batches[:2]:
    out = [tr.step(s, b) for tr, s in zip((default, encoder_only, everything), states)]
    states = [o[0] for o in out]
  # GradNorm's weights take Adam steps (equal-sized at first), so compare the whole
  # loss-space state: its Adam moments carry the gradient-norm magnitudes.
  leaves = [np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(s.loss_state)])
            for s in states]
  np.testing.assert_allclose(leaves[0], leaves[1], rtol=1e-6)
  assert np.max(np.abs(leaves[0] - leaves[2])) > 1e-3 * np.max(np.abs(leaves[2])), leaves
