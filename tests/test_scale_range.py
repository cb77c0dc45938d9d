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
    # s is a power of two just above the largest row norm, so G = s^2 Ĝ relates to
    # scale 1 and the largest diagonal entry of Ĝ is in [1/4, 1).
    norm = np.linalg.norm(jac.astype(np.float64) * c, axis=1).max()
    assert s / 2 <= norm * (1 + 1e-6) and norm <= s * (1 + 1e-6)
    assert 0.25 * (1 - 1e-5) <= np.diag(np.asarray(g_hat)).max() < 1 + 1e-5
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


def _autogram_problem():
  """A small model with a dense layer (activation path), a bias (fallback) and K
  heads; ``batch = (x, c)`` scales every loss by ``c`` (traced: one compile)."""
  rng = np.random.default_rng(1)
  params = {"w1": jnp.asarray(rng.normal(size=(4, 6)), jnp.float32),
            "b1": jnp.asarray(rng.normal(size=(6,)), jnp.float32),
            "heads": jnp.asarray(rng.normal(size=(K, 6)), jnp.float32)}
  x = jnp.asarray(rng.normal(size=(7, 4)), jnp.float32)
  targets = jnp.asarray(rng.normal(size=(7, K)), jnp.float32)

  def loss_fn(p, batch):
    xb, c = batch
    h = jnp.tanh(xb @ p["w1"] + p["b1"])
    return c * jnp.mean((h @ p["heads"].T - targets) ** 2, axis=0)

  return loss_fn, params, x


def test_gramian_engine_is_scale_invariant_over_float32_range():
  """value_and_normalized_gramian: Ĝ s² = G at every scale (G itself under/overflows
  at 1e-30 / 1e30), and the Gramian and Jacobian engines log the UPGrad weights
  of scale 1 at every scale."""
  import optax  # noqa: PLC0415
  from mtlx import autogram  # noqa: PLC0415
  from mtlx import train as T  # noqa: PLC0415
  loss_fn, params, x = _autogram_problem()
  _, tg = mtlx.value_and_jacobian(loss_fn)(params, (x, jnp.float32(1.0)))
  jac = np.concatenate([np.asarray(g, np.float64).reshape(K, -1)
                        for g in jax.tree_util.tree_leaves(tg)], axis=1)
  g1 = jac @ jac.T
  vg = jax.jit(autogram.value_and_normalized_gramian(loss_fn))
  steps = {e: T.make_step(loss_fn, grad_tx=mtlx.upgrad(), optimizer=optax.sgd(0.0),
                          engine=e) for e in ("gramian", "jacobian")}
  states = {e: st.init(params, (x, jnp.float32(1.0))) for e, st in steps.items()}
  base = {e: np.asarray(steps[e].step(states[e], (x, jnp.float32(1.0)))[1]["weights"])
          for e in steps}
  np.testing.assert_allclose(base["gramian"], base["jacobian"], rtol=1e-4)
  raw = jax.jit(autogram.value_and_gramian(loss_fn))
  assert not np.all(np.asarray(raw(params, (x, jnp.float32(1e-30)))[1]) > 0)  # underflow
  for c in SCALES + (1.0,):
    batch = (x, jnp.float32(c))
    _, (g_hat, s) = vg(params, batch)
    g_hat, s = np.asarray(g_hat, np.float64), float(s)
    assert np.all(np.isfinite(g_hat)), c
    assert 0.25 * (1 - 1e-5) <= np.diag(g_hat).max() < 1 + 1e-5
    np.testing.assert_allclose(g_hat * (s / c) ** 2, g1, rtol=2e-4, atol=1e-6 * g1.max(),
                               err_msg=f"scale {c:g}")
    for e, st in steps.items():
      _, info = st.step(states[e], batch)
      np.testing.assert_allclose(np.asarray(info["weights"]), base[e], rtol=2e-4,
                                 err_msg=f"{e} engine at scale {c:g}")
      assert np.all(np.isfinite(np.asarray(info["cosines"])))
  _, (g_nan, _) = vg(params, (x, jnp.float32(np.nan)))
  assert not np.all(np.isfinite(np.asarray(g_nan)))

