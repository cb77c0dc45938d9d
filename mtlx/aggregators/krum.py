"""Krum: Byzantine-robust selection of task gradients (Blanchard et al., NeurIPS 2017)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from mtlx import validation
from mtlx.aggregators.gramian_weighting import gramian_weighting


def _check(k, n_byzantine, n_selected):
  if k < n_byzantine + 3:
    raise ValueError(f"krum with n_byzantine={n_byzantine} needs K >= n_byzantine + 3 = "
                     f"{n_byzantine + 3} task gradients; got K={k}.")
  if k < n_selected:
    raise ValueError(f"krum with n_selected={n_selected} needs K >= {n_selected}; got K={k}.")


def krum_weights(gramian: jax.Array, n_byzantine: int, n_selected: int = 1) -> jax.Array:
  """Krum weights of the Gramian.

  Squared distances ``D_ij = G_ii + G_jj - 2 G_ij``; the score of row ``i`` is the
  sum of its ``K - n_byzantine - 2`` smallest distances to the other rows; the
  ``n_selected`` rows of lowest score get weight ``1/n_selected`` (ties: lowest
  index first), the others 0. A non-finite Gramian gives NaN weights.

  Raises:
    ValueError: at trace time if ``K < n_byzantine + 3`` or ``K < n_selected``.
  """
  k = gramian.shape[-1]
  _check(k, n_byzantine, n_selected)
  diag = jnp.diag(gramian)
  dist = diag[:, None] + diag[None, :] - 2.0 * gramian
  n_closest = k - n_byzantine - 2
  # The smallest n_closest + 1 include the zero self-distance; drop it.
  smallest = -jax.lax.top_k(-dist, n_closest + 1)[0]
  scores = jnp.sum(smallest, axis=1) - jnp.min(smallest, axis=1)
  _, selected = jax.lax.top_k(-scores, n_selected)
  weights = jnp.sum(jax.nn.one_hot(selected, k, dtype=gramian.dtype), axis=0) / n_selected
  return weights + 0.0 * jnp.sum(gramian)


def krum(n_byzantine: int, n_selected: int = 1) -> optax.GradientTransformationExtraArgs:
  """Krum (and Multi-Krum) as a gradient-space transform.

  Each task gradient is scored by the sum of squared distances to its
  ``K - f - 2`` nearest other task gradients (``f = n_byzantine``); the update is
  the mean of the ``n_selected`` best-scored gradients (Blanchard et al.,
  "Machine Learning with Adversaries: Byzantine Tolerant Gradient Descent",
  NeurIPS 2017; El Mhamdi et al. 2018 for Multi-Krum; TorchJD's ``Krum``).
  Distances come from the Gramian, so this is a Gramian weighting
  (:func:`krum_weights`) and never flattens the model. Convention: the scores
  sum *squared* distances, as in the paper; TorchJD's ``Krum`` sums plain
  distances, so the selected rows can differ when the distances are uneven.

  Args:
    n_byzantine: the number ``f`` of rows that may be adversarial; needs
      ``K ≥ f + 3``. The registry name ``'krum'`` uses ``n_byzantine=1``.
    n_selected: how many rows to average (1: Krum; more: Multi-Krum).

  Properties: linear under scaling (the selection is scale-free) over the whole float32
  range, since the weights read the normalised Gramian
  (:func:`mtlx.jacobian.normalized_gramian`);
  permutation-invariant up to ties; K=1 is not allowed (``K ≥ f + 3``); not
  non-conflicting; robust to ``f`` arbitrary finite rows. Non-finite rows are
  NOT ignored: they make the update non-finite (so ``optax.apply_if_finite`` can
  skip the step) — mtlx never repairs non-finite inputs silently.

  Raises:
    ValueError: bad ``n_byzantine``/``n_selected`` at construction; too few tasks
      at trace time.

  Cost: the Gramian (``K² P``), a ``K×K`` top-k, the combination ``K P``.
  """
  validation.check_number(n_byzantine, "n_byzantine", low=0, integer=True, method="krum")
  validation.check_number(n_selected, "n_selected", low=1, integer=True, method="krum")
  if not (isinstance(n_byzantine, int) and n_byzantine >= 0):
    raise ValueError(f"n_byzantine={n_byzantine!r}; expected an int >= 0.")
  if not (isinstance(n_selected, int) and n_selected >= 1):
    raise ValueError(f"n_selected={n_selected!r}; expected an int >= 1.")
  return gramian_weighting(lambda gramian: krum_weights(gramian, n_byzantine, n_selected),
                           name="krum", scale_invariant=True)
