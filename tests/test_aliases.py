"""The old public names listed under "Renamed" and "issue 12" in CHANGELOG.md stay
importable, as the same objects as the new ones (users' code and notebooks use them).
(``make_trainer(path=...)``, the old spelling of ``engine=``: tests/test_train.py.)"""

import importlib

import jax.numpy as jnp
import numpy as np

import mtlx
from mtlx import sharding
from mtlx import train
from mtlx.train import checkpoint


def test_loss_space_package_and_modules_keep_their_old_names():
  for module in ("dwa", "famo", "uncertainty_weighting", "gradnorm", "base"):
    old = importlib.import_module(f"mtlx.weighting.{module}")
    assert old is importlib.import_module(f"mtlx.loss_weighting.{module}")
  assert importlib.import_module("mtlx.weighting").dwa is mtlx.loss_weighting.dwa


def test_old_wrapper_name_forwards_to_loss_space_weighting():
  def halve(state, task_losses):
    return 0.5 * jnp.ones_like(task_losses), state

  tx = mtlx.loss_weighting(halve, name="halve")
  assert isinstance(tx, mtlx.LossWeighting)
  rows, _ = tx.update({"a": jnp.ones((2, 3))}, tx.init(None), task_losses=jnp.ones(2))
  np.testing.assert_allclose(rows["a"], 0.5)


def test_moved_and_renamed_functions_are_the_same_objects():
  assert sharding.save_checkpoint is checkpoint.save_checkpoint
  assert sharding.restore_checkpoint is checkpoint.restore_checkpoint
  assert train.PATHS == train.ENGINES
  assert dict(mtlx.aggregators.REGISTRY)["upgrad"] is mtlx.upgrad
  assert dict(mtlx.loss_weighting.REGISTRY)["dwa"] is mtlx.dwa
  for name in mtlx.weightings.__all__:  # the old module of pure weight functions
    if name != "project_weights":
      assert getattr(mtlx.weightings, name) is getattr(mtlx, f"{name}_weights"), name
