"""Meshes, sharding rules and hosts for the MTO step: data, model (FSDP) and task axes.

Everything here is JAX's own SPMD partitioner: a :class:`jax.sharding.Mesh` with the
axes ``('data', 'model', 'task')``, :class:`~jax.sharding.NamedSharding` s on the
params, the batch, the per-task grads and every piece of state, and ``jax.jit`` with
``in_shardings`` / ``out_shardings``. There is no communication code: XLA inserts the
collectives. What each axis does:

* ``data``: the batch's leading axis is split over it; per-task grads are summed
  over it by an all-reduce that XLA inserts in the backward pass.
* ``model``: FSDP. Each large parameter has its last (output-feature) axis split
  over it when the axis size divides it (never an input axis: an XLA partitioner
  bug, see :func:`_fsdp_spec`); the per-task grads (``[K, *param.shape]``) are split the same
  way. ``mtlx.gramian`` is a per-leaf ``dot_general`` that contracts the parameter
  axes, so every device contracts its own shard and XLA all-reduces the ``K × K``
  partial sums; the weights ``w = f(G)`` are computed replicated and the combination
  ``wᵀ J`` stays sharded. No parameter-sized array is ever gathered for a Gramian
  method (checked on the compiled HLO in ``tests/multidevice``).
* ``param_rule='zero3'`` (ZeRO-3, PyTorch's FSDP): the params and the optimizer
  state are stored as with ``'fsdp'``, but the step gathers the params whole
  before computing with them (:meth:`StepShardings.compute_params`) and splits the
  batch over ``data × model`` (:func:`batch_axes`), so every device computes its
  own examples and the grads are reduce-scattered back to the shards. The traffic
  per step is then about the params' size (gather) plus the grads' (reduction)
  whatever the batch, where ``'fsdp'`` lets XLA gather activations over ``model``
  (bytes that grow with the batch, and with K for the stacked engines; measured in
  ``benchmarks/RESULTS.md``, session 5). Each device holds the whole params
  during the step.
* ``task``: optionally the K axis of the per-task grads, so each device group
  computes the gradients of a subset of the tasks. The Gramian's cross terms then
  need the other groups' gradient shards (XLA gathers them over the ``task`` axis),
  so this axis trades backward-pass compute for communication; it pays off when the
  K backward passes dominate.

The step itself is :func:`mtlx.train.make_step` (every engine) with ``mesh=``::

  mesh = mtlx.sharding.make_mesh(data=4, model=2)
  st = mtlx.train.make_step(loss_fn, grad_tx=mtlx.upgrad(), optimizer=optax.adam(1e-3),
                            engine="gramian", params=params, mesh=mesh, param_rule="fsdp")
  state = st.init(params, example_batch)
  for batch in batches:
    state, info = st.step(state, st.shard_batch(batch))

It takes its shardings from :func:`step_shardings`; so does the experiment trainer
(:func:`mtlx.train.make_trainer` with ``mesh=``, driven by ``config.mesh`` in
``experiments/train.py``).

Before a long run on a new model or mesh, compare a few steps with one device:
``python -m mtlx.sharding.check --config ...`` (:mod:`mtlx.sharding.check`), or
``config.mesh.verify=True`` in ``experiments/train.py``.

Multi-host: call :func:`initialize_distributed` first thing in the entry point;
every host runs the same program on its own slice of the global batch
(:func:`host_batch_slice`, :func:`global_batch`), and only :func:`is_primary_host`
writes logs.
"""

from __future__ import annotations

import os
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mtlx import validation

PyTree = Any

AXES = ("data", "model", "task")
PARAM_RULES = ("replicated", "fsdp", "zero3")

__all__ = [
    "AXES",
    "MeshConfig",
    "StepShardings",
    "abstract_with_shardings",
    "axes_size",
    "batch_axes",
    "batch_sharding",
    "batch_shardings",
    "default_mesh_config",
    "global_batch",
    "global_eval_batch",
    "host_batch_slice",
    "initialize_distributed",
    "is_primary_host",
    "make_mesh",
    "mesh_from_config",
    "param_shardings",
    "replicated",
    "restore_checkpoint",
    "save_checkpoint",
    "shard_state",
    "state_shardings",
    "step_shardings",
    "task_grads_shardings",
]


