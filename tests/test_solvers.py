import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, strategies as st

import mtlx
from mtlx import solvers
from tests.hlo_text import lapack_calls
from tests.reference import aggregators_b_ref as ref


@given(k=st.integers(1, 40), seed=st.integers(0, 2**16), scale=st.sampled_from([1e-3, 1.0, 1e3]))
def test_project_simplex_matches_bisection(k, seed, scale):
  v = np.random.default_rng(seed).normal(size=k) * scale
  w = np.asarray(solvers.project_simplex(jnp.asarray(v)))
  np.testing.assert_allclose(w, ref.simplex_projection(v), atol=1e-9 * max(1.0, scale))
  assert np.all(w >= 0) and abs(w.sum() - 1) < 1e-9


def test_project_simplex_nan_propagates():
  assert np.isnan(np.asarray(solvers.project_simplex(jnp.array([1.0, jnp.nan])))).any()


def test_project_simplex_large_float32_inputs():
  v = jnp.array([-9.5e13, -8.8e14], jnp.float32)
  np.testing.assert_allclose(solvers.project_simplex(v), [1.0, 0.0])
  v = jnp.array([3e9, 3e9, -1e10], jnp.float32)
  np.testing.assert_allclose(solvers.project_simplex(v), [0.5, 0.5, 0.0])


# ---------------------------------------------------------------------------
# The batched active-set QPs (issue 13): exact against enumeration in float64,
# on random and degenerate matrices; non-conflicting at K = 256 in float32.
# ---------------------------------------------------------------------------

import jax  # noqa: E402
import pytest  # noqa: E402

import mtlx  # noqa: E402
from mtlx import testing, weightings  # noqa: E402
from tests.reference import solvers_ref  # noqa: E402

_FAMILIES = ("normal", "rank_deficient", "duplicated", "zero_row", "conflicting")


def _cases():
  """Per shape ``(K, P)``: random Jacobians with a shared component (some
  conflict, some do not) and one of every degenerate family; K <= 6 (the
  references enumerate 2^K faces). One stack per shape (one compilation)."""
  rng = np.random.default_rng(0)
  for k, p in ((4, 6), (6, 3), (5, 5)):
    jacs = [rng.normal(size=(k, p)) + rng.uniform(-2, 2) * rng.normal(size=(1, p))
            for _ in range(6)]
    jacs += [testing.make_matrix(fam, k, p, seed=k + p) for fam in _FAMILIES]
    yield np.stack(jacs)


@pytest.mark.parametrize("name", ["upgrad", "dualproj", "mgda"])
def test_batched_qps_match_enumeration_to_1e9(name):
  fn, ref_fn = getattr(weightings, name), getattr(solvers_ref, name)
  for jacs in _cases():
    ws = np.asarray(jax.jit(jax.vmap(fn))(jnp.asarray(np.einsum("nkp,nlp->nkl", jacs, jacs))))
    for w, jac in zip(ws, jacs):
      err = np.linalg.norm(w @ jac - ref_fn(jac)) / np.linalg.norm(jac, axis=1).max()
      assert err <= 1e-9, (name, jac.shape, err)


def test_qps_with_linear_terms_and_batches_match_enumeration():
  rng = np.random.default_rng(5)
  k = 5
  j = rng.normal(size=(k, k + 2))
  g = jnp.asarray(j @ j.T)
  qs = rng.normal(size=(4, k)) * 2.0
  simplex, nonneg = jax.jit(solvers.simplex_qp), jax.jit(solvers.nonneg_qp)
  w, x = np.asarray(simplex(g, jnp.asarray(qs))), np.asarray(nonneg(g, jnp.asarray(qs)))
  for n in range(len(qs)):
    np.testing.assert_allclose(w[n], solvers_ref.simplex_qp(np.asarray(g), qs[n]), atol=1e-9)
    np.testing.assert_allclose(x[n], solvers_ref.nonneg_qp(np.asarray(g), qs[n]), atol=1e-9)
  # A batch of linear terms is the same as the single problems.
  np.testing.assert_allclose(w[1], simplex(g, jnp.asarray(qs[1])), atol=1e-12)


