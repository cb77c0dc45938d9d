"""mtlx.pareto scalarizations, EPO and Pareto MTL: weights against float64 references, and
the points they reach on problems with known fronts.

Tolerances (stated once, asserted below):
* scalarization weights = the numerical gradient of the reference value (1e-6);
* EPO's LPs (tableau simplex): objective within 1e-9·scale of HiGHS's optimum,
  constraints violated by at most 1e-9·scale (scale = max |G|);
* Pareto MTL weights = the support-enumeration reference (1e-6);
* found points on the front: two quadratics |√L₁ + √L₂ - 1| ≤ 1e-3 and the
  scalarization's own minimiser on the front within 1e-2 in t; ZDT1/ZDT2
  |f₂ - front(f₁)| ≤ 1e-3; EPO on the ray of 1/r within 1°.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mtlx
from mtlx import pareto
from mtlx.pareto import problems
from tests.reference import pareto_ref

CENTERS = jnp.array([[0.0, 0.0], [1.0, 0.0]])
X0 = jnp.array([0.3, 1.0])


def quad_loss(x):
  return problems.quadratics_losses(x, CENTERS)


def run(loss, tx, x0, steps, project=None):
  """Projected descent with the chain ``tx`` (jitted lax.scan); the final x."""
  vj = mtlx.value_and_jacobian(loss)

  @jax.jit
  def go(x0):
    def step(carry, _):
      x, state = carry
      l, g = vj(x)
      u, state = tx.update(g, state, x, task_losses=l)
      x = optax.apply_updates(x, u)
      return (x if project is None else project(x), state), None
    (x, _), _ = jax.lax.scan(step, (x0, tx.init(x0)), None, length=steps)
    return x

  return np.asarray(go(x0))


# ---------------------------------------------------------------------------
# Weights against the numerical gradient of the reference scalarization value.
# ---------------------------------------------------------------------------

CASES = [
    ("linear", pareto.linear_weights, lambda l, r: pareto_ref.linear(l, r), {}),
    ("tchebycheff", lambda l, r: pareto.tchebycheff_weights(l, r, jnp.full(3, -0.1)),
     lambda l, r: pareto_ref.tchebycheff(l, r, -0.1), {}),
    ("smooth_tchebycheff",
     lambda l, r: pareto.smooth_tchebycheff_weights(l, r, jnp.full(3, 0.05), mu=0.3),
     lambda l, r: pareto_ref.smooth_tchebycheff(l, r, 0.05, 0.3), {}),
    ("pbi", lambda l, r: pareto.pbi_weights(l, r, jnp.zeros(3), theta=5.0),
     lambda l, r: pareto_ref.pbi(l, r, 0.0, 5.0), {}),
    ("cosine_penalty", lambda l, r: pareto.cosine_penalty_weights(l, r, penalty=2.0),
     lambda l, r: pareto_ref.cosine_penalty(l, r, 2.0), {}),
]


@pytest.mark.parametrize("name, weights, value, _", CASES, ids=[c[0] for c in CASES])
def test_scalarization_weights_are_gradients(name, weights, value, _):
  rng = np.random.default_rng(1)
  for _ in range(5):
    l = rng.uniform(0.1, 2.0, 3)
    r = rng.dirichlet(np.ones(3))
    got = np.asarray(weights(jnp.asarray(l), jnp.asarray(r)))
    want = pareto_ref.numeric_grad(lambda ll: value(ll, r), l)
    np.testing.assert_allclose(got, want, atol=1e-6, err_msg=name)


def test_transform_scales_rows_and_one_backward_path():
  r = np.array([0.3, 0.7])
  tx = pareto.smooth_tchebycheff(r, mu=0.2)
  losses = jnp.array([0.5, 1.5])
  grads = {"w": jnp.arange(6.0).reshape(2, 3)}
  out, _ = tx.update(grads, tx.init(None), task_losses=losses)
  w = pareto.smooth_tchebycheff_weights(losses, r, None, 0.2)
  np.testing.assert_allclose(out["w"], w[:, None] * grads["w"], rtol=1e-12)
  w1, _ = mtlx.loss_weights(tx, tx.init(None), losses)
  np.testing.assert_allclose(w1, w, rtol=1e-12)


# ---------------------------------------------------------------------------
# Points found on the two-quadratics front (D = 1, front √L₁ + √L₂ = 1).
# ---------------------------------------------------------------------------

T_GRID = np.linspace(0.0, 1.0, 100001)


def _front_minimiser(value):
  f = np.stack([T_GRID ** 2, (1 - T_GRID) ** 2], 1)
  return T_GRID[np.argmin([value(p) for p in f])]


SCALARIZATIONS = {
    "linear": (lambda r: pareto.linear(r), lambda r: (lambda l: pareto_ref.linear(l, r))),
    "tchebycheff": (lambda r: pareto.tchebycheff(r),
                    lambda r: (lambda l: pareto_ref.tchebycheff(l, r, 0.0))),
    "smooth_tchebycheff": (lambda r: pareto.smooth_tchebycheff(r, mu=0.02),
                           lambda r: (lambda l: pareto_ref.smooth_tchebycheff(l, r, 0.0, 0.02))),
    "pbi": (lambda r: pareto.pbi(r, theta=5.0),
            lambda r: (lambda l: pareto_ref.pbi(l, r, 0.0, 5.0))),
    "cosine_penalty": (lambda r: pareto.cosine_penalty(r, penalty=1.0),
                       lambda r: (lambda l: pareto_ref.cosine_penalty(l, r, 1.0))),
}


@pytest.mark.parametrize("name", sorted(SCALARIZATIONS))
def test_scalarization_reaches_its_front_point_on_quadratics(name):
  make, value = SCALARIZATIONS[name]
  lr = optax.exponential_decay(0.2, 400, 0.05)  # decaying: the max is not smooth
  for r in (np.array([0.3, 0.7]), np.array([0.75, 0.25])):
    tx = optax.chain(make(r), mtlx.linear_scalarization(), optax.sgd(lr))
    x = run(quad_loss, tx, X0, 1200)
    l = np.asarray(quad_loss(jnp.asarray(x)))
    assert abs(np.sqrt(l[0]) + np.sqrt(l[1]) - 1.0) < 1e-3, (name, r, l)
    t_star = _front_minimiser(value(r))
    assert abs(x[0] - t_star) < 1e-2, (name, r, x, t_star)


@pytest.mark.parametrize("which", [1, 2])
@pytest.mark.parametrize("name", ["tchebycheff", "smooth_tchebycheff", "pbi", "linear"])
def test_scalarization_lands_on_zdt_front(name, which):
  make, value = SCALARIZATIONS[name]
  r = np.array([0.4, 0.6])
  lr = optax.exponential_decay(0.05, 500, 0.05)
  tx = optax.chain(make(r), mtlx.linear_scalarization(), optax.sgd(lr))
  loss = functools.partial(problems.zdt_losses, which=which)
  x0 = jnp.array([0.5, 0.6, 0.4, 0.7, 0.2])
  x = run(loss, tx, x0, 1500, project=lambda x: jnp.clip(x, 0.0, 1.0))
  f = np.asarray(loss(jnp.asarray(x)))
  front_f2 = 1 - np.sqrt(f[0]) if which == 1 else 1 - f[0] ** 2
  assert abs(f[1] - front_f2) < 1e-3, (name, which, f)
  if name != "linear" or which == 1:  # linear on a concave front: an end, either one
    grid = problems.zdt_front(which, 100001)
    f1_star = grid[np.argmin([value(r)(p) for p in grid]), 0]
    assert abs(f[0] - f1_star) < 1e-2, (name, which, f, f1_star)


# ---------------------------------------------------------------------------
# EPO.
# ---------------------------------------------------------------------------

EPO_WEIGHTS = jax.jit(pareto.epo_weights, static_argnames=("relax",))


def test_simplex_lp_against_highs():
  rng = np.random.default_rng(0)
  for k in (2, 3, 5):
    for _ in range(6):
      a = rng.normal(size=(k, 4 * k))
      gram = a @ a.T
      losses = rng.uniform(0.2, 2.0, k)
      r = rng.dirichlet(np.ones(k))
      for eps in (1e-4, 1e3):  # balance mode, then forced descent mode
        mode, c, a_ub, b_ub = pareto_ref.epo_mode_and_lp(gram, losses, r, eps)
        want = pareto_ref.epo_alpha(gram, losses, r, eps)
        if want is None:  # infeasible LP: nothing to compare against
          continue
        got = np.asarray(EPO_WEIGHTS(jnp.asarray(gram), jnp.asarray(losses),
                                     jnp.asarray(r), eps=eps))
        scale = np.abs(gram).max()
        assert abs(got.sum() - 1) < 1e-9 and got.min() >= 0
        assert c @ got >= c @ want - 1e-9 * scale, (mode, k, got, want)
        assert np.min(a_ub @ got - b_ub) >= -1e-9 * scale, (mode, k)


def _angle_deg(u, v):
  cos = np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v))
  return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


@pytest.mark.parametrize("r", [(0.5, 0.5), (0.2, 0.8), (0.85, 0.15)])
def test_epo_reaches_the_ray_on_quadratics(r):
  r = np.asarray(r)
  tx = optax.chain(pareto.epo(r), optax.sgd(0.05))
  x = run(quad_loss, tx, X0, 400)
  l = np.asarray(quad_loss(jnp.asarray(x)))
  assert abs(np.sqrt(l[0]) + np.sqrt(l[1]) - 1.0) < 1e-3, l
  assert _angle_deg(l, 1 / r) < 1.0, (r, l)


def test_epo_reaches_the_ray_on_zdt1():
  r = np.array([0.6, 0.4])
  tx = optax.chain(pareto.epo(r), optax.sgd(0.02))
  loss = functools.partial(problems.zdt_losses, which=1)
  x = run(loss, tx, jnp.array([0.5, 0.6, 0.4, 0.7, 0.2]), 1500,
          project=lambda x: jnp.clip(x, 1e-6, 1.0))
  f = np.asarray(loss(jnp.asarray(x)))
  assert abs(f[1] - (1 - np.sqrt(f[0]))) < 1e-3, f
  assert _angle_deg(f, 1 / r) < 1.0, f


def test_epo_jit_vmap_and_nan():
  tx = pareto.epo([0.3, 0.7])
  g = {"w": jnp.array([[1.0, 0.5, 0.0], [-0.2, 1.0, 0.3]])}
  losses = jnp.array([0.4, 0.9])
  update = jax.jit(lambda g, l: tx.update(g, tx.init(None), task_losses=l)[0])
  out = update(g, losses)
  batched = jax.jit(jax.vmap(update))(
      jax.tree_util.tree_map(lambda a: jnp.stack([a, a]), g), jnp.stack([losses, losses]))
  np.testing.assert_allclose(batched["w"][0], out["w"], rtol=1e-10)
  bad = update(g, jnp.array([jnp.nan, 0.9]))
  assert not np.all(np.isfinite(bad["w"]))


# ---------------------------------------------------------------------------
# Pareto MTL.
# ---------------------------------------------------------------------------

PMTL_WEIGHTS = jax.jit(pareto.pmtl_weights)
PMTL_INIT_WEIGHTS = jax.jit(pareto.pmtl_init_weights)


def test_pmtl_weights_against_reference():
  rng = np.random.default_rng(3)
  refs = pareto.circle_points(5)
  checked_active = 0
  for _ in range(12):
    jac = rng.normal(size=(2, 6))
    losses = rng.uniform(0.1, 2.0, 2)
    i = int(rng.integers(0, 5))
    gram = jnp.asarray(jac @ jac.T)
    got = np.asarray(PMTL_WEIGHTS(gram, jnp.asarray(losses), refs, i))
    np.testing.assert_allclose(got, pareto_ref.pmtl_weights(jac, losses, refs, i), atol=1e-6)
    got0 = np.asarray(PMTL_INIT_WEIGHTS(gram, jnp.asarray(losses), refs, i))
    want0 = pareto_ref.pmtl_init_weights(jac, losses, refs, i)
    np.testing.assert_allclose(got0, want0, atol=1e-6)
    checked_active += bool(np.any(want0 != 0))
  assert checked_active >= 3


@pytest.mark.parametrize("index", [1, 3])
def test_pmtl_lands_in_its_sector_on_quadratics(index):
  refs = pareto.circle_points(5)
  tx = optax.chain(pareto.pmtl(refs, index, init_steps=200), optax.sgd(0.01))
  x = run(quad_loss, tx, X0, 1500)
  l = np.asarray(quad_loss(jnp.asarray(x)))
  assert abs(np.sqrt(l[0]) + np.sqrt(l[1]) - 1.0) < 1e-3, l
  # In the closed sector of u_index: no other reference vector is closer in angle.
  cos = refs @ (l / np.linalg.norm(l))
  assert cos[index] >= cos.max() - 1e-4, (index, l, cos)


# ---------------------------------------------------------------------------
# Bad input.
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("call, match", [
    (lambda: pareto.linear([0.5, -0.1]), "preference"),
    (lambda: pareto.tchebycheff([[0.5, 0.5]]), "preference has shape"),
    (lambda: pareto.smooth_tchebycheff([0.5, 0.5], mu=0.0), "mu"),
    (lambda: pareto.pbi([0.5, 0.5], theta=-1.0), "theta"),
    (lambda: pareto.pbi([0.5, 0.5], ideal=[0.0]), "ideal"),
    (lambda: pareto.cosine_penalty([0, 0], penalty=1.0), "preference"),
    (lambda: pareto.epo([1.0, 0.0]), "zero entry"),
    (lambda: pareto.epo([0.5, 0.5], eps=-1.0), "eps"),
    (lambda: pareto.pmtl(pareto.circle_points(3), 3), "index"),
    (lambda: pareto.pmtl(np.ones(3), 0), "reference_vectors"),
])
def test_bad_constructor_arguments(call, match):
  with pytest.raises(ValueError, match=match):
    call()


def test_epo_needs_losses_and_matching_k():
  tx = pareto.epo([0.5, 0.5])
  g = jnp.ones((2, 3))
  with pytest.raises(ValueError, match="task_losses"):
    tx.update(g, tx.init(None))
  with pytest.raises(ValueError, match="num_tasks=2"):
    tx.update(jnp.ones((3, 3)), tx.init(None), task_losses=jnp.ones(3))
