"""Loss-space MTO methods: re-weight the stacked per-task grads from the task losses.

Every method maps stacked per-task grads (leading K axis) to stacked, re-weighted
per-task grads, so it chains in front of any gradient-space method::

  optax.chain(mtlx.dwa(num_tasks=2), mtlx.linear_scalarization(), optax.adam(1e-3))

Each transform is a :class:`LossWeighting` that carries its weight function;
``mtlx.loss_weights(tx, state, losses)`` calls it on the losses alone (the
one-backward and Gramian engines). Short names for configs live in
:mod:`mtlx.registry` (``fixed_weights`` needs its weights and is not registered).
"""

from mtlx.loss_weighting.base import LossWeighting
from mtlx.loss_weighting.base import loss_chain
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

__all__ = [
    "LossWeighting",
    "db_mtl",
    "dwa",
    "famo",
    "fixed_weights",
    "geometric_loss",
    "gradnorm",
    "imtl_l",
    "loss_chain",
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

  @property
  def REGISTRY(self):  # noqa: N802 - the old name -> constructor table, now mtlx.registry's
    from mtlx import registry  # noqa: PLC0415 (cycle)
    return registry.loss_methods()


__import__("sys").modules[__name__].__class__ = _CallableModule
