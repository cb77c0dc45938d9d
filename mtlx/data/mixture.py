"""Multi-source batches: one global batch per step, its rows split among tasks.

`MixtureIterator` turns K task sources (`mtlx.data.sources`) and a task sampler
(`mtlx.data.samplers`) into a deterministic stream of batches:

1. step ``t``'s global counts ``c_t [K]`` (``Σ c_t = B``, ``B = batch_size ×
   process_count``) come from the sampler (`samplers.draw_counts`);
2. rows are laid out task-major: rows ``[o_k, o_k + c_{t,k})`` (``o_k = Σ_{j<k}
   c_{t,j}``) hold task ``k``'s next examples, positions ``cursor_k … cursor_k +
   c_{t,k} − 1`` of its own stream (so an unmixed slice of ``B/S`` rows is one
   task, and each device of the ``data`` axis a contiguous block of rows);
3. position ``q`` of task ``k``'s stream is example ``perm_{k,e}[q mod n_k]`` with
   ``e = q div n_k`` and ``perm_{k,e} = default_rng([seed, k, e]).permutation(n_k)``
   (every example once per epoch of that task), or example ``q`` of an endless
   generator;
4. host ``p`` of ``P`` takes global rows ``[p·b, (p + 1)·b)`` (``b = batch_size``):
   the hosts' slices are disjoint and cover the global batch, every host computes
   the same counts, and only reads the examples of its own rows.

The stream is a pure function of (sources, sampler, seed) and the small state
`MixtureState` (step, per-task cursors, sampler state); save ``it.state`` with the
train state and pass it back as ``state=`` to continue the exact same sequence.
Adaptive samplers (bandit, loss_proportional) read the losses of step ``t``
before drawing step ``t + 1``: call ``it.update(losses)`` after each step.

Batch layout (NumPy, this host's ``b`` rows)::

  {input_key: float32 [b, *input_shape],
   "<task name>": label [b, ...] for every task (zeros in other tasks' rows),
   "<task name>/loss_mask": float32 [b, ...] (only for sources that give one),
   "task_id": int32 [b]}

A source may return, beside its label, keys ``label_key + "/<suffix>"`` (per-row
extras of its label, e.g. `loss_mask_key`: which label entries enter the loss,
for a curriculum on the prompt length); they are carried under ``"<task
name>/<suffix>"`` (zeros in other tasks' rows).

Per-task counts and presence are computed inside the jitted step from
``task_id`` (`mtlx.train.task_mask.task_presence`), so they are global sums on a
sharded batch. ``it.last_counts`` holds the last step's global counts for logging.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import numpy as np

from mtlx.data import samplers as samplers_lib
from mtlx.data.sources import TaskSource
from mtlx.data.specs import DatasetInfo

TASK_ID_KEY = "task_id"


class MixtureState(NamedTuple):
  """What a mixture stream needs to resume: ``step`` (batches taken), ``cursor [K]``
  (examples of each task taken so far) and the sampler's state."""
  step: np.ndarray
  cursor: np.ndarray
  sampler: Any


def check_sources(sources: Sequence[TaskSource]) -> DatasetInfo:
  """The mixture's `DatasetInfo` (tasks in order, shared input); a ValueError names
  the first source whose input key or shape differs, or a repeated task name."""
  if not sources:
    raise ValueError("sources is empty; expected at least one TaskSource.")
  first = sources[0]
  names = [s.task.name for s in sources]
  for s in sources[1:]:
    if (s.input_key, tuple(s.input_shape)) != (first.input_key, tuple(first.input_shape)):
      raise ValueError(
          f"source {s.task.name!r} has input {s.input_key!r} of shape {tuple(s.input_shape)}; "
          f"expected the first source's {first.input_key!r} of shape "
          f"{tuple(first.input_shape)} (one model input for every task).")
  if len(set(names)) != len(names) or TASK_ID_KEY in names or first.input_key in names:
    raise ValueError(f"task names {names}; expected distinct names other than "
                     f"{TASK_ID_KEY!r} and {first.input_key!r}.")
  tasks = tuple(s.task._replace(label_key=s.task.name) for s in sources)
  return DatasetInfo("mixture", first.input_key, tuple(first.input_shape), tasks, ())


