"""PCGrad: projecting conflicting gradients (Yu et al., NeurIPS 2020)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from mtlx import validation
from mtlx.aggregators.gramian_weighting import gramian_weighting


class PCGradState(NamedTuple):
  """The PRNG key drawing each step's task orders."""
  key: jax.Array


def pcgrad_weights(gramian: jax.Array, orders: jax.Array | None = None) -> jax.Array:
  """PCGrad as a weighting of the Gramian, for given task orders.

  Every projected gradient is a combination of the rows, ``g_i^{PC} = c_iᵀ J``, so
  the surgery runs on the ``K``-vectors ``c_i`` using only ``G``: start from
  ``c_i = e_i``; for ``j`` in ``orders[i]`` (``j ≠ i``), with
  ``⟨g_i^{PC}, g_j⟩ = (G c_i)_j``, if it is negative set
  ``c_i ← c_i - (G c_i)_j / G_jj · e_j``. The weights are ``w = Σ_i c_i``.

  Args:
    gramian: ``[K, K]``.
    orders: ``[K, K]`` int, row ``i`` a permutation of ``0..K-1`` (the visiting
      order for task ``i``; ``i`` itself is skipped). ``None``: ``0..K-1`` for all.
  """
  k = gramian.shape[-1]
  if orders is None:
    orders = jnp.tile(jnp.arange(k), (k, 1))
  diag = jnp.diag(gramian)
  safe_diag = jnp.where(diag > 0, diag, jnp.ones_like(diag))

  def one_task(i, order):
    def body(pos, c):
      j = order[pos]
      dot = gramian[j] @ c
      hit = (j != i) & (dot < 0) & (diag[j] > 0)
      return c - jnp.where(hit, dot / safe_diag[j], 0.0) * jax.nn.one_hot(j, k, dtype=c.dtype)
    return jax.lax.fori_loop(0, k, body, jax.nn.one_hot(i, k, dtype=gramian.dtype))

  return jnp.sum(jax.vmap(one_task)(jnp.arange(k), orders), axis=0)


def random_orders(key: jax.Array, k: int) -> jax.Array:
  """``[K, K]``: an independent random permutation of the tasks for every task."""
  return jax.vmap(lambda kk: jax.random.permutation(kk, k))(jax.random.split(key, k))


def pcgrad(seed: int = 0) -> optax.GradientTransformationExtraArgs:
  """PCGrad ("gradient surgery") as a gradient-space transform.

  For every task ``i``, in a random order of the other tasks ``j``: if
  ``⟨g_i^{PC}, g_j⟩ < 0``, project ``g_i^{PC} ← g_i^{PC} - ⟨g_i^{PC}, g_j⟩/‖g_j‖² g_j``
  (Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020, Alg. 1);
  the update is the sum ``d = Σ_i g_i^{PC}``. Each task draws its own order every
  step (as LibMTL and the PyTorch port do; the authors' TF code shares one
  order). Convention: LibMTL and the authors' code loop ``j`` over all tasks,
  so ``g_i^{PC}`` is also projected on its own ``g_i`` when it has turned
  against it; mtlx follows the paper's ``j ≠ i`` (the updates differ only for
  K > 2 and only on such steps). Written as a weighting of the Gramian (:func:`pcgrad_weights`): each
  projected gradient is a combination of the rows, so the surgery costs ``O(K³)``
  on ``G`` instead of ``O(K² P)`` on the model.

  Args:
    seed: seeds the PRNG key kept in the state (split every step).

  Properties: linear under scaling over the whole float32
  range, since the weights read the normalised Gramian
  (:func:`mtlx.jacobian.normalized_gramian`); K=1 gives ``g_1``; for K=2 deterministic and
  non-conflicting; for K>2 random (so not permutation-invariant step by step)
  and not guaranteed non-conflicting; zero rows are never projected on;
  non-finite rows propagate.

  Cost: the Gramian (``K² P``), ``K²`` sequential ``K``-vector updates, the
  combination ``K P``; no extra backward pass. State: one PRNG key.
  """
  validation.check_number(seed, "seed", integer=True, method="pcgrad")

  def init(num_tasks):
    del num_tasks
    return PCGradState(jax.random.PRNGKey(seed))

  def weighting(gramian, state):
    key, sub = jax.random.split(state.key)
    orders = random_orders(sub, gramian.shape[-1])
    return pcgrad_weights(gramian, orders), PCGradState(key)

  return gramian_weighting(weighting, init=init, name="pcgrad", scale_invariant=True)
