"""Gradient-space MTO methods: stacked per-task grads (leading K axis) -> one update.

``REGISTRY`` maps the short names used by configs and ``--methods`` flags to the
constructors; ``mtlx.registry`` reads it. Methods with required arguments are
registered with defaults: ``'krum'`` is ``krum(n_byzantine=1)`` (needs K >= 4) and
``'trimmed_mean'`` is ``trimmed_mean(trim_number=1)`` (needs K >= 3); both accept
overrides through ``method_kwargs``.
"""

import functools

from mtlx.aggregators.aligned_mtl import aligned_mtl
from mtlx.aggregators.cagrad import cagrad
from mtlx.aggregators.config import config
from mtlx.aggregators.dualproj import dualproj
from mtlx.aggregators.graddrop import graddrop
from mtlx.aggregators.gradvac import gradvac
from mtlx.aggregators.gramian_weighting import cross_gramian_weighting
from mtlx.aggregators.gramian_weighting import gramian_weighting
from mtlx.aggregators.imtl_g import imtl_g
from mtlx.aggregators.krum import krum
from mtlx.aggregators.linear_scalarization import linear_scalarization
from mtlx.aggregators.mean import mean
from mtlx.aggregators.mgda import mgda
from mtlx.aggregators.nash_mtl import nash_mtl
from mtlx.aggregators.partition import calibrate_magnitudes
from mtlx.aggregators.partition import partition
from mtlx.aggregators.pcgrad import pcgrad
from mtlx.aggregators.trimmed_mean import trimmed_mean
from mtlx.aggregators.upgrad import upgrad


def _with_defaults(fn, **defaults):
  """``fn`` with default arguments (overridable) that keeps ``fn``'s name and docs."""
  wrapped = functools.partial(fn, **defaults)
  functools.update_wrapper(wrapped, fn)
  return wrapped


# Part B (issue 4): stochastic / two-batch / priority / fairness methods.
from mtlx.aggregators.crmogm import crmogm
from mtlx.aggregators.excess_mtl import excess_mtl
from mtlx.aggregators.fairgrad import fairgrad
from mtlx.aggregators.moco import moco
from mtlx.aggregators.modo import modo
from mtlx.aggregators.pcd import pcd
from mtlx.aggregators.sdmgrad import sdmgrad

REGISTRY = {
    "ls": linear_scalarization,
    "linear_scalarization": linear_scalarization,
    "mean": mean,
    "mgda": mgda,
    "pcgrad": pcgrad,
    "gradvac": gradvac,
    "graddrop": graddrop,
    "cagrad": cagrad,
    "imtl_g": imtl_g,
    "nash_mtl": nash_mtl,
    "aligned_mtl": aligned_mtl,
    "upgrad": upgrad,
    "dualproj": dualproj,
    "config": config,
    "krum": _with_defaults(krum, n_byzantine=1),
    "trimmed_mean": _with_defaults(trimmed_mean, trim_number=1),
}

# Part B. "crmogm" with no arguments smooths the mean weights (a no-op EMA);
# configs pick the wrapped weighting by name: crmogm(weighting="mgda").
REGISTRY.update({
    "crmogm": crmogm,
    "excess_mtl": excess_mtl,
    "fairgrad": fairgrad,
    "moco": moco,
    "modo": modo,
    "pcd": pcd,
    "sdmgrad": sdmgrad,
})

__all__ = [
    "aligned_mtl",
    "cagrad",
    "config",
    "cross_gramian_weighting",
    "dualproj",
    "graddrop",
    "gradvac",
    "gramian_weighting",
    "imtl_g",
    "krum",
    "linear_scalarization",
    "mean",
    "mgda",
    "nash_mtl",
    "pcgrad",
    "trimmed_mean",
    "upgrad",
]

__all__ += ["calibrate_magnitudes", "partition"]
__all__ += ["crmogm", "excess_mtl", "fairgrad", "moco", "modo", "pcd", "sdmgrad"]
