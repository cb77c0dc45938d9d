"""What a multi-task dataset offers: its tasks, their labels and their metrics.

These two NamedTuples are the contract between `mtlx.data` and the models,
trainer and comparison tools. They carry no data and import nothing heavy.

Label conventions (per example; a batch adds a leading batch axis):

==============  ==============================  =================================
kind            label array                     model output the trainer expects
==============  ==============================  =================================
classification  int32 scalar in [0, C)          logits [C]           (C = num_outputs)
binary          int32 scalar in {0, 1}          one logit [1]        (num_outputs = 1)
regression      float32 [num_outputs]           values [num_outputs]
segmentation    int32 [H, W], -1 = ignore       logits [H, W, C]
depth           float32 [H, W, 1], 0 = missing  values [H, W, 1]
normal          float32 [H, W, 3], 0 = missing  unit vectors [H, W, 3]
==============  ==============================  =================================

Metric names used by the builders (the trainer implements them by name):
``accuracy`` (higher is better), ``miou`` and ``pixel_accuracy`` (higher),
``abs_err`` and ``rel_err`` (lower; depth, over pixels with depth != 0),
``mean_angle`` and ``median_angle`` (lower; degrees, over pixels whose normal
is not all zero), ``mae`` (lower; mean absolute error in the label's units).
"""

from typing import NamedTuple

TASK_KINDS = ("classification", "binary", "regression", "segmentation", "depth",
              "normal")
INPUT_KEYS = ("image", "features")


class TaskSpec(NamedTuple):
  """One task of a dataset.

  Attributes:
    name: task name, unique within the dataset (used as ``loss/<name>``).
    kind: one of ``TASK_KINDS`` (see the module docstring for label shapes).
    num_outputs: classes for classification/segmentation, output dimension for
      regression, 1 for binary and depth, 3 for normals.
    metrics: metric names evaluated for this task, e.g. ``('accuracy',)``.
    higher_is_better: one bool per metric, aligned with ``metrics``.
    label_key: key of this task's label in a batch dict.
  """
  name: str
  kind: str
  num_outputs: int
  metrics: tuple[str, ...]
  higher_is_better: tuple[bool, ...]
  label_key: str


class DatasetInfo(NamedTuple):
  """A dataset as the trainer sees it.

  Attributes:
    name: the name passed to ``mtlx.data.make_iterator``.
    input_key: key of the model input in a batch (``'image'`` or ``'features'``);
      always float32.
    input_shape: shape of one example's input (no batch axis).
    tasks: the tasks, in a fixed order (task index k = position here).
    splits: the split names ``make_iterator`` accepts.
  """
  name: str
  input_key: str
  input_shape: tuple[int, ...]
  tasks: tuple[TaskSpec, ...]
  splits: tuple[str, ...]

  @property
  def num_tasks(self) -> int:
    return len(self.tasks)

  @property
  def task_names(self) -> tuple[str, ...]:
    return tuple(t.name for t in self.tasks)


def classification_task(name, num_classes, label_key=None):
  return TaskSpec(name, "classification", int(num_classes), ("accuracy",), (True,),
                  label_key or name)


def binary_task(name, label_key=None):
  return TaskSpec(name, "binary", 1, ("accuracy",), (True,), label_key or name)


def regression_task(name, num_outputs=1, label_key=None):
  return TaskSpec(name, "regression", int(num_outputs), ("mae",), (False,),
                  label_key or name)


def segmentation_task(name, num_classes, label_key=None):
  return TaskSpec(name, "segmentation", int(num_classes), ("miou", "pixel_accuracy"),
                  (True, True), label_key or name)


def depth_task(name="depth", label_key=None):
  return TaskSpec(name, "depth", 1, ("abs_err", "rel_err"), (False, False),
                  label_key or name)


def normal_task(name="normal", label_key=None):
  return TaskSpec(name, "normal", 3, ("mean_angle", "median_angle"), (False, False),
                  label_key or name)


def loss_mask_key(label_key: str) -> str:
  """The batch key of a task's optional loss mask: ``label_key + "/loss_mask"``, a
  float ``[b, *label_shape]`` of 0/1 (which label entries enter the task's loss; e.g.
  the prompt positions of a curriculum on prompt length). Read by
  `mtlx.train.task_mask.masked_task_losses`; regression and binary tasks only."""
  return label_key + "/loss_mask"
