"""mtlx.sharding helpers in the main (one-device) process.

The multi-device behaviour (8 emulated devices) is in tests/test_multidevice.py; here
the rules are checked on an ``AbstractMesh`` (shapes only, no devices needed).
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from jax.sharding import AbstractMesh
from jax.sharding import PartitionSpec as P

import mtlx
from mtlx import sharding

MESH_24 = AbstractMesh((2, 4, 1), sharding.AXES)


def specs(tree):
  return jax.tree.map(lambda s: s.spec, tree,
                      is_leaf=lambda s: isinstance(s, jax.sharding.NamedSharding))


def test_make_mesh_axes_and_errors():
  mesh = sharding.make_mesh(devices=jax.devices()[:1])
  assert mesh.axis_names == ("data", "model", "task")
  assert dict(mesh.shape) == {"data": 1, "model": 1, "task": 1}
  with pytest.raises(ValueError, match=r"data=4 x model=2 x task=1 = 8 devices, but 1"):
    sharding.make_mesh(data=4, model=2, devices=jax.devices()[:1])
  with pytest.raises(ValueError, match="mesh.model=0"):
    sharding.make_mesh(model=0)


def test_mesh_config_from_ml_collections():
  config = ml_collections.ConfigDict({"mesh": sharding.default_mesh_config()})
  assert sharding.MeshConfig.from_config(config) == sharding.MeshConfig(1, 1, 1)
  config.mesh.data = 4
  config.mesh.model = 2
  assert sharding.MeshConfig.from_config(config) == sharding.MeshConfig(4, 2, 1)
  assert sharding.MeshConfig.from_config(ml_collections.ConfigDict()) == (1, 1, 1)
  with pytest.raises(ValueError, match="8 devices"):
    sharding.mesh_from_config(config, devices=jax.devices()[:1])


PARAMS = {
    "dense": {"kernel": jnp.zeros((64, 96)), "bias": jnp.zeros((96,))},
    "odd": jnp.zeros((33, 35)),          # no axis divisible by 4
    "conv": jnp.zeros((3, 3, 16, 32)),   # the output channels (last axis)
    "tie": jnp.zeros((128, 128)),        # the output axis
    # A dense kernel after a flatten: its input axis is the larger and divisible,
    # but only the output axis may be split (XLA bug, see sharding._fsdp_spec).
    "flat": jnp.zeros((192, 64)),
    "out_odd": jnp.zeros((256, 10)),     # output axis not divisible by 4: replicated
}


def test_fsdp_rule():
  sh = specs(sharding.param_shardings(PARAMS, MESH_24, "fsdp", min_size=1024))
  assert sh == {"dense": {"kernel": P(None, "model"), "bias": P()}, "odd": P(),
                "conv": P(None, None, None, "model"), "tie": P(None, "model"),
                "flat": P(None, "model"), "out_odd": P()}
  # With min_size 1 the bias (96 over 4) is split too; scalars never are.
  small = specs(sharding.param_shardings({"b": jnp.zeros((96,)), "s": jnp.zeros(())},
                                         MESH_24, "fsdp", min_size=1))
  assert small == {"b": P("model"), "s": P()}
  rep = specs(sharding.param_shardings(PARAMS, MESH_24))
  assert all(s == P() for s in jax.tree.leaves(rep, is_leaf=lambda s: isinstance(s, P)))
  # 'zero3' stores the params as 'fsdp' does (the step gathers them).
  assert specs(sharding.param_shardings(PARAMS, MESH_24, "zero3", min_size=1024)) == sh
  with pytest.raises(ValueError, match=r"rule='tp'.*\['fsdp', 'replicated', 'zero3'\]"):
    sharding.param_shardings(PARAMS, MESH_24, "tp")


def test_task_grads_and_batch_shardings():
  psh = sharding.param_shardings(PARAMS, MESH_24, "fsdp")
  tg = specs(sharding.task_grads_shardings(psh, MESH_24))
  assert tg["dense"]["kernel"] == P(None, None, "model") and tg["odd"] == P(None)
  tg = specs(sharding.task_grads_shardings(psh, MESH_24, shard_tasks=True))
  assert tg["conv"] == P("task", None, None, None, "model")
  assert sharding.batch_sharding(MESH_24).spec == P("data")
  b = specs(sharding.batch_shardings({"x": np.zeros((8, 3)), "t": np.float32(1)}, MESH_24))
  assert b == {"x": P("data"), "t": P()}
  with pytest.raises(ValueError, match=r"batch\['x'\] has leading axis 7"):
    sharding.batch_shardings({"x": np.zeros((7, 3))}, MESH_24)


def test_optimizer_and_mto_state_follow_params():
  psh = sharding.param_shardings(PARAMS, MESH_24, "fsdp")
  tx = optax.chain(mtlx.gramian_weighting(lambda g: jnp.diag(g)), optax.adam(1e-3))
  abstract = jax.eval_shape(tx.init, PARAMS)
  ssh = specs(sharding.state_shardings(abstract, PARAMS, psh, MESH_24))
  adam = ssh[1][0]
  assert adam.mu == specs(psh) and adam.nu == specs(psh) and adam.count == P()
  # A per-task slot [K, *param.shape] under a param path keeps the param's split.
  per_task = {"y": jax.tree.map(lambda p: jnp.zeros((5,) + p.shape), PARAMS),
              "w": jnp.zeros((5,))}
  ssh = specs(sharding.state_shardings(per_task, PARAMS, psh, MESH_24))
  assert ssh["y"]["dense"]["kernel"] == P(None, None, "model") and ssh["w"] == P()


def test_distributed_detection_and_hosts():
  detect = sharding._multi_process_env  # noqa: SLF001
  assert not detect({})
  assert not detect({"SLURM_JOB_ID": "1", "SLURM_NTASKS": "1"})
  assert detect({"SLURM_JOB_ID": "1", "SLURM_NTASKS": "4"})
  assert detect({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"})
  assert detect({"OMPI_COMM_WORLD_SIZE": "2"})
  assert not detect({"TPU_WORKER_HOSTNAMES": "localhost"})
  assert detect({"TPU_WORKER_HOSTNAMES": "h0,h1"})
  assert sharding.initialize_distributed(env={}) is False
  assert sharding.is_primary_host()
  assert sharding.host_batch_slice(32) == slice(0, 32)


def test_checkpoint_roundtrip_with_prng_key_and_empty_state(tmp_path):
  """Typed PRNG keys and empty NamedTuples survive save/restore (1 device)."""
  mesh = sharding.make_mesh(devices=jax.devices()[:1])
  params = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones((3,), jnp.float32)}
  state = (optax.adam(1e-3).init(params), {"key": jax.random.key(7), "ema": jnp.ones(4)},
           optax.EmptyState())
  tree = {"params": params, "state": state}
  psh = sharding.param_shardings(params, mesh)
  shardings = {"params": psh,
               "state": sharding.state_shardings(state, params, psh, mesh)}
  sharding.save_checkpoint(tmp_path / "ckpt", tree)
  restored = sharding.restore_checkpoint(tmp_path / "ckpt", tree, shardings)
  assert jax.tree.structure(restored) == jax.tree.structure(tree)
  key = restored["state"][1]["key"]
  assert jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
  np.testing.assert_array_equal(jax.random.key_data(key), jax.random.key_data(jax.random.key(7)))
  for a, b in zip(jax.tree.leaves(jax.tree.map(np.asarray, params)),
                  jax.tree.leaves(restored["params"])):
    np.testing.assert_array_equal(a, b)
  assert restored["params"]["b"].dtype == jnp.float32


def test_step_shardings_shared_by_step_and_trainer():
  sh = sharding.step_shardings(PARAMS, MESH_24, param_rule="fsdp", shard_tasks=True,
                               min_size=1024)
  assert specs(sh.params) == specs(sharding.param_shardings(PARAMS, MESH_24, "fsdp",
                                                            min_size=1024))
  assert specs(sh.task_grads)["conv"] == P("task", None, None, None, "model")
  state = jax.eval_shape(optax.adam(1e-3).init, PARAMS)
  assert specs(sh.state(state, PARAMS)[0].mu)["dense"]["kernel"] == P(None, "model")
  assert specs(sh.batch({"x": np.zeros((8, 3))}))["x"] == P("data")
  sh.check_num_tasks(4)  # task axis of size 1 divides anything
  sh3 = sharding.step_shardings(PARAMS, AbstractMesh((1, 1, 2), sharding.AXES),
                                shard_tasks=True)
  with pytest.raises(ValueError, match="3 tasks cannot be split over mesh task=2"):
    sh3.check_num_tasks(3)
  with pytest.raises(ValueError, match="rule"):
    sharding.step_shardings(PARAMS, MESH_24, param_rule="tp")
  z3 = sharding.step_shardings(PARAMS, MESH_24, param_rule="zero3", min_size=1024)
  assert z3.batch_axes == ("data", "model") and sh.batch_axes == ("data",)
  assert specs(z3.params) == specs(sh.params)
  assert specs(z3.batch({"x": np.zeros((8, 3))}))["x"] == P(("data", "model"))
  with pytest.raises(ValueError, match=r"leading axis 6; expected a multiple of mesh "
                                       r"data=2 x model=4 = 8"):
    z3.batch({"x": np.zeros((6, 3))})


def test_global_eval_batch_one_device():
  mesh = sharding.make_mesh(devices=jax.devices()[:1])
  batch = {"x": np.arange(10.0).reshape(5, 2), "y": np.arange(5)}
  out = sharding.global_eval_batch(batch, mesh)
  np.testing.assert_array_equal(np.asarray(out["x"]), batch["x"])
  assert out["y"].sharding.spec == P("data")


def test_trainer_rejects_a_mesh_larger_than_the_devices_before_training(tmp_path):
  from configs import multi_digits
  from experiments import train as train_exp
  config = multi_digits.get_config()
  config.workdir = str(tmp_path / "run")
  config.mesh.data = 4
  config.mesh.model = 2
  with pytest.raises(ValueError, match=r"data=4 x model=2 x task=1 = 8 devices, but 1"):
    train_exp.train_and_evaluate(config)
  assert not (tmp_path / "run").exists()


def test_initialize_distributed_passes_process_count_and_id(monkeypatch):
  calls = []
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
  env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "2",
         "JAX_PROCESS_ID": "1"}
  assert sharding.initialize_distributed(env=env) is True
  assert calls == [{"coordinator_address": "10.0.0.1:1234", "num_processes": 2,
                    "process_id": 1}]
  assert sharding.initialize_distributed(env={"SLURM_JOB_ID": "7", "SLURM_NTASKS": "2"})
  assert calls[-1] == {}  # Slurm: jax's own cluster detection


def test_check_relative_differences_and_report():
  from mtlx.sharding import check
  ref = {"a": np.array([1.0, -4.0]), "b": np.array([[2.0]]), "e": np.zeros((0,)),
         "n": np.array([np.inf, 1.0])}
  got = {"a": np.array([1.0, -3.0]), "b": np.array([[2.0]]), "e": np.zeros((0,)),
         "n": np.array([np.inf, 1.5])}
  d = check.relative_differences(got, ref)
  assert d == {"['a']": 0.25, "['b']": 0.0, "['e']": 0.0, "['n']": 0.5}
  d = check.relative_differences({"x": np.array([np.nan])}, {"x": np.array([1.0])})
  assert d["['x']"] == np.inf
  with pytest.raises(ValueError, match=r"shape \(2,\) vs \(3,\)"):
    check.relative_differences({"x": np.zeros(2)}, {"x": np.zeros(3)})
  res = check.CheckResult({"['a']": 0.25, "['b']": 0.0}, {"['a']": "P(None, 'model')"},
                          {"data": 2, "model": 4, "task": 1}, 1e-4)
  assert not res.ok and res.worst == 0.25
  text = res.report()
  assert "data=2 x model=4 x task=1" in text and "above tolerance" in text
  assert text.splitlines()[2].startswith("['a']") and "FAILED" in text
  with pytest.raises(ValueError, match="config.mesh.verify.*0.25 > tolerance 0.0001"):
    res.raise_if_failed()
  ok = res._replace(differences={"['a']": 1e-7})
  assert ok.ok and ok.raise_if_failed() is ok and "OK: worst 1e-07" in ok.report()
