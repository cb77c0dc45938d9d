"""Multi-task architectures (Flax NNX), each split into a shared encoder and a
task-specific decoder (``mtlx.models.split`` gives pure functions and params).

``get_model(name, input_shape=..., tasks=..., **kwargs)`` builds one by name.
Transformers: ``vit`` (:mod:`mtlx.models.vit`) and ``gpt`` (:mod:`mtlx.models.gpt`),
with per-task LoRA (:mod:`mtlx.models.lora`) and sparse MoE
(:mod:`mtlx.models.sparse_moe`) options and size presets.
"""

from __future__ import annotations

from typing import Any, Sequence

from mtlx.models.base import MTLModel
from mtlx.models.base import ModelFns
from mtlx.models.base import count_params
from mtlx.models.base import split
from mtlx.models.cross_stitch import cross_stitch
from mtlx.models.hard_sharing import hps
from mtlx.models.moe import dselect_k
from mtlx.models.moe import mmoe
from mtlx.models.attention import mtan
from mtlx.models.progressive import cgc
from mtlx.models.progressive import ple
from mtlx.models.two_branch import two_branch
from mtlx.models.vit import vit
from mtlx.models.gpt import gpt
from mtlx.models.gpt import lm_task_losses
from mtlx.models.transformer import aux_losses
from mtlx.models.lora import mto_mask
from mtlx.models.lora import param_labels

REGISTRY = {
    "hps": hps,
    "cross_stitch": cross_stitch,
    "mmoe": mmoe,
    "cgc": cgc,
    "ple": ple,
    "mtan": mtan,
    "dselect_k": dselect_k,
    "two_branch": two_branch,
    "vit": vit,
    "gpt": gpt,
}


def model_names() -> list[str]:
  """Names accepted by :func:`get_model`."""
  return sorted(REGISTRY)


def get_model(name: str, *, input_shape: Sequence[int], tasks: Sequence[Any],
              **kwargs) -> MTLModel:
  """Builds the architecture ``name`` for inputs of per-example ``input_shape`` and
  the given TaskSpecs; ``kwargs`` go to its constructor (``widths``, ``hidden``,
  ``head_hidden``, ``num_experts``, ``seed`` ...).

  Raises:
    ValueError: for an unknown name (listing the valid ones) or an unknown keyword.
  """
  if name not in REGISTRY:
    raise ValueError(f"unknown model {name!r}; expected one of {model_names()}.")
  import inspect
  params = inspect.signature(REGISTRY[name]).parameters
  bad = sorted(k for k in kwargs if k not in params)
  if bad:
    valid = sorted(k for k in params if k not in ("input_shape", "tasks"))
    raise ValueError(f"model {name!r} got unknown arguments {bad}; expected some of "
                     f"{valid}.")
  return REGISTRY[name](input_shape, tasks, **kwargs)


__all__ = [
    "MTLModel", "ModelFns", "REGISTRY", "aux_losses", "count_params", "cross_stitch",
    "cgc", "dselect_k", "get_model", "gpt", "hps", "lm_task_losses", "mmoe",
    "model_names", "mto_mask", "mtan", "param_labels", "ple", "split", "two_branch", "vit",
]
