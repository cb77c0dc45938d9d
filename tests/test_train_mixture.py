"""Multi-dataset runs through experiments/train.py: every sampler builds batches from
the config, a run resumed from its checkpoint ends exactly like an uninterrupted one,
and the in-context benchmark writes its table and figure."""

import json
import os

import numpy as np
import pytest

from configs import digits_mixture
from configs import icl_function_classes
from experiments import icl_function_classes as icl
from experiments import train as train_lib
from experiments import train_mixture
from mtlx import train as mtrain

SAMPLER_OVERRIDES = {
    "fixed": {"weights": (1.0, 2.0, 0.0)},
    "proportional": {},
    "temperature": {"temperature": 3.0},
    "uniform": {},
    "unmixed": {"num_slices": 2},
    "staged": {"stages": [{"steps": 2, "sampler": {"name": "fixed", "weights": [1, 0, 0]}},
                          {"steps": 1, "sampler": {"name": "uniform"}}]},
    "bandit": {"algorithm": "ucb"},
    "loss_proportional": {"epsilon": 0.2},
}


@pytest.mark.parametrize("name", sorted(SAMPLER_OVERRIDES))
def test_every_sampler_from_the_config(name):
  config = digits_mixture.get_config()
  config.sampler.name = name
  for key, value in SAMPLER_OVERRIDES[name].items():
    config.sampler[key] = value
  config.batch_size = 8
  srcs = train_mixture.make_sources(config, "train")
  it = train_mixture.make_mixture_iterator(config, srcs)
  per_step = []
  for _ in range(4):
    batch = next(it)
    it.update(np.array([1.0, 2.0, 3.0]))
    assert batch["image"].shape == (8, 8, 8, 1)
    per_step.append(it.last_counts)
  seen = np.sum(per_step, axis=0)
  assert seen.sum() == 32
  if name == "fixed":
    assert seen[2] == 0
  if name == "staged":
    assert all(c[0] == 8 for c in per_step[:2])  # the first two steps hold task 0 only


def _config(workdir, steps):
  c = digits_mixture.get_config()
  c.workdir = str(workdir)
  c.num_steps = steps
  c.batch_size = 16
  c.eval_every = 6
  c.checkpoint_every = 3
  c.log_every = 3
  c.tasks[0].num_examples = 64
  c.tasks[1].num_examples = 32
  c.tasks[2].num_examples = 16
  c.model_kwargs.widths = (4,)
  c.model_kwargs.hidden = 16
  c.model_kwargs.head_hidden = 8
  c.sampler.name = "bandit"      # adaptive: its state must resume too
  c.weighting = "famo"           # a stateful method, told which tasks are present
  c.method = "ls"
  return c


def test_resume_continues_exactly(tmp_path):
  full = train_lib.train_and_evaluate(_config(tmp_path / "full", 12))
  train_lib.train_and_evaluate(_config(tmp_path / "part", 6))
  resumed_config = _config(tmp_path / "part", 12)
  resumed_config.resume = True
  resumed = train_lib.train_and_evaluate(resumed_config)
  assert resumed == full
  rows = lambda d: [r for r in mtrain.read_jsonl(os.path.join(d, "metrics.jsonl"))]
  a, b = rows(tmp_path / "full"), rows(tmp_path / "part")
  strip = lambda r: {k: v for k, v in r.items() if not k.startswith("time/")}
  assert [strip(r) for r in a] == [strip(r) for r in b]
  train_rows = [r for r in a if r["split"] == "train"]
  assert all(sum(r[f"count/{t}"] for t in ("digit", "rotated", "value")) == 16
             for r in train_rows)
  assert train_rows[-1]["examples/digit"] + train_rows[-1]["examples/rotated"] + \
      train_rows[-1]["examples/value"] == 12 * 16


def _icl_config(tmp_path):
  c = icl_function_classes.get_config()
  c.tasks = [c.tasks[0], c.tasks[1]]  # linear and sparse: keeps the test short
  c.sampler.weights = (1.0, 1.0)
  c.workdir = str(tmp_path / "icl")
  c.num_steps = 4
  c.eval_every = 4
  c.checkpoint_every = 4
  c.log_every = 2
  c.batch_size = 10
  c.eval_examples = 8
  c.icl.eval_prompts = 8
  c.model_kwargs.dim = 16
  c.model_kwargs.depth = 1
  for t in c.tasks:
    t.dim, t.n_points = 4, 6
  c.icl.curriculum = icl_function_classes.garg_curriculum(c.num_steps, 4, 6)
  return c


def test_icl_benchmark_writes_table_and_figure(tmp_path):
  c = _icl_config(tmp_path)
  result = icl.run(c)
  assert set(result) == {"linear_regression", "sparse_linear_regression"}
  assert "lasso" in result["sparse_linear_regression"] and "lasso" not in result["linear_regression"]
  assert all(len(v) == 6 for e in result.values() for v in e.values())
  np.testing.assert_allclose(result["linear_regression"]["least_squares"][5], 0, atol=1e-6)
  table = open(tmp_path / "icl" / "icl_table.md").read()
  assert table.count("\n") == 2 + sum(len(e) for e in result.values())
  assert os.path.getsize(tmp_path / "icl" / "icl_curves.png") > 1000
  with open(tmp_path / "icl" / "icl_curves.json") as f:
    assert json.load(f) == result


