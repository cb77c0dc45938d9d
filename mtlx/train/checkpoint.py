"""Checkpoints, in one place: periodic atomic orbax checkpoints of a whole
:class:`~mtlx.train.step.TrainState` (:class:`Checkpointer`), and single sharded
pytrees (:func:`save_checkpoint` / :func:`restore_checkpoint`, re-exported by
``mtlx.sharding``).

Failures are reported in one line that names the path: a save that cannot be
written raises :class:`CheckpointSaveError` (at the latest when the next save
starts or at :meth:`Checkpointer.close`); an unreadable step is skipped by
:meth:`Checkpointer.restore_latest` in favour of the newest readable one; a
checkpoint whose shapes differ from the model raises a ``ValueError`` naming the
leaf and both shapes.
"""

from __future__ import annotations

import os
import time
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from mtlx import validation

PyTree = Any


class CheckpointSaveError(RuntimeError):
  """A checkpoint could not be written (the message names the path and the cause)."""


def _is_key(x) -> bool:
  return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def to_savable(tree: Any) -> Any:
  """Typed PRNG keys (which some methods keep in their state) as raw key data."""
  return jax.tree_util.tree_map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def from_savable(restored: Any, template: Any) -> Any:
  """Inverse of :func:`to_savable`, guided by a template of the live state."""
  return jax.tree_util.tree_map(
      lambda r, t: jax.random.wrap_key_data(r, impl=jax.random.key_impl(t))
      if _is_key(t) else r, restored, template)


def one_line(error: BaseException, limit: int = 300) -> str:
  """``"Type: first line of the message"``, at most ``limit`` characters."""
  text = str(error).strip().splitlines()
  first = next((line.strip() for line in text if line.strip()), "")
  out = f"{type(error).__name__}: {first}" if first else type(error).__name__
  return out if len(out) <= limit else out[:limit - 3] + "..."


def _dotted(path) -> str:
  parts = []
  for k in path:
    name = getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))
    parts.append(str(name))
  return ".".join(parts)


def check_shapes(saved: Any, template: Any, where: str) -> None:
  """Compares the shapes stored in a checkpoint with the live state's.

  ``saved``: a pytree with ``.shape`` leaves (orbax metadata or arrays). Raises a
  one-line ``ValueError`` such as ``"checkpoint kernel shape (48, 16) ≠ model
  (48, 32) at params.decoder.left.kernel (in .../checkpoints/200)"``, or one
  naming the leaves that one side has and the other lacks.
  """
  want = {_dotted(p): tuple(np.shape(x)) for p, x in
          jax.tree_util.tree_leaves_with_path(to_savable(template))}
  have = {}
  for p, x in jax.tree_util.tree_leaves_with_path(saved):
    if hasattr(x, "shape"):
      have[_dotted(p)] = tuple(x.shape)
  for path, shape in want.items():
    if path in have and have[path] != shape:
      leaf = path.rsplit(".", 1)[-1]
      raise ValueError(f"checkpoint {leaf} shape {have[path]} ≠ model {shape} at {path} "
                       f"(in {where}); expected the model sizes the run was started "
                       "with (same config.model_kwargs).")
  missing = sorted(set(want) - set(have))
  extra = sorted(set(have) - set(want))
  if have and (missing or extra):
    raise ValueError(f"checkpoint {where} does not match the model: leaves only in the "
                     f"model {missing[:5]}, only in the checkpoint {extra[:5]}; expected "
                     "the same model, method and optimizer as the run that wrote it.")


