"""Bi-objective problems with known fronts, for tests and examples (float64 NumPy fronts).

* Two convex quadratics: ``L_k(x) = ‖x - c_k‖²`` (``x ∈ R^n``). The Pareto set is
  the segment ``x = c_1 + t (c_2 - c_1)``, ``t ∈ [0, 1]``, the front
  ``(t² D, (1-t)² D)`` with ``D = ‖c_1 - c_2‖²``, i.e. ``√L_1 + √L_2 = √D``
  (convex); its hypervolume with the reference point ``(D, D)`` is ``5D²/6``.
* ZDT1 and ZDT2 (Zitzler, Deb & Thiele 2000) on ``x ∈ [0, 1]^n``:
  ``f_1 = x_1``, ``g = 1 + 9 Σ_{i≥2} x_i/(n-1)``, ``f_2 = g (1 - √(f_1/g))``
  (ZDT1, convex front ``f_2 = 1 - √f_1``) or ``g (1 - (f_1/g)²)`` (ZDT2,
  concave front ``f_2 = 1 - f_1²``); the Pareto set is ``x_{2..n} = 0``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def quadratics_losses(x: jax.Array, centers: jax.Array) -> jax.Array:
  """``[‖x - c_1‖², ‖x - c_2‖²]`` (``centers`` of shape ``[2, n]``)."""
  return jnp.sum((x[None, :] - centers) ** 2, axis=-1)


def quadratics_front(d: float, num: int = 1001) -> np.ndarray:
  """``[num, 2]`` points of the two-quadratics front for ``D = d``."""
  t = np.linspace(0.0, 1.0, num)
  return np.stack([t ** 2 * d, (1 - t) ** 2 * d], axis=1)


def quadratics_hypervolume(d: float) -> float:
  """The front's hypervolume with the reference point ``(D, D)``: ``5D²/6``."""
  return 5.0 * d * d / 6.0


def zdt_losses(x: jax.Array, which: int = 1) -> jax.Array:
  """``[f_1, f_2]`` of ZDT1 (``which=1``) or ZDT2 (``which=2``); ``x ∈ [0, 1]^n``."""
  f1 = x[0]
  g = 1.0 + 9.0 * jnp.sum(x[1:]) / (x.shape[0] - 1)
  h = 1.0 - jnp.sqrt(f1 / g) if which == 1 else 1.0 - (f1 / g) ** 2
  return jnp.stack([f1, g * h])


def zdt_front(which: int = 1, num: int = 1001) -> np.ndarray:
  """``[num, 2]`` points of the ZDT1 / ZDT2 front."""
  f1 = np.linspace(0.0, 1.0, num)
  f2 = 1.0 - np.sqrt(f1) if which == 1 else 1.0 - f1 ** 2
  return np.stack([f1, f2], axis=1)
