"""mtlx: multi-task optimization for JAX, as composable optax transforms.

The pipeline (see DESIGN.md)::

  losses, task_grads = mtlx.value_and_jacobian(loss_fn)(params, batch)
  tx = optax.chain(<loss-space transforms>, <gradient-space aggregator>, <optax optimizer>)
  updates, state = tx.update(task_grads, state, params, task_losses=losses)
"""

# Foundation: per-task Jacobians, Gramians and their combination.
from mtlx.jacobian import RepresentationJacobian
from mtlx.jacobian import combine
from mtlx.jacobian import cross_gramian
from mtlx.jacobian import gramian
from mtlx.jacobian import value_and_jacobian
from mtlx.jacobian import value_and_representation_jacobian
from mtlx.autogram import value_and_gramian
from mtlx.sharpness import flat_regions
from mtlx.sharpness import value_and_sharpness_jacobian

from mtlx import problems
from mtlx import weightings
from mtlx import registry
from mtlx import validation

# Gradient-space methods (mtlx/aggregators): every public name in its __all__.
from mtlx.aggregators import *  # noqa: F401,F403

# Loss-space methods (mtlx/loss_weighting): every public name in its __all__.
from mtlx.loss_weighting import *  # noqa: F401,F403

__version__ = "0.1.0"

# Submodules imported on first access (mtlx.data pulls in tensorflow-datasets).
_LAZY_SUBMODULES = ("affinity", "data", "merging", "metrics", "models", "pareto", "rl", "sharding",
                    "testing", "train")


def __getattr__(name):
  if name in _LAZY_SUBMODULES:
    import importlib
    return importlib.import_module(f"mtlx.{name}")
  raise AttributeError(f"module 'mtlx' has no attribute {name!r}")
