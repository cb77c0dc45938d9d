"""Pareto fronts: preference-conditioned methods, whole-front learning, front metrics.

* Scalarizations (loss-space transforms of a preference ``r``): :func:`linear`,
  :func:`tchebycheff`, :func:`smooth_tchebycheff`, :func:`pbi`,
  :func:`cosine_penalty` (each with its pure ``*_weights`` function).
* Preference-directed gradient methods (gradient-space transforms):
  :func:`epo`, :func:`pmtl`.
* Preferences: :func:`simplex_grid`, :func:`circle_points`,
  :func:`sample_preferences`.
* Front metrics (host-side NumPy): :func:`non_dominated`,
  :func:`non_dominated_mask`, :func:`hypervolume`, :func:`igd`,
  :func:`igd_plus`, :func:`spread`.
* Known fronts for tests and examples: :mod:`mtlx.pareto.problems`.
* The whole front in one run: :mod:`mtlx.pareto.manifold` (PaMaL),
  :mod:`mtlx.pareto.cosmos`, :mod:`mtlx.pareto.hypernetwork` (PHN),
  :mod:`mtlx.pareto.palora`, :mod:`mtlx.pareto.soups` (Rewarded soups).

Reached lazily as ``mtlx.pareto``.
"""

from mtlx.pareto import problems
from mtlx.pareto.cosmos import condition_on_preference
from mtlx.pareto.cosmos import cosmos_objective
from mtlx.pareto.front import convex_combination
from mtlx.pareto.front import front_losses
from mtlx.pareto.hypernetwork import Hypernetwork
from mtlx.pareto.hypernetwork import hypernetwork
from mtlx.pareto.hypernetwork import phn_epo_grads
from mtlx.pareto.hypernetwork import phn_objective
from mtlx.pareto.manifold import pamal_init
from mtlx.pareto.manifold import pamal_objective
from mtlx.pareto.manifold import pamal_params
from mtlx.pareto.palora import PaLoRAParams
from mtlx.pareto.palora import palora_init
from mtlx.pareto.palora import palora_objective
from mtlx.pareto.palora import palora_params
from mtlx.pareto.palora import palora_schedule
from mtlx.pareto.soups import soup
from mtlx.pareto.soups import soup_front
from mtlx.pareto.epo import epo
from mtlx.pareto.epo import epo_weights
from mtlx.pareto.metrics import hypervolume
from mtlx.pareto.metrics import igd
from mtlx.pareto.metrics import igd_plus
from mtlx.pareto.metrics import non_dominated
from mtlx.pareto.metrics import non_dominated_mask
from mtlx.pareto.metrics import spread
from mtlx.pareto.pmtl import pmtl
from mtlx.pareto.pmtl import pmtl_init_weights
from mtlx.pareto.pmtl import pmtl_weights
from mtlx.pareto.preference import check_preference
from mtlx.pareto.preference import circle_points
from mtlx.pareto.preference import sample_preferences
from mtlx.pareto.preference import simplex_grid
from mtlx.pareto.scalarizations import cosine_penalty
from mtlx.pareto.scalarizations import cosine_penalty_weights
from mtlx.pareto.scalarizations import linear
from mtlx.pareto.scalarizations import linear_weights
from mtlx.pareto.scalarizations import pbi
from mtlx.pareto.scalarizations import pbi_weights
from mtlx.pareto.scalarizations import smooth_tchebycheff
from mtlx.pareto.scalarizations import smooth_tchebycheff_weights
from mtlx.pareto.scalarizations import tchebycheff
from mtlx.pareto.scalarizations import tchebycheff_weights

__all__ = [
    "Hypernetwork", "PaLoRAParams", "condition_on_preference", "convex_combination",
    "cosmos_objective", "front_losses", "hypernetwork", "pamal_init", "pamal_objective",
    "pamal_params", "palora_init", "palora_objective", "palora_params", "palora_schedule",
    "phn_epo_grads", "phn_objective", "soup", "soup_front",
    "check_preference", "circle_points", "cosine_penalty", "cosine_penalty_weights",
    "epo", "epo_weights", "hypervolume", "igd", "igd_plus", "linear",
    "linear_weights", "non_dominated", "non_dominated_mask", "pbi", "pbi_weights",
    "pmtl", "pmtl_init_weights", "pmtl_weights", "sample_preferences",
    "simplex_grid", "smooth_tchebycheff", "smooth_tchebycheff_weights", "spread",
    "tchebycheff", "tchebycheff_weights",
]
