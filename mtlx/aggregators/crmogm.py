"""CR-MOGM: an exponential moving average of any Gramian weighting (Zhou et al., NeurIPS 2022)."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

from mtlx import validation
from mtlx import weightings
from mtlx.aggregators.gramian_weighting import gramian_weighting
from mtlx.aggregators.mean import mean_weights


class CRMOGMState(NamedTuple):
  """``count``: steps taken; ``weights``: ``λ_{t-1}``; ``inner``: the wrapped state."""
  count: jax.Array
  weights: jax.Array
  inner: Any


def _resolve(weighting):
  if weighting is None:
    return mean_weights
  if isinstance(weighting, str):
    names = sorted(n for n in getattr(weightings, "__all__", [])
                   if callable(getattr(weightings, n, None)))
    if weighting not in names:
      raise ValueError(f"crmogm: weighting={weighting!r} is not a function of "
                       f"mtlx.weightings; expected a callable or one of {names}.")
    return getattr(weightings, weighting)
  if not callable(weighting):
    raise ValueError(f"crmogm: weighting={weighting!r}; expected a function of the "
                     "Gramian, a name in mtlx.weightings, or None (mean weights).")
  return weighting


def crmogm(weighting: Callable[..., Any] | str | None = None, beta: float = 0.9, *,
           num_tasks: int | None = None,
           init: Callable[[int], Any] | None = None,
           extras: Sequence[str] = ()) -> optax.GradientTransformationExtraArgs:
  """CR-MOGM: smooth the weights of any Gramian weighting with an EMA.

  .. math::
     \\hat λ_t = f(G_t),\\qquad λ_t = β\\, λ_{t-1} + (1 - β)\\, \\hat λ_t,
     \\qquad λ_1 = \\hat λ_1,\\qquad d_t = \\sum_k λ_{t,k} g_k

  Zhou et al. show that stochastic gradient manipulation (MGDA, PCGrad, CAGrad
  …) can fail to converge because the weights depend only on the current noisy
  gradients, and that averaging the weights over time ("correlation-reduced")
  fixes it; ``β`` multiplies the previous weights. Their Corollary 1 lets
  ``β_t`` grow towards 1 as the learning rate decays; here ``β`` is fixed
  (default 0.9, the EMA convention also used by TorchJD's ``CRMOGMWeighting``).

  Args:
    weighting: the wrapped weighting ``f``: a pure function of the Gramian
      (``f(G, **extras) -> [K]``, or stateful ``f(G, state, **extras) ->
      (weights, state)`` with ``init``), or the name of a function in
      :mod:`mtlx.weightings` (e.g. ``"mgda"``), or ``None`` for the mean weights
      ``1/K`` (the registry default ``crmogm``: an EMA of constant weights is the
      mean itself, so pass a real weighting to get CR-MOGM's effect).
    beta: EMA coefficient on the previous weights, in ``[0, 1]`` (0: no smoothing).
    num_tasks: K (the state is ``[K]``); required.
    init: ``init(K) -> state`` when ``weighting`` is stateful.
    extras: keyword extras of ``update`` that ``weighting`` reads (e.g.
      ``('task_losses',)`` for ``mgda`` with a loss normalization).

  Properties: those of ``f`` that survive convex combinations over time (e.g.
  weights on the simplex); non-conflicting only at ``β = 0`` even when ``f`` is,
  since old weights are applied to new gradients; K = 1 returns ``f``'s weight.

  Cost: that of ``f`` plus ``O(K)``; state ``K`` numbers plus ``f``'s state.

  Reference: S. Zhou et al. On the Convergence of Stochastic Multi-Objective
  Gradient Manipulation and Beyond. NeurIPS 2022.
  """
  validation.check_number(beta, "beta", low=0, high=1, method="crmogm")
  fn = _resolve(weighting)
  if not 0.0 <= beta <= 1.0:
    raise ValueError(f"crmogm: beta={beta}; expected a float in [0, 1].")
  stateful = init is not None
  label = f"crmogm({getattr(fn, '__name__', 'weighting')})"

  def init_fn(k):
    k = validation.require_num_tasks(k, "crmogm")
    return CRMOGMState(jnp.zeros((), jnp.int32), jnp.ones((k,)) / k,
                       init(k) if stateful else ())

  def smoothed(gramian, state, **extra):
    kwargs = {n: extra[n] for n in extras if n in extra}
    if stateful:
      w_hat, inner = fn(gramian, state.inner, **kwargs)
    else:
      w_hat, inner = fn(gramian, **kwargs), state.inner
    w_hat = jnp.asarray(w_hat)
    k = gramian.shape[0]
    if w_hat.shape != (k,):
      raise ValueError(f"{label}: the wrapped weighting returned shape {w_hat.shape}; "
                       f"expected ({k},).")
    prev = state.weights.astype(w_hat.dtype)
    w = jnp.where(state.count == 0, w_hat, beta * prev + (1.0 - beta) * w_hat)
    return w, CRMOGMState(state.count + 1, w.astype(state.weights.dtype), inner)

  smoothed.__name__ = label
  return gramian_weighting(smoothed, init=init_fn, num_tasks=num_tasks, name=label,
                           extras=extras)
