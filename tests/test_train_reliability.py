"""The trainer under bad settings, bad steps and bad disks (issue 15): one clear
error (and exit code 1 from the command line), never a hang or a silent success."""

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from configs import multi_digits as md_config
from experiments import train as train_exp
from mtlx import train as T
from tests.conftest import FAST_COMPILE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KW = dict(num_train=256, num_validation=32, num_test=64)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


def _config(data_dir, workdir, **overrides):
  c = md_config.get_config()
  c.update(dict(num_steps=8, eval_every=8, log_every=4, checkpoint_every=4,
                keep_checkpoints=2, batch_size=32, eval_batch_size=64, data_dir=data_dir,
                progress=False, tensorboard=False, val_split="", workdir=str(workdir)))
  c.builder_kwargs.update(KW)
  c.model_kwargs.update(dict(widths=(4, 8), hidden=16, head_hidden=16))
  for k, v in overrides.items():
    c[k] = v
  return c


# --- Item 9: every number checked before the workdir is created ------------------------

@pytest.mark.parametrize("key,value,needle", [
    ("num_steps", 0, "config.num_steps=0 is not valid; expected an int >= 1"),
    ("eval_every", 0, "config.eval_every=0"), ("log_every", 0, "config.log_every=0"),
    ("checkpoint_every", 0, "config.checkpoint_every=0"),
    ("keep_checkpoints", 0, "config.keep_checkpoints=0 is not valid; expected an int >= 1"),
    ("learning_rate", -1.0, "config.learning_rate=-1.0"),
    ("learning_rate", float("nan"), "config.learning_rate=nan"),
    ("grad_clip", -1.0, "config.grad_clip=-1.0"),
    ("weight_decay", -5.0, "config.weight_decay=-5.0"),
    ("max_nonfinite_steps", 0, "config.max_nonfinite_steps=0"),
    ("resume", "maybe", "config.resume='maybe' is not valid"),
])
def test_bad_numbers_refused_before_workdir(tmp_path, key, value, needle):
  workdir = tmp_path / "run"
  config = _config(str(tmp_path / "data"), workdir, **{key: value})
  with pytest.raises(ValueError, match=__import__("re").escape(needle)):
    train_exp.train_and_evaluate(config)
  assert not workdir.exists()


def test_bad_model_size_refused_before_workdir(tmp_path):
  config = _config(str(tmp_path / "data"), tmp_path / "run")
  config.model_kwargs.hidden = 0
  with pytest.raises(ValueError, match="config.model_kwargs.hidden=0 is not valid"):
    train_exp.train_and_evaluate(config)
  assert not (tmp_path / "run").exists()


# --- Items 4, 5, 9, 10 in one small run and its resumes ---------------------------------

def test_resume_rules_and_non_finite_stop(data_dir, tmp_path):
  workdir = tmp_path / "run"
  # resume=True on a mistyped (empty) workdir: an error, not a fresh run
  with pytest.raises(ValueError, match="holds no checkpoint.*resume='auto'"):
    train_exp.train_and_evaluate(_config(data_dir, workdir, resume=True))
  # resume='auto' starts fresh when there is nothing to resume
  train_exp.train_and_evaluate(_config(data_dir, workdir, resume="auto"))
  ckpts = workdir / "checkpoints"
  assert T.Checkpointer(str(ckpts)).all_steps() == [4, 8]

  # an immutable key differs: one ValueError listing each difference
  with pytest.raises(ValueError, match=r"config.method: 'ls' -> 'mgda'.*config.seed: 0 -> 1"):
    train_exp.train_and_evaluate(_config(data_dir, workdir, resume=True, method="mgda",
                                         seed=1))
  # the learning rate only with the flag
  with pytest.raises(ValueError, match="config.learning_rate.*resume_allow_optimizer_change"):
    train_exp.train_and_evaluate(_config(data_dir, workdir, resume=True, learning_rate=0.1))
  original = json.load(open(workdir / "config.json"))
  train_exp.train_and_evaluate(_config(data_dir, workdir, resume=True, num_steps=12,
                                       eval_every=4, learning_rate=2e-3,
                                       resume_allow_optimizer_change=True))
  assert json.load(open(workdir / "config.json")) == original  # first settings kept
  (row,) = T.read_jsonl(str(workdir / "config_history.jsonl"))
  assert row["step"] == 8
  assert row["changes"]["num_steps"] == [8, 12]
  assert row["changes"]["learning_rate"] == [1e-3, 2e-3]

  # a model-size change is refused by the config comparison ...
  config = _config(data_dir, workdir, resume=True, num_steps=16, learning_rate=2e-3)
  config.model_kwargs.hidden = 32
  with pytest.raises(ValueError, match=r"config.model_kwargs.hidden: 16 -> 32"):
    train_exp.train_and_evaluate(config)
  # ... and without a stored config, by the checkpoint: one line, leaf and both shapes
  saved = {n: (workdir / n).read_bytes() for n in ("config.json", "config_history.jsonl")}
  for n in saved:
    (workdir / n).unlink()
  with pytest.raises(ValueError) as e:
    train_exp.train_and_evaluate(config)
  msg = str(e.value)
  assert "\n" not in msg and "≠ model" in msg and "(in " in msg, msg
  assert "checkpoint kernel shape (16, 16) ≠ model (32, 16) at params.decoder" in msg, msg
  for n, b in saved.items():
    (workdir / n).write_bytes(b)

  # corrupt the newest checkpoint (12): resume falls back to 8, logged
  steps = T.Checkpointer(str(ckpts)).all_steps()
  assert steps[-1] == 12
  for root, _, files in os.walk(ckpts / "12"):
    for f in files:
      if "manifest" in f or f.endswith(".ocdbt") or "d" == os.path.basename(root):
        with open(os.path.join(root, f), "r+b") as fh:
          fh.truncate(3)
  shutil.rmtree(ckpts / "12" / "default", ignore_errors=True)
  (ckpts / "12" / "default").mkdir()
  restored = train_exp.train_and_evaluate(_config(data_dir, workdir, resume=True,
                                                  num_steps=12, eval_every=4,
                                                  learning_rate=2e-3))
  assert restored  # trained 8 -> 12 again
  rows = T.read_jsonl(str(workdir / "metrics.jsonl"))
  assert max(r["step"] for r in rows) == 12

  # every checkpoint unreadable: stop with one line per step
  for s in T.Checkpointer(str(ckpts)).all_steps():
    shutil.rmtree(ckpts / str(s) / "default")
    (ckpts / str(s) / "default").mkdir()
  with pytest.raises(ValueError, match="no readable checkpoint.*step 12: .*step 8: "):
    train_exp.train_and_evaluate(_config(data_dir, workdir, resume=True, num_steps=16,
                                         learning_rate=2e-3))


