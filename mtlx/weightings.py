"""Pure weightings of the Gramian: ``f(G) -> w`` (``[K, K] -> [K]``).

Each is the core of a gradient-space method; ``mtlx.gramian_weighting(f)`` turns
any of them (or your own) into an optax transform. The update of the method is
``d = Σ_k w_k g_k``. Stateless ones are ``f(gramian, **options) -> w``; the
randomised or stateful ones take their order / state explicitly:
``pcgrad(gramian, orders)``, ``gradvac(gramian, targets, orders, beta) -> (w,
targets)``, ``nash_mtl(gramian, init) -> α``, ``fairgrad(gramian, warm_start)
-> (w, w̃)``. Two take the cross matrix ``C = J₁ J₂ᵀ`` of two independent
batches in place of ``G`` (``mtlx.cross_gramian_weighting(f)`` turns them into
transforms):
``sdmgrad(cross, weights) -> (ω, w)`` and ``modo(cross, weights) -> λ``.

Each function lives in its method's module (``mtlx/aggregators/<name>.py``, as
``<name>_weights``) and is exported at the top level under that name
(``mtlx.upgrad_weights``); this module is the older alias that re-exports it under the
method's name (``mtlx.weightings.upgrad is mtlx.upgrad_weights``).
"""

from mtlx.aggregators.aligned_mtl import aligned_mtl_weights as aligned_mtl
from mtlx.aggregators.cagrad import cagrad_weights as cagrad
from mtlx.aggregators.config import config_weights as config
from mtlx.aggregators.dualproj import dualproj_weights as dualproj
from mtlx.aggregators.fairgrad import fairgrad_weights as fairgrad
from mtlx.aggregators.gradvac import gradvac_weights as gradvac
from mtlx.aggregators.imtl_g import imtl_g_weights as imtl_g
from mtlx.aggregators.krum import krum_weights as krum
from mtlx.aggregators.mean import mean_weights as mean
from mtlx.aggregators.mgda import mgda_weights as mgda
from mtlx.aggregators.modo import modo_weights as modo
from mtlx.aggregators.nash_mtl import nash_mtl_weights as nash_mtl
from mtlx.aggregators.pcd import pcd_weights as pcd
from mtlx.aggregators.pcgrad import pcgrad_weights as pcgrad
from mtlx.aggregators.sdmgrad import sdmgrad_weights as sdmgrad
from mtlx.aggregators.upgrad import project_weights
from mtlx.aggregators.upgrad import upgrad_weights as upgrad

__all__ = [
    "aligned_mtl",
    "cagrad",
    "config",
    "dualproj",
    "fairgrad",
    "gradvac",
    "imtl_g",
    "krum",
    "mean",
    "mgda",
    "modo",
    "nash_mtl",
    "pcd",
    "pcgrad",
    "project_weights",
    "sdmgrad",
    "upgrad",
]
