"""Suite-wide settings.

float64 is enabled for the whole suite so references compare at float64; tests
that exercise float32/bf16 pass explicit dtypes. Hypothesis runs a bounded number
of examples without deadlines (compilation times vary on CI).
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
from hypothesis import settings  # noqa: E402

jax.config.update("jax_enable_x64", True)

settings.register_profile("ci", max_examples=30, deadline=None, derandomize=True,
                          print_blob=True)
settings.register_profile("dev", max_examples=100, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


# The longest tests (multi-device subprocesses, executed notebooks, SIGKILL/resume
# subprocesses: 30 s to 4 min each) run first, so the two xdist workers do not end on
# one of them while the other idles (longest-first scheduling; order is otherwise kept).
LONGEST_FIRST = ("tests/test_multidevice_matrix.py", "tests/test_multidevice.py",
                 "tests/test_notebooks.py::test_executes", "tests/test_train_resume.py",
                 "tests/test_train.py::test_compare_end_to_end")


def pytest_collection_modifyitems(config, items):
  del config

  def rank(item):
    for i, prefix in enumerate(LONGEST_FIRST):
      if item.nodeid.startswith(prefix):
        return i
    return len(LONGEST_FIRST)

  items.sort(key=rank)  # stable: the rest keep their collection order
