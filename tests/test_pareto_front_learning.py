"""Whole-front learning (PaMaL, PaLoRA, PHN-LS, PHN-EPO, COSMOS, Rewarded soups) on the
two-quadratics problem, whose front has hypervolume 5/6 with the reference point (1, 1).

Each method is trained from scratch with adam, then evaluated at 101 evenly spaced
preferences; the hypervolume of the points it reaches must be within the stated
fraction of the analytic front's (measured values in the comments; a perfect
101-point front scores 0.9960). COSMOS is the exception: its scalarization's own
minimisers span only part of this front, which is what it is checked against."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mtlx import pareto
from mtlx.pareto import problems

CENTERS = jnp.array([[0.0, 0.0], [1.0, 0.0]])
REF = np.array([1.0, 1.0])
PREFS = jnp.asarray(pareto.simplex_grid(2, 101))
HV_STAR = problems.quadratics_hypervolume(1.0)
X0 = jnp.array([0.5, 0.3])  # initial target (EPO and the cosine need L > 0)


def quad(x, batch=None):
  del batch
  return problems.quadratics_losses(jnp.reshape(x, (-1,)), CENTERS)


def train(objective, params, steps, lr=1e-2, grads_fn=None):
  """``steps`` adam steps on ``objective(params, None, key_or_step)`` (one jitted scan)."""
  opt = optax.adam(lr)

  def step(carry, i):
    p, s = carry
    key = jax.random.fold_in(jax.random.PRNGKey(0), i)
    if grads_fn is None:
      g, _ = jax.grad(objective, has_aux=True)(p, None, key if objective_uses_key else i)
    else:
      g, _ = grads_fn(p, None, key)
    u, s = opt.update(g, s, p)
    return (optax.apply_updates(p, u), s), None

  objective_uses_key = not getattr(objective, "uses_step", False)
  (p, _), _ = jax.jit(lambda p: jax.lax.scan(step, (p, opt.init(p)), jnp.arange(steps)))(params)
  return p


def hv_fraction(losses):
  losses = np.asarray(losses)
  return pareto.hypervolume(losses, REF) / HV_STAR


def test_discretised_analytic_front_reference():
  # What a perfect 101-point front scores: the bar below is relative to 5/6.
  t = np.linspace(0, 1, 101)
  assert hv_fraction(np.stack([t ** 2, (1 - t) ** 2], 1)) > 0.995  # measured 0.9960


def test_pamal():
  anchors = pareto.pamal_init(lambda k: jax.random.normal(k, (2,)), jax.random.PRNGKey(1), 2)
  obj = pareto.pamal_objective(quad, num_tasks=2, num_samples=4)
  anchors = train(obj, anchors, 1500, lr=2e-2)
  front = pareto.front_losses(pareto.pamal_params, anchors, PREFS, quad)
  assert hv_fraction(front) > 0.99  # measured 0.9960 (the 101-point analytic front's)


def test_palora():
  p = pareto.palora_init(jnp.array([[0.3, 0.8]]), jax.random.PRNGKey(2), 2, rank=1)
  obj = pareto.palora_objective(quad, num_tasks=2, total_steps=1000, num_points=5)
  obj.uses_step = True
  p = train(obj, p, 1500, lr=2e-2)
  front = pareto.front_losses(pareto.palora_params, p, PREFS, quad)
  assert hv_fraction(front) > 0.99  # measured 0.9960


def test_phn_ls():
  hnet = pareto.hypernetwork(X0, 2, hidden=(32, 32))
  phi = hnet.init(jax.random.PRNGKey(3))
  obj = pareto.phn_objective(hnet, quad, num_tasks=2, alpha=1.0, num_samples=4)
  phi = train(obj, phi, 2000, lr=3e-3)
  front = pareto.front_losses(hnet.apply, phi, PREFS, quad)
  assert hv_fraction(front) > 0.98  # measured 0.9960


def test_phn_epo():
  hnet = pareto.hypernetwork(X0, 2, hidden=(32, 32))
  phi = hnet.init(jax.random.PRNGKey(4))
  grads_fn = pareto.phn_epo_grads(hnet, quad, num_tasks=2, alpha=1.0)
  phi = train(None, phi, 1500, lr=3e-3, grads_fn=grads_fn)
  front = pareto.front_losses(hnet.apply, phi, PREFS, quad)
  assert hv_fraction(front) > 0.97  # measured 0.9894


def test_cosmos():
  # The network's input is r itself: x(r) = MLP(r).
  hnet = pareto.hypernetwork(X0, 2, hidden=(32, 32))
  params = hnet.init(jax.random.PRNGKey(5))
  obj = pareto.cosmos_objective(lambda p, b, r: quad(hnet.apply(p, r)), num_tasks=2,
                                penalty=1.0, num_samples=4)
  params = train(obj, params, 2000, lr=3e-3)
  front = np.asarray(pareto.front_losses(hnet.apply, params, PREFS, quad))
  # On this problem the cosine term (L ∥ r) and the linear term (small L_k for large
  # r_k) pull apart, so COSMOS's own minimisers only span t ∈ [0.40, 0.60] at λ = 1:
  # its front is narrower than the analytic one by design. Check that it finds
  # them: on the front, at the scalarization's minimiser for each r.
  assert np.max(np.abs(np.sqrt(front).sum(1) - 1.0)) < 2e-2
  t = np.linspace(0, 1, 20001)
  f = np.stack([t ** 2, (1 - t) ** 2], 1)
  for i in (0, 25, 50, 75, 100):
    r = np.asarray(PREFS[i])
    v = f @ r - (f @ r) / (np.linalg.norm(r) * np.linalg.norm(f, axis=1))
    t_star = t[np.argmin(v)]
    assert abs(np.sqrt(front[i, 0]) - t_star) < 3e-2, (i, front[i], t_star)
  assert hv_fraction(front) > 0.8  # measured 0.8313


def test_soups_interpolate_finetuned_models():
  base = jnp.array([0.5, 0.5])
  finetuned = [CENTERS[0], CENTERS[1]]  # each task's optimum
  front = pareto.soup_front(base, finetuned, PREFS, quad)
  assert hv_fraction(front) > 0.995  # measured 0.9960: the interpolation is the Pareto set
  np.testing.assert_allclose(pareto.soup(base, finetuned, jnp.array([0.25, 0.75])),
                             [0.75, 0.0], atol=1e-12)


def test_palora_schedule_matches_the_authors_sampler():
  # t = 0: all uniform; t = 1: grid**5 normalised (AnnealingSampler, mul=5, eps=0.01).
  np.testing.assert_allclose(pareto.palora_schedule(0, 10, 2, 3), np.full((3, 2), 0.5))
  s = np.array([0.01, 0.5, 0.99])
  g = np.stack([s, 1 - s], 1) ** 5
  np.testing.assert_allclose(pareto.palora_schedule(10, 10, 2, 3), g / g.sum(1, keepdims=True),
                             rtol=1e-5)
