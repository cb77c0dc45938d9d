"""The jitted multi-task training step, for any registered chain of MTO methods.

Three paths, chosen once from the config (:func:`choose_path`):

``one_backward``
  the gradient-space part is plain linear scalarization: the loss-space weights
  come from the losses alone (``mtlx.loss_weights``) and the step takes ONE
  backward pass of ``Σ_k w_k L_k`` (1 forward + 1 backward).
``jacobian``
  any other gradient-space method (or a loss-space method that reads gradients,
  GradNorm / DB-MTL): ``mtlx.value_and_jacobian`` gives the K per-task gradients
  and the chain ``loss-space → gradient-space`` turns them into one update
  (1 forward + K backward passes, memory K × P).
``representation``
  ``rep_grad=True``: per-task gradients w.r.t. the shared representation ``z``
  (``mtlx.value_and_representation_jacobian``); the gradient-space method maps the
  loss-weighted rows ``w_k ∂L_k/∂z`` to one direction ``d_z``, the encoder gets
  ``(∂z/∂θ_enc)ᵀ d_z`` and the task-specific decoder the gradient of
  ``Σ_k w_k L_k`` (``w`` the loss-space weights, 1 without a weighting: LibMTL's
  ``rep_grad`` convention). Memory K × |z|.

Every path then applies the optimizer. The step also returns, for logging, the
task losses, the task weights (for the stacked paths the least-squares
coefficients of the update in the span of the task gradients,
``w = G⁺ J d``, exact for every method whose update is a combination of the
task gradients) and, when per-task gradients exist, their Gramian (cosines).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

from mtlx import aggregators
from mtlx import jacobian
from mtlx import registry
from mtlx import sharding as sharding_lib
from mtlx import validation
import mtlx.loss_weighting as weighting_lib
from mtlx.train import losses as losses_lib
from mtlx import metrics as metrics_lib

PATHS = ("one_backward", "jacobian", "representation")


class TrainState(NamedTuple):
  """Everything a step reads and writes (checkpointed as a whole).

  Attributes:
    step: int32 scalar, number of updates taken.
    params: ``{'encoder': ..., 'decoder': ...}`` plain arrays.
    loss_state: state of the loss-space transform (``EmptyState`` without one).
    grad_state: state of the gradient-space transform.
    opt_state: state of the optimizer.
    rng: a raw ``uint32[2]`` PRNG key, split once per step.
  """
  step: jax.Array
  params: Any
  loss_state: Any
  grad_state: Any
  opt_state: Any
  rng: jax.Array


def _construct(ctor: Callable, num_tasks: int, kwargs: dict | None):
  kwargs = dict(kwargs or {})
  if "num_tasks" in inspect.signature(ctor).parameters and "num_tasks" not in kwargs:
    kwargs["num_tasks"] = num_tasks
  return ctor(**kwargs)


def check_method_names(method: str, weighting: str) -> None:
  """Raises ValueError listing the valid names for an unknown method or weighting."""
  grads = registry.gradient_methods()
  if method not in grads:
    raise ValueError(f"config.method={method!r} is not a gradient-space method; "
                     f"expected one of {sorted(grads)} (loss-space methods go in "
                     f"config.weighting: {sorted(registry.loss_methods())}).")
  losses = registry.loss_methods()
  if weighting not in (None, "none") and weighting not in losses:
    raise ValueError(f"config.weighting={weighting!r} is not a loss-space method; "
                     f"expected 'none' or one of {sorted(losses)}.")


def build_mto(method: str, weighting: str, num_tasks: int, *,
              method_kwargs: dict | None = None, weighting_kwargs: dict | None = None):
  """``(loss_tx or None, grad_tx)`` from registry names (``num_tasks`` passed to
  constructors that take it)."""
  check_method_names(method, weighting)
  grad_tx = _construct(registry.gradient_methods()[method], num_tasks, method_kwargs)
  loss_tx = None
  if weighting not in (None, "none"):
    loss_tx = _construct(registry.loss_methods()[weighting], num_tasks, weighting_kwargs)
  return loss_tx, grad_tx


def shared_params_mask(params) -> dict:
  """``{"encoder": True, "decoder": False}``: the shared part of a model split by
  :func:`mtlx.models.split` (GradNorm's default ``mask`` in the trainer)."""
  if not isinstance(params, dict) or set(params) != {"encoder", "decoder"}:
    raise ValueError(f"params has top-level keys {sorted(params) if isinstance(params, dict) else type(params)}; "
                     "expected the {'encoder', 'decoder'} split of mtlx.models.split "
                     "(or pass weighting_kwargs mask= for GradNorm).")
  return {"encoder": True, "decoder": False}


def is_plain_ls(method: str, method_kwargs: dict | None = None) -> bool:
  """Whether the gradient-space part is linear scalarization with uniform weights."""
  ctor = registry.gradient_methods().get(method)
  return ctor is aggregators.linear_scalarization and not method_kwargs


def loss_weights_work(loss_tx, params, num_tasks: int) -> bool:
  """Whether ``mtlx.loss_weights`` can drive ``loss_tx`` (False for methods that
  read gradients, e.g. GradNorm)."""
  state = loss_tx.init(params)
  try:
    jax.eval_shape(lambda s, l: weighting_lib.loss_weights(loss_tx, s, l), state,
                   jax.ShapeDtypeStruct((num_tasks,), jnp.float32))
  except ValueError:
    return False
  return True


def choose_path(method: str, loss_tx, params, num_tasks: int, *, rep_grad: bool,
                method_kwargs: dict | None = None) -> str:
  """The step's path (see the module docstring)."""
  if rep_grad:
    if loss_tx is not None and not loss_weights_work(loss_tx, params, num_tasks):
      raise ValueError("config.rep_grad=True with a loss-space method that reads the "
                       "per-task parameter gradients (GradNorm, DB-MTL); expected a "
                       "loss-only weighting or rep_grad=False.")
    return "representation"
  if is_plain_ls(method, method_kwargs) and (
      loss_tx is None or loss_weights_work(loss_tx, params, num_tasks)):
    return "one_backward"
  return "jacobian"


def make_optimizer(name: str, learning_rate: float, *, schedule: str = "constant",
                   num_steps: int = 1, warmup_steps: int = 0, weight_decay: float = 0.0,
                   momentum: float = 0.9, grad_clip: float = 0.0):
  """An optax optimizer from config values.

  ``name``: ``adam``, ``adamw``, ``sgd`` (with ``momentum``, 0 for plain SGD);
  ``schedule``: ``constant``, ``cosine`` (to 0 at ``num_steps``), ``warmup_cosine``;
  ``grad_clip > 0`` clips the global norm first.
  """
  validation.check_number(learning_rate, "config.learning_rate", low=0, low_open=True)
  validation.check_number(weight_decay, "config.weight_decay", low=0)
  validation.check_number(momentum, "config.momentum", low=0, high=1, high_open=True)
  validation.check_number(grad_clip, "config.grad_clip", low=0)
  validation.check_number(warmup_steps, "config.warmup_steps", low=0, integer=True)
  schedules = ("constant", "cosine", "warmup_cosine")
  if schedule == "constant":
    lr = learning_rate
  elif schedule == "cosine":
    lr = optax.cosine_decay_schedule(learning_rate, max(num_steps, 1))
  elif schedule == "warmup_cosine":
    lr = optax.warmup_cosine_decay_schedule(0.0, learning_rate, max(warmup_steps, 1),
                                            max(num_steps, warmup_steps + 1))
  else:
    raise ValueError(f"config.schedule={schedule!r}; expected one of {list(schedules)}.")
  opts = {"adam": lambda: optax.adam(lr),
          "adamw": lambda: optax.adamw(lr, weight_decay=weight_decay),
          "sgd": lambda: optax.sgd(lr, momentum=momentum or None)}
  if name not in opts:
    raise ValueError(f"config.optimizer={name!r}; expected one of {sorted(opts)}.")
  tx = opts[name]()
  if weight_decay and name != "adamw":
    tx = optax.chain(optax.add_decayed_weights(weight_decay), tx)
  if grad_clip and grad_clip > 0:
    tx = optax.chain(optax.clip_by_global_norm(grad_clip), tx)
  return tx


def _dot_rows(task_grads, direction) -> jax.Array:
  """``[<g_k, d>]_k`` summed over leaves."""
  parts = jax.tree_util.tree_leaves(jax.tree_util.tree_map(
      lambda g, d: jnp.tensordot(g.astype(jnp.float32), d.astype(jnp.float32),
                                 axes=g.ndim - 1), task_grads, direction))
  return sum(parts[1:], parts[0])


def span_weights(gram: jax.Array, task_grads, direction) -> jax.Array:
  """Least-squares ``w`` with ``Σ_k w_k g_k ≈ d``: ``w = G⁺ [<g_k, d>]``."""
  return jnp.linalg.pinv(gram.astype(jnp.float32)) @ _dot_rows(task_grads, direction)


def cosine_matrix(gram: jax.Array) -> jax.Array:
  """Pairwise cosines ``G_kl / sqrt(G_kk G_ll)`` of the task gradients."""
  d = jnp.sqrt(jnp.maximum(jnp.diagonal(gram), 1e-30))
  return gram / (d[:, None] * d[None, :])


class Trainer(NamedTuple):
  """What :func:`make_trainer` returns.

  Attributes:
    init: ``(params, example_batch, seed) -> TrainState``.
    step: jitted ``(state, batch) -> (state, info)``, ``info`` a dict with
      ``losses [K]``, ``weights [K]``, ``grad_norm`` and (stacked paths)
      ``cosines [K, K]``.
    eval_stats: jitted ``(params, batch) -> {task: {metric: sums}, '_loss': [K] sums,
      '_count': B}`` (add over batches, then :func:`mtlx.metrics.finalize_metric`).
    loss_fn: ``(params, batch) -> [K]``.
    path: the step's path (``one_backward``, ``jacobian`` or ``representation``).
    shardings: the :class:`mtlx.sharding.StepShardings` of a trainer built with
      ``mesh=``, else None.
    shard_state: ``TrainState -> TrainState`` placed on its shardings (identity
      without a mesh); ``init`` already returns a placed state.
    shard_batch: ``local batch -> global batch`` sharded over ``'data'``
      (:func:`mtlx.sharding.global_batch`; identity without a mesh).
    shard_eval_batch: the same for evaluation batches of any size
      (:func:`mtlx.sharding.global_eval_batch`).
  """
  init: Callable
  step: Callable
  eval_stats: Callable
  loss_fn: Callable
  path: str
  shardings: Any = None
  shard_state: Callable = lambda state: state
  shard_batch: Callable = lambda batch: batch
  shard_eval_batch: Callable = lambda batch: batch


def make_trainer(fns, tasks: Sequence[Any], input_key: str, params, *, method: str = "ls",
                 weighting: str = "none", optimizer: optax.GradientTransformation,
                 rep_grad: bool = False, method_kwargs: dict | None = None,
                 weighting_kwargs: dict | None = None,
                 chunk_size: int | None = None, path: str | None = None,
                 extra_batches: int = 0, mesh: Any = None, param_rule: str = "fsdp",
                 shard_tasks: bool = True, min_size: int = 2 ** 10) -> Trainer:
  """Builds the jitted train step and eval function of a multi-task model.

  Args:
    fns: :class:`mtlx.models.ModelFns` of the model.
    tasks: the TaskSpecs, in the order of the model's loss vector.
    input_key: key of the model input in a batch.
    params: example params (used to build states and pick the path).
    method / weighting: gradient-space and loss-space names (``mtlx.registry``).
    optimizer: any optax optimizer (applied after the MTO chain).
    rep_grad: representation-level MTO (see the module docstring).
    method_kwargs / weighting_kwargs: constructor arguments of the methods.
    chunk_size: passed to ``mtlx.value_and_jacobian`` (K-row chunks).
    path: force a path (``jacobian`` is valid for every chain, ``one_backward``
      only where :func:`choose_path` allows it); ``None`` chooses.
    extra_batches: 1 or 2 for methods that read the per-task grads of independent
      mini-batches (MoDo, SDMGrad: ``task_grads_2``, ``task_grads_3``). Each batch
      given to ``step`` then holds ``1 + extra_batches`` mini-batches stacked along
      the batch axis; the first is the training batch, the others are passed as
      ``task_grads_2`` / ``task_grads_3`` (one more Jacobian each). Jacobian path only.
    mesh: a :func:`mtlx.sharding.make_mesh` mesh: the same step then runs jitted
      with ``NamedSharding`` s (from :func:`mtlx.sharding.step_shardings`) on the
      params, the optimizer, loss-space and gradient-space states (following the
      params: :func:`mtlx.sharding.state_shardings`), the batch (over ``'data'``)
      and the per-task grads (like the params, K over ``'task'`` with
      ``shard_tasks``; on the representation path the grads w.r.t. ``z`` are left
      to XLA's sharding propagation); losses, weights and metrics come out
      replicated. ``None``: plain ``jax.jit`` on the default device.
    param_rule / shard_tasks / min_size: see :func:`mtlx.sharding.step_shardings`
      (used with ``mesh`` only).

  Raises:
    ValueError: for unknown method names (listing the valid ones), a weighting
      that reads gradients combined with ``rep_grad``, an unknown ``param_rule``,
      or ``shard_tasks`` with a task axis that does not divide K.
  """
  k = len(tasks)
  if extra_batches not in (0, 1, 2):
    raise ValueError(f"extra_batches={extra_batches}; expected 0, 1 or 2.")
  n_parts = 1 + extra_batches
  if weighting == "gradnorm" and "mask" not in (weighting_kwargs or {}):
    # GradNorm's norms are taken over shared parameters (Chen et al. use the last shared
    # layer); the model's split tells which those are: the encoder.
    weighting_kwargs = dict(weighting_kwargs or {}, mask=shared_params_mask(params))
  loss_tx, grad_tx = build_mto(method, weighting, k, method_kwargs=method_kwargs,
                               weighting_kwargs=weighting_kwargs)
  auto = choose_path(method, loss_tx, params, k, rep_grad=rep_grad,
                     method_kwargs=method_kwargs)
  if path is None:
    path = auto
  elif path not in PATHS:
    raise ValueError(f"path={path!r}; expected None or one of {list(PATHS)}.")
  elif path != auto and path != "jacobian":
    raise ValueError(f"path={path!r} is not valid for method={method!r}, weighting="
                     f"{weighting!r}, rep_grad={rep_grad}; expected 'jacobian' or {auto!r}.")
  if extra_batches and path != "jacobian":
    if path == "one_backward":
      path = "jacobian"  # the extra batches' grads only exist on the stacked path
    else:
      raise ValueError(f"extra_batches={extra_batches} needs the Jacobian path; got "
                       f"rep_grad={rep_grad}. Expected rep_grad=False.")

  sh = None
  if mesh is not None:
    sh = sharding_lib.step_shardings(params, mesh, param_rule=param_rule,
                                     shard_tasks=shard_tasks, min_size=min_size)
    sh.check_num_tasks(k)

  def constrain(tree, shardings):
    return tree if sh is None else jax.lax.with_sharding_constraint(tree, shardings)

  def constrain_state(state):
    return state if sh is None else constrain(state, sh.state(state, state.params))

  def replicate(tree):
    return tree if sh is None else constrain(
        tree, jax.tree_util.tree_map(lambda _: sh.replicated(), tree))

  def parts(batch):
    """The ``n_parts`` mini-batches stacked along the batch axis of ``batch``."""
    if n_parts == 1:
      return [batch]
    def split(a):
      if a.shape[0] % n_parts:
        raise ValueError(f"a batch of {a.shape[0]} rows cannot hold {n_parts} equal "
                         f"mini-batches (extra_batches={extra_batches}); expected a "
                         f"multiple of {n_parts}.")
      return a.reshape((n_parts, a.shape[0] // n_parts) + a.shape[1:])
    stacked = jax.tree_util.tree_map(split, batch)
    return [jax.tree_util.tree_map(lambda a, i=i: a[i], stacked) for i in range(n_parts)]

  def loss_fn(p, batch):
    return losses_lib.task_losses(tasks, fns.apply(p, batch[input_key]), batch)

  def heads_fn(dec_params, z, batch):
    return losses_lib.task_losses(tasks, fns.decode(dec_params, z, batch[input_key]), batch)

  def init(p, example_batch, seed: int = 0) -> TrainState:
    example_batch = parts(example_batch)[0]
    loss_state = loss_tx.init(p) if loss_tx is not None else optax.EmptyState()
    if path == "representation":
      z = jax.eval_shape(fns.encode, p["encoder"], example_batch[input_key])
      grad_state = grad_tx.init(jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), z))
    else:
      grad_state = grad_tx.init(p)
    state = TrainState(jnp.asarray(0, jnp.int32), p, loss_state, grad_state,
                       optimizer.init(p), jax.random.PRNGKey(seed))
    return shard_state(state)

  def shard_state(state: TrainState) -> TrainState:
    if sh is None:
      return state
    return sharding_lib.shard_state(state, sh.state(state, state.params))

  def loss_weights(state, losses):
    if loss_tx is None:
      return jnp.ones_like(losses), state.loss_state
    w, new = weighting_lib.loss_weights(loss_tx, state.loss_state,
                                        jax.lax.stop_gradient(losses))
    return w.astype(losses.dtype), new

  def step(state: TrainState, batch):
    state = constrain_state(state)
    if sh is not None:
      batch = constrain(batch, sh.batch(batch))
    batch, *others = parts(batch)
    p = state.params
    info = {}
    grad_state = state.grad_state
    if path == "one_backward":
      losses, vjp = jax.vjp(lambda q: loss_fn(q, batch), p)
      w, loss_state = loss_weights(state, losses)
      grads = vjp(w)[0]
      info["weights"] = w
    elif path == "jacobian":
      losses, tg = jacobian.value_and_jacobian(loss_fn, chunk_size=chunk_size)(p, batch)
      if sh is not None:
        tg = constrain(tg, sh.task_grads)
      gram = jacobian.gramian(tg)
      scaled, loss_state = tg, state.loss_state
      if loss_tx is not None:
        scaled, loss_state = loss_tx.update(tg, loss_state, p, task_losses=losses)
      extra = {}
      for i, other in enumerate(others):
        tg_i = jacobian.value_and_jacobian(loss_fn, chunk_size=chunk_size)(p, other)[1]
        extra[f"task_grads_{i + 2}"] = tg_i if sh is None else constrain(tg_i, sh.task_grads)
      grads, grad_state = grad_tx.update(scaled, grad_state, p, task_losses=losses, **extra)
      info["weights"] = span_weights(gram, tg, grads)
      info["cosines"] = cosine_matrix(gram)
    else:
      rj = jacobian.value_and_representation_jacobian(
          fns.encode, heads_fn, chunk_size=chunk_size)(p["encoder"], p["decoder"],
                                                        batch[input_key], batch)
      losses = rj.losses
      w, loss_state = loss_weights(state, losses)
      gram = jacobian.gramian(rj.rep_grads)
      scaled = weighting_lib.base.scale_rows(w, rj.rep_grads)
      d_z, grad_state = grad_tx.update(scaled, grad_state, None, task_losses=losses)
      grads = {"encoder": rj.encoder_vjp(d_z), "decoder": rj.heads_vjp(w)}
      info["weights"] = span_weights(gram, rj.rep_grads, d_z)
      info["cosines"] = cosine_matrix(gram)
    if sh is not None:
      grads = constrain(grads, sh.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, p)
    new_params = optax.apply_updates(p, updates)
    info["losses"] = losses
    info["grad_norm"] = optax.global_norm(grads)
    rng = jax.random.split(state.rng)[0]
    new = TrainState(state.step + 1, new_params, loss_state, grad_state, opt_state, rng)
    return constrain_state(new), replicate(info)

  def eval_stats(p, batch):
    out = fns.apply(p, batch[input_key])
    b = batch[input_key].shape[0]
    stats = {}
    for t in tasks:
      stats[t.name] = {m: metrics_lib.metric_stats(m, t.kind, out[t.name], batch[t.label_key],
                                                   num_outputs=t.num_outputs)
                       for m in t.metrics}
    stats["_loss"] = losses_lib.task_losses(tasks, out, batch) * b
    stats["_count"] = jnp.asarray(b, jnp.float32)
    return replicate(stats)

  for t in tasks:  # unknown metric names fail here, before training
    for m in t.metrics:
      metrics_lib.check_metric(m, t.kind)
  if sh is None:
    return Trainer(init, jax.jit(step), jax.jit(eval_stats), loss_fn, path)
  return Trainer(init, jax.jit(step), jax.jit(eval_stats), loss_fn, path, sh, shard_state,
                 lambda batch: sharding_lib.global_batch(batch, mesh),
                 lambda batch: sharding_lib.global_eval_batch(batch, mesh))


def finalize_eval(tasks: Sequence[Any], sums: dict) -> dict:
  """Flat ``{'loss/<task>': ..., '<metric>/<task>': ...}`` from summed eval stats."""
  out = {}
  count = float(sums["_count"])
  for i, t in enumerate(tasks):
    out[f"loss/{t.name}"] = float(sums["_loss"][i]) / max(count, 1.0)
    for m in t.metrics:
      out[f"{m}/{t.name}"] = metrics_lib.finalize_metric(m, sums[t.name][m])
  return out