# ----------------------------------------------------------------------------- mesh


class MeshConfig(NamedTuple):
  """Sizes of the three mesh axes; their product is the device count."""
  data: int = 1
  model: int = 1
  task: int = 1

  @classmethod
  def from_config(cls, config: Any) -> "MeshConfig":
    """Reads ``config.mesh.{data,model,task}`` (missing keys default to 1).

    ``config`` is an ``ml_collections.ConfigDict`` (or anything with a ``mesh``
    attribute or key); with no ``mesh`` entry every size is 1.
    """
    mesh = getattr(config, "mesh", None)
    if mesh is None and isinstance(config, dict):
      mesh = config.get("mesh")
    if mesh is None:
      return cls()
    get = (lambda k: mesh.get(k, 1)) if hasattr(mesh, "get") else (
        lambda k: getattr(mesh, k, 1))
    return cls(*(int(get(k)) for k in AXES))


def default_mesh_config():
  """The ``config.mesh`` block for experiment configs: all sizes 1 (one device).

  Keys: ``data``, ``model``, ``task`` (axis sizes), ``param_rule``
  (``'fsdp'``: large leaves split over ``model``, a no-op when ``model=1``;
  ``'zero3'``: stored so, gathered for the step, the batch over ``data × model``;
  or ``'replicated'``), ``shard_tasks`` (split the K axis of the per-task grads over
  ``task``; K must then be divisible by it) and ``min_size`` (the FSDP threshold in
  elements) and ``verify`` (``experiments/train.py`` first compares a few steps on
  the mesh with one device, :mod:`mtlx.sharding.check`, and stops if they differ).
  Override from the command line: ``--config.mesh.data=4 --config.mesh.model=2``.
  """
  import ml_collections
  return ml_collections.ConfigDict({"data": 1, "model": 1, "task": 1,
                                    "param_rule": "fsdp", "shard_tasks": True,
                                    "min_size": 2 ** 10, "verify": False})


def make_mesh(data: int = 1, model: int = 1, task: int = 1,
              devices: Sequence[Any] | None = None) -> Mesh:
  """A ``Mesh`` of shape ``(data, model, task)`` with axis names ``('data', 'model', 'task')``.

  Args:
    data, model, task: the axis sizes (ints >= 1).
    devices: the devices to lay out (default: ``jax.devices()``, all hosts).

  Raises:
    ValueError: if a size is not a positive int, or ``data * model * task`` is not
      the number of devices (the message names the sizes and the device count).
  """
  sizes = {"data": data, "model": model, "task": task}
  for name, size in sizes.items():
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 1:
      raise ValueError(f"mesh.{name}={size!r}; expected an int >= 1.")
  devices = list(jax.devices() if devices is None else devices)
  n = data * model * task
  if n != len(devices):
    raise ValueError(
        f"mesh data={data} x model={model} x task={task} = {n} devices, but "
        f"{len(devices)} device(s) are available; expected the product of the mesh "
        f"sizes to equal the device count (set --config.mesh.data/model/task).")
  shape = (data, model, task)
  try:  # topology-aware layout on TPU/GPU; plain order elsewhere.
    from jax.experimental import mesh_utils
    grid = mesh_utils.create_device_mesh(shape, devices=devices)
  except Exception:  # noqa: BLE001 - any layout failure falls back to plain order
    grid = np.asarray(devices, dtype=object).reshape(shape)
  return Mesh(grid, AXES)


def mesh_from_config(config: Any, devices: Sequence[Any] | None = None) -> Mesh:
  """``make_mesh(**MeshConfig.from_config(config)._asdict(), devices=devices)``."""
  return make_mesh(*MeshConfig.from_config(config), devices=devices)


# ----------------------------------------------------------------------------- rules


def replicated(mesh: Mesh) -> NamedSharding:
  """The fully replicated sharding on ``mesh``."""
  return NamedSharding(mesh, P())


