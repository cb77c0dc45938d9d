"""Sharded training on 8 emulated CPU devices, in one subprocess.

``XLA_FLAGS=--xla_force_host_platform_device_count=8`` must be set before jax is
imported, so the checks live in ``tests/multidevice/_run_checks.py`` and this test
runs them once in a fresh interpreter and asserts on the numbers it reports.
"""

import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tests", "multidevice", "_run_checks.py")


def eight_device_results(script, timeout):
  """Runs ``script`` in one subprocess on 8 emulated CPU devices and returns the JSON
  of its last ``RESULTS `` line (shared by the multi-device test modules)."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                      " --xla_force_host_platform_device_count=8"
                      " --xla_backend_optimization_level=0"
                      " --xla_llvm_disable_expensive_passes=true").strip()
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  proc = subprocess.run([sys.executable, script], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=timeout)
  assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith("RESULTS ")]
  assert line, proc.stdout[-4000:]
  return line[-1], json.loads(line[-1][len("RESULTS "):])


@pytest.fixture(scope="module")
def results():
  return eight_device_results(SCRIPT, timeout=1200)[1]


def test_eight_devices(results):
  assert results["device_count"] == 8


def test_every_method_every_mesh_matches_one_device(results):
  eq = results["equivalence"]
  meshes = {"1x1x1", "8x1x1", "4x2x1", "2x2x2"}
  methods = {k.split("@")[0] for k in eq}
  # One method of each kind: LS, Gramian weightings, Nash-MTL, GradDrop (elementwise,
  # random), a loss-space method, a loss-space + gradient-space chain.
  assert {"ls", "gramian_ema", "upgrad", "nash_mtl", "graddrop", "famo",
          "dwa+upgrad"} <= methods
  assert {k.split("@")[1] for k in eq} == meshes
  for key, r in eq.items():
    assert r["max_rel"] <= 1e-5, (key, r)
    if key.endswith(("4x2x1", "2x2x2")):  # FSDP really shards something
      assert any("model" in s for s in r["param_specs"]), (key, r)


def test_upgrad_at_k32_on_eight_devices_factorises_inline(results):
  """On a multi-device CPU backend no LAPACK call gets a batch that jaxlib would
  split over XLA:CPU's intra-op pool (> 2e5 flop): with every pool thread running
  a device's program, such a call waits forever (a K = 32 UPGrad step hung on 8
  emulated devices). The weights still equal one device's."""
  r = results["large_k_solver"]
  assert r["num_tasks"] == 32 and r["scale"] > 0
  assert r["max_abs"] <= 1e-6 * r["scale"], r
  factorisations = [c for c in r["lapack_calls"] if c[0].endswith("potrf_ffi")]
  assert factorisations and all(n == 32 for _, _, n in factorisations), r["lapack_calls"]
  for target, batch, n in r["lapack_calls"]:
    assert batch * n ** 3 / 3 < 2e5, (target, batch, n)


def test_zero3_step_matches_one_device(results):
  """ZeRO-3: params stored split over ``model``, the batch over data x model."""
  for name, r in results["zero3"].items():
    assert r["max_rel"] <= 1e-5, (name, r)
    assert any("model" in spec for spec in r["param_specs"]), (name, r)
    assert r["batch_spec"] == "P(('data', 'model'),)", r


def test_autogram_step_on_mesh_matches_one_device(results):
  assert results["autogram"]["max_rel"] <= 1e-5


