"""NYUv2 and Cityscapes in the MTAN preprocessed .npy layout (Liu et al., CVPR 2019).

The dense-prediction benchmarks of MTAN, Nash-MTL, FAMO, LibMTL... all read the
files MTAN's authors published (see the README (section Data) for where to get them)::

  <manual_dir>/train/image/<i>.npy    float [H, W, 3], RGB in [0, 1]
  <manual_dir>/train/label/<i>.npy    float [H, W], class id, -1 = ignore
                                      (Cityscapes: label_7/ or label_19/)
  <manual_dir>/train/depth/<i>.npy    float [H, W, 1], 0 = no measurement
  <manual_dir>/train/normal/<i>.npy   float [H, W, 3]  (NYUv2 only)
  <manual_dir>/val/...                the same; used as the ``test`` split

i runs over 0..n-1. The arrays are stored exactly (float32, zlib compressed);
labels become int32 with -1 kept as "ignore". Split ``train`` is MTAN's train/,
``test`` is MTAN's val/ (the set every paper reports). ``num_validation`` > 0
holds out that many train images (chosen by ``split_seed``) as a
``validation`` split. The papers' training-time augmentation (random
scale-crop and flip) is not applied here. Batches also carry ``index`` (i of
the source file).
"""

import dataclasses
import os
import re

import numpy as np
import tensorflow_datasets as tfds

from mtlx.data import base
from mtlx.data.specs import DatasetInfo, depth_task, normal_task, segmentation_task


@dataclasses.dataclass(eq=False)
class DenseConfig(tfds.core.BuilderConfig):
  height: int = 0
  width: int = 0
  num_classes: int = 0
  num_validation: int = 0
  split_seed: int = 0


def _npy_indices(folder):
  if not os.path.isdir(folder):
    return []
  names = [f for f in os.listdir(folder) if re.fullmatch(r"\d+\.npy", f)]
  return sorted(int(f[:-4]) for f in names)


