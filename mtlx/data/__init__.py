"""mtlx.data: multi-task datasets as tensorflow-datasets builders, read without TensorFlow.

Every dataset is a `tfds.core.GeneratorBasedBuilder` that writes ArrayRecord
files (built on first use into ``data_dir``: ``$MTLX_DATA_DIR`` or
``~/tensorflow_datasets``) and is read with random access through
``builder.as_data_source(split)``; shuffling, per-host sharding and batching are
plain NumPy (`mtlx.data.pipeline`). Offline datasets build from nothing here;
real benchmarks build from the user's local files in ``manual_dir`` (see
the README (section Data) for where to get them and the expected layout).

>>> info = mtlx.data.get_info("multi_digits")
>>> it = mtlx.data.make_iterator("multi_digits", "train", batch_size=256, seed=0)
>>> batch = next(it)   # {"image": float32 [256, 8, 12, 1], "left": int32 [256], ...}

Batches are dicts of NumPy arrays: the input under ``info.input_key`` (float32)
and every task's label under its ``label_key`` (shapes in `mtlx.data.specs`).
Some datasets add extra keys (e.g. source indices, stacked targets).
"""

import contextlib
import logging
import os
import queue
import threading
from typing import Any, Mapping

import numpy as np
import tensorflow_datasets as tfds

from mtlx.data import pipeline
from mtlx.data.base import MtlxBuilder
from mtlx.data.celeba import CelebA
from mtlx.data.dense import Cityscapes
from mtlx.data.dense import NYUv2
from mtlx.data.many_tasks import ManyTasks
from mtlx.data.multi_digits import MultiDigits
from mtlx.data.multi_task_regression import MultiTaskRegression
from mtlx.data.qm9 import QM9
from mtlx.data.specs import DatasetInfo
from mtlx.data.specs import TaskSpec
# Per-task sources, task samplers and mixtures (tasks from different datasets).
from mtlx.data import function_classes  # noqa: E402,F401
from mtlx.data import mixture  # noqa: E402,F401
from mtlx.data import samplers  # noqa: E402,F401
from mtlx.data import sources  # noqa: E402,F401
from mtlx.data.specs import TASK_KINDS

__all__ = [
    "DatasetInfo",
    "TaskSpec",
    "TASK_KINDS",
    "BatchIterator",
    "clear_cache",
    "dataset_names",
    "default_data_dir",
    "get_builder",
    "get_info",
    "MtlxBuilder",
    "register_dataset",
    "load_split",
    "make_iterator",
    "num_examples",
]

_BUILDERS: dict[str, type] = {
    "celeba": CelebA,
    "cityscapes": Cityscapes,
    "many_tasks": ManyTasks,
    "multi_digits": MultiDigits,
    "multi_task_regression": MultiTaskRegression,
    "nyuv2": NYUv2,
    "qm9": QM9,
}

# Stacked in-memory splits are kept when smaller than this (bytes), see make_iterator.
IN_MEMORY_BYTES = 256 * 2**20

_PREPARED: dict[tuple, Any] = {}
_SOURCES: dict[tuple, Any] = {}
_ARRAYS: dict[tuple, dict[str, np.ndarray]] = {}


def dataset_names() -> list[str]:
  """Names accepted by `get_info`, `make_iterator` and `load_split`."""
  return sorted(_BUILDERS)


def register_dataset(name: str, builder_cls: type) -> None:
  """Make a user builder (a `MtlxBuilder` subclass) available under ``name``.

  The subclass defines ``name`` (its tfds directory), ``CONFIG_CLASS`` and
  ``BUILDER_CONFIGS = [CONFIG_CLASS(name='default')]``, ``mtlx_info``,
  ``feature_spec``, ``_split_generators``/``_generate_examples`` and, if needed,
  ``postprocess``; see `mtlx.data.multi_digits` for a complete small example.
  """
  if not (isinstance(builder_cls, type) and issubclass(builder_cls, MtlxBuilder)):
    raise ValueError(f"builder_cls: got {builder_cls!r}; expected a subclass of "
                     "mtlx.data.MtlxBuilder.")
  if name in _BUILDERS and _BUILDERS[name] is not builder_cls:
    raise ValueError(f"name: dataset {name!r} is already registered; registered names are "
                     f"{dataset_names()}.")
  _BUILDERS[name] = builder_cls


