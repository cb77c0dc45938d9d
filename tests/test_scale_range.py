"""float32 range (issue 15 item 7): scale-invariant weightings read the Gramian of
the rows divided by their largest entry, so rows scaled by 1e-30 ... 1e30 give
the weights of scale 1 (the update scaled by the same factor) and never NaN."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mtlx
from mtlx import jacobian
from tests import registry_lines

K, P = 5, 8
SCALES = (1e-30, 1e-20, 1e-10, 1e10, 1e20, 1e30)


def _declares_scale_invariant(m):
  """Built with ``gramian_weighting(..., scale_invariant=True)``."""
  return getattr(m.build(K if m.takes_num_tasks else None), "scale_invariant", False)


# Registry lines with scale_invariant=True, plus variants beyond the registry defaults.
METHODS = dict({n: (lambda n=n: registry_lines.build(n, K))
                for n in registry_lines.names("gradient", _declares_scale_invariant)},
               mgda_loss=lambda: mtlx.mgda("loss"))


def _jac():
  rng = np.random.default_rng(0)
  return (rng.normal(size=(K, P)) + 0.5 * rng.normal(size=(1, P))).astype(np.float32)


def test_normalized_gramian_is_exact_and_finite():
  jac = _jac()
  g1 = np.asarray(jacobian.gramian({"a": jnp.asarray(jac)}))
  for c in SCALES + (1.0,):
    tg = {"a": jnp.asarray(jac[:, :3] * c), "b": jnp.asarray(jac[:, 3:] * c)}
    g_hat, s = jax.jit(jacobian.normalized_gramian)(tg)
    s = float(s)
    assert np.all(np.isfinite(np.asarray(g_hat)))
    # s is a power of two just above max|J|, so G = s^2 Ĝ relates to scale 1.
    assert s / 2 <= np.abs(jac * np.float32(c)).max() <= s
    np.testing.assert_allclose(np.asarray(g_hat) * (s / c) ** 2, g1, rtol=1e-5, atol=1e-6)
  # Non-finite entries propagate.
  bad = jac.copy()
  bad[0, 0] = np.nan
  assert not np.all(np.isfinite(np.asarray(jacobian.normalized_gramian({"a": jnp.asarray(bad)})[0])))


@pytest.mark.parametrize("name", sorted(METHODS))
def test_scale_invariant_weights_over_float32_range(name):
  jac = _jac()
  tx = METHODS[name]()
  losses = jnp.arange(1.0, K + 1.0, dtype=jnp.float32)

  def update(m):
    tg = {"w": m}
    out, _ = tx.update(tg, tx.init({"w": m[0]}), task_losses=losses)
    return out["w"]

  f = jax.jit(update)
  base = np.asarray(f(jnp.asarray(jac)), np.float64)
  assert np.linalg.norm(base) > 0
  for c in SCALES:
    got = np.asarray(f(jnp.asarray(jac * np.float32(c))), np.float64)
    assert np.all(np.isfinite(got)), (name, c)
    np.testing.assert_allclose(got / c, base, rtol=2e-4, atol=2e-5 * np.abs(base).max(),
                               err_msg=f"{name} at scale {c:g}")
