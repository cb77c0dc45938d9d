"""Per-task data sources: one dataset (or seeded generator) per task.

A `TaskSource` is one task with its own data: its `TaskSpec` (name, label kind,
outputs, metrics), the key and per-example shape of its input, its size
(``None`` for an endless generator) and ``read(indices) -> batch``, random access
by example index. Example ``i`` of a source is a pure function of ``i`` (and the
source's own options/seed), so any sampler can ask for any example in any order
and a resumed run reads exactly what the uninterrupted one read.

Sources of one run are mixed by `mtlx.data.mixture.MixtureIterator` under a task
sampler (`mtlx.data.samplers`). All sources of a mixture share the input key and
per-example input shape (the model is one network with one head per task); their
labels may differ in kind and shape.

>>> srcs = digits_mixture_sources("train")           # 3 datasets of different sizes
>>> srcs[0].task.name, srcs[0].num_examples
('digit', 1000)
>>> srcs[0].read(np.arange(4))["image"].shape
(4, 8, 8, 1)

Builders: `array_source` (arrays in memory), `builder_source` (one task of an
`mtlx.data` tfds builder), `generator_source` (a function of the indices),
`source_from_config` (one entry of ``config.tasks``), `digits_mixture_sources`
(the quick heterogeneous benchmark) and, in `mtlx.data.function_classes`, the
in-context function-class sources.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple, Sequence

import numpy as np

from mtlx.data.specs import TASK_KINDS
from mtlx.data.specs import TaskSpec
from mtlx.data.specs import classification_task
from mtlx.data.specs import regression_task

SOURCE_KINDS = ("builder", "digits", "function_class")
DIGITS_VARIANTS = ("digit", "rotated", "value")
# Default train sizes of the digits mixture: three datasets of different sizes.
DIGITS_SIZES = {"digit": 1000, "rotated": 400, "value": 150}


class TaskSource(NamedTuple):
  """One task's data (see the module docstring).

  Attributes:
    task: the `TaskSpec`; its ``label_key`` is where ``read`` puts the label.
    input_key: key of the input in ``read``'s batch (float32).
    input_shape: one example's input shape.
    num_examples: the dataset size, or None for an endless seeded generator.
    read: ``indices (int64 [n]) -> {input_key: [n, *input_shape], label_key: [n, ...]}``.
    reads_step: whether ``read`` also takes the training step, ``read(indices, step)``
      (a curriculum); the mixture passes it, evaluation does not.
  """
  task: TaskSpec
  input_key: str
  input_shape: tuple
  num_examples: int | None
  read: Callable[..., dict]
  reads_step: bool = False


def _check_task(task):
  if not isinstance(task, TaskSpec) or task.kind not in TASK_KINDS:
    raise ValueError(f"task={task!r}; expected an mtlx.data.TaskSpec with kind in "
                     f"{list(TASK_KINDS)}.")


def array_source(task: TaskSpec, inputs: np.ndarray, labels: np.ndarray, *,
                 input_key: str = "features") -> TaskSource:
  """A source over in-memory arrays (``inputs[i]``, ``labels[i]`` is example ``i``)."""
  _check_task(task)
  inputs = np.asarray(inputs, np.float32)
  labels = np.asarray(labels)
  if len(inputs) != len(labels) or len(inputs) == 0:
    raise ValueError(f"inputs has {len(inputs)} rows and labels {len(labels)}; expected "
                     "the same positive number.")

  def read(indices):
    idx = np.asarray(indices, np.int64)
    return {input_key: inputs[idx], task.label_key: labels[idx]}

  return TaskSource(task, input_key, tuple(inputs.shape[1:]), len(inputs), read)


def generator_source(task: TaskSpec, input_key: str, input_shape: Sequence[int],
                     generate: Callable[..., dict], *, reads_step: bool = False) -> TaskSource:
  """An endless source: ``generate(indices)`` (``generate(indices, step)`` with
  ``reads_step``) returns the batch of those examples and must be a pure function
  of its arguments (seed it from the indices, e.g. ``jax.random.fold_in(key, i)``)."""
  _check_task(task)
  return TaskSource(task, input_key, tuple(input_shape), None, generate, reads_step)


def builder_source(dataset: str, split: str, task: str | None = None, *,
                   data_dir: str | None = None, manual_dir: str | None = None,
                   builder_kwargs: Mapping[str, Any] | None = None,
                   rename: str | None = None) -> TaskSource:
  """One task of an `mtlx.data` dataset (its tfds builder, read with random access).

  Args:
    dataset, split: as in `mtlx.data.make_iterator`.
    task: the task's name in the dataset (default: its only task; a ValueError
      lists the names when the dataset has several).
    rename: the task's name in the run (default ``task``), so that one dataset can
      give two tasks, or two datasets tasks of the same name.
  """
  from mtlx import data as mdata  # pylint: disable=import-outside-toplevel
  info = mdata.get_info(dataset, **dict(builder_kwargs or {}))
  names = [t.name for t in info.tasks]
  if task is None and len(names) == 1:
    task = names[0]
  if task not in names:
    raise ValueError(f"task={task!r} for dataset {dataset!r}; expected one of {names}.")
  spec = info.tasks[names.index(task)]
  n, read_raw, builder = mdata._reader(dataset, split, data_dir, manual_dir,  # pylint: disable=protected-access
                                       builder_kwargs, None)
  post = mdata._postprocessor(builder)  # pylint: disable=protected-access
  out = spec._replace(name=rename or spec.name, label_key=rename or spec.name)

  def read(indices):
    batch = post(read_raw(np.asarray(indices, np.int64)))
    return {info.input_key: batch[info.input_key], out.label_key: batch[spec.label_key]}

  return TaskSource(out, info.input_key, tuple(info.input_shape), n, read)


def _digits_pools(seed: int, test_fraction: float = 0.2):
  from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel
  digits = load_digits()
  images = (digits.images / 16.0).astype(np.float32)[..., None]
  perm = np.random.default_rng([seed, 18]).permutation(len(images))
  n_test = int(round(test_fraction * len(images)))
  return images, digits.target.astype(np.int32), perm[n_test:], perm[:n_test]


def digits_source(variant: str, split: str, *, num_examples: int | None = None,
                  seed: int = 0) -> TaskSource:
  """One of the three digits-mixture datasets (scikit-learn's 1797 8×8 digits).

  The images are split once (``seed``) into a train pool (80 %) and a test pool
  (20 %); each variant's train split is its own random subset of the train pool
  (``num_examples``, defaults ``DIGITS_SIZES``: 1000, 400, 150), its test split
  the whole test pool, so no test image is seen in training by any task.

  Variants (input ``image`` float32 [8, 8, 1] in [0, 1]):
    ``digit``: the digit, 10 classes.  ``rotated``: the image rotated by 90°
    counter-clockwise, 10 classes.  ``value``: regression of ``digit / 9``
    (one output, metric ``mae``).
  """
  if variant not in DIGITS_VARIANTS:
    raise ValueError(f"variant={variant!r}; expected one of {list(DIGITS_VARIANTS)}.")
  if split not in ("train", "test"):
    raise ValueError(f"split={split!r}; expected 'train' or 'test'.")
  images, target, train_pool, test_pool = _digits_pools(seed)
  if split == "train":
    n = DIGITS_SIZES[variant] if num_examples is None else int(num_examples)
    if not 1 <= n <= len(train_pool):
      raise ValueError(f"num_examples={n}; expected 1 <= num_examples <= {len(train_pool)}.")
    salt = DIGITS_VARIANTS.index(variant) + 1
    pool = np.sort(np.random.default_rng([seed, 18, salt]).permutation(train_pool)[:n])
  else:
    pool = np.sort(test_pool)
  x = images[pool]
  if variant == "rotated":
    x = np.rot90(x, k=1, axes=(1, 2)).copy()
  if variant == "value":
    task = regression_task("value", 1)
    labels = (target[pool] / 9.0).astype(np.float32)[:, None]
  else:
    task = classification_task(variant, 10)
    labels = target[pool]
  return array_source(task, x, labels, input_key="image")


def digits_mixture_sources(split: str, *, seed: int = 0,
                           sizes: Mapping[str, int] | None = None) -> list[TaskSource]:
  """The three digits-mixture sources (``digit``, ``rotated``, ``value``)."""
  sizes = dict(sizes or {})
  return [digits_source(v, split, num_examples=sizes.get(v), seed=seed)
          for v in DIGITS_VARIANTS]


def _get(cfg, key, default=None):
  value = cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)
  return default if value is None else value


def _to_dict(value):
  if value is None:
    return {}
  if hasattr(value, "to_dict"):
    return value.to_dict()
  return dict(value)


def source_from_config(cfg, split: str, *, seed: int = 0) -> TaskSource:
  """One task source from one entry of ``config.tasks`` (a ConfigDict or dict).

  ``cfg.source`` selects the kind:

  * ``builder``: ``dataset``, ``task`` (name in the dataset), ``split_map``
    (optional ``{run split: dataset split}``), ``builder_kwargs``, ``data_dir``,
    ``manual_dir``, ``rename``.
  * ``digits``: ``variant`` (digit | rotated | value), ``num_examples``.
  * ``function_class``: ``function_class`` and its options
    (`mtlx.data.function_classes.function_class_source`).

  Raises:
    ValueError: unknown ``source`` (listing the valid ones) or bad options.
  """
  kind = _get(cfg, "source", "")
  if kind not in SOURCE_KINDS:
    raise ValueError(f"config.tasks[].source={kind!r}; expected one of {list(SOURCE_KINDS)}.")
  if kind == "builder":
    split_map = _to_dict(_get(cfg, "split_map", {}))
    return builder_source(_get(cfg, "dataset", ""), split_map.get(split, split),
                          _get(cfg, "task", None) or None,
                          data_dir=_get(cfg, "data_dir", "") or None,
                          manual_dir=_get(cfg, "manual_dir", "") or None,
                          builder_kwargs=_to_dict(_get(cfg, "builder_kwargs", {})),
                          rename=_get(cfg, "rename", "") or None)
  if kind == "digits":
    n = _get(cfg, "num_examples", 0)
    return digits_source(_get(cfg, "variant", ""), split, num_examples=n or None, seed=seed)
  from mtlx.data import function_classes  # pylint: disable=import-outside-toplevel
  options = {k: v for k, v in _to_dict(cfg).items() if k not in ("source", "function_class")}
  return function_classes.function_class_source(
      _get(cfg, "function_class", ""), split=split, seed=seed, **options)
