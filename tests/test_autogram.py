"""mtlx.value_and_gramian (layer-wise Gramian, no K × P Jacobian) against the Jacobian path."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax

import mtlx
from mtlx import autogram
from tests.reference import autogram_ref


def _jacobian_gramian(loss_fn, params, *args):
  losses, jac = mtlx.value_and_jacobian(loss_fn)(params, *args)
  return losses, mtlx.gramian(jac)


def _check(loss_fn, params, *args, method="auto", rtol=1e-10):
  losses, gram = jax.jit(mtlx.value_and_gramian(loss_fn, method=method))(params, *args)
  ref_losses, ref_gram = _jacobian_gramian(loss_fn, params, *args)
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-12)
  scale = np.abs(ref_gram).max()
  np.testing.assert_allclose(gram, ref_gram, rtol=rtol, atol=rtol * scale)
  return gram


KEYS = jax.random.split(jax.random.key(0), 16)

# ----------------------------------------------------------------- MLP


def mlp(p, x, y):
  h = jnp.tanh(x @ p["w1"] + p["b1"])
  return jnp.mean((h @ p["w2"] - y) ** 2, axis=0)


MLP_P = {"w1": jax.random.normal(KEYS[0], (5, 7), jnp.float64),
         "b1": 0.1 * jax.random.normal(KEYS[1], (7,), jnp.float64),
         "w2": jax.random.normal(KEYS[2], (7, 3), jnp.float64)}
MLP_X = jax.random.normal(KEYS[3], (6, 5), jnp.float64)
MLP_Y = jax.random.normal(KEYS[4], (6, 3), jnp.float64)


@pytest.mark.parametrize("method", ["auto", "ghost", "direct"])
def test_mlp_equals_jacobian_and_numpy_reference(method):
  gram = _check(mlp, MLP_P, MLP_X, MLP_Y, method=method)
  losses, ref = autogram_ref.mlp_losses_and_gramian(MLP_P["w1"], MLP_P["b1"], MLP_P["w2"],
                                                    MLP_X, MLP_Y)
  np.testing.assert_allclose(gram, ref, rtol=1e-10, atol=1e-10 * np.abs(ref).max())
  plan = autogram.autogram_plan(mlp, MLP_P, MLP_X, MLP_Y)
  assert plan.layers == {"['w1']": "dot", "['w2']": "dot"}
  assert plan.fallback == ["['b1']"]


# ----------------------------------------------------------------- CNN


def cnn(p, x, y):
  h = lax.conv_general_dilated(x, p["c1"], (2, 2), "SAME",
                               dimension_numbers=("NHWC", "HWIO", "NHWC"))
  h = jax.nn.relu(h + p["c1_b"])
  h = jnp.transpose(h, (0, 3, 1, 2))  # NCHW for the second conv's layout
  h = lax.conv_general_dilated(h, p["c2"], (1, 1), ((1, 0), (0, 1)), rhs_dilation=(1, 2),
                               dimension_numbers=("NCHW", "OIHW", "NCHW"))
  h = jnp.tanh(h).mean(axis=(2, 3))
  out = h @ p["head"]
  return jnp.mean((out - y) ** 2, axis=0)


CNN_P = {"c1": 0.5 * jax.random.normal(KEYS[5], (3, 3, 2, 4), jnp.float64),
         "c1_b": 0.1 * jax.random.normal(KEYS[6], (4,), jnp.float64),
         "c2": 0.5 * jax.random.normal(KEYS[7], (5, 4, 2, 2), jnp.float64),
         "head": jax.random.normal(KEYS[8], (5, 4), jnp.float64)}
CNN_X = jax.random.normal(KEYS[9], (3, 8, 8, 2), jnp.float64)
CNN_Y = jax.random.normal(KEYS[10], (3, 4), jnp.float64)


@pytest.mark.parametrize("method", ["ghost", "direct"])
def test_cnn_equals_jacobian(method):
  _check(cnn, CNN_P, CNN_X, CNN_Y, method=method)
  plan = autogram.autogram_plan(cnn, CNN_P, CNN_X, CNN_Y)
  assert plan.layers == {"['c1']": "conv", "['c2']": "conv", "['head']": "dot"}


# ----------------------------------------------------------------- embedding + attention


def layer_norm(h, scale):
  h = h - h.mean(-1, keepdims=True)
  return h * lax.rsqrt((h ** 2).mean(-1, keepdims=True) + 1e-6) * scale


def attention(p, tokens, y):
  e = jnp.take(p["embed"], tokens, axis=0)                    # [B, T, D] gather
  q = jnp.einsum("btd,dhk->bthk", e, p["wq"])
  k = jnp.einsum("btd,dhk->bthk", e, p["wk"])
  v = jnp.einsum("btd,dhk->bthk", e, p["wv"])
  att = jax.nn.softmax(jnp.einsum("bqhk,bshk->bhqs", q, k) / 2.0, axis=-1)
  o = jnp.einsum("bhqs,bshk->bqhk", att, v)
  h = e + jnp.einsum("bqhk,hkd->bqd", o, p["wo"])
  h = layer_norm(h, p["ln"]).mean(axis=1)                       # [B, D]
  out = h @ p["heads"]                                          # [B, K]
  return jnp.mean((out - y) ** 2, axis=0)


D, H, HK, V = 6, 2, 3, 11
ATT_P = {"embed": jax.random.normal(KEYS[11], (V, D), jnp.float64),
         "wq": 0.4 * jax.random.normal(KEYS[12], (D, H, HK), jnp.float64),
         "wk": 0.4 * jax.random.normal(KEYS[13], (D, H, HK), jnp.float64),
         "wv": 0.4 * jax.random.normal(KEYS[14], (D, H, HK), jnp.float64),
         "wo": 0.4 * jax.random.normal(KEYS[15], (H, HK, D), jnp.float64),
         "ln": jnp.linspace(0.5, 1.5, D, dtype=jnp.float64),
         "heads": jax.random.normal(KEYS[0], (D, 5), jnp.float64)}
# Repeated tokens so several rows hit the same embedding row.
ATT_T = jnp.array([[1, 3, 3, 7], [0, 1, 10, 1], [2, 2, 2, 9]], jnp.int32)
ATT_Y = jax.random.normal(KEYS[1], (3, 5), jnp.float64)


@pytest.mark.parametrize("method", ["ghost", "direct"])
def test_embedding_attention_equals_jacobian(method):
  _check(attention, ATT_P, ATT_T, ATT_Y, method=method)
  plan = autogram.autogram_plan(attention, ATT_P, ATT_T, ATT_Y)
  assert plan.layers["['embed']"] == "gather"
  assert {plan.layers[f"['{n}']"] for n in ("wq", "wk", "wv", "wo", "heads")} == {"dot"}
  assert plan.fallback == ["['ln']"]


# ----------------------------------------------------------------- fallback


def tied(p, tokens, y):
  e = jnp.take(p["embed"], tokens, axis=0).mean(axis=1)         # [B, D]
  logits = jnp.tanh(e @ jnp.sin(p["w"])) @ p["embed"].T        # tied output layer
  return jnp.mean((logits[:, :5] - y) ** 2, axis=0)


def test_fallback_for_tied_and_nonlinear_params():
  p = {"embed": ATT_P["embed"], "w": jax.random.normal(KEYS[2], (D, D), jnp.float64)}
  plan = autogram.autogram_plan(tied, p, ATT_T, ATT_Y)
  assert plan.layers == {} and sorted(plan.fallback) == ["['embed']", "['w']"]
  _check(tied, p, ATT_T, ATT_Y)


# ----------------------------------------------------------------- flax nnx


def test_flax_nnx_model():
  from flax import nnx

  class Net(nnx.Module):

    def __init__(self, rngs):
      self.conv = nnx.Conv(2, 3, kernel_size=(3, 3), strides=(2, 2), rngs=rngs,
                           param_dtype=jnp.float64)
      self.norm = nnx.LayerNorm(3, rngs=rngs, param_dtype=jnp.float64)
      self.out = nnx.Linear(3, 4, rngs=rngs, param_dtype=jnp.float64)

    def __call__(self, x):
      h = self.norm(jax.nn.gelu(self.conv(x))).mean(axis=(1, 2))
      return self.out(h)

  graphdef, params = nnx.split(Net(nnx.Rngs(0)))

  def loss_fn(p, x, y):
    return jnp.mean((nnx.merge(graphdef, p)(x) - y) ** 2, axis=0)

  _check(loss_fn, params, CNN_X, CNN_Y)
  plan = autogram.autogram_plan(loss_fn, params, CNN_X, CNN_Y)
  assert sorted(plan.layers.values()) == ["conv", "dot"]
  assert len(plan.fallback) == 4   # conv bias, norm scale and bias, linear bias


# ----------------------------------------------------------------- has_aux, weights, step


def test_has_aux_and_weighted_grad():
  fn = lambda p, x, y: (mlp(p, x, y), {"n": x.shape[0]})
  (losses, aux), gram = mtlx.value_and_gramian(fn, has_aux=True)(MLP_P, MLP_X, MLP_Y)
  assert aux["n"] == 6
  _, jac = mtlx.value_and_jacobian(mlp)(MLP_P, MLP_X, MLP_Y)
  w = jnp.array([0.2, -0.5, 1.5])
  grad = autogram.weighted_grad(mlp)(MLP_P, w, MLP_X, MLP_Y)
  for a, b in zip(jax.tree.leaves(grad), jax.tree.leaves(mtlx.combine(w, jac))):
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
  with pytest.raises(ValueError, match="method"):
    mtlx.value_and_gramian(mlp, method="nope")
  with pytest.raises(ValueError, match="weights"):
    autogram.weighted_grad(mlp)(MLP_P, jnp.ones(2), MLP_X, MLP_Y)


def softmax_of_minus_diag(gram):
  return jax.nn.softmax(-jnp.diag(gram) / jnp.mean(jnp.diag(gram)))


def test_the_transform_carries_its_weight_function():
  _, gram = _jacobian_gramian(mlp, MLP_P, MLP_X, MLP_Y)
  tx = mtlx.gramian_weighting(softmax_of_minus_diag)
  assert isinstance(tx, mtlx.GramianWeighting) and tx.weight_fn is softmax_of_minus_diag
  w, _ = tx.weights(gram, tx.init(MLP_P))
  np.testing.assert_allclose(w, softmax_of_minus_diag(gram), rtol=1e-12)
  ls = mtlx.linear_scalarization()
  w, _ = ls.weights(gram, ls.init(MLP_P))
  np.testing.assert_allclose(w, np.ones(3), rtol=1e-12)
  assert not hasattr(autogram, "gramian_weights")  # the eigen-factor probe is gone


def test_gramian_engine_step_matches_jacobian_engine_step():
  """Three sharded steps (1-device mesh) on both engines give the same params."""
  mesh = mtlx.sharding.make_mesh(devices=jax.devices()[:1])
  method = mtlx.gramian_weighting(softmax_of_minus_diag)

  def loss(p, b):
    return mlp(p, b["x"], b["y"])

  batch = {"x": MLP_X, "y": MLP_Y}
  steps = [mtlx.train.make_step(loss, grad_tx=method, optimizer=optax.adam(1e-2),
                                engine=e, params=MLP_P, mesh=mesh, param_rule="replicated")
           for e in ("jacobian", "gramian")]
  states = [st.init(MLP_P, batch) for st in steps]
  for _ in range(3):
    out = [st.step(s, batch) for st, s in zip(steps, states)]
    states = [o[0] for o in out]
    np.testing.assert_allclose(out[0][1]["losses"], out[1][1]["losses"], rtol=1e-10)
    np.testing.assert_allclose(out[0][1]["weights"], out[1][1]["weights"], rtol=1e-9)
  for a, b in zip(jax.tree.leaves(states[0].params), jax.tree.leaves(states[1].params)):
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
  with pytest.raises(ValueError, match=r"engine='gramian' cannot serve .*not a weighting of the Gramian.*\['jacobian'\]"):
    mtlx.train.make_step(loss, grad_tx=mtlx.graddrop(), optimizer=optax.sgd(0.1),
                         engine="gramian")


def left_and_batched(p, x, y):
  h = jnp.tanh(jnp.einsum("od,bd->bo", p["left"], x))           # parameter is the lhs
  hh = h.reshape(h.shape[0], 2, 3)
  g = jnp.einsum("hd,bhd->bh", p["per_head"], hh)                # a dot_general batch dim
  return jnp.mean((g @ p["out"] - y) ** 2, axis=0)


def test_parameter_on_the_left_and_with_batch_dims():
  p = {"left": jax.random.normal(KEYS[3], (6, 5), jnp.float64),
       "per_head": jax.random.normal(KEYS[4], (2, 3), jnp.float64),
       "out": jax.random.normal(KEYS[5], (2, 3), jnp.float64)}
  plan = autogram.autogram_plan(left_and_batched, p, MLP_X, MLP_Y)
  assert plan.layers == {"['left']": "dot", "['out']": "dot", "['per_head']": "dot"}
  for method in ("ghost", "direct"):
    _check(left_and_batched, p, MLP_X, MLP_Y, method=method)


def test_remat_is_inlined():
  remat_mlp = jax.checkpoint(mlp)
  plan = autogram.autogram_plan(remat_mlp, MLP_P, MLP_X, MLP_Y)
  assert plan.layers == {"['w1']": "dot", "['w2']": "dot"}
  _check(remat_mlp, MLP_P, MLP_X, MLP_Y)


def test_float32_params_accumulate_in_float32():
  p32 = jax.tree.map(lambda x: x.astype(jnp.float32), MLP_P)
  x32, y32 = MLP_X.astype(jnp.float32), MLP_Y.astype(jnp.float32)
  _, gram = mtlx.value_and_gramian(mlp)(p32, x32, y32)
  assert gram.dtype == jnp.float32
  _, ref = autogram_ref.mlp_losses_and_gramian(MLP_P["w1"], MLP_P["b1"], MLP_P["w2"],
                                               MLP_X, MLP_Y)
  np.testing.assert_allclose(gram, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_static_flags_in_args():
  def flagged(p, x, y, train):
    out = mlp(p, x, y)
    return out * 2.0 if train else out
  _, gram = mtlx.value_and_gramian(flagged)(MLP_P, MLP_X, MLP_Y, True)
  _, ref = _jacobian_gramian(mlp, MLP_P, MLP_X, MLP_Y)
  np.testing.assert_allclose(gram, 4.0 * ref, rtol=1e-10)