def test_a_variants_curriculum_does_not_leak_into_the_next_variant(tmp_path):
  c = _icl_config(tmp_path)
  garg = dict(curriculum_dims=(2, 1, 1), curriculum_points=(5, 2, 2))
  curric = icl.variant_config(c, {"name": "curriculum", "method": "ls", **garg})
  icl._apply_curriculum(curric)  # noqa: SLF001 (what training does to its config)
  plain = icl.variant_config(c, {"name": "plain", "method": "ls"})
  icl._apply_curriculum(plain)  # noqa: SLF001
  assert all(tuple(t.curriculum_points) == (5, 2, 2) for t in curric.tasks)
  assert all(tuple(t.curriculum_points) == () and tuple(t.curriculum_dims) == ()
             for t in list(plain.tasks) + list(c.tasks))


def test_compare_on_function_classes_plots_curves_and_runs_the_curriculum(tmp_path):
  """experiments.compare on the ICL config: the `curriculum` line trains with Garg et
  al.'s curriculum on the dimension and the prompt length (logged: its loss early on
  reads the first positions only), and the curves of every line sit next to the
  baselines in icl_curves.*."""
  from experiments import compare
  c = _icl_config(tmp_path)
  assert tuple(c.icl.curriculum.points) == (5, 2, 2) and tuple(c.icl.curriculum.dims) == (2, 1, 1)
  out = compare.compare(c, ["ls", "curriculum"], seeds=1, workdir=str(tmp_path / "cmp"),
                        compilation_cache=False)
  assert set(out["summary"]) >= {"single-task", "ls", "curriculum"}
  with open(out["icl"]["curves"]) as f:
    curves = json.load(f)
  for cls in ("linear_regression", "sparse_linear_regression"):
    assert {"ls", "curriculum", "least_squares", "3nn", "averaging"} <= set(curves[cls])
    assert all(len(v) == 6 and np.all(np.isfinite(v)) for v in curves[cls].values())
  assert curves["linear_regression"]["ls"] != curves["linear_regression"]["curriculum"]
  assert os.path.getsize(out["icl"]["figure"]) > 1000 and out["icl"]["figure"] in out["plots"]
  (run,) = os.listdir(tmp_path / "cmp" / "runs" / "curriculum")
  with open(tmp_path / "cmp" / "runs" / "curriculum" / run / "config.json") as f:
    tasks = json.load(f)["tasks"]
  assert all(tuple(t["curriculum_points"]) == (5, 2, 2) and tuple(t["curriculum_dims"]) ==
             (2, 1, 1) for t in tasks)
  with pytest.raises(ValueError, match="curriculum"):
    compare.compare(_config(tmp_path, 2), ["curriculum"], seeds=1,
                    workdir=str(tmp_path / "bad"), compilation_cache=False)


def test_compare_sweeps_samplers_with_single_task_baselines(tmp_path):
  """experiments.compare on a multi-dataset config: each task alone on its own data
  (the Δm baselines) and one run per sampler; every run logs per-task counts."""
  from experiments import compare
  c = _config(tmp_path, 2)
  c.eval_every, c.checkpoint_every, c.log_every = 2, 2, 1
  c.weighting = "none"
  out = compare.compare(c, ["ls"], seeds=1, workdir=str(tmp_path / "cmp"),
                        samplers=["uniform", "unmixed"], compilation_cache=False)
  summary = out["summary"]
  assert set(summary) >= {"single-task", "ls@uniform", "ls@unmixed"}
  for label in ("ls@uniform", "ls@unmixed"):
    assert np.isfinite(summary[label]["delta_m"])
  runs = tmp_path / "cmp" / "runs"
  for t in ("digit", "rotated", "value"):
    (stl,) = os.listdir(runs / f"stl_{t}")
    rows = [r for r in mtrain.read_jsonl(str(runs / f"stl_{t}" / stl / "metrics.jsonl"))
            if r["split"] == "train"]
    assert [r[f"count/{t}"] for r in rows] == [16, 16]     # the task alone, on its own data
    assert all(set(k.split("/")[1] for k in r if "/" in k and not k.startswith("time"))
               == {t} for r in rows)
  (run,) = os.listdir(runs / compare._dirname("ls@unmixed"))
  rows = [r for r in mtrain.read_jsonl(str(runs / compare._dirname("ls@unmixed") / run / "metrics.jsonl"))
          if r["split"] == "train"]
  for r in rows:  # unmixed, one slice: one task per step
    counts = [r[f"count/{t}"] for t in ("digit", "rotated", "value")]
    assert sorted(counts) == [0, 0, 16]
  assert open(out["table"]).read().count("ls@un") >= 1


def test_compare_sampler_sweep_all_eight_checked_up_front():
  from experiments import compare
  c = digits_mixture.get_config()
  specs = compare.parse_methods(["ls", "famo"])
  info, tasks, out, sampler_of = compare.mixture_specs(c, specs, ["all"])
  assert [t.name for t in tasks] == ["digit", "rotated", "value"]
  assert len(out) == 16 and set(sampler_of.values()) == set(SAMPLER_OVERRIDES)
  assert ("famo@staged", "ls", "famo") in out
  with pytest.raises(ValueError, match="sampler.name"):
    compare.mixture_specs(c, specs, ["uniform", "bogus"])
