"""Data errors name the file (issue 15, item 11): garbage, NaN/inf, 0..255 images,
fractional labels, empty QM9 files, a data_dir that is a file."""

import os

import numpy as np
import pytest

import mtlx.data
from tests.test_data_real import H, W, _write_mtan, _write_qm9

KW = dict(height=H, width=W)


def _nyuv2(tmp_path):
  manual = str(tmp_path / "nyuv2")
  _write_mtan(manual, {"train": 2, "val": 1}, "label", 13, True, np.random.default_rng(2))
  return manual


def _load(tmp_path, manual, name="nyuv2"):
  return mtlx.data.load_split(name, "train", data_dir=str(tmp_path / "data"),
                              manual_dir=manual, builder_kwargs=KW)


@pytest.mark.parametrize("folder,value,needle", [
    ("image", "garbage", r"cannot read .*train/image/1\.npy as a \.npy array"),
    ("image", np.full((H, W, 3), np.nan, np.float32), r"train/image/1\.npy has \d+ NaN/inf"),
    ("depth", np.full((H, W, 1), np.inf, np.float32), r"train/depth/1\.npy has \d+ NaN/inf"),
    ("image", np.full((H, W, 3), 200.0, np.float32), r"train/image/1\.npy spans .*0\.\.255"),
    ("label", np.full((H, W), 2.5, np.float32), r"train/label/1\.npy has fractional labels"),
    ("depth", np.full((H, W, 1), -1.0, np.float32), r"train/depth/1\.npy has negative depths"),
], ids=["garbage", "nan-image", "inf-depth", "0-255", "fractional", "negative-depth"])
def test_nyuv2_bad_files_are_named(tmp_path, folder, value, needle):
  manual = _nyuv2(tmp_path)
  path = os.path.join(manual, "train", folder, "1.npy")
  if isinstance(value, str):
    with open(path, "wb") as f:
      f.write(b"\x93NUMPY garbage that is not an array" * 3)
  else:
    np.save(path, value)
  with pytest.raises(ValueError, match=needle):
    _load(tmp_path, manual)


def test_data_dir_that_is_a_file(tmp_path):
  path = tmp_path / "a_file"
  path.write_text("x")
  with pytest.raises(ValueError, match=r"data_dir='.*a_file' is a file; expected a directory"):
    mtlx.data.load_split("multi_digits", "train", data_dir=str(path))


@pytest.mark.parametrize("which", ["gdb9.sdf.csv", "gdb9.sdf", "csv-header-only"])
def test_qm9_empty_files_are_named(tmp_path, which):
  manual = str(tmp_path / "qm9")
  _write_qm9(manual, np.random.default_rng(5))
  name = "gdb9.sdf.csv" if which.startswith("csv") else which
  path = os.path.join(manual, name)
  if which == "csv-header-only":
    header = open(path).read().splitlines()[0]
    open(path, "w").write(header + "\n")
    needle = r"gdb9\.sdf\.csv has a header but no rows"
  else:
    open(path, "w").close()
    needle = r"gdb9\.sdf\.csv is empty" if name.endswith("csv") else r"gdb9\.sdf holds no molecules"
  with pytest.raises(ValueError, match=needle):
    mtlx.data.load_split("qm9", "train", data_dir=str(tmp_path / "data"), manual_dir=manual,
                         builder_kwargs=dict(num_test=1, num_validation=1))