def _fsdp_spec(shape: tuple[int, ...], n: int, min_size: int) -> P:
  """FSDP spec of one leaf: its LAST axis over ``'model'``, else replicated.

  The last axis is the output-feature axis of flax's kernels (dense ``[in, out]``,
  conv ``[h, w, in, out]``) and the feature axis of embeddings and biases. Only
  that axis is split, never an input axis: with jax/jaxlib 0.10.2 (CPU, Shardy and
  GSPMD) XLA's SPMD partitioner gets the backward pass of ``conv -> relu -> conv ->
  relu -> reshape -> dense`` wrong when the dense kernel is split along its input
  (contracting) axis: the conv kernels' gradients come out multiplied by the size
  of a replicated mesh axis (an all-reduce over devices that hold the same
  values), and under ``vmap`` of the VJP even the losses differ. Splitting the
  output axis keeps the contraction unsharded, so that layout never arises
  (``tests/multidevice/xla_repro.py`` holds the pure-JAX reproduction).
  A leaf whose last axis is not divisible by ``n`` stays replicated.
  """
  if n == 1 or int(np.prod(shape, dtype=np.int64)) < min_size or not shape:
    return P()
  axis = len(shape) - 1
  if shape[axis] % n:
    return P()
  spec = [None] * len(shape)
  spec[axis] = "model"
  return P(*spec)


def param_shardings(params: PyTree, mesh: Mesh, rule: str = "replicated", *,
                    min_size: int = 2 ** 10) -> PyTree:
  """``NamedSharding`` per parameter leaf.

  Args:
    params: the params (arrays or ``jax.ShapeDtypeStruct`` s).
    mesh: a mesh from :func:`make_mesh`.
    rule: ``'replicated'`` (every device holds every parameter) or ``'fsdp'``: each
      leaf of at least ``min_size`` elements has its last (output-feature) axis
      split over ``'model'`` when the ``model`` axis size divides it (smaller
      leaves and leaves whose last axis does not divide stay replicated). Input
      axes are never split: see :func:`_fsdp_spec` for the XLA bug that avoids.
      ``'zero3'`` stores the params as ``'fsdp'`` does (the step gathers them).
    min_size: the FSDP size threshold in elements.

  Raises:
    ValueError: for an unknown rule (listing the valid ones).
  """
  validation.check_choice(rule, PARAM_RULES, "rule")
  n = mesh.shape["model"]

  def leaf(p):
    if rule == "replicated":
      return replicated(mesh)
    return NamedSharding(mesh, _fsdp_spec(tuple(np.shape(p)), n, min_size))

  return jax.tree_util.tree_map(leaf, params)


def batch_axes(param_rule: str = "fsdp") -> tuple[str, ...]:
  """The mesh axes the batch's leading axis is split over: ``('data',)``, or
  ``('data', 'model')`` for ``param_rule='zero3'`` (every device its own examples)."""
  validation.check_choice(param_rule, PARAM_RULES, "param_rule")
  return ("data", "model") if param_rule == "zero3" else ("data",)


def axes_size(mesh: Mesh, axes: Sequence[str]) -> int:
  """How many parts ``axes`` of ``mesh`` split an array into (the product of their sizes)."""
  return int(np.prod([mesh.shape[a] for a in axes]))


def batch_sharding(mesh: Mesh, axes: Sequence[str] = ("data",)) -> NamedSharding:
  """The batch sharding: leading (example) axis over ``axes`` (default ``'data'``;
  :func:`batch_axes`), the rest replicated."""
  return NamedSharding(mesh, P(tuple(axes)))


def batch_shardings(batch: PyTree, mesh: Mesh, axes: Sequence[str] = ("data",)) -> PyTree:
  """:func:`batch_sharding` for every array leaf of ``batch`` (scalars replicated).

  Raises:
    ValueError: if a leaf's leading axis is not divisible by the size of ``axes``.
  """
  n = axes_size(mesh, axes)
  names = " x ".join(f"{a}={mesh.shape[a]}" for a in axes)

  def leaf(path, x):
    if np.ndim(x) == 0:
      return replicated(mesh)
    if np.shape(x)[0] % n:
      raise ValueError(
          f"batch{jax.tree_util.keystr(path)} has leading axis {np.shape(x)[0]}; "
          f"expected a multiple of mesh {names} = {n}.")
    return batch_sharding(mesh, axes)

  return jax.tree_util.tree_map_with_path(leaf, batch)