def example_indices(source: TaskSource, task_index: int, positions: np.ndarray,
                    seed: int) -> np.ndarray:
  """Source example indices at stream ``positions`` of task ``task_index`` (step 3)."""
  positions = np.asarray(positions, np.int64)
  n = source.num_examples
  if n is None:
    return positions
  out = np.empty_like(positions)
  epochs = positions // n
  for e in np.unique(epochs):
    perm = np.random.default_rng([int(seed), int(task_index), int(e)]).permutation(n)
    sel = epochs == e
    out[sel] = perm[positions[sel] % n]
  return out


class MixtureIterator:
  """This host's batches of a multi-source mixture (see the module docstring).

  Args:
    sources: one `TaskSource` per task (task order = loss vector order).
    sampler: a `samplers.TaskSampler` (e.g. from `samplers.make_sampler`).
    batch_size: rows per host; the global batch is ``batch_size × process_count``.
    seed: seeds the sampler draws and every task's epoch permutations.
    process_index, process_count: this host's slice (default: jax's).
    state: a `MixtureState` to resume from (default: the start).
  """

  def __init__(self, sources: Sequence[TaskSource], sampler, *, batch_size: int,
               seed: int = 0, process_index: int | None = None,
               process_count: int | None = None, state: MixtureState | None = None):
    self.info = check_sources(sources)
    self.sources = list(sources)
    self.sampler = sampler
    k = len(self.sources)
    if sampler.num_tasks != k:
      raise ValueError(f"sampler has num_tasks={sampler.num_tasks}; expected {k} (one "
                       "per source).")
    if process_index is None or process_count is None:
      import jax  # pylint: disable=import-outside-toplevel
      process_index = jax.process_index() if process_index is None else process_index
      process_count = jax.process_count() if process_count is None else process_count
    if int(batch_size) < 1:
      raise ValueError(f"batch_size={batch_size}; expected a positive int.")
    if process_count < 1 or not 0 <= process_index < process_count:
      raise ValueError(f"process_index={process_index}, process_count={process_count}; "
                       "expected 0 <= process_index < process_count.")
    self.batch_size = int(batch_size)
    self.global_batch_size = self.batch_size * int(process_count)
    self.process_index = int(process_index)
    self.seed = int(seed)
    if state is None:
      state = MixtureState(np.zeros((), np.int64), np.zeros(k, np.int64), sampler.init())
    self.state = MixtureState(np.asarray(state.step, np.int64).reshape(()),
                              np.asarray(state.cursor, np.int64).reshape(k),
                              _as_numpy(state.sampler))
    self.last_counts = np.zeros(k, np.int64)
    self._pending = None
    self._templates = [self._template(s) for s in self.sources]

  @property
  def num_tasks(self) -> int:
    return len(self.sources)

  @staticmethod
  def _template(source) -> dict:
    """``{suffix: (shape, dtype)}`` of the label (suffix ``""``) and its extras."""
    one = source.read(np.zeros(1, np.int64))
    out = {}
    for key, value in one.items():
      suffix = _label_suffix(key, source.task.label_key)
      if suffix is not None:
        value = np.asarray(value)
        out[suffix] = (value.shape[1:], value.dtype)
    return out

  def plan(self, state: MixtureState | None = None):
    """``(counts [K], task [B], example [B])`` of the next global batch (no reading)."""
    state = self.state if state is None else state
    step = int(state.step)
    counts = samplers_lib.draw_counts(self.sampler, state.sampler, step,
                                      self.global_batch_size, self.seed)
    tasks = np.repeat(np.arange(self.num_tasks), counts)
    examples = np.empty(self.global_batch_size, np.int64)
    offset = 0
    for k, c in enumerate(counts):
      pos = state.cursor[k] + np.arange(c)
      examples[offset:offset + c] = example_indices(self.sources[k], k, pos, self.seed)
      offset += c
    return counts, tasks, examples

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    if self._pending is not None and self.sampler.adaptive:
      raise RuntimeError("the sampler is adaptive: call update(losses) with the last "
                         "step's per-task losses before drawing the next batch.")
    counts, tasks, examples = self.plan()
    lo = self.process_index * self.batch_size
    rows = slice(lo, lo + self.batch_size)
    step = int(self.state.step)
    batch = self._assemble(tasks[rows], examples[rows], step)
    self.state = MixtureState(np.asarray(step + 1, np.int64), self.state.cursor + counts,
                              self.state.sampler)
    self.last_counts = counts
    self._pending = (step, counts)
    return batch

  def _assemble(self, tasks, examples, step) -> dict:
    b = len(tasks)
    info = self.info
    x = np.zeros((b,) + tuple(info.input_shape), np.float32)
    batch = {}
    for k, (src, template) in enumerate(zip(self.sources, self._templates)):
      labels = {suffix: np.zeros((b,) + tuple(shape), dtype)
                for suffix, (shape, dtype) in template.items()}
      rows = np.flatnonzero(tasks == k)
      if len(rows):
        part = src.read(examples[rows], step) if src.reads_step else src.read(examples[rows])
        x[rows] = part[src.input_key]
        for suffix, label in labels.items():
          label[rows] = part[src.task.label_key + suffix]
      for suffix, label in labels.items():
        batch[info.tasks[k].name + suffix] = label
    batch[info.input_key] = x
    batch[TASK_ID_KEY] = tasks.astype(np.int32)
    return batch

  def update(self, losses) -> None:
    """Feeds the last step's per-task losses ``[K]`` to the sampler (adaptive ones
    use them; a no-op otherwise). Call once after every step."""
    if self._pending is None:
      return
    step, counts = self._pending
    losses = np.asarray(losses, np.float64).reshape(-1)
    if len(losses) != self.num_tasks:
      raise ValueError(f"losses has {len(losses)} entries; expected {self.num_tasks}.")
    if self.sampler.adaptive:
      sampler_state = self.sampler.update(self.state.sampler, counts, losses, step)
      self.state = self.state._replace(sampler=_as_numpy(sampler_state))
    self._pending = None


