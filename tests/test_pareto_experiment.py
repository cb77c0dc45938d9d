"""experiments/pareto.py end to end on multi_digits (tiny steps, in-process) and the toy."""

import csv
import os

import numpy as np
import pytest

from configs import multi_digits
from experiments import pareto as epareto
from mtlx import pareto


def _check_outputs(tmp_path, rows, methods):
  assert [r["method"] for r in rows] == list(methods)
  with open(os.path.join(tmp_path, "pareto.csv")) as fh:
    table = list(csv.DictReader(fh))
  assert [r["method"] for r in table] == list(methods)
  ref = np.array([float(v) for v in table[0]["reference_point"].split()])
  for r in table:
    assert float(r["hypervolume"]) > 0
  md = open(os.path.join(tmp_path, "pareto.md")).read()
  assert "Hypervolume reference point" in md and f"| {methods[0]} |" in md
  assert os.path.getsize(os.path.join(tmp_path, "pareto_front.png")) > 10_000
  return ref


def test_multi_digits_grid_and_front_model(tmp_path):
  config = multi_digits.get_config()
  config.eval_batch_size = 1000
  problem = epareto.data_problem(config)
  methods = ("linear", "pamal")
  rows = epareto.run(problem, methods, num_preferences=2, steps=6, workdir=str(tmp_path))
  ref = _check_outputs(tmp_path, rows, methods)
  assert ref.shape == (2,)
  # The table's hypervolume is the metric's, with the table's reference point.
  assert rows[0]["steps"] == 6 and rows[1]["steps"] == 6
  assert all("igd" not in r for r in rows)  # no known front for data


def test_toy_reports_igd_against_the_known_front(tmp_path):
  problem = epareto.toy_problem()
  rows = epareto.run(problem, ("linear", "soups"), num_preferences=3, steps=30,
                     workdir=str(tmp_path))
  _check_outputs(tmp_path, rows, ("linear", "soups"))
  for r in rows:
    assert np.isfinite(r["igd"]) and r["igd_plus"] <= r["igd"] + 1e-12


def test_unknown_method_is_refused():
  with pytest.raises(ValueError, match="--methods"):
    epareto.parse_methods("linear,nope")
  assert epareto.parse_methods("epo, pamal") == ["epo", "pamal"]
  assert pareto.simplex_grid(2, 2).shape == (2, 2)