def test_config_changes_reads_an_absent_key_as_off():
  stored = {"method": "upgrad", "learning_rate": 1e-3}
  # a key the stored run predates, set to its off value: no change
  assert train_exp.config_changes(
      stored, dict(stored, affinity_every=0, flat_regions={"rho": 0.0}, focal_gamma=0.0)) == {}
  # ... but turned on, it is refused, naming the key and both values
  with pytest.raises(ValueError, match=r"config\.flat_regions\.rho: '<absent>' -> 0\.05"):
    train_exp.config_changes(stored, dict(stored, flat_regions={"rho": 0.05}))
  with pytest.raises(ValueError, match=r"config\.method: 'upgrad' -> 'mgda'"):
    train_exp.config_changes(stored, dict(stored, method="mgda"))


def test_non_finite_loss_stops_the_run(data_dir, tmp_path):
  config = _config(data_dir, tmp_path / "run", learning_rate=1e30, optimizer="sgd",
                   momentum=0.0, num_steps=40, checkpoint_every=1, keep_checkpoints=50)
  with pytest.raises(train_exp.NonFiniteLossError,
                     match=r"non-finite for 3 consecutive steps.*max_nonfinite_steps=3"):
    train_exp.train_and_evaluate(config)
  ck = T.Checkpointer(str(tmp_path / "run" / "checkpoints"))
  for s in ck.all_steps():  # every checkpoint kept is finite
    assert all(np.all(np.isfinite(np.asarray(x))) for x in
               __import__("jax").tree_util.tree_leaves(ck.manager.restore(s))
               if np.issubdtype(np.asarray(x).dtype, np.floating))


def test_keep_checkpoints_refused():
  with pytest.raises(ValueError, match=r"keep_checkpoints \(max_to_keep\)=0 is not valid"):
    T.Checkpointer("/tmp/unused_h15_ckpt", max_to_keep=0)


# --- Item 3: a checkpoint that cannot be written stops the run promptly ------------------

def test_checkpoint_write_failure_exits_promptly(data_dir, tmp_path):
  """checkpoints/ made immutable (chattr +i, which root cannot bypass) after the first
  checkpoint: the next save fails in orbax's background thread; the run exits 1 within
  a bounded time with one line naming the path, and the first checkpoint stays
  readable."""
  probe = tmp_path / "probe"
  probe.mkdir()
  if shutil.which("chattr") is None or subprocess.run(
      ["chattr", "+i", str(probe)], capture_output=True).returncode != 0:
    pytest.skip("chattr +i is not available on this filesystem")
  subprocess.run(["chattr", "-i", str(probe)], check=True)
  workdir = tmp_path / "run"
  ckpts = workdir / "checkpoints"
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  env["XLA_FLAGS"] = FAST_COMPILE  # one device (no inherited device count), fast compiles
  cmd = [sys.executable, "-m", "experiments.train", "--config", "configs/multi_digits.py",
         f"--config.workdir={workdir}", f"--config.data_dir={data_dir}",
         "--config.num_steps=200000", "--config.checkpoint_every=200",
         "--config.eval_every=200000", "--config.log_every=1000", "--config.batch_size=8",
         "--config.eval_batch_size=64", "--config.val_split=", "--config.progress=False",
         "--config.tensorboard=False", "--config.model_kwargs.widths=(4,8)",
         "--config.model_kwargs.hidden=16", "--config.model_kwargs.head_hidden=16",
         "--config.builder_kwargs.num_train=256", "--config.eval_split=validation"]
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
      if (ckpts / "200").is_dir():
        break
      time.sleep(0.002)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    subprocess.run(["chattr", "+i", str(ckpts)], check=True)
    t0 = time.time()
    try:
      out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
      proc.kill()
      pytest.fail("the run did not stop within 120 s of the failed checkpoint")
    assert time.time() - t0 < 120
  finally:
    subprocess.run(["chattr", "-i", str(ckpts)], capture_output=True)
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 1, (proc.returncode, err[-3000:])
  lines = [l for l in err.splitlines() if l.startswith("error: ")]
  assert lines and "could not write checkpoint" in lines[-1], err[-3000:]
  assert str(ckpts) in lines[-1], err[-3000:]
  ck = T.Checkpointer(str(ckpts))
  assert 200 in ck.all_steps()
  ck.manager.restore(200)  # the last good checkpoint is readable
