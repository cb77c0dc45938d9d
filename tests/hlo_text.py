"""Readers of compiled HLO text shared by the tests (no jax import, so the
multi-device subprocess can load it before setting its flags)."""

import re

import numpy as np


def lapack_calls(hlo_text):
  """``(target, batch, n)`` of every LAPACK/BLAS custom call in compiled HLO text:
  ``batch`` matrices of ``n × n`` (read from the first operand's layout constraint)."""
  calls = []
  for target, dims in re.findall(r'custom_call_target="((?:lapack|blas)_\w+)", '
                                 r"operand_layout_constraints=\{\w+\[([\d,]*)\]", hlo_text):
    dims = [int(d) for d in dims.split(",")]
    calls.append((target, int(np.prod(dims[:-2])), dims[-1]))
  return calls