def _label_suffix(key: str, label_key: str) -> str | None:
  """``""`` for the label, ``"/<suffix>"`` for its extras, None for other keys."""
  if key == label_key:
    return ""
  if key.startswith(label_key + "/"):
    return key[len(label_key):]
  return None


def _as_numpy(tree):
  import jax  # pylint: disable=import-outside-toplevel
  return jax.tree_util.tree_map(np.asarray, tree)


def single_task_batches(sources: Sequence[TaskSource], task_index: int, *,
                        batch_size: int, limit: int | None = None):
  """Task ``task_index``'s examples in stored order (last batch kept), in the mixture
  layout of ``sources`` (evaluation, single-task baselines): every row is that
  task, the other tasks' labels are zeros. An endless source needs ``limit``."""
  info = check_sources(sources)
  source = sources[task_index]
  n = source.num_examples
  if limit is not None:
    n = int(limit) if n is None else min(int(limit), n)
  if n is None:
    raise ValueError(f"source {source.task.name!r} is endless; expected limit= (examples).")
  templates = [MixtureIterator._template(s) for s in sources]  # pylint: disable=protected-access
  for lo in range(0, n, batch_size):
    idx = np.arange(lo, min(lo + batch_size, n))
    part = source.read(idx)
    batch = {t.name + suffix: np.zeros((len(idx),) + tuple(shape), dtype)
             for t, template in zip(info.tasks, templates)
             for suffix, (shape, dtype) in template.items()}
    for suffix in templates[task_index]:
      batch[info.tasks[task_index].name + suffix] = np.asarray(
          part[source.task.label_key + suffix])
    batch[info.input_key] = np.asarray(part[source.input_key], np.float32)
    batch[TASK_ID_KEY] = np.full(len(idx), task_index, np.int32)
    yield batch