def test_gramian_method_gathers_no_parameter_sized_array(results):
  """No all-gather of an FSDP-sharded parameter or of its K per-task grads.

  (Activations and the tiny replicated bias's grads are gathered, as in any
  FSDP step; the Gramian itself is one K x K all-reduce.)
  """
  hlo, k = results["hlo"], results["num_tasks"]
  sharded = [tuple(s) for s in hlo["sharded_param_shapes"]]
  assert len(sharded) >= 2, "the FSDP rule sharded too little"
  largest = max(math.prod(s) for s in sharded)

  def offending(shapes):
    bad = []
    for shape in shapes:
      dims = sorted(shape)
      if math.prod(shape) >= largest or any(
          dims in (sorted(p), sorted((k,) + p)) for p in sharded):
        bad.append(shape)   # a parameter (any layout, with or without K) or larger
    return bad

  for name in ("ls", "gramian_ema"):
    assert hlo[name]["all_gathers"], "expected the FSDP activation gathers in the HLO"
    assert offending(hlo[name]["all_gathers"]) == [], (name, hlo[name])
  # Nor does the autogram step (it gathers activations only).
  assert offending(hlo["autogram"]["all_gathers"]) == [], hlo["autogram"]
  # The detector does flag a step that gathers the K x P task grads.
  assert offending(hlo["negative_control"]["all_gathers"]), hlo["negative_control"]
  # The Gramian adds no all-gather to linear scalarization's; it all-reduces K x K.
  assert sorted(map(tuple, hlo["gramian_ema"]["all_gathers"])) == \
      sorted(map(tuple, hlo["ls"]["all_gathers"]))
  assert hlo["gramian_ema"]["kk_all_reduce"] and not hlo["ls"]["kk_all_reduce"]


def test_checkpoint_4x2_restores_on_1_and_2x4_and_continues(results):
  ck = results["checkpoint"]
  assert set(ck) == {"1x1x1", "2x4x1"}
  assert ck["1x1x1"]["devices"] == 1 and ck["2x4x1"]["devices"] == 8
  for r in ck.values():
    assert r["on_target_shardings"]
    assert r["restore_rel"] == 0.0
    assert r["continue_rel"] <= 1e-5


def test_trainer_on_mesh_matches_one_device_and_resumes_on_another_mesh(results):
  """experiments.train.train_and_evaluate (FAMO + UPGrad, FSDP) on 4x2 = on 1 device;
  its step-2 checkpoint resumed on 2x4 ends with the 4x2 run's params."""
  tr = results["trainer"]
  assert tr["fsdp_sharded_leaves"] >= 3, tr
  assert tr["params_rel_4x2_vs_1"] <= 1e-5, tr
  for key, value in tr["eval_1"].items():
    assert math.isclose(tr["eval_4x2"][key], value, rel_tol=1e-5), (key, tr)
  assert tr["resume_2x4_rel"] <= 1e-5, tr
  assert tr["resume_logged_steps"] == [2, 4], tr


def test_trainer_wrong_mesh_fails_before_training(results):
  err = results["trainer"]["bad_mesh_error"]
  assert err and "data=2 x model=2 x task=1 = 4 devices" in err and "8 device(s)" in err
  assert results["trainer"]["bad_mesh_wrote_nothing"]


def test_mixture_run_on_mesh_matches_one_device(results):
  """Tasks from separate datasets (unmixed slices: absent tasks every step) on 4x2 =
  on one device; the data axis splits the batch into disjoint contiguous blocks."""
  mx = results["mixture"]
  assert mx["params_rel_4x2_vs_1"] <= 1e-5, mx
  assert [tuple(b) for b in mx["data_row_blocks"]] == [(0, 4), (4, 8), (8, 12), (12, 16)], mx


def test_transformers_train_on_a_mesh_with_every_engine(results):
  """vit-tiny (MoE + balance loss + dropout) and gpt-tiny (dropout) from
  configs/vit.py and configs/gpt.py through experiments.train's build_trainer: 3 steps
  on 4x2 (FSDP over the kernels, batch over data) give the one-device params."""
  tr = results["transformers"]
  engines = ("one_backward", "gramian", "jacobian", "representation")
  assert set(tr) == ({f"{m}/{e}" for m in ("vit", "gpt") for e in engines}
                     | {"gpt/gramian/zero3", "vit/jacobian/zero3"})
  for key, r in tr.items():
    assert r["engine"] == key.split("/")[1], (key, r)
    assert r["finite"] and r["max_rel"] <= 1e-5, (key, r)
    assert r["fsdp_leaves"] >= 4, (key, r)  # attention and MLP kernels split over model
    if key.startswith("vit/"):  # the MoE balance loss is in the step (weight 0.01)
      assert r["aux_loss"] is not None and r["aux_loss"] >= 0.01 * (1 - 1e-3), (key, r)
    else:
      assert r["aux_loss"] is None, (key, r)
