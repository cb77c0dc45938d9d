"""Loss-space MTO methods: re-weight the stacked per-task grads from the task losses.

Every method maps stacked per-task grads (leading K axis) to stacked, re-weighted
per-task grads, so it chains in front of any gradient-space method::

  optax.chain(mtlx.dwa(num_tasks=2), mtlx.linear_scalarization(), optax.adam(1e-3))

``mtlx.loss_weights(tx, state, losses)`` returns the weights from the losses
alone, for the one-backward path. ``REGISTRY`` maps the short names used by
configs to the constructors; ``mtlx.registry`` reads it (``fixed_weights`` needs
its weights and is not registered).
"""

from mtlx.loss_weighting.base import loss_space_weighting
from mtlx.loss_weighting.base import loss_weights
from mtlx.loss_weighting.db_mtl import db_mtl
from mtlx.loss_weighting.dwa import dwa
from mtlx.loss_weighting.famo import famo
from mtlx.loss_weighting.fixed_weights import fixed_weights
from mtlx.loss_weighting.geometric_loss import geometric_loss
from mtlx.loss_weighting.gradnorm import gradnorm
from mtlx.loss_weighting.imtl_l import imtl_l
from mtlx.loss_weighting.normalize_task_scale import normalize_task_scale
from mtlx.loss_weighting.random_loss_weighting import random_loss_weighting
from mtlx.loss_weighting.scale_invariant import scale_invariant
from mtlx.loss_weighting.stch import stch
from mtlx.loss_weighting.uncertainty_weighting import uncertainty_weighting

REGISTRY = {
    "uncertainty": uncertainty_weighting,
    "uncertainty_weighting": uncertainty_weighting,
    "dwa": dwa,
    "rlw": random_loss_weighting,
    "random_loss_weighting": random_loss_weighting,
    "gls": geometric_loss,
    "geometric_loss": geometric_loss,
    "scale_invariant": scale_invariant,
    "imtl_l": imtl_l,
    "gradnorm": gradnorm,
    "db_mtl": db_mtl,
    "famo": famo,
    "stch": stch,
    "normalize_task_scale": normalize_task_scale,
}

__all__ = [
    "REGISTRY",
    "db_mtl",
    "dwa",
    "famo",
    "fixed_weights",
    "geometric_loss",
    "gradnorm",
    "imtl_l",
    "loss_space_weighting",
    "loss_weights",
    "normalize_task_scale",
    "random_loss_weighting",
    "scale_invariant",
    "stch",
    "uncertainty_weighting",
]


class _CallableModule(__import__("types").ModuleType):
  """``mtlx.loss_weighting(fn, ...)`` was the wrapper's name before the package took
  it (CHANGELOG.md): calling the package forwards to :func:`loss_space_weighting`."""

  def __call__(self, *args, **kwargs):
    return loss_space_weighting(*args, **kwargs)


__import__("sys").modules[__name__].__class__ = _CallableModule
