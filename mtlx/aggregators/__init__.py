"""Gradient-space MTO methods: stacked per-task grads (leading K axis) -> one update.

Each method's file holds its pure weight function ``<name>_weights(G)`` (when it
is a weighting of the Gramian) next to its transform ``<name>()``; both are
exported here and at the top level (``mtlx.upgrad_weights``, ``mtlx.upgrad``).
Short names for configs live in :mod:`mtlx.registry`.
"""

from mtlx.aggregators.aligned_mtl import aligned_mtl
from mtlx.aggregators.cagrad import cagrad
from mtlx.aggregators.config import config
from mtlx.aggregators.dualproj import dualproj
from mtlx.aggregators.graddrop import graddrop
from mtlx.aggregators.gradvac import gradvac
from mtlx.aggregators.gramian_weighting import CrossGramianWeighting
from mtlx.aggregators.gramian_weighting import GramianWeighting
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


# Part B (issue 4): stochastic / two-batch / priority / fairness methods.
from mtlx.aggregators.crmogm import crmogm
from mtlx.aggregators.excess_mtl import excess_mtl
from mtlx.aggregators.fairgrad import fairgrad
from mtlx.aggregators.moco import moco
from mtlx.aggregators.modo import modo
from mtlx.aggregators.pcd import pcd
from mtlx.aggregators.sdmgrad import sdmgrad

# The pure weight functions, next to their transforms (mtlx.upgrad_weights ...).
from mtlx.aggregators.aligned_mtl import aligned_mtl_weights
from mtlx.aggregators.cagrad import cagrad_weights
from mtlx.aggregators.config import config_weights
from mtlx.aggregators.dualproj import dualproj_weights
from mtlx.aggregators.fairgrad import fairgrad_weights
from mtlx.aggregators.gradvac import gradvac_weights
from mtlx.aggregators.imtl_g import imtl_g_weights
from mtlx.aggregators.krum import krum_weights
from mtlx.aggregators.mean import mean_weights
from mtlx.aggregators.mgda import mgda_weights
from mtlx.aggregators.modo import modo_weights
from mtlx.aggregators.nash_mtl import nash_mtl_weights
from mtlx.aggregators.pcd import pcd_weights
from mtlx.aggregators.pcgrad import pcgrad_weights
from mtlx.aggregators.sdmgrad import sdmgrad_weights
from mtlx.aggregators.upgrad import project_weights
from mtlx.aggregators.upgrad import upgrad_weights

__all__ = [
    "CrossGramianWeighting",
    "GramianWeighting",
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

__all__ += [
    "aligned_mtl_weights", "cagrad_weights", "config_weights", "dualproj_weights",
    "fairgrad_weights", "gradvac_weights", "imtl_g_weights", "krum_weights",
    "mean_weights", "mgda_weights", "modo_weights", "nash_mtl_weights", "pcd_weights",
    "pcgrad_weights", "project_weights", "sdmgrad_weights", "upgrad_weights",
]


def __getattr__(name):
  if name == "REGISTRY":  # the old name -> constructor table, now mtlx.registry's
    from mtlx import registry  # noqa: PLC0415 (cycle)
    return registry.gradient_methods()
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