def test_upgrad_pref_vector_and_reg_eps():
  rng = np.random.default_rng(6)
  jac = rng.normal(size=(4, 5)) + rng.normal(size=(1, 5))
  pref = np.array([0.1, 0.2, 0.3, 0.4])
  w = np.asarray(weightings.upgrad(jnp.asarray(jac @ jac.T), pref_vector=jnp.asarray(pref)))
  np.testing.assert_allclose(w @ jac, solvers_ref.upgrad(jac, pref), atol=1e-9)
  # reg_eps: the exact projection for G/tr(G) + eps I (TorchJD's convention).
  g = jac @ jac.T
  greg = g / np.trace(g) + 1e-4 * np.eye(4)
  want = sum((np.eye(4)[i] + solvers_ref.nonneg_qp(greg, greg[i])) for i in range(4)) / 4
  np.testing.assert_allclose(weightings.upgrad(jnp.asarray(g), reg_eps=1e-4), want, atol=1e-9)
  with pytest.raises(ValueError, match="reg_eps"):
    mtlx.upgrad(reg_eps=-1.0)
  with pytest.raises(ValueError, match="pref_vector"):
    mtlx.upgrad(pref_vector=[1.0, -1.0])


def _k256(seed=0, p=12):
  """K = 256 rows in float32 with a common component: the dual cone is not {0}."""
  rng = np.random.default_rng(seed)
  shared = rng.normal(size=(1, p))
  return (0.5 * rng.normal(size=(256, p)) + 2.0 * shared).astype(np.float32)


@pytest.mark.parametrize("name", ["upgrad", "dualproj", "mgda"])
def test_k256_float32_non_conflicting(name):
  jac = _k256()
  tx = getattr(mtlx, name)()
  testing.assert_non_conflicting(tx, jac, rtol=1e-4)
  d = testing.aggregate(tx, jac)
  assert np.all(np.isfinite(d)) and np.linalg.norm(d) > 0


def test_k256_float32_cagrad_solves_its_simplex_qp():
  """CAGrad at K = 256 (through simplex_qp): finite, and with c small its
  direction is the non-conflicting mean of these rows (no task conflicts with it)."""
  jac = _k256(1)
  d = testing.aggregate(mtlx.cagrad(0.1), jac)
  assert np.all(np.isfinite(d))
  testing.assert_non_conflicting(mtlx.cagrad(0.1), jac, rtol=1e-4)
  # The simplex QP itself at K = 256: one problem (exact active set) and a batch
  # of two (ADMM path): both near the min-norm point.
  g = jnp.asarray(jac.astype(np.float64) @ jac.T.astype(np.float64), jnp.float32)
  for w in (np.asarray(solvers.simplex_qp(g)),
            np.asarray(solvers.simplex_qp(g, jnp.zeros((2, 256), jnp.float32)))[1]):
    assert abs(w.sum() - 1) < 1e-5 and w.min() >= 0
    dm = w @ jac
    assert np.all(jac @ dm >= -1e-4 * np.linalg.norm(jac, axis=1).max() ** 2)


# ---------------------------------------------------------------------------
# Face solves on a CPU backend with several devices (issue 17): chunked so that
# jaxlib's LAPACK kernels run inline (see solvers._per_matrix).
# ---------------------------------------------------------------------------

def test_chunked_face_solves_equal_the_batched_ones(monkeypatch):
  k = 32
  jac = np.random.default_rng(3).normal(size=(k, 2 * k))
  gram = jnp.asarray(jac @ jac.T / (2 * k), jnp.float32)
  batched_fn = jax.jit(lambda g: mtlx.upgrad_weights(g))
  assert ("lapack_spotrf_ffi", 32, 32) in lapack_calls(batched_fn.lower(gram).compile().as_text())
  batched = np.asarray(batched_fn(gram))
  monkeypatch.setattr(solvers, "_several_cpu_devices", lambda: True)
  chunked_fn = jax.jit(lambda g: mtlx.upgrad_weights(g))  # a new trace, not jit's cached one
  calls = lapack_calls(chunked_fn.lower(gram).compile().as_text())
  assert ("lapack_spotrf_ffi", 1, 32) in calls
  assert all(batch == 1 for _, batch, _ in calls), calls  # K = 32: one matrix per call
  np.testing.assert_allclose(np.asarray(chunked_fn(gram)), batched, rtol=0,
                             atol=1e-6 * np.abs(batched).max())


def test_several_cpu_devices_is_false_without_a_cpu_backend(monkeypatch):
  def unknown(backend=None):
    raise RuntimeError(f"Unknown backend {backend}")

  monkeypatch.setattr(jax, "local_device_count", unknown)
  assert solvers._several_cpu_devices() is False