def task_grads_shardings(param_shardings: PyTree, mesh: Mesh, *,
                         shard_tasks: bool = False) -> PyTree:
  """Shardings of per-task grads (``[K, *param.shape]`` per leaf): like the params.

  Each leaf's spec is its parameter's spec with one leading entry for the K axis:
  ``'task'`` when ``shard_tasks`` (K must then be divisible by the ``task`` axis
  size), else ``None`` (K replicated).
  """
  lead = "task" if shard_tasks else None

  def leaf(s):
    return NamedSharding(mesh, P(lead, *s.spec))

  return jax.tree_util.tree_map(leaf, param_shardings,
                                is_leaf=lambda x: isinstance(x, NamedSharding))


def _path_key(path) -> tuple:
  out = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        out.append(getattr(k, attr))
        break
    else:
      out.append(str(k))
  return tuple(out)


def state_shardings(state: PyTree, params: PyTree, param_shardings: PyTree,
                    mesh: Mesh) -> PyTree:
  """Shardings for optimizer / MTO state that follow the params' sharding.

  A state leaf whose key path ends with a parameter's key path and whose shape is
  that parameter's shape (optax's ``mu``/``nu``/``trace``..., any params-shaped
  slot) gets that parameter's sharding; a leaf shaped ``[K, *param.shape]`` under
  such a path (per-task slots) gets it with a replicated leading axis; everything
  else (counts, K-sized loss-space weights, PRNG keys, solver warm starts) is
  replicated. Works on arrays and on ``jax.eval_shape`` outputs, so the shardings
  are known before the state exists::

    abstract = jax.eval_shape(tx.init, params)
    shardings = state_shardings(abstract, params, param_shardings(params, mesh, 'fsdp'), mesh)
  """
  flat_p = jax.tree_util.tree_leaves_with_path(params)
  flat_s = jax.tree_util.tree_leaves(param_shardings,
                                     is_leaf=lambda x: isinstance(x, NamedSharding))
  table = [(_path_key(path), tuple(np.shape(p)), s)
           for (path, p), s in zip(flat_p, flat_s)]
  table.sort(key=lambda row: -len(row[0]))  # longest (most specific) path first

  def leaf(path, x):
    key = _path_key(path)
    shape = tuple(np.shape(x))
    for pkey, pshape, s in table:
      if len(key) >= len(pkey) and key[len(key) - len(pkey):] == pkey:
        if shape == pshape:
          return s
        if shape[1:] == pshape and len(shape) == len(pshape) + 1:
          return NamedSharding(mesh, P(None, *s.spec))
    return replicated(mesh)

  return jax.tree_util.tree_map_with_path(leaf, state)


class StepShardings(NamedTuple):
  """The shardings of one MTO train step on a mesh (:func:`step_shardings`).

  Attributes:
    mesh: the mesh.
    params: ``NamedSharding`` per parameter leaf (:func:`param_shardings`).
    task_grads: per-task grads, ``[K, *param.shape]`` per leaf, sharded like the
      params plus the K axis (:func:`task_grads_shardings`).
    shard_tasks: whether the K axis is split over ``'task'``.
    param_rule: the rule of ``params`` (:data:`PARAM_RULES`); ``'zero3'`` splits the
      batch over ``data × model`` and gathers the params for the computation.
  """
  mesh: Mesh
  params: PyTree
  task_grads: PyTree
  shard_tasks: bool = False
  param_rule: str = "replicated"

  @property
  def batch_axes(self) -> tuple[str, ...]:
    """:func:`batch_axes` of the rule."""
    return batch_axes(self.param_rule)

  def compute_params(self, params: PyTree) -> PyTree:
    """The params the step computes with: gathered whole (replicated) under
    ``'zero3'``, else as stored. Gradients w.r.t. them come back summed over the
    devices, and the step constrains them to :attr:`params` (a reduce-scatter)."""
    if self.param_rule != "zero3":
      return params
    return jax.lax.with_sharding_constraint(
        params, jax.tree_util.tree_map(lambda _: replicated(self.mesh), params))

  def state(self, state: PyTree, params: PyTree) -> PyTree:
    """:func:`state_shardings` of any state (optimizer, MTO, a whole train state;
    arrays, tracers or ``jax.eval_shape`` outputs) whose params are ``params``."""
    return state_shardings(state, params, self.params, self.mesh)

  def batch(self, batch: PyTree) -> PyTree:
    """:func:`batch_shardings` of ``batch`` over :attr:`batch_axes`."""
    return batch_shardings(batch, self.mesh, self.batch_axes)

  def replicated(self) -> NamedSharding:
    """The fully replicated sharding (losses, weights, metrics)."""
    return replicated(self.mesh)

  def check_num_tasks(self, num_tasks: int) -> None:
    """Raises ValueError if the K axis cannot be split over ``'task'``."""
    n = self.mesh.shape["task"]
    if self.shard_tasks and num_tasks % n:
      raise ValueError(f"{num_tasks} tasks cannot be split over mesh task={n}; expected "
                       f"a task axis size that divides the number of tasks (or "
                       f"shard_tasks=False).")


