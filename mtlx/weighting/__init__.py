"""Deprecated alias of :mod:`mtlx.loss_weighting` (renamed; see CHANGELOG.md).

``mtlx.weighting`` (loss space) was too easily confused with ``mtlx.weightings``
(Gramian weight functions). The old import paths keep working:
``mtlx.weighting.<name>`` and ``mtlx.weighting.<submodule>`` resolve to the
same objects as ``mtlx.loss_weighting.<...>``.
"""

import importlib
import pkgutil
import sys

_new = importlib.import_module("mtlx.loss_weighting")  # the package (mtlx.loss_weighting the attribute is the wrapper function)
from mtlx.loss_weighting import *  # noqa: F401,F403
from mtlx.loss_weighting import REGISTRY  # noqa: F401
from mtlx.loss_weighting.base import loss_weighting  # noqa: F401  (old name)

for _info in pkgutil.iter_modules(_new.__path__):
  _module = importlib.import_module(f"mtlx.loss_weighting.{_info.name}")
  sys.modules[f"{__name__}.{_info.name}"] = _module
  globals().setdefault(_info.name, _module)
