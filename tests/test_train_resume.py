"""A run killed with SIGKILL mid-training and resumed ends exactly like an
uninterrupted run: same final params, optimizer state and metrics (real subprocesses),
on every engine of the step."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

from mtlx import train as T
from tests.conftest import FAST_COMPILE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_STEPS = 600


# engine -> (method, steps, eval_every): one_backward learns the full 600 steps; the
# stacked engines (K backward passes, a solver) run a shorter schedule.
ENGINES = {"one_backward": ("ls", NUM_STEPS, 150), "gramian": ("upgrad", 150, 50),
           "jacobian": ("upgrad", 150, 50), "representation": ("upgrad", 150, 50)}


def _cmd(workdir, data_dir, resume=False, engine="one_backward"):
  method, steps, eval_every = ENGINES[engine]
  return [sys.executable, "-m", "experiments.train", "--config", "configs/multi_digits.py",
          f"--config.workdir={workdir}", f"--config.data_dir={data_dir}",
          f"--config.num_steps={steps}", "--config.checkpoint_every=25",
          f"--config.method={method}", f"--config.engine={engine}",
          "--config.keep_checkpoints=2", f"--config.eval_every={eval_every}",
          "--config.log_every=25",
          "--config.batch_size=32", "--config.eval_batch_size=256",
          "--config.builder_kwargs.num_train=600", "--config.progress=False",
          "--config.model_kwargs.widths=(4,8)", "--config.model_kwargs.hidden=16",
          "--config.weighting=famo",  # a stateful method: its state must resume too
          f"--config.resume={resume}"]


def _env():
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  env["XLA_FLAGS"] = FAST_COMPILE  # one device (no inherited device count), fast compiles
  return env


def _final_state(workdir, steps=NUM_STEPS):
  path = os.path.join(workdir, "checkpoints", str(steps), "default")
  return ocp.StandardCheckpointer().restore(path)


def _without_times(rows):
  return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


@pytest.mark.parametrize("engine", list(ENGINES))
def test_sigkill_and_resume_is_exact(tmp_path, engine):
  _, num_steps, eval_every = ENGINES[engine]
  data_dir = str(tmp_path / "data")
  full, killed = str(tmp_path / "full"), str(tmp_path / "killed")
  subprocess.run(_cmd(full, data_dir, engine=engine), cwd=ROOT, env=_env(), check=True,
                 capture_output=True, timeout=300)
  with open(os.path.join(full, "config.json")) as f:
    assert __import__("json").load(f)["engine_used"] == engine

  proc = subprocess.Popen(_cmd(killed, data_dir, engine=engine), cwd=ROOT, env=_env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  ckpts = os.path.join(killed, "checkpoints")
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    steps = [int(d) for d in os.listdir(ckpts) if d.isdigit()] if os.path.isdir(ckpts) else []
    if steps and max(steps) >= 50:
      break
    time.sleep(0.005)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
  latest = T.Checkpointer(ckpts).latest_step()
  assert latest is not None and latest < num_steps
  rows = T.read_jsonl(os.path.join(killed, "metrics.jsonl"))
  assert max(r["step"] for r in rows) < num_steps

  subprocess.run(_cmd(killed, data_dir, resume=True, engine=engine), cwd=ROOT, env=_env(),
                 check=True, capture_output=True, timeout=300)

  a, b = _final_state(full, num_steps), _final_state(killed, num_steps)
  leaves_a = __import__("jax").tree_util.tree_leaves_with_path(a)
  leaves_b = __import__("jax").tree_util.tree_leaves(b)
  assert len(leaves_a) == len(leaves_b) > 10
  for (path, x), y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(path))
  ra = _without_times(T.read_jsonl(os.path.join(full, "metrics.jsonl")))
  rb = _without_times(T.read_jsonl(os.path.join(killed, "metrics.jsonl")))
  assert ra == rb
  assert [r["step"] for r in ra if r["split"] == "eval"] == list(
      range(eval_every, num_steps + 1, eval_every))
  if engine == "one_backward":  # and the run did learn something
    assert ra[-1]["accuracy/left"] > 50 and ra[-1]["accuracy/right"] > 50