def step_shardings(params: PyTree, mesh: Mesh, *, param_rule: str = "replicated",
                   shard_tasks: bool = False, min_size: int = 2 ** 10) -> StepShardings:
  """The params' and per-task grads' shardings of a train step on ``mesh``.

  The one place the train step (:func:`mtlx.train.make_step` with ``mesh=``, also
  behind :func:`mtlx.train.make_trainer`) gets its shardings from; a
  step constrains its params / state (:meth:`StepShardings.state`), batch
  (:meth:`StepShardings.batch`) and per-task grads (``.task_grads``) to them with
  ``jax.lax.with_sharding_constraint``.

  Args:
    params: example params (arrays or ``jax.ShapeDtypeStruct`` s).
    mesh: from :func:`make_mesh`.
    param_rule: ``'replicated'``, ``'fsdp'`` or ``'zero3'`` (:func:`param_shardings`,
      :meth:`StepShardings.compute_params`).
    shard_tasks: split the K axis of the per-task grads over ``'task'``.
    min_size: FSDP threshold in elements.

  Raises:
    ValueError: for an unknown ``param_rule`` (listing the valid ones).
  """
  p_sh = param_shardings(params, mesh, param_rule, min_size=min_size)
  return StepShardings(mesh, p_sh, task_grads_shardings(p_sh, mesh, shard_tasks=shard_tasks),
                       bool(shard_tasks), param_rule)


def shard_state(tree: PyTree, shardings: PyTree) -> PyTree:
  """Places ``tree`` (params, optimizer or loss-space state) on ``shardings``."""
  return jax.device_put(tree, shardings)


def abstract_with_shardings(tree: PyTree, shardings: PyTree) -> PyTree:
  """``jax.ShapeDtypeStruct`` s of ``tree`` carrying ``shardings``: a restore target."""
  return jax.tree_util.tree_map(
      lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s), tree, shardings)


# ----------------------------------------------------------------------------- checkpoints


# save_checkpoint / restore_checkpoint live in mtlx/train/checkpoint.py (one place for
# checkpointing); re-exported at the end of this module.


# ----------------------------------------------------------------------------- hosts

_DISTRIBUTED_ENV = (
    "JAX_COORDINATOR_ADDRESS",   # explicit: + JAX_NUM_PROCESSES, JAX_PROCESS_ID
    "SLURM_JOB_ID",              # Slurm (srun), when SLURM_NTASKS > 1
    "OMPI_COMM_WORLD_SIZE",      # Open MPI (mpirun), when > 1
    "PMI_SIZE",                  # MPICH, when > 1
    "TPU_WORKER_HOSTNAMES",      # Cloud TPU pod slices, when it lists > 1 host
)


def _multi_process_env(env) -> bool:
  if env.get("JAX_COORDINATOR_ADDRESS"):
    return True
  if env.get("SLURM_JOB_ID") and int(env.get("SLURM_NTASKS", "1")) > 1:
    return True
  for var in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE"):
    if int(env.get(var, "1") or 1) > 1:
      return True
  hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]
  return len(hosts) > 1