def _builder_class(name: str):
  if name not in _BUILDERS:
    raise ValueError(f"name: unknown dataset {name!r}; valid names are {dataset_names()}.")
  return _BUILDERS[name]


def default_data_dir() -> str:
  """``$MTLX_DATA_DIR`` if set, else ``~/tensorflow_datasets``."""
  return os.path.expanduser(os.environ.get("MTLX_DATA_DIR") or "~/tensorflow_datasets")


def get_info(name: str, **builder_kwargs) -> DatasetInfo:
  """The tasks, input and splits of a dataset under the given builder options.

  Reads no data and builds nothing. Unknown names or options raise a ValueError
  listing the valid ones.
  """
  cls = _builder_class(name)
  return cls.mtlx_info(cls.make_config(**builder_kwargs))


def get_builder(name: str, *, data_dir: str | None = None, manual_dir: str | None = None,
                builder_kwargs: Mapping[str, Any] | None = None):
  """The prepared tfds builder (built on first use, with no download).

  A builder is prepared once per (data_dir, options): later calls reuse the
  files on disk even if ``manual_dir`` changed (delete the directory
  ``<data_dir>/<builder.name>/<config>`` to rebuild).
  """
  cls = _builder_class(name)
  config = cls.make_config(**dict(builder_kwargs or {}))
  data_dir = os.path.expanduser(data_dir) if data_dir else default_data_dir()
  for arg, path in (("data_dir", data_dir), ("manual_dir", manual_dir)):
    path = os.path.expanduser(path) if path else None
    if path and "://" not in path and os.path.exists(path) and not os.path.isdir(path):
      what = "where datasets are prepared" if arg == "data_dir" else "holding the raw files"
      raise ValueError(f"{arg}={path!r} is a file; expected a directory ({what}).")
  key = (name, os.path.abspath(data_dir), config.name)
  if key not in _PREPARED:
    _PREPARED[key] = _prepare(cls, config, data_dir, manual_dir)
  return _PREPARED[key]


class _DropCustomConfigWarning(logging.Filter):
  """tfds warns on every custom BuilderConfig; ours are the normal case."""

  def filter(self, record):
    return not str(record.msg).startswith("Using custom data configuration")


