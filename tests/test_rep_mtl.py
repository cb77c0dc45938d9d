"""Rep-MTL penalties vs the NumPy reference; λ = 0 is linear scalarization."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtlx import rep_mtl
from tests.reference import rep_mtl_ref


@pytest.mark.parametrize("k", [1, 2, 3])
def test_penalties_match_reference(k):
  s = np.random.default_rng(k).normal(size=(k, 5, 2, 3))
  s[0, 0, 0, 0] = 0.0
  tsr, csa = rep_mtl.rep_mtl_penalties(jnp.asarray(s), temperature=0.2)
  want = rep_mtl_ref.penalties(s, temperature=0.2)
  np.testing.assert_allclose([tsr, csa], want, rtol=1e-10, atol=1e-12)


def test_penalty_extremes():
  # disjoint supports: every feature belongs to one task -> TSR = 0; equal magnitudes -> 1
  s = np.zeros((2, 3, 4)); s[0, :, :2] = 1.0; s[1, :, 2:] = 2.0
  assert float(rep_mtl.rep_mtl_penalties(jnp.asarray(s))[0]) == pytest.approx(0.0, abs=1e-10)
  t = np.ones((2, 3, 4))
  assert float(rep_mtl.rep_mtl_penalties(jnp.asarray(t))[0]) == pytest.approx(1.0, rel=1e-9)


def _model(seed=0, k=3):
  rng = np.random.default_rng(seed)
  enc = {"w": jnp.asarray(rng.normal(size=(4, 6)))}
  heads = {"w": jnp.asarray(rng.normal(size=(6, k)))}
  x = jnp.asarray(rng.normal(size=(5, 4)))
  y = jnp.asarray(rng.normal(size=(5, k)))
  encoder = lambda p, x: jnp.tanh(x @ p["w"])
  heads_fn = lambda p, z, y: jnp.mean((z @ p["w"] - y) ** 2, axis=0)
  return enc, heads, x, y, encoder, heads_fn


def test_zero_weights_give_the_linear_scalarization_gradient_and_grads_are_finite():
  enc, heads, x, y, encoder, heads_fn = _model()
  f0 = rep_mtl.rep_mtl_objective(encoder, heads_fn, tsr_weight=0.0, csa_weight=0.0)
  g0 = jax.grad(lambda e, h: f0(e, h, x, y)[0], argnums=(0, 1))(enc, heads)
  ls = jax.grad(lambda e, h: jnp.sum(heads_fn(h, encoder(e, x), y)), argnums=(0, 1))(enc, heads)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12), g0, ls)
  f = rep_mtl.rep_mtl_objective(encoder, heads_fn)
  (val, aux), g = jax.value_and_grad(lambda e, h: f(e, h, x, y), argnums=(0, 1), has_aux=True)(enc, heads)
  assert all(np.all(np.isfinite(v)) for v in jax.tree_util.tree_leaves(g))
  np.testing.assert_allclose(val, jnp.sum(aux["losses"]) + 0.1 * aux["tsr"] + 0.1 * aux["csa"])
  # the penalty part of the gradient is not zero (it differentiates through the saliencies)
  assert not np.allclose(g[0]["w"], ls[0]["w"])
