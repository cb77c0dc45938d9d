"""Suite-wide settings.

float64 is enabled for the whole suite so references compare at float64; tests
that exercise float32/bf16 pass explicit dtypes. Hypothesis runs a bounded number
of examples without deadlines (compilation times vary on CI).
"""

import os

import shutil  # noqa: E402
import tempfile  # noqa: E402

os.environ.setdefault("JAX_PLATFORMS", "cpu")

# One persistent XLA compilation cache for the whole session: the xdist workers, the
# subprocesses (SIGKILL/resume runs compile the same step three times) and the
# notebook kernels inherit these variables from the controller, which creates the
# directory and removes it at the end (so every session, like CI, starts cold).
if "MTLX_TEST_JAX_CACHE" not in os.environ:
  os.environ["MTLX_TEST_JAX_CACHE"] = tempfile.mkdtemp(prefix="mtlx-jax-cache-")
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.environ["MTLX_TEST_JAX_CACHE"])
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
  _OWNS_CACHE = True
else:
  _OWNS_CACHE = False

# Test-only XLA:CPU flags: no LLVM optimisation of the compiled kernels. The suite is
# dominated by compiling many small programs, which this makes ~1.5x faster overall
# (the programs and their numerics are XLA's; only the machine code is less tuned).
# Subprocesses inherit it unless they set XLA_FLAGS themselves.
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + FAST_COMPILE).strip()

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


def pytest_unconfigure(config):
  del config
  if _OWNS_CACHE:
    shutil.rmtree(os.environ["MTLX_TEST_JAX_CACHE"], ignore_errors=True)


def pytest_collection_modifyitems(config, items):
  del config

  def rank(item):
    for i, prefix in enumerate(LONGEST_FIRST):
      if item.nodeid.startswith(prefix):
        return i
    return len(LONGEST_FIRST)

  items.sort(key=rank)  # stable: the rest keep their collection order
