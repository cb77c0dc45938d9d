"""EPO: exact Pareto optimal search (Mahapatra & Rajan, ICML 2020)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from mtlx import validation
from mtlx.aggregators.gramian_weighting import gramian_weighting
from mtlx.pareto import _lp
from mtlx.pareto.preference import check_preference


def epo_weights(gramian: jax.Array, task_losses: jax.Array, preference: jax.Array, *,
                eps: float = 1e-4, relax: bool = False) -> jax.Array:
  """EPO's weights ``α ∈ Δ_K`` from the Gramian ``C = JJᵀ`` and the losses.

  With ``l̂ = r⊙L / Σ r⊙L`` and the non-uniformity ``μ = KL(l̂ ‖ 1/K) = Σ l̂_k
  \\log(K l̂_k)``, the "adjustment" ``a = r ⊙ (\\log(K l̂) - μ)``:

  * balance mode (``μ > ε``): ``max_α αᵀCa`` over the simplex subject to
    ``(Cα)_j ≥ (Ca)_j`` for tasks with ``(Ca)_j ≤ 0`` and ``(Cα)_{j*} ≥ 0`` for
    ``j* = argmax r⊙L`` (when no ``(Ca)_j > 0``: ``Cα ≥ 0``);
  * descent mode (``μ ≤ ε``): ``max_α 1ᵀCα`` subject to ``Cα ≥ 0`` and
    ``αᵀCa ≥ min(max_j (Ca)_j, 0)`` (the last constraint dropped with ``relax``).

  This is the authors' ``EPO_LP.get_alpha`` with ``C=True``; the LPs are solved
  exactly by :func:`mtlx.pareto._lp.simplex_lp` (a two-phase tableau simplex
  method with a fixed pivot budget) instead of cvxpy/GLPK. Losses must be positive (the log): a zero or negative loss
  gives non-finite weights.
  """
  dtype = gramian.dtype
  k = gramian.shape[-1]
  losses = jnp.asarray(task_losses).astype(dtype)
  r = jnp.asarray(preference, dtype)
  rl = r * losses
  l_hat = rl / jnp.sum(rl)
  log_term = jnp.log(l_hat * k)
  mu = jnp.sum(l_hat * log_term)
  adjust = r * (log_term - mu)
  c_mat = gramian
  ca = c_mat @ adjust

  # Balance LP.
  some_positive = jnp.any(ca > 0)
  j_star = rl == jnp.max(rl)
  active_bal = jnp.where(some_positive, (ca <= 0) | j_star, jnp.ones((k,), bool))
  rhs_bal = jnp.where(some_positive, jnp.where(j_star, 0.0, ca), 0.0)
  alpha_bal = _lp.simplex_lp(ca, c_mat, rhs_bal, active_bal)

  # Descent ("dominance") LP.
  a_dom = jnp.concatenate([c_mat, ca[None, :]], axis=0)
  b_dom = jnp.concatenate([jnp.zeros((k,), dtype),
                           jnp.minimum(jnp.max(ca), 0.0)[None]])
  active_dom = jnp.concatenate([jnp.ones((k,), bool), jnp.array([not relax])])
  alpha_dom = _lp.simplex_lp(jnp.sum(c_mat, axis=0), a_dom, b_dom, active_dom)
  return jnp.where(mu > eps, alpha_bal, alpha_dom)


def epo(preference, *, eps: float = 1e-4,
        relax: bool = False) -> optax.GradientTransformationExtraArgs:
  """EPO as a gradient-space transform: the update that reaches the ray of ``r``.

  Exact Pareto optimal search (Mahapatra & Rajan, "Multi-Task Learning with User
  Preferences: Gradient Descent with Controlled Ascent in Pareto Optimization",
  ICML 2020). EPO's preference is read as in the paper: the target is the
  point of the front on the ray ``r_1 L_1 = r_2 L_2 = … = r_K L_K``, i.e.
  ``L ∝ 1/r`` (a larger ``r_k`` asks for a smaller ``L_k``). While the losses
  are off that ray (``KL(l̂ ‖ 1/K) > ε``) the update is a "balance" direction
  that lowers the relatively worst ``r_k L_k`` most (and may raise tasks that
  are ahead); on the ray it descends every task at once (see
  :func:`epo_weights`). The update is ``d = Σ_k α_k g_k`` with ``α`` on the
  simplex.

  Args:
    preference: ``r`` (K positive numbers, normalised to sum 1).
    eps: ``ε`` of the mode switch (authors' default 1e-4).
    relax: drop the descent LP's constraint ``αᵀCa ≥ min(max Ca, 0)`` (the
      authors' ``relax`` flag, default off).

  Extra arguments of ``update``: ``task_losses`` (``[K]``, positive; required).

  Cost: the Gramian (``K² P``), two exact LPs of K variables and K (K+1)
  constraints (tableau simplex, at most ``8K + 12`` pivots of ``O(K²)`` each,
  :mod:`mtlx.pareto._lp`), and the combination (``K P``); no extra backward
  pass. No cvxpy/scipy, no host callback: jittable and vmappable.
  """
  r = check_preference(preference, "epo")
  if r.min() <= 0:
    raise ValueError(f"epo: preference={r.tolist()} has a zero entry; expected positive "
                     "entries (EPO's ray r_k L_k = const needs r > 0).")
  validation.check_number(eps, "eps", low=0.0, method="epo")
  k = r.shape[0]

  def weighting(gramian, task_losses=None):
    validation.check_task_losses(task_losses, k, "epo")
    return epo_weights(gramian, task_losses, r, eps=eps, relax=relax)

  return gramian_weighting(weighting, num_tasks=k, name="epo", extras=("task_losses",))
