"""CAGrad told which tasks are present (the optional extra ``task_mask``): exactly
CAGrad on the present tasks' rows alone, against the float64 NumPy references of
``tests/reference/aggregators_ref.py`` on the TorchJD-style families. (CAGrad
without a mask: ``test_cagrad.py``, ``test_aggregators_reference.py``.)

Every case is embedded in ``K = 8`` rows (its rows at random positions, the other
rows absent) so one vmapped compilation serves them all; the absent rows are zero
(what the step hands) or arbitrary non-zero rows (which must be ignored).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mtlx
from mtlx.aggregators.cagrad import cagrad_weights
from tests import matrix_families as fam
from tests.reference import aggregators_ref as ref

K = 8
CS = (0.4, 1.0)

# Traced c and mask: one compilation for every case (and one for the unmasked K = 8).
_masked = jax.jit(jax.vmap(lambda g, m, c: cagrad_weights(g, c, task_mask=m)))
_unmasked = jax.jit(lambda g, c: cagrad_weights(g, c))


def _families():
  """Small typical matrices (K ≤ 6) and normal 4 × 3 ones scaled by 0 … 1e15."""
  small = [(n, j) for n, j in fam.typical(seed=3) if j.shape[0] <= 6]
  scaled = [(n, j) for n, j in fam.scaled(seed=4) if j.shape[0] == 4][::3]
  return small + scaled


def _expected(jac_p, c):
  """CAGrad of the present rows ``jac_p`` (rescaled by ``1/(1 + c²)``).

  Where the dual optimum is ``Jᵀw* = 0`` (the NumPy formula is 0/0, or 0 is in the
  hull and ``c ≥ 1``) the optimal updates are not unique and mtlx takes the one
  closest to ``g_0``: the projection of ``g_0`` on ``{d : J d ≥ 0}`` (DualProj)."""
  scale = max(np.abs(jac_p).max(), 1e-300)
  with np.errstate(all="ignore"):
    d = ref.cagrad(jac_p, c, rescale=True)
  degenerate = not np.all(np.isfinite(d)) or (
      c >= 1 and np.linalg.norm(ref.min_norm_point(jac_p / scale)) <= 1e-9)
  return ref.dualproj(jac_p) / (1 + c * c) if degenerate else d


def _cases(seed=0):
  rng = np.random.default_rng(seed)
  out = []
  for _, jac in _families():
    k, p = jac.shape
    scale = max(np.abs(jac).max(), 1e-300)
    for _ in range(2):
      sub = rng.random(k) < 0.6
      sub[rng.integers(k)] = True                 # at least one task present
      pos = rng.permutation(K)[:k]                # where the case's rows go
      mask = np.zeros(K, bool)
      mask[pos[sub]] = True
      full = rng.normal(size=(K, p)) * max(scale, 1.0)   # non-zero absent rows
      full[pos] = jac
      for c in CS:
        expected = _expected(jac[sub], c)
        for zero_absent in (True, False):
          j = np.where(mask[:, None], full, 0.0) if zero_absent else full
          out.append((j, mask, c, expected, scale))
  return out


def _full_rank():
  jac = fam.normal(K, 6, 5, np.random.default_rng(0))
  jac[2] *= -3.0
  return jac


@pytest.fixture(scope="module")
def solved():
  """``(cases, weights)``: the family cases, then every task present and no task
  present for each c on one ``K × 6`` Jacobian, in one call."""
  jac = _full_rank()
  cases = _cases()
  grams = [j @ j.T for j, *_ in cases] + [jac @ jac.T] * (2 * len(CS))
  masks = [m for _, m, *_ in cases] + [np.ones(K, bool), np.zeros(K, bool)] * len(CS)
  cs = [c for _, _, c, *_ in cases] + [c for c in CS for _ in range(2)]
  ws = np.asarray(_masked(jnp.asarray(np.stack(grams)), jnp.asarray(np.stack(masks)),
                          jnp.asarray(cs)))
  return cases, ws


def test_direction_is_cagrad_of_the_present_rows(solved):
  cases, ws = solved
  for (j, mask, c, expected, scale), w in zip(cases, ws):
    assert np.all(w[~mask] == 0) and np.all(w >= 0), (w, mask)
    np.testing.assert_allclose(w @ j, expected, rtol=0, atol=1e-8 * scale,
                               err_msg=f"c={c} mask={mask} scale={scale}")


def test_every_task_present_is_the_unmasked_weighting_and_none_present_is_zero(solved):
  cases, ws = solved
  g = jnp.asarray(_full_rank() @ _full_rank().T)
  for i, c in enumerate(CS):
    every, none = ws[len(cases) + 2 * i], ws[len(cases) + 2 * i + 1]
    np.testing.assert_allclose(every, _unmasked(g, c), rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(none, np.zeros(K))
  # task_mask=None is the unmasked path itself (the same program, the same numbers).
  explicit = jax.make_jaxpr(lambda g, c: cagrad_weights(g, c, task_mask=None))(g, 0.4)
  assert str(explicit) == str(jax.make_jaxpr(lambda g, c: cagrad_weights(g, c))(g, 0.4))


def test_the_transform_declares_task_mask_and_errors_name_it():
  tx = mtlx.cagrad()
  assert "task_mask" in tx.extras
  with pytest.raises(ValueError, match="task_mask"):
    tx.update(jnp.ones((3, 4)), tx.init(None), task_mask=jnp.ones(4, bool))
  with pytest.raises(ValueError, match="task_mask"):
    cagrad_weights(jnp.eye(3), task_mask=jnp.ones((3, 1), bool))
