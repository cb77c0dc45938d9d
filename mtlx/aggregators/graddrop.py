"""GradDrop: gradient sign dropout (Chen et al., NeurIPS 2020)."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from mtlx import validation


class GradDropState(NamedTuple):
  """The PRNG key of the per-coordinate uniform draws."""
  key: jax.Array


def graddrop_leaf(g: jax.Array, u: jax.Array, leak: jax.Array) -> jax.Array:
  """GradDrop on one stacked leaf ``g`` (``[K, ...]``) with uniforms ``u`` (``[...]``).

  ``P = ½(1 + Σ_k g_k / Σ_k |g_k|)`` (the sign purity; ``½`` where every value is
  0), mask ``M_k = 1[P > U] 1[g_k > 0] + 1[P < U] 1[g_k < 0]``, output
  ``Σ_k (ℓ_k + (1 - ℓ_k) M_k) g_k``.
  """
  acc = jnp.promote_types(g.dtype, jnp.float32)
  rows = [g[i].astype(acc) for i in range(g.shape[0])]
  num = functools.reduce(jnp.add, rows)
  den = functools.reduce(jnp.add, [jnp.abs(r) for r in rows])
  purity = 0.5 * (1.0 + num / jnp.where(den == 0, 1.0, den))
  # Non-finite inputs: keep the NaN of num/den (den is inf or NaN there).
  purity = jnp.where(jnp.isfinite(den), purity, num / den)
  pos, neg = purity > u, purity < u
  leak = leak.astype(acc)
  out = 0.0 * purity
  for i, r in enumerate(rows):
    keep = (pos & (r > 0)) | (neg & (r < 0))
    # Multiply (not select) so NaN/inf values propagate.
    out = out + (leak[i] + (1.0 - leak[i]) * keep.astype(acc)) * r
  return out


def graddrop(leak: Any = 0.0, seed: int = 0) -> optax.GradientTransformationExtraArgs:
  """GradDrop as a gradient-space transform (elementwise, leaf by leaf).

  For every coordinate of every leaf, the sign purity
  ``P = ½(1 + Σ_k g_k / Σ_k |g_k|) ∈ [0, 1]`` and one uniform ``U ~ U[0, 1]``
  decide which sign survives: positive values are kept if ``P > U``, negative
  ones if ``P < U``; the update is ``Σ_k (ℓ_k + (1-ℓ_k) M_k) g_k`` (Chen et al.,
  "Just Pick a Sign: Optimizing Deep Multitask Models with Gradient Sign
  Dropout", NeurIPS 2020, Eq. 1-3; TorchJD's ``GradDrop``). The paper applies it
  to gradients at a shared activation layer, with a sign correction by the
  activations; here it acts on the parameter gradients (as LibMTL and TorchJD
  do for parameters). Not a Gramian weighting: each coordinate gets its own
  mask, so it acts on the stacked leaves directly.

  Args:
    leak: ``ℓ``, a scalar or ``[K]`` vector in ``[0, 1]``: the fraction of each
      task's gradient that always passes (paper: 0; 1 gives the sum).
    seed: seeds the PRNG key kept in the state (split every step; leaf ``n``
      uses ``fold_in(key, n)``).

  Properties: random, so not permutation-invariant step by step (it is in
  distribution); scale-invariant masks, so linear under positive scaling for a
  fixed key; K=1 gives ``g_1`` (``P ∈ {0, 1}`` keeps every non-zero value,
  since ``U < 1`` almost surely); not non-conflicting; all-zero coordinates
  stay zero; non-finite values make their coordinate non-finite.

  Raises:
    ValueError: a ``leak`` outside ``[0, 1]`` (construction) or of the wrong
      length (trace time).

  Cost: ``O(K P)`` elementwise work and ``P`` uniforms; memory ``K P``; no
  Gramian, no extra backward pass.
  """
  validation.check_number(seed, "seed", integer=True, method="graddrop")
  leak_arr = jnp.asarray(leak, jnp.float32)
  if leak_arr.ndim > 1:
    raise ValueError(f"leak has shape {leak_arr.shape}; expected a scalar or a [K] vector.")
  try:
    bad = bool(jnp.any((leak_arr < 0) | (leak_arr > 1)))
  except jax.errors.ConcretizationTypeError:
    bad = False
  if bad:
    raise ValueError(f"leak={leak!r}; expected values in [0, 1].")

  def init_fn(params):
    del params
    return GradDropState(jax.random.PRNGKey(seed))

  def update_fn(task_grads, state, params=None, **extra):
    del params, extra
    k = validation.num_tasks(task_grads)
    if leak_arr.ndim == 1:
      validation.check_vector(leak_arr, k, "leak")
    lk = jnp.broadcast_to(leak_arr, (k,))
    key, sub = jax.random.split(state.key)
    leaves, treedef = jax.tree_util.tree_flatten(task_grads)
    out = []
    for n, g in enumerate(leaves):
      u = jax.random.uniform(jax.random.fold_in(sub, n), g.shape[1:], jnp.float32)
      out.append(graddrop_leaf(g, u, lk).astype(g.dtype))
    return jax.tree_util.tree_unflatten(treedef, out), GradDropState(key)

  return optax.GradientTransformationExtraArgs(
      init_fn, validation.guarded_update(update_fn, "graddrop"))