class _MtanDense(base.MtlxBuilder, skip_registration=True):
  """Shared MTAN .npy reader; subclasses set the folders, tasks and defaults."""

  REQUIRES_MANUAL_DIR = True
  HAS_NORMALS = False
  DEFAULT_SHAPE = (0, 0)
  DEFAULT_CLASSES = 0
  ALLOWED_CLASSES = ()

  @classmethod
  def _shape(cls, config):
    return (config.height or cls.DEFAULT_SHAPE[0], config.width or cls.DEFAULT_SHAPE[1])

  @classmethod
  def _classes(cls, config):
    return config.num_classes or cls.DEFAULT_CLASSES

  @classmethod
  def _label_folder(cls, config):
    return "label"

  @classmethod
  def validate_config(cls, config):
    if config.height < 0 or config.width < 0:
      raise ValueError(f"builder_kwargs: height={config.height}, width={config.width}; "
                       "expected positive ints (0 = the dataset's default).")
    if config.num_classes and config.num_classes not in cls.ALLOWED_CLASSES:
      raise ValueError(f"builder_kwargs: num_classes={config.num_classes}; expected one of "
                       f"{list(cls.ALLOWED_CLASSES)}.")
    base.require_at_least(config, 0, "num_validation")

  @classmethod
  def _splits(cls, config):
    return ("train", "validation", "test") if config.num_validation else ("train", "test")

  @classmethod
  def mtlx_info(cls, config) -> DatasetInfo:
    tasks = [segmentation_task("segmentation", cls._classes(config)), depth_task("depth")]
    if cls.HAS_NORMALS:
      tasks.append(normal_task("normal"))
    return DatasetInfo(name=cls.MTLX_NAME, input_key="image",
                       input_shape=cls._shape(config) + (3,), tasks=tuple(tasks),
                       splits=cls._splits(config))

  @classmethod
  def feature_spec(cls, config):
    h, w = cls._shape(config)
    spec = {"image": base.float_tensor((h, w, 3), compress=True),
            "segmentation": base.int_tensor((h, w), np.int16, compress=True),
            "depth": base.float_tensor((h, w, 1), compress=True),
            "index": tfds.features.Scalar(dtype=np.int32)}
    if cls.HAS_NORMALS:
      spec["normal"] = base.float_tensor((h, w, 3), compress=True)
    return spec

  def _split_generators(self, dl_manager):
    config = self.builder_config
    folders = ["image", self._label_folder(config), "depth"]
    if self.HAS_NORMALS:
      folders.append("normal")
    root = self.manual_path(dl_manager, *[os.path.join(s, f) for s in ("train", "val")
                                          for f in folders])
    indices = {}
    for part in ("train", "val"):
      indices[part] = _npy_indices(os.path.join(root, part, "image"))
      if not indices[part]:
        raise FileNotFoundError(f"No <i>.npy files in {os.path.join(root, part, 'image')}.")
    train = np.asarray(indices["train"])
    out = {"test": self._generate_examples(root, "val", indices["val"], folders)}
    if config.num_validation:
      if config.num_validation >= len(train):
        raise ValueError(f"builder_kwargs: num_validation={config.num_validation}; expected "
                         f"fewer than the {len(train)} train images.")
      order = np.random.default_rng(config.split_seed).permutation(len(train))
      held = np.zeros(len(train), bool)
      held[order[:config.num_validation]] = True
      out["validation"] = self._generate_examples(root, "train", train[held].tolist(), folders)
      train = train[~held]
    out["train"] = self._generate_examples(root, "train", train.tolist(), folders)
    return out

  def _generate_examples(self, root, part, indices, folders):
    config = self.builder_config
    h, w = self._shape(config)
    classes = self._classes(config)
    image_dir, label_dir, depth_dir = folders[:3]

    def load(folder, i, shape):
      path = os.path.join(root, part, folder, f"{i}.npy")
      if not os.path.exists(path):
        raise FileNotFoundError(f"{self.MTLX_NAME}: missing {path} (there is an image {i}).")
      try:
        array = np.load(path, allow_pickle=False)
      except Exception as e:  # pylint: disable=broad-except
        raise ValueError(f"{self.MTLX_NAME}: cannot read {path} as a .npy array "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                         "expected a file written by numpy.save.") from None
      if (not np.issubdtype(array.dtype, np.number)
          or np.issubdtype(array.dtype, np.complexfloating)):
        raise ValueError(f"{self.MTLX_NAME}: {path} has dtype {array.dtype}; expected a "
                         "real numeric array.")
      if not np.all(np.isfinite(array)):
        raise ValueError(f"{self.MTLX_NAME}: {path} has {int(np.sum(~np.isfinite(array)))} "
                         "NaN/inf entries; expected finite values.")
      if array.size != int(np.prod(shape)) or array.shape[:2] != shape[:2]:
        raise ValueError(
            f"{self.MTLX_NAME}: {path} has shape {array.shape}; expected {shape}. Set "
            "builder_kwargs height=/width= for other resolutions.")
      return array.reshape(shape)

    def where(folder, i):
      return os.path.join(root, part, folder, f"{i}.npy")

    for i in indices:
      image = load(image_dir, i, (h, w, 3)).astype(np.float32)
      if image.min() < 0 or image.max() > 1:
        hint = " (0..255? divide by 255)" if image.max() > 1 else ""
        raise ValueError(f"{self.MTLX_NAME}: {where(image_dir, i)} spans [{image.min()}, "
                         f"{image.max()}]{hint}; expected RGB in [0, 1].")
      raw_label = load(label_dir, i, (h, w))
      label = np.rint(raw_label).astype(np.int64)
      if np.any(label != raw_label):
        raise ValueError(f"{self.MTLX_NAME}: {where(label_dir, i)} has fractional labels "
                         f"(e.g. {raw_label[label != raw_label].flat[0]}); expected integer "
                         "class ids (-1 = ignore).")
      if label.min() < -1 or label.max() >= classes:
        raise ValueError(f"{self.MTLX_NAME}: labels of {part}/{label_dir}/{i}.npy span "
                         f"[{label.min()}, {label.max()}]; expected -1 (ignore) or 0..{classes - 1}.")
      depth = load(depth_dir, i, (h, w, 1)).astype(np.float32)
      if depth.min() < 0:
        raise ValueError(f"{self.MTLX_NAME}: {where(depth_dir, i)} has negative depths "
                         f"(min {depth.min()}); expected >= 0 (0 = no measurement).")
      example = {"image": image, "segmentation": label.astype(np.int16),
                 "depth": depth, "index": int(i)}
      if self.HAS_NORMALS:
        example["normal"] = load("normal", i, (h, w, 3)).astype(np.float32)
      yield f"{part}_{i}", example


class NYUv2(_MtanDense, skip_registration=True):
  """NYUv2, 3 tasks: 13-class segmentation, depth, surface normals (288 x 384, 795/654)."""

  name = "mtlx_nyuv2"
  MTLX_NAME = "nyuv2"
  CONFIG_CLASS = DenseConfig
  BUILDER_CONFIGS = [DenseConfig(name="default")]
  HAS_NORMALS = True
  DEFAULT_SHAPE = (288, 384)
  DEFAULT_CLASSES = 13
  ALLOWED_CLASSES = (13,)
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Put MTAN's preprocessed NYUv2 (nyuv2.zip from https://github.com/lorenmt/mtan,
  also used by LibMTL, Nash-MTL and FAMO) so that manual_dir contains
  train/{image,label,depth,normal}/<i>.npy and val/{image,label,depth,normal}/<i>.npy.
  """


class Cityscapes(_MtanDense, skip_registration=True):
  """Cityscapes, 2 tasks: 7-class (or 19) segmentation and depth (128 x 256, 2975/500)."""

  name = "mtlx_cityscapes"
  MTLX_NAME = "cityscapes"
  CONFIG_CLASS = DenseConfig
  BUILDER_CONFIGS = [DenseConfig(name="default")]
  DEFAULT_SHAPE = (128, 256)
  DEFAULT_CLASSES = 7
  ALLOWED_CLASSES = (7, 19)
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Put MTAN's preprocessed Cityscapes (cityscapes.zip from https://github.com/lorenmt/mtan)
  so that manual_dir contains train/{image,label_7,depth}/<i>.npy and
  val/{image,label_7,depth}/<i>.npy (label_19/ when num_classes=19).
  """

  @classmethod
  def _label_folder(cls, config):
    return f"label_{cls._classes(config)}"