class Checkpointer:
  """An ``orbax.checkpoint.CheckpointManager`` over ``{workdir}/checkpoints``.

  Saves are atomic (orbax writes to a temporary directory and renames it once
  complete, so a process killed mid-save leaves the previous checkpoint as the
  latest) and asynchronous; the ``max_to_keep >= 1`` newest checkpoints are kept
  (0 or less is refused: it would keep nothing, not even the final one).

  A save that fails (disk full, directory gone or not writable) raises
  :class:`CheckpointSaveError` naming the path, when the next save starts, at
  :meth:`wait` or at :meth:`close`, whichever comes first; the checkpoints
  written before it stay readable.
  """

  def __init__(self, directory: str, *, max_to_keep: int = 3, async_save: bool = True):
    validation.check_number(max_to_keep, "keep_checkpoints (max_to_keep)", low=1,
                            integer=True, method="Checkpointer")
    self.directory = os.path.abspath(directory)
    self._pending: int | None = None
    try:
      self.manager = ocp.CheckpointManager(
          self.directory, item_handlers=ocp.StandardCheckpointHandler(),
          options=ocp.CheckpointManagerOptions(max_to_keep=int(max_to_keep), create=True,
                                               enable_async_checkpointing=async_save))
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointSaveError(f"cannot use checkpoint directory {self.directory}: "
                                f"{one_line(e)}") from e

  def latest_step(self) -> int | None:
    """The newest complete checkpoint's step, or None."""
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    """Steps of every kept checkpoint."""
    return list(self.manager.all_steps())

  def _raise_save_error(self, e: BaseException, step: int | None):
    where = os.path.join(self.directory, str(step)) if step is not None else self.directory
    raise CheckpointSaveError(f"could not write checkpoint {where}: {one_line(e)}") from e

  def save(self, step: int, state: Any, *, force: bool = False) -> bool:
    """Starts saving ``state`` as ``step`` (asynchronously); returns whether it saves.

    Raises:
      CheckpointSaveError: if this save or the previous (background) one failed.
    """
    try:
      self.manager.check_for_errors()
    except Exception as e:  # pylint: disable=broad-except
      self._raise_save_error(e, self._pending)
    try:
      saved = self.manager.save(int(step), args=ocp.args.StandardSave(to_savable(state)),
                                force=force)
    except Exception as e:  # pylint: disable=broad-except
      self._raise_save_error(e, step if self._pending is None else self._pending)
    if saved:
      self._pending = int(step)
    return saved

  def restore(self, template: Any, step: int | None = None) -> Any:
    """Restores ``step`` (default: the latest) into the structure of ``template``.

    Raises a one-line ``ValueError`` if the stored shapes differ from ``template``'s.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise ValueError(f"no checkpoint in {self.directory}; expected at least one.")
    where = os.path.join(self.directory, str(step))
    try:
      meta = self.manager.item_metadata(int(step))
    except Exception:  # pylint: disable=broad-except
      meta = None  # unreadable metadata: the restore below says why
    if meta is not None:
      check_shapes(meta, template, where)
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, to_savable(template))
    restored = self.manager.restore(int(step), args=ocp.args.StandardRestore(abstract))
    return from_savable(restored, template)

  def restore_latest(self, template: Any) -> tuple[Any, int]:
    """Restores the newest READABLE checkpoint; returns ``(state, step)``.

    Tries the steps newest first. An unreadable one (truncated or corrupt files,
    missing metadata, an empty step folder) is logged in one line -- which step
    and why -- and the next older one is tried; once one is read, the unreadable
    newer ones are moved to ``<directory>.unreadable/<step>`` (kept for
    inspection, out of the way of the new saves). A shape mismatch with
    ``template`` is not corruption: it raises at once (:func:`check_shapes`).

    Raises:
      ValueError: no checkpoint, none readable (one line per step tried), or a
        shape mismatch.
    """
    steps = sorted(self._candidate_steps(), reverse=True)
    if not steps:
      raise ValueError(f"no checkpoint in {self.directory}; expected at least one.")
    failures = []
    for step in steps:
      try:
        restored = self.restore(template, step)
        if failures:
          self._set_aside([s for s, _ in failures])
        return restored, step
      except ValueError as e:
        if "≠ model" in str(e) or "does not match the model" in str(e):
          raise
        failures.append((step, e))
      except Exception as e:  # pylint: disable=broad-except
        failures.append((step, e))
      logging.warning("checkpoint step %d in %s is unreadable (%s); trying an older one",
                      step, self.directory, one_line(failures[-1][1]))
    lines = "; ".join(f"step {s}: {one_line(e, 160)}" for s, e in failures)
    raise ValueError(f"no readable checkpoint in {self.directory}: {lines}.")

  def _set_aside(self, steps: list[int]) -> None:
    if jax.process_index() != 0:
      return
    target = self.directory + ".unreadable"
    os.makedirs(target, exist_ok=True)
    for step in steps:
      src = os.path.join(self.directory, str(step))
      if os.path.exists(src):
        dst = os.path.join(target, str(step))
        if os.path.exists(dst):
          dst = f"{dst}.{int(time.time())}"
        os.replace(src, dst)
        logging.warning("moved unreadable checkpoint step %d to %s", step, dst)
    self.manager.reload()

  def _candidate_steps(self) -> list[int]:
    """Every step folder on disk (orbax's list, plus numeric folders it skipped)."""
    steps = set(self.manager.all_steps())
    if os.path.isdir(self.directory):
      steps |= {int(d) for d in os.listdir(self.directory) if d.isdigit()}
    return list(steps)

  def wait(self) -> None:
    """Blocks until pending saves are on disk (:class:`CheckpointSaveError` if one failed)."""
    try:
      self.manager.wait_until_finished()
      self.manager.check_for_errors()
    except Exception as e:  # pylint: disable=broad-except
      self._raise_save_error(e, self._pending)

  def close(self) -> None:
    """Waits for pending saves and releases the manager (raises like :meth:`wait`)."""
    self.wait()
    self.manager.close()


def save_checkpoint(path: str | os.PathLike, state: PyTree) -> None:
  """Saves a (sharded) pytree of arrays with orbax; every host writes its shards.

  Typed PRNG keys (randomised methods keep one in their state) are stored as their
  ``key_data``. Blocks until written. ``path`` must not exist yet (orbax's rule).
  A failure raises :class:`CheckpointSaveError` naming ``path``.
  """
  path = os.path.abspath(path)
  try:
    with ocp.StandardCheckpointer() as ckptr:
      ckptr.save(path, to_savable(state))
      ckptr.wait_until_finished()
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointSaveError(f"could not write checkpoint {path}: {one_line(e)}") from e


def restore_checkpoint(path: str | os.PathLike, like: PyTree, shardings: PyTree) -> PyTree:
  """Restores a checkpoint written by :func:`save_checkpoint` onto ``shardings``.

  The mesh may differ from the one it was saved on (e.g. 4×2 -> 1 device or 2×4):
  orbax reads each device's slice of every array directly.

  Args:
    path: the checkpoint directory.
    like: a pytree with the saved structure, shapes and dtypes (arrays or
      ``jax.ShapeDtypeStruct`` s, e.g. from ``jax.eval_shape``). Typed PRNG key
      leaves must be concrete keys (their implementation is read from them) or
      ShapeDtypeStructs of the default implementation.
    shardings: the target ``NamedSharding`` per leaf (same structure as ``like``).
  """

  def target(x, s):
    if _is_key(x):
      data = jax.eval_shape(jax.random.key_data, x)
      return jax.ShapeDtypeStruct(data.shape, data.dtype, sharding=s)
    return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s)

  def rewrap(x, restored):
    if not _is_key(x):
      return restored
    impl = jax.random.key_impl(x) if isinstance(x, jax.Array) else None
    return jax.random.wrap_key_data(restored, impl=impl)

  with ocp.StandardCheckpointer() as ckptr:
    out = ckptr.restore(os.path.abspath(path), jax.tree_util.tree_map(target, like, shardings))
  return jax.tree_util.tree_map(rewrap, like, out)