def initialize_distributed(env: dict | None = None, **kwargs) -> bool:
  """Calls ``jax.distributed.initialize()`` when this is a multi-process launch.

  Recognised launches (environment variables), else it does nothing:

  * ``JAX_COORDINATOR_ADDRESS`` with ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``
    (passed as ``num_processes`` / ``process_id``: jax reads only the address);
  * Slurm: ``SLURM_JOB_ID`` with ``SLURM_NTASKS > 1``;
  * Open MPI: ``OMPI_COMM_WORLD_SIZE > 1``; MPICH: ``PMI_SIZE > 1``;
  * Cloud TPU pod slices: ``TPU_WORKER_HOSTNAMES`` listing more than one host.

  Call it first thing in an entry point, before any other JAX call. Idempotent.

  Args:
    env: the environment to read (default ``os.environ``; tests pass a dict).
    **kwargs: forwarded to ``jax.distributed.initialize`` (e.g.
      ``coordinator_address=``, ``num_processes=``, ``process_id=``).

  Returns:
    Whether ``jax.distributed.initialize`` was called (now or before).
  """
  env = os.environ if env is None else env
  if jax.distributed.is_initialized():
    return True
  if not (_multi_process_env(env) or kwargs):
    return False
  # jax reads JAX_COORDINATOR_ADDRESS itself but not the process count and id.
  if env.get("JAX_COORDINATOR_ADDRESS"):
    kwargs.setdefault("coordinator_address", env["JAX_COORDINATOR_ADDRESS"])
    for key, var in (("num_processes", "JAX_NUM_PROCESSES"), ("process_id", "JAX_PROCESS_ID")):
      if key not in kwargs and env.get(var, "") != "":
        kwargs[key] = int(env[var])
  jax.distributed.initialize(**kwargs)
  return True


def is_primary_host() -> bool:
  """True on host 0 only: the one that writes logs, summaries and result files."""
  return jax.process_index() == 0


def host_batch_slice(global_batch_size: int) -> slice:
  """This host's slice ``[start, stop)`` of each global batch (equal parts by host).

  Each host's input pipeline loads only these examples; :func:`global_batch` then
  assembles the global sharded array without moving data between hosts.

  Raises:
    ValueError: if the global batch size is not divisible by the host count.
  """
  n, i = jax.process_count(), jax.process_index()
  if global_batch_size % n:
    raise ValueError(f"global_batch_size={global_batch_size}; expected a multiple of "
                     f"the process count {n}.")
  per = global_batch_size // n
  return slice(i * per, (i + 1) * per)


def global_batch(local_batch: PyTree, mesh: Mesh, axes: Sequence[str] = ("data",)) -> PyTree:
  """Assembles per-host batches into one global batch sharded over ``axes``
  (default ``'data'``; :func:`batch_axes`).

  On one host this is ``jax.device_put(batch, batch_shardings(batch, mesh, axes))``.
  """
  if jax.process_count() == 1:
    return jax.device_put(local_batch, batch_shardings(local_batch, mesh, axes))
  sharding = batch_sharding(mesh, axes)
  return jax.tree_util.tree_map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
      local_batch)


def global_eval_batch(local_batch: PyTree, mesh: Mesh) -> PyTree:
  """Like :func:`global_batch`, for evaluation batches of any size.

  A batch whose global row count (local rows × process count) divides over
  ``'data'`` is sharded over it (:func:`global_batch`); any other (the last, partial
  batch of an epoch) is replicated: on several hosts its rows are first gathered
  from every host (``multihost_utils.process_allgather``; at most one batch, once
  per evaluation). Either way a jitted reduction over the batch axis sums over
  every host's rows, so evaluation statistics come out as totals across hosts.
  """
  rows = {int(np.shape(x)[0]) for x in jax.tree_util.tree_leaves(local_batch)
          if np.ndim(x)}
  if all(r * jax.process_count() % mesh.shape["data"] == 0 for r in rows):
    return global_batch(local_batch, mesh)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    local_batch = multihost_utils.process_allgather(local_batch, tiled=True)
  rep = replicated(mesh)
  return jax.tree_util.tree_map(
      lambda x: jax.make_array_from_callback(np.shape(x), rep,
                                             lambda idx, x=np.asarray(x): x[idx]),
      local_batch)
# Checkpointing lives in one place (mtlx.train.checkpoint); the names stay importable
# from here. Imported last: mtlx.train imports this module.
# pylint: disable=g-import-not-at-top,wrong-import-position
from mtlx.train.checkpoint import restore_checkpoint  # noqa: E402
from mtlx.train.checkpoint import save_checkpoint  # noqa: E402
