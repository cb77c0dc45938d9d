import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, strategies as st

import mtlx


@given(k=st.integers(1, 8), seed=st.integers(0, 2**16), weighted=st.booleans())
def test_matches_weighted_sum(k, seed, weighted):
  rng = np.random.default_rng(seed)
  tg = {"a": rng.normal(size=(k, 3)), "b": rng.normal(size=(k, 2, 2))}
  w = rng.uniform(0.1, 2.0, size=k) if weighted else np.ones(k)
  tx = mtlx.linear_scalarization(w if weighted else None)
  out, _ = jax.jit(tx.update)(tg, tx.init(None))
  np.testing.assert_allclose(out["a"], w @ tg["a"], rtol=1e-12)
  np.testing.assert_allclose(out["b"], np.tensordot(w, tg["b"], 1), rtol=1e-12)


def test_chain_with_adam_and_wrong_weights():
  params = {"x": jnp.zeros(3)}
  tx = optax.chain(mtlx.linear_scalarization(jnp.array([1.0, 2.0])), optax.sgd(1.0))
  state = tx.init(params)
  tg = {"x": jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])}
  upd, _ = tx.update(tg, state, params, task_losses=jnp.ones(2))
  np.testing.assert_allclose(upd["x"], [-1.0, -2.0, 0.0])
  tg3 = {"x": jnp.ones((3, 3))}
  with pytest.raises(ValueError, match=r"weights has shape \(2,\); expected shape \(3,\)"):
    tx.update(tg3, state, params)


def test_non_finite_propagates():
  tx = mtlx.linear_scalarization()
  tg = {"x": jnp.array([[1.0, jnp.nan], [0.0, 1.0]])}
  out, _ = tx.update(tg, tx.init(None))
  assert not np.all(np.isfinite(out["x"]))


def test_registry_unknown_names_list_valid_ones():
  with pytest.raises(ValueError, match=r"unknown gradient-space method 'nope'; expected one of \[.*'ls'"):
    mtlx.registry.get_gradient_method("nope")
  with pytest.raises(ValueError, match="unknown method 'nope'"):
    mtlx.registry.parse_method_spec("nope")
  assert mtlx.registry.parse_method_spec("ls") == ("ls", "none")