@contextlib.contextmanager
def _build_lock(data_dir, name):
  """An exclusive lock on local data dirs, so concurrent processes build a dataset once."""
  if "://" in data_dir:  # remote file systems: no lock, see the FileExistsError fallback
    yield
    return
  import fcntl  # pylint: disable=import-outside-toplevel
  os.makedirs(data_dir, exist_ok=True)
  with open(os.path.join(data_dir, f".{name}.lock"), "w") as handle:
    fcntl.flock(handle, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(handle, fcntl.LOCK_UN)


def _prepare(cls, config, data_dir, manual_dir):
  absl_logger = logging.getLogger("absl")
  quiet = _DropCustomConfigWarning()
  absl_logger.addFilter(quiet)
  was_active = tfds.core.utils.tqdm_utils._active  # pylint: disable=protected-access
  tfds.display_progress_bar(False)
  try:
    with _build_lock(data_dir, f"{cls.name}-{config.name}"):
      make = lambda: cls(config=config, data_dir=data_dir, file_format="array_record")
      builder = make()
      download_config = tfds.download.DownloadConfig(
          manual_dir=os.path.expanduser(manual_dir) if manual_dir else None)
      try:
        builder.download_and_prepare(download_config=download_config)
      except FileExistsError:
        builder = make()  # another process finished the same build first: use its files
        if not builder.is_prepared():
          raise
  finally:
    tfds.display_progress_bar(was_active)
    absl_logger.removeFilter(quiet)
  return builder


def _check_split(name, split, info):
  if split not in info.splits:
    raise ValueError(f"split: unknown split {split!r} for dataset {name!r}; valid splits "
                     f"are {list(info.splits)}.")


def _stack(examples: list[dict]) -> dict[str, np.ndarray]:
  return {k: np.stack([ex[k] for ex in examples]) for k in examples[0]}


def _reader(name, split, data_dir, manual_dir, builder_kwargs, in_memory):
  """(number of examples, read(indices) -> stored batch, builder)."""
  builder = get_builder(name, data_dir=data_dir, manual_dir=manual_dir,
                        builder_kwargs=builder_kwargs)
  _check_split(name, split, builder.mtlx_info(builder.builder_config))
  key = (str(builder.data_dir), split)
  if key not in _SOURCES:
    _SOURCES[key] = builder.as_data_source(split)
  source = _SOURCES[key]
  n = len(source)
  if in_memory is None and key not in _ARRAYS and n:
    first = source[0]
    in_memory = n * sum(np.asarray(v).nbytes for v in first.values()) <= IN_MEMORY_BYTES
  if in_memory is not False and (key in _ARRAYS or in_memory):
    if key not in _ARRAYS:
      _ARRAYS[key] = _stack(source.__getitems__(list(range(n))))
    arrays = _ARRAYS[key]
    return n, lambda idx: {k: v[idx] for k, v in arrays.items()}, builder
  return n, lambda idx: _stack(source.__getitems__([int(i) for i in idx])), builder


_INT_KINDS = ("classification", "binary", "segmentation")


def _finalize(batch: dict[str, np.ndarray], info: DatasetInfo) -> dict[str, np.ndarray]:
  """Contract dtypes: float32 input, int32 class labels, float32 real-valued labels."""
  batch[info.input_key] = np.asarray(batch[info.input_key], np.float32)
  for task in info.tasks:
    dtype = np.int32 if task.kind in _INT_KINDS else np.float32
    batch[task.label_key] = np.asarray(batch[task.label_key], dtype)
  return batch


def _postprocessor(builder):
  config = builder.builder_config
  info = builder.mtlx_info(config)
  return lambda batch: _finalize(builder.postprocess(config, batch), info)


def clear_cache() -> None:
  """Forget prepared builders, open sources and in-memory splits of this process."""
  _PREPARED.clear()
  _SOURCES.clear()
  _ARRAYS.clear()


def num_examples(name: str, split: str, *, data_dir: str | None = None,
                 manual_dir: str | None = None,
                 builder_kwargs: Mapping[str, Any] | None = None) -> int:
  """Number of examples in a split (builds the dataset if needed)."""
  builder = get_builder(name, data_dir=data_dir, manual_dir=manual_dir,
                        builder_kwargs=builder_kwargs)
  _check_split(name, split, builder.mtlx_info(builder.builder_config))
  return builder.info.splits[split].num_examples


class BatchIterator:
  """The batches of one split on this host, with the position needed to resume.

  Attributes:
    info: the dataset's `DatasetInfo`.
    num_examples: examples in the split (all hosts).
    steps_per_epoch: batches per epoch on this host.
    total_steps: batches in the whole stream (None when it repeats forever).
    step: index of the batch the next ``next()`` returns; save it in a checkpoint
      and pass it back as ``start_step`` to continue the same stream.
  """

  def __init__(self, plan, make_batch, info, start_step, prefetch):
    self.info = info
    self.num_examples = plan.num_examples
    self.steps_per_epoch = plan.steps_per_epoch
    self.total_steps = plan.total_steps
    self.step = start_step
    self._indices = plan.batches(start_step)
    self._make_batch = make_batch
    self._queue = None
    self._stop = threading.Event()
    if prefetch:
      self._queue = queue.Queue(maxsize=prefetch)
      threading.Thread(target=self._produce, daemon=True,
                       args=(self._indices, make_batch, self._queue, self._stop)).start()

  @staticmethod
  def _produce(indices, make_batch, out, stop):
    """Producer thread; holds no reference to the iterator, so dropping it stops the thread."""

    def put(item):
      while not stop.is_set():
        try:
          out.put(item, timeout=0.1)
          return True
        except queue.Full:
          continue
      return False

    try:
      for idx in indices:
        if not put(("batch", make_batch(idx))):
          return
    except Exception as e:  # pylint: disable=broad-except
      put(("error", e))
      return
    put(("end", None))

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self._queue is None:
      batch = self._make_batch(next(self._indices))
    else:
      kind, batch = self._queue.get()
      if kind == "end":
        self._queue.put((kind, batch))
        raise StopIteration
      if kind == "error":
        self._queue.put((kind, batch))
        raise batch
    self.step += 1
    return batch

  def close(self) -> None:
    """Stop the prefetch thread (if any)."""
    self._stop.set()

  def __del__(self):
    self._stop.set()


def make_iterator(name: str, split: str, *, batch_size: int, seed: int = 0,
                  shuffle: bool = True, num_epochs: int | None = None,
                  drop_remainder: bool = True, data_dir: str | None = None,
                  manual_dir: str | None = None,
                  builder_kwargs: Mapping[str, Any] | None = None,
                  process_index: int | None = None, process_count: int | None = None,
                  start_step: int = 0, in_memory: bool | None = None,
                  prefetch: int = 0) -> BatchIterator:
  """Deterministic batches of one split for this host.

  Args:
    name: dataset name (`dataset_names()`).
    split: split name (`get_info(name).splits`).
    batch_size: rows per batch yielded on THIS host; the global batch of a
      multi-host run is ``batch_size * process_count``.
    seed: epoch e is shuffled with ``np.random.default_rng([seed, e])``.
    shuffle: False keeps the stored order (for evaluation).
    num_epochs: None repeats forever; otherwise stops after that many epochs.
    drop_remainder: drop each epoch's last partial batch (default), else yield it.
    data_dir, manual_dir, builder_kwargs: where to build/read, the user's raw
      files for real benchmarks, and builder options (see each builder module).
    process_index, process_count: this host's shard; default
      ``jax.process_index()`` and ``jax.process_count()``. Hosts read disjoint
      slices of each epoch and all get the same number of batches.
    start_step: skip that many batches without reading them: the stream from
      ``start_step`` equals the uninterrupted stream from that point on.
    in_memory: hold the decoded split in memory (default: when under 256 MiB);
      False always reads from disk.
    prefetch: prepare up to this many batches ahead on a background thread
      (0 = none). The batches and their order do not change.

  Returns:
    A `BatchIterator` of dicts of NumPy arrays: the input float32 under
    ``info.input_key`` and each task's label under its ``label_key``. See
    `mtlx.data.pipeline` for the order.
  """
  if process_index is None or process_count is None:
    import jax  # pylint: disable=import-outside-toplevel
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if prefetch < 0:
    raise ValueError(f"prefetch={prefetch}; expected an int >= 0.")
  if start_step < 0:
    raise ValueError(f"start_step={start_step}; expected >= 0.")
  n, read, builder = _reader(name, split, data_dir, manual_dir, builder_kwargs, in_memory)
  plan = pipeline.BatchPlan(n, batch_size=batch_size, seed=seed, shuffle=shuffle,
                            num_epochs=num_epochs, drop_remainder=drop_remainder,
                            process_index=process_index, process_count=process_count)
  post = _postprocessor(builder)
  return BatchIterator(plan, lambda idx: post(read(idx)),
                       builder.mtlx_info(builder.builder_config), start_step, prefetch)


def load_split(name: str, split: str, *, data_dir: str | None = None,
               manual_dir: str | None = None,
               builder_kwargs: Mapping[str, Any] | None = None,
               limit: int | None = None) -> dict[str, np.ndarray]:
  """A whole split (or its first ``limit`` examples) in memory, in stored order."""
  if limit is not None and limit < 1:
    raise ValueError(f"limit={limit}; expected None (whole split) or an int >= 1.")
  n, read, builder = _reader(name, split, data_dir, manual_dir, builder_kwargs, None)
  if n == 0:
    raise ValueError(f"split: {split!r} of dataset {name!r} has no examples.")
  count = n if limit is None else min(int(limit), n)
  batch = read(np.arange(count))
  return _postprocessor(builder)({k: np.array(v) for k, v in batch.items()})
