"""The Gramian ``G = J Jᵀ`` without the ``K × P`` Jacobian (autogram).

For a parameter ``W`` used once, by a linear map ``y = X·W`` of an activation
``X``, the per-task gradient is ``∂L_k/∂W = Xᵀ Δ_k`` with ``Δ_k = ∂L_k/∂y`` the
task's cotangent at the layer's output. Its block of the Gramian needs only the
activations and the cotangents (the "ghost norm" trick of differentially private
training, and TorchJD's autogram engine)::

  G_kl(W) = ⟨Xᵀ Δ_k, Xᵀ Δ_l⟩ = Σ_{b,b'} ⟨x_b, x_b'⟩ ⟨Δ_{k,b}, Δ_{l,b'}⟩

``value_and_gramian`` finds those layers in the jaxpr of ``loss_fn``: every
``dot_general`` (dense, attention projections, any einsum), ``conv_general_dilated``
(convolutions, through image patches) and row ``gather`` (embeddings) with exactly
one operand that is a parameter (possibly reshaped / transposed / cast first). It
re-runs the jaxpr with a zero perturbation added to each such layer's output and
takes the K cotangents w.r.t. those perturbations with one ``vmap`` of a VJP, which
never differentiates w.r.t. the big parameters. Any other parameter (biases,
norm scales, a weight used twice or in an unsupported way) falls back to its per-task
gradients, computed directly in the same backward pass.

Memory: ``K × (Σ_layers |y_layer|)`` output cotangents plus ``K × |fallback params|``
instead of ``K × P``. Per layer the block is computed either by the ghost formula
(extra ``B² `` for ``XXᵀ``) or by materialising that layer's per-task gradients
(``K × |W|``, one layer at a time), whichever costs fewer flops (``method=``).

The update is then one VJP of ``Σ_k w_k L_k`` (:func:`weighted_grad`), with
``w = f(G)`` from the weight function a Gramian method carries
(:meth:`mtlx.GramianWeighting.weights`; :func:`mtlx.train.make_step` with
``engine='gramian'`` does all three).
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend import core as jcore

from mtlx import jacobian as jacobian_lib
from mtlx import validation

PyTree = Any

__all__ = ["value_and_gramian", "value_and_normalized_gramian", "weighted_grad", "autogram_plan"]

METHODS = ("auto", "ghost", "direct")

# Ops that rearrange or cast a parameter without mixing its entries: the Gramian
# block of the rearranged value equals that of the parameter.
_ISOMETRIC = {"convert_element_type", "reshape", "transpose", "squeeze",
              "expand_dims", "copy", "copy_p", "reduce_precision"}
# Call-like primitives whose body is inlined (remat: the layer-wise pass keeps the
# activations it needs anyway).
_CALLS = {"pjit", "jit", "closed_call", "core_call", "checkpoint", "remat", "remat2"}


class _Use(NamedTuple):
  path: tuple          # position of the equation (nested call indices)
  kind: str            # 'dot' | 'conv' | 'gather'
  param_pos: int       # which operand is the parameter


def _inner_jaxpr(eqn):
  j = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))
  if j is None:
    return None, ()
  if isinstance(j, jcore.ClosedJaxpr):
    return j.jaxpr, j.consts
  return j, ()


def _classify(eqn, srcs):
  """Which operand of a layer equation is the parameter (or None if unsupported)."""
  name = eqn.primitive.name
  has = [s is not None for s in srcs]
  if name == "dot_general" and sum(has) == 1:
    return "dot", has.index(True)
  if name == "conv_general_dilated" and has == [False, True]:
    if eqn.params["feature_group_count"] == 1 and eqn.params["batch_group_count"] == 1:
      return "conv", 1
  if name == "gather" and has == [True, False]:
    dn = eqn.params["dimension_numbers"]
    op_shape = eqn.invars[0].aval.shape
    if (tuple(dn.collapsed_slice_dims) == (0,) and tuple(dn.start_index_map) == (0,)
        and not tuple(dn.operand_batching_dims)
        and tuple(eqn.params["slice_sizes"]) == (1,) + tuple(op_shape[1:])
        and eqn.invars[1].aval.shape[-1:] == (1,)):
      return "gather", 0
  return None


def _analyse(jaxpr, srcs, path, uses, bad):
  """Walks the jaxpr; records layer uses and unsupported uses of each parameter.

  ``srcs`` maps each invar to the parameter index it is derived from (or None).
  Returns the sources of the outvars.
  """
  env = {}

  def src(v):
    return None if isinstance(v, jcore.Literal) else env.get(v)

  for v, s in zip(jaxpr.invars, srcs):
    env[v] = s
  for i, eqn in enumerate(jaxpr.eqns):
    ins = [src(v) for v in eqn.invars]
    here = path + (i,)
    if not any(s is not None for s in ins):
      continue
    name = eqn.primitive.name
    if name in _CALLS and _inner_jaxpr(eqn)[0] is not None:
      inner, _ = _inner_jaxpr(eqn)
      outs = _analyse(inner, ins, here, uses, bad)
      for v, s in zip(eqn.outvars, outs):
        env[v] = s
      continue
    if name in _ISOMETRIC and len(eqn.invars) == 1:
      env[eqn.outvars[0]] = ins[0]
      continue
    cls = _classify(eqn, ins)
    if cls is not None:
      kind, pos = cls
      uses.setdefault(ins[pos], []).append(_Use(here, kind, pos))
      continue
    for s in ins:
      if s is not None:
        bad.setdefault(s, set()).add(name)  # param -> the primitives it fell back on
  return [src(v) for v in jaxpr.outvars]


def _run(jaxpr, consts, args, path, layers, eps, record):
  """Evaluates the jaxpr; adds ``eps[path]`` to layer outputs and records inputs."""
  env = {}

  def read(v):
    return v.val if isinstance(v, jcore.Literal) else env[v]

  for v, c in zip(jaxpr.constvars, consts):
    env[v] = c
  for v, a in zip(jaxpr.invars, args):
    env[v] = a
  for i, eqn in enumerate(jaxpr.eqns):
    here = path + (i,)
    invals = [read(v) for v in eqn.invars]
    name = eqn.primitive.name
    inner, inner_consts = _inner_jaxpr(eqn) if name in _CALLS else (None, ())
    if inner is not None and any(here == p[:len(here)] for p in layers):
      outs = _run(inner, inner_consts, invals, here, layers, eps, record)
    else:
      bind_params = eqn.primitive.get_bind_params(eqn.params)
      with eqn.ctx.manager:
        outs = eqn.primitive.bind(*invals, **bind_params)
      if not eqn.primitive.multiple_results:
        outs = [outs]
      if here in layers:
        use = layers[here]
        record[here] = invals[1 - use.param_pos]
        outs = [outs[0] + eps[here].astype(outs[0].dtype)]
    for v, o in zip(eqn.outvars, outs):
      env[v] = o
  return [read(v) for v in jaxpr.outvars]


_acc = jacobian_lib.accumulation_dtype


def _block(x3, d4, method):
  """Gramian block from activations ``x3 [Bt, F, C]`` and cotangents ``d4 [K, Bt, F, R]``.

  ``dW_k[β, c, r] = Σ_f x[β, f, c] Δ_k[β, f, r]``; ``G_kl = ⟨dW_k, dW_l⟩``.
  """
  k, bt, f, r = d4.shape
  c = x3.shape[2]
  acc = _acc(x3.dtype, d4.dtype)
  x3 = x3.astype(acc)
  d4 = d4.astype(acc)
  ghost, direct = block_costs(bt, f, c, r, k)
  if method == "ghost" or (method == "auto" and ghost < direct):
    xx = jnp.einsum("bfc,bgc->bfg", x3, x3)
    h = jnp.einsum("bfg,kbfr->kbgr", xx, d4)
    return jnp.einsum("kbgr,lbgr->kl", h, d4)
  dw = jnp.einsum("bfc,kbfr->kbcr", x3, d4)
  return jnp.einsum("kbcr,lbcr->kl", dw, dw)


def _dot_block(eqn, pos, x, d, method):
  (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
  lhs_nd = eqn.invars[0].aval.ndim
  rhs_nd = eqn.invars[1].aval.ndim
  nb = len(lb)
  lhs_free = [a for a in range(lhs_nd) if a not in lc and a not in lb]
  rhs_free = [a for a in range(rhs_nd) if a not in rc and a not in rb]
  # Output axes: batch, lhs free, rhs free.
  out_batch = list(range(nb))
  out_lhs = list(range(nb, nb + len(lhs_free)))
  out_rhs = list(range(nb + len(lhs_free), nb + len(lhs_free) + len(rhs_free)))
  if pos == 1:   # parameter on the right: activations are the lhs
    xb, xc, xf, out_x, out_w = lb, lc, lhs_free, out_lhs, out_rhs
  else:
    xb, xc, xf, out_x, out_w = rb, rc, rhs_free, out_rhs, out_lhs
  xs = x.shape
  bt = math.prod(xs[a] for a in xb)
  f = math.prod(xs[a] for a in xf)
  c = math.prod(xs[a] for a in xc)
  x3 = jnp.transpose(x, tuple(xb) + tuple(xf) + tuple(xc)).reshape(bt, f, c)
  k = d.shape[0]
  perm = (0,) + tuple(1 + a for a in out_batch + out_x + out_w)
  r = math.prod(d.shape[1 + a] for a in out_w)
  d4 = jnp.transpose(d, perm).reshape(k, bt, f, r)
  return _block(x3, d4, method)


def _conv_block(eqn, x, d, method):
  p = eqn.params
  dn = p["dimension_numbers"]
  rhs_spec, out_spec = dn.rhs_spec, dn.out_spec
  rhs_shape = eqn.invars[1].aval.shape
  filter_shape = [rhs_shape[a] for a in rhs_spec[2:]]
  patches = lax.conv_general_dilated_patches(
      x, filter_shape, p["window_strides"], p["padding"],
      lhs_dilation=p["lhs_dilation"], rhs_dilation=p["rhs_dilation"],
      dimension_numbers=dn, precision=p.get("precision"))
  # patches and cotangents share the output layout; features go last.
  feat = out_spec[1]
  rest = [a for a in range(patches.ndim) if a != feat]
  f = math.prod(patches.shape[a] for a in rest)
  x3 = jnp.transpose(patches, tuple(rest) + (feat,)).reshape(1, f, patches.shape[feat])
  k = d.shape[0]
  d4 = jnp.transpose(d, (0,) + tuple(1 + a for a in rest) + (1 + feat,))
  d4 = d4.reshape(k, 1, f, d.shape[1 + feat])
  return _block(x3, d4, method)


def _gather_block(eqn, idx, d, method):
  table_shape = eqn.invars[0].aval.shape
  vocab = table_shape[0]
  dn = eqn.params["dimension_numbers"]
  offset = tuple(dn.offset_dims)
  k = d.shape[0]
  out_nd = d.ndim - 1
  batch_axes = [a for a in range(out_nd) if a not in offset]
  d3 = jnp.transpose(d, (0,) + tuple(1 + a for a in batch_axes) + tuple(1 + a for a in offset))
  n = math.prod(d.shape[1 + a] for a in batch_axes)
  d3 = d3.reshape(k, n, -1)
  ids = idx[..., 0].reshape(n)
  mode = eqn.params["mode"]
  if "CLIP" in str(mode) or "PROMISE" in str(mode):
    ids = jnp.clip(ids, 0, vocab - 1)
    valid = jnp.ones((n,), bool)
  else:
    valid = (ids >= 0) & (ids < vocab)
  acc = _acc(d.dtype)
  d3 = jnp.where(valid[None, :, None], d3, 0).astype(acc)
  dim = d3.shape[2]
  ghost, direct = gather_costs(n, dim, vocab, k)
  if method == "ghost" or (method == "auto" and ghost < direct):
    same = ((ids[:, None] == ids[None, :]) & valid[:, None] & valid[None, :]).astype(acc)
    h = jnp.einsum("nm,kmd->knd", same, d3)
    return jnp.einsum("knd,lnd->kl", h, d3)
  safe = jnp.where(valid, ids, 0)
  dw = jnp.zeros((k, vocab, dim), acc).at[:, safe].add(d3)
  return jnp.einsum("kvd,lvd->kl", dw, dw)


def block_costs(bt: int, f: int, c: int, r: int, k: int) -> tuple[int, int]:
  """Flops of one layer's Gramian block by the ghost formula and by its per-task grads.

  For activations ``[Bt, F, C]`` and K cotangents ``[K, Bt, F, R]`` (``F`` = the
  positions the layer is applied at: batch × sequence for a transformer's
  projections, ``Bt`` = ``dot_general`` batch dims such as LoRA adapters or MoE
  experts): ghost ``Bt F² (C + K R) + K² Bt F R`` (tokens²), direct
  ``K Bt F C R + K² Bt C R`` (K × params). Memory: ghost ``Bt F²`` for ``X Xᵀ``,
  direct ``K Bt C R``.
  """
  ghost = bt * f * f * c + k * bt * f * f * r + k * k * bt * f * r
  direct = k * bt * f * c * r + k * k * bt * c * r
  return ghost, direct


def gather_costs(n: int, dim: int, vocab: int, k: int) -> tuple[int, int]:
  """Flops of an embedding's block (``n`` looked-up rows of a ``vocab × dim`` table):
  ghost ``n² + K n² dim + K² n dim`` (the id-equality matrix), direct
  ``K n dim + K² vocab dim`` (scatter-add into K tables, memory ``K vocab dim``)."""
  return n * n + k * n * n * dim + k * k * n * dim, k * n * dim + k * k * vocab * dim


class AutogramPlan(NamedTuple):
  """Which parameters take the activation path and which fall back (for inspection).

  Attributes:
    layers: ``{param_path: kind}`` for parameters whose Gramian block comes from
      activations and output cotangents (``'dot'``, ``'conv'``, ``'gather'``).
    fallback: paths of parameters whose per-task grads are computed directly.
    methods: ``{param_path: 'ghost' | 'direct'}``, how each layer's block is
      computed under ``method='auto'`` (the fewer flops of :func:`block_costs` /
      :func:`gather_costs`, at the traced shapes and K).
    costs: ``{param_path: (ghost_flops, direct_flops)}``.
    reasons: ``{param_path: why}`` for every fallback parameter (an elementwise
      use such as a bias or norm scale, a tied weight used by several layers, an
      unsupported op): no fallback is silent.
  """
  layers: dict
  fallback: list
  methods: dict = {}
  costs: dict = {}
  reasons: dict = {}


def _use_dims(eqn, use):
  """``(Bt, F, C, R)`` of a dot/conv layer, or ``(n, dim, vocab)`` of a gather, from
  the equation's shapes (what :func:`_dot_block` / :func:`_conv_block` /
  :func:`_gather_block` reshape to)."""
  if use.kind == "gather":
    out = eqn.outvars[0].aval.shape
    offset = tuple(eqn.params["dimension_numbers"].offset_dims)
    dim = math.prod(out[a] for a in offset)
    n = math.prod(out) // max(dim, 1)
    return n, dim, eqn.invars[0].aval.shape[0]
  if use.kind == "conv":
    dn = eqn.params["dimension_numbers"]
    rhs = eqn.invars[1].aval.shape
    out = eqn.outvars[0].aval.shape
    c = math.prod(rhs[a] for a in dn.rhs_spec[1:])
    r = out[dn.out_spec[1]]
    return 1, math.prod(out) // r, c, r
  (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
  xs = eqn.invars[1 - use.param_pos].aval.shape
  ws = eqn.invars[use.param_pos].aval.shape
  xb, xc = (lb, lc) if use.param_pos == 1 else (rb, rc)
  wb, wc = (rb, rc) if use.param_pos == 1 else (lb, lc)
  bt = math.prod(xs[a] for a in xb)
  c = math.prod(xs[a] for a in xc)
  f = math.prod(xs[a] for a in range(len(xs)) if a not in xb and a not in xc)
  r = math.prod(ws[a] for a in range(len(ws)) if a not in wb and a not in wc)
  return bt, f, c, r


def _layer_choices(jaxpr, layers, k, method="auto"):
  """``{param index: (method, (ghost, direct))}`` for the planned layers."""
  eqns = {}

  def find(jx, path):
    for i, eqn in enumerate(jx.eqns):
      here = path + (i,)
      if here in layers:
        eqns[here] = eqn
      inner, _ = _inner_jaxpr(eqn) if eqn.primitive.name in _CALLS else (None, ())
      if inner is not None:
        find(inner, here)

  find(jaxpr, ())
  out = {}
  for path, (i, use) in layers.items():
    dims = _use_dims(eqns[path], use)
    costs = gather_costs(*dims, k) if use.kind == "gather" else block_costs(*dims, k)
    choice = method if method != "auto" else ("ghost" if costs[0] < costs[1] else "direct")
    out[i] = (choice, costs)
  return out


def _fallback_reasons(jaxpr, n_params, handled, dtypes) -> dict:
  """``{param index: why it falls back}`` for every param not in ``handled``."""
  uses, bad = {}, {}
  _analyse(jaxpr, list(range(n_params)) + [None] * (len(jaxpr.invars) - n_params),
           (), uses, bad)
  reasons = {}
  for i in range(n_params):
    if i in handled:
      continue
    if not jnp.issubdtype(dtypes[i], jnp.inexact):
      reasons[i] = "not floating: no gradient"
    elif len(uses.get(i, ())) > 1 and i not in bad:
      kinds = ", ".join(u.kind for u in uses[i])
      reasons[i] = (f"tied: used by {len(uses[i])} layers ({kinds}); direct per-task "
                    "grads (K x |W|)")
    elif i in bad:
      ops = ", ".join(sorted(bad[i]))
      extra = f" and {len(uses[i])} layer(s)" if uses.get(i) else ""
      reasons[i] = f"used by {ops}{extra} (elementwise / not a layer); direct per-task grads"
    else:
      reasons[i] = "unused by the losses: zero gradient"
  return reasons


def _plan(jaxpr, n_params):
  uses, bad = {}, {}
  _analyse(jaxpr, list(range(n_params)) + [None] * (len(jaxpr.invars) - n_params),
           (), uses, bad)
  layers = {}
  for i, us in uses.items():
    if i in bad or len(us) != 1:
      continue
    layers[us[0].path] = (i, us[0])
  handled = {i for i, _ in layers.values()}
  return layers, handled


def _is_array(x) -> bool:
  return isinstance(x, (jax.Array, np.ndarray, np.generic))


def _trace(loss_fn, has_aux, params, args):
  """The jaxpr of ``loss_fn`` over the param leaves and the array leaves of ``args``.

  Non-array leaves of ``args`` (Python bools, ints, strings: flags such as
  ``train=True``) are closed over as static values. Returns the closed jaxpr, the
  param leaves, their treedef, the dynamic arg leaves and the output treedef.
  """
  p_leaves, p_tree = jax.tree_util.tree_flatten(params)
  a_leaves, a_tree = jax.tree_util.tree_flatten(args)
  dynamic = [_is_array(x) for x in a_leaves]
  out_tree = []

  def flat_fn(*leaves):
    p = jax.tree_util.tree_unflatten(p_tree, leaves[:len(p_leaves)])
    it = iter(leaves[len(p_leaves):])
    a = jax.tree_util.tree_unflatten(
        a_tree, [next(it) if d else x for x, d in zip(a_leaves, dynamic)])
    out = loss_fn(p, *a)
    flat, tree = jax.tree_util.tree_flatten(out)
    out_tree.append(tree)
    return flat

  dyn_leaves = [x for x, d in zip(a_leaves, dynamic) if d]
  avals = [jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x))
           for x in p_leaves + dyn_leaves]
  closed = jax.make_jaxpr(flat_fn)(*avals)
  return closed, p_leaves, p_tree, dyn_leaves, out_tree[0]


def autogram_plan(loss_fn: Callable[..., Any], params: PyTree, *args,
                  has_aux: bool = False, method: str = "auto") -> AutogramPlan:
  """Which parameters :func:`value_and_gramian` handles layer-wise, how (ghost or
  direct, with both flop counts), and why each other parameter falls back.

  Transformers: attention q/k/v/o projections and MLP kernels are ``dot`` layers
  whose ghost contraction runs over batch × sequence positions (``F = B·T``, cost
  ``∝ F²``) while the direct block costs ``∝ K · |W|``; LoRA adapters and MoE
  experts are ``dot`` layers with ``dot_general`` batch dims (adapter / expert);
  token embeddings are ``gather`` layers; a tied embedding (gather + LM-head dot)
  falls back, listed with its reason.
  """
  validation.check_choice(method, METHODS, "method")
  closed, p_leaves, p_tree, _, _ = _trace(loss_fn, has_aux, params, args)
  layers, handled = _plan(closed.jaxpr, len(p_leaves))
  paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
  out_avals = [v.aval for v in closed.jaxpr.outvars]
  k = int(out_avals[0].shape[0]) if out_avals and out_avals[0].ndim == 1 else 1
  choices = _layer_choices(closed.jaxpr, layers, k, method)
  dtypes = [jnp.result_type(x) for x in p_leaves]
  reasons = _fallback_reasons(closed.jaxpr, len(p_leaves), handled, dtypes)
  return AutogramPlan({paths[i]: u.kind for i, u in layers.values()},
                      [paths[i] for i in range(len(p_leaves)) if i not in handled],
                      {paths[i]: c[0] for i, c in choices.items()},
                      {paths[i]: c[1] for i, c in choices.items()},
                      {paths[i]: r for i, r in reasons.items()})


def value_and_gramian(loss_fn: Callable[..., Any], *, has_aux: bool = False,
                      method: str = "auto") -> Callable[..., Any]:
  """Transforms ``loss_fn`` into ``f(params, *args) -> (losses, G)`` with ``G = J Jᵀ``.

  The ``K × K`` Gramian of the per-task gradients, computed layer by layer from each
  parameter's input activations ``X`` and the K output cotangents ``Δ_k`` (see the
  module docstring), never forming the ``K × P`` Jacobian::

    G = Σ_layers G(W_l) + gramian(per-task grads of the fallback params)
    dense / einsum:  G_kl(W) = Σ_{b,b'} ⟨x_b, x_b'⟩ ⟨Δ_{k,b}, Δ_{l,b'}⟩
    convolution:     the same on image patches (``conv_general_dilated_patches``)
    embedding:       G_kl(E) = Σ_{b,b'} [i_b = i_b'] ⟨Δ_{k,b}, Δ_{l,b'}⟩

  It equals ``mtlx.gramian(mtlx.value_and_jacobian(loss_fn)(...)[1])`` up to
  rounding (accumulated in float32 or wider). ``mtlx.autogram.autogram_plan``
  lists which parameters took which path.

  Args:
    loss_fn: ``(params, *args) -> losses[K]`` (or ``(losses, aux)``); the array
      leaves of ``args`` are traced, other leaves (flags) are static.
    has_aux: whether ``loss_fn`` also returns auxiliary data.
    method: ``'auto'`` (per layer, fewer flops of the two), ``'ghost'`` (always the
      ``XXᵀ`` formula) or ``'direct'`` (that layer's per-task grads, ``K × |W|``).

  Returns:
    ``f(params, *args) -> (losses, gramian)`` (``((losses, aux), gramian)``).

  Raises:
    ValueError: for an unknown ``method``, or if ``loss_fn`` does not return a
      1-D floating vector.

  Cost: one forward pass, K batched backward passes that stop at the layer outputs
  (no parameter-gradient products), and per layer the cheaper of
  ``B·F²·(C + K R) + K² B F R`` (ghost) and ``K B F C R + K² C R`` (direct) flops.
  Memory ``K × Σ|layer outputs| + K × |fallback params|`` instead of ``K × P``.
  """
  return _value_and_gramian(loss_fn, has_aux, method, normalized=False)


def _value_and_gramian(loss_fn, has_aux, method, normalized):
  validation.check_choice(method, METHODS, "method")

  def wrapped(params, *args):
    closed, p_leaves, p_tree, a_leaves, out_tree = _trace(loss_fn, has_aux, params, args)
    jaxpr = closed.jaxpr
    layers, handled = _plan(jaxpr, len(p_leaves))
    uses = {path: use for path, (_, use) in layers.items()}
    fb_idx = [i for i in range(len(p_leaves)) if i not in handled
              and jnp.issubdtype(jnp.result_type(p_leaves[i]), jnp.inexact)]
    eqn_of = {}

    def find(jx, path):
      for i, eqn in enumerate(jx.eqns):
        here = path + (i,)
        if here in uses:
          eqn_of[here] = eqn
        inner, _ = _inner_jaxpr(eqn) if eqn.primitive.name in _CALLS else (None, ())
        if inner is not None:
          find(inner, here)
    find(jaxpr, ())

    eps0 = {path: jnp.zeros(eqn.outvars[0].aval.shape, eqn.outvars[0].aval.dtype)
            for path, eqn in eqn_of.items()}

    def perturbed(fb_params, eps):
      leaves = list(p_leaves)
      for i, v in zip(fb_idx, fb_params):
        leaves[i] = v
      record = {}
      outs = _run(jaxpr, closed.consts, leaves + list(a_leaves), (), uses, eps, record)
      out = jax.tree_util.tree_unflatten(out_tree, outs)
      losses = out[0] if has_aux else out
      aux = out[1] if has_aux else None
      return losses, (aux, record)

    fb0 = [p_leaves[i] for i in fb_idx]
    losses, vjp_fn, (aux, record) = jax.vjp(perturbed, fb0, eps0, has_aux=True)
    k = jacobian_lib._check_losses(losses)  # noqa: SLF001 - shared check
    eye = jnp.eye(k, dtype=losses.dtype)
    fb_grads, cots = jax.vmap(vjp_fn)(eye)
    acc = _acc(losses.dtype)
    # Blocks (B, t) with G = sum t^2 B: t = a b, the powers of two above max|X| and
    # max|Δ| of the layer (t = 1 without normalized), so no block under/overflows.
    parts = []
    if fb_grads:
      parts.append(jacobian_lib.normalized_gramian(fb_grads) if normalized
                   else (jacobian_lib.gramian(fb_grads), jnp.ones((), acc)))
    for path, use in uses.items():
      eqn = eqn_of[path]
      x, d = record[path], cots[path]
      t = jnp.ones((), acc)
      if normalized:
        b = _scale_of(d)
        d = _scaled(d, b)
        t = b
        if use.kind != "gather":  # a gather's x are the ids
          a = _scale_of(x)
          x = _scaled(x, a)
          t = a * b
      if use.kind == "dot":
        blk = _dot_block(eqn, use.param_pos, x, d, method)
      elif use.kind == "conv":
        blk = _conv_block(eqn, x, d, method)
      else:
        blk = _gather_block(eqn, x, d, method)
      parts.append((blk, t))
    if not parts:
      gram = (jnp.zeros((k, k), acc), jnp.ones((), acc)) if normalized else jnp.zeros((k, k), acc)
    elif normalized:
      gram = _combine_parts(parts, acc)
    else:
      gram = sum((b.astype(acc) for b, _ in parts[1:]), parts[0][0].astype(acc))
    return ((losses, aux) if has_aux else losses), gram

  return wrapped


def _scale_of(x: jax.Array) -> jax.Array:
  """The power of two just above ``max|x|`` (1 for zeros; NaN/inf pass through), in
  the accumulation dtype."""
  return jacobian_lib._power_of_two_scale(  # noqa: SLF001 - the one definition
      jnp.max(jnp.abs(x)).astype(_acc(x.dtype)))


def _scaled(x: jax.Array, scale: jax.Array) -> jax.Array:
  """``x / scale`` (exact: ``scale`` is a power of two; NaN/inf propagate)."""
  inv = jnp.where(jnp.isfinite(scale), 1.0 / scale, scale)
  return x * inv.astype(x.dtype)


def _combine_parts(parts, acc) -> tuple[jax.Array, jax.Array]:
  """``(Ĝ, s)`` from blocks ``[(B_i, t_i)]`` with ``G = Σ_i t_i² B_i``: every block is
  brought to the largest ``t`` (``(t_i/T)² ≤ 1``, powers of two: exact or, for
  blocks below ``2⁻¹²⁶`` of the largest, negligible), then divided by the power
  of two above the square root of the largest diagonal entry."""
  ts = jnp.stack([t.astype(acc) for _, t in parts])
  top = jnp.max(ts)
  top = jnp.where(jnp.isfinite(top) & (top > 0), top, jnp.where(jnp.isnan(top), top, 1.0))
  g = sum((((t.astype(acc) / top) ** 2) * b.astype(acc) for b, t in parts[1:]),
          ((parts[0][1].astype(acc) / top) ** 2) * parts[0][0].astype(acc))
  u = jacobian_lib._power_of_two_scale(  # noqa: SLF001
      jnp.sqrt(jnp.max(jnp.diagonal(g))))
  return g / (u * u), top * u


def value_and_normalized_gramian(loss_fn: Callable[..., Any], *, has_aux: bool = False,
                                 method: str = "auto") -> Callable[..., Any]:
  """:func:`value_and_gramian` without float32 under/overflow:
  ``f(params, *args) -> (losses, (Ĝ, s))`` with ``G = s² Ĝ``, ``s`` a power of two
  and ``1/4 ≤ max_k Ĝ_kk < 1`` (``Ĝ = 0``, ``s = 1`` when every gradient is zero),
  as :func:`mtlx.jacobian.normalized_gramian` gives for the Jacobian.

  Every layer's activations ``X`` and cotangents ``Δ`` are divided by the powers of
  two above their largest entries (``a``, ``b``) before its block is formed, the
  fallback parameters' per-task grads go through
  :func:`mtlx.jacobian.normalized_gramian`, and the blocks are summed relative to
  the largest ``a·b`` (powers of two: no rounding). Losses scaled by ``1e-30`` or
  ``1e30`` (rows whose ``G = J Jᵀ`` underflows to 0 or overflows in float32) give
  the ``Ĝ`` of scale 1, so scale-invariant weightings (UPGrad, MGDA, DualProj...)
  give the same weights over the whole float32 range. Non-finite losses or
  gradients give a non-finite ``Ĝ``.

  Cost: that of :func:`value_and_gramian` plus one max-abs pass over every layer's
  activations and K cotangents (``K Σ|y|`` reads, no flops of note).
  """
  return _value_and_gramian(loss_fn, has_aux, method, normalized=True)


def weighted_grad(loss_fn: Callable[..., Any], *, has_aux: bool = False) -> Callable[..., Any]:
  """``f(params, weights, *args) -> ∇_θ Σ_k w_k L_k(θ)``: one VJP, no per-task grads.

  The update of every Gramian method after :func:`value_and_gramian`: since
  ``wᵀ J = ∇ (wᵀ L)``, one backward pass gives the combination. ``weights`` are
  treated as constants (``stop_gradient``). With ``has_aux`` returns ``(grad, aux)``.

  Raises:
    ValueError: if ``weights`` is not ``[K]``.
  """

  def wrapped(params, weights, *args):
    weights = lax.stop_gradient(weights)

    def scalar(p):
      out = loss_fn(p, *args)
      losses, aux = out if has_aux else (out, None)
      validation.check_vector(weights, jnp.shape(losses)[0], "weights")
      return jnp.dot(weights.astype(losses.dtype), losses), aux

    grad, aux = jax.grad(scalar, has_aux=True)(params)
    return (grad, aux) if has_aux else grad

  return wrapped
