"""The one jitted multi-task training step, for every engine and any chain of MTO methods.

:func:`make_step` takes ``(loss_tx, grad_tx, optimizer, engine)`` and returns the
jitted step; the experiment trainer (:func:`make_trainer`) and sharded training
(``mesh=``) both use it. Engines (``engine=``), cheapest first:

``one_backward``
  the gradient-space part is a fixed weighting (linear scalarization, mean): the
  loss-space weights come from the losses alone (the weight functions the
  :class:`mtlx.LossWeighting` s carry) and the step takes ONE backward pass of
  ``Σ_k w_k L_k`` (1 forward + 1 backward).
``gramian``
  the gradient-space method is a weighting of the Gramian (a
  :class:`mtlx.GramianWeighting`): ``mtlx.value_and_gramian`` gives ``G = J Jᵀ``
  without the ``K × P`` Jacobian, the loss-space weights ``v`` rescale it to
  ``diag(v) G diag(v)`` (the Gramian of the re-weighted rows), the method's own
  weight function gives ``u``, and one VJP of ``Σ_k v_k u_k L_k`` the update
  (1 forward + K cotangent passes that stop at layer outputs + 1 forward/backward).
``jacobian``
  every chain: ``mtlx.value_and_jacobian`` (K per-task gradients, optionally
  ``chunk_size`` at a time), ``loss-space → gradient-space`` on them
  (1 forward + K backward passes, memory K × P).
``representation``
  per-task gradients w.r.t. the shared representation ``z``
  (``mtlx.value_and_representation_jacobian``); the gradient-space method maps the
  loss-weighted rows ``w_k ∂L_k/∂z`` to one direction ``d_z``, the encoder gets
  ``(∂z/∂θ_enc)ᵀ d_z`` and the decoder the gradient of ``Σ_k w_k L_k`` (LibMTL's
  ``rep_grad``). Memory K × |z|.

``engine='auto'`` (:func:`choose_engine`) picks ``one_backward`` where valid, then
``gramian`` for Gramian weightings when the model's autogram plan
(:func:`mtlx.autogram.autogram_plan`) handles at least ``GRAMIAN_COVERAGE`` of its
parameters layer-wise (the rest fall back to per-task grads), else ``jacobian``.
An engine that cannot serve the methods raises a ``ValueError`` (saying why, and
which engines can) before anything is built (:func:`check_engine`).

Every engine then applies the optimizer. The step's ``info`` holds, for logging,
the task losses, the task weights and ``weights_exact``: where the methods are
weightings (every loss-space weighting, every Gramian weighting) the weights are
exactly those the methods used (``w_k = v_k u_k``, the update is ``Σ_k w_k g_k``);
for the others (GradDrop, trimmed mean, MoCo, ExcessMTL, two-batch methods, DB-MTL)
the least-squares coefficients of the update in the span of the task gradients,
``w = G⁺ J d``, and ``weights_exact`` is False. With per-task gradients or a Gramian
it also holds their pairwise cosines.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

from mtlx import autogram
from mtlx import jacobian
from mtlx import registry
from mtlx import sharding as sharding_lib
from mtlx import sharpness
from mtlx.aggregators.gramian_weighting import CrossGramianWeighting
from mtlx.aggregators.gramian_weighting import GramianWeighting
from mtlx.loss_weighting.base import LossWeighting
from mtlx.loss_weighting.base import scale_gramian
from mtlx.loss_weighting.base import scale_rows
from mtlx import validation
from mtlx.train import losses as losses_lib
from mtlx.train import task_mask as task_mask_lib
from mtlx.train import step_hooks
from mtlx import metrics as metrics_lib

ENGINES = ("one_backward", "gramian", "jacobian", "representation")
PATHS = ENGINES  # the old name
# engine='auto' takes the Gramian engine when at least this fraction of the parameters
# (by count) gets its Gramian block from activations (biases, norm scales: fallback).
GRAMIAN_COVERAGE = 0.9


class TrainState(NamedTuple):
  """Everything a step reads and writes (checkpointed as a whole).

  Attributes:
    step: int32 scalar, number of updates taken.
    params: the model's params (``{'encoder': ..., 'decoder': ...}`` in the trainer).
    loss_state: tuple of the loss-space transforms' states (one per transform).
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


def check_method_names(method: str, weighting: str) -> None:
  """Raises ValueError listing the valid names for an unknown method or weighting."""
  registry.check_names(method, weighting)


def build_mto(method: str, weighting: str, num_tasks: int, *,
              method_kwargs: dict | None = None, weighting_kwargs: dict | None = None):
  """``(loss_tx or None, grad_tx)`` from registry names (:func:`mtlx.registry.build`)."""
  return registry.build(method, weighting, num_tasks, method_kwargs=method_kwargs,
                        weighting_kwargs=weighting_kwargs)


def shared_params_mask(params) -> dict:
  """``{"encoder": True, "decoder": False}``: the shared part of a model split by
  :func:`mtlx.models.split` (GradNorm's default ``mask`` in the trainer)."""
  if not isinstance(params, dict) or set(params) != {"encoder", "decoder"}:
    raise ValueError(f"params has top-level keys {sorted(params) if isinstance(params, dict) else type(params)}; "
                     "expected the {'encoder', 'decoder'} split of mtlx.models.split "
                     "(or pass weighting_kwargs mask= for GradNorm).")
  return {"encoder": True, "decoder": False}


def _loss_list(loss_tx) -> tuple:
  """``loss_tx`` (None, one transform, or a list of them) as a tuple."""
  if loss_tx is None:
    return ()
  if isinstance(loss_tx, (list, tuple)) and not isinstance(loss_tx, optax.GradientTransformation):
    return tuple(loss_tx)
  return (loss_tx,)


def _name(tx) -> str:
  return getattr(tx, "name", type(tx).__name__)


def engine_reasons(loss_tx, grad_tx, *, extra_batches: int = 0,
                   representation: bool = True,
                   flat_regions_rho: float = 0.0) -> dict[str, str | None]:
  """``{engine: None if it can serve the methods, else why not}``.

  Read from the transforms' types (:class:`mtlx.LossWeighting`,
  :class:`mtlx.GramianWeighting`): nothing is traced.
  """
  if flat_regions_rho:
    return _flat_regions_reasons(loss_tx, flat_regions_rho)
  losses = _loss_list(loss_tx)
  opaque = [_name(t) for t in losses if not isinstance(t, LossWeighting)]
  reads = [t.name for t in losses if isinstance(t, LossWeighting) and t.reads_grads]
  loss_only = None
  if opaque:
    loss_only = (f"the loss-space method(s) {opaque} are not weightings of the losses "
                 "(they transform the per-task gradients)")
  elif reads:
    loss_only = f"the loss-space weighting(s) {reads} read the per-task gradients"
  cross = isinstance(grad_tx, CrossGramianWeighting)
  weighting = isinstance(grad_tx, GramianWeighting) and not cross
  out = {"jacobian": None}
  if extra_batches:
    why = f"extra_batches={extra_batches} needs the per-task grads of every mini-batch"
    return {"one_backward": why, "gramian": why, "jacobian": None, "representation": why}
  if loss_only:
    out["one_backward"] = out["gramian"] = out["representation"] = loss_only
    return {e: out.get(e) for e in ENGINES}
  if cross:
    why = (f"{grad_tx.name} reads the cross matrix of two independent mini-batches "
           "(set extra_batches)")
    out["one_backward"] = out["gramian"] = out["representation"] = why
    return {e: out.get(e) for e in ENGINES}
  if not weighting:
    out["one_backward"] = out["gramian"] = (
        f"the gradient-space method {_name(grad_tx)} is not a weighting of the Gramian "
        "(it acts on the per-task gradients themselves)")
  elif grad_tx.needs_gramian:
    out["one_backward"] = (f"the gradient-space method {grad_tx.name} reads the "
                           "Gramian of the task gradients")
  out["representation"] = None if representation else (
      "the model has no encoder/decoder split (no representation function given)")
  return {e: out.get(e) for e in ENGINES}


def _flat_regions_reasons(loss_tx, rho: float) -> dict[str, str | None]:
  """``flat_regions_rho > 0``: only ``jacobian`` takes the K perturbed task gradients
  (a second Jacobian), and the loss-space part must be weightings of the losses (the
  same weights scale both Jacobians)."""
  why = (f"flat_regions_rho={rho} takes each task's gradient at its own perturbed "
         "parameters θ + ρ g_k/‖g_k‖ (a second, per-task Jacobian)")
  out = {e: why for e in ENGINES}
  opaque = [_name(t) for t in _loss_list(loss_tx) if not isinstance(t, LossWeighting)]
  out["jacobian"] = None if not opaque else (
      f"flat_regions_rho={rho} scales both Jacobians by the loss-space weights, but "
      f"{opaque} are not weightings of the losses")
  return out


def check_engine(engine: str, loss_tx, grad_tx, *, label: str | None = None,
                 **kwargs) -> None:
  """Raises ValueError if ``engine`` cannot serve the methods: why, and which engines can.

  ``label`` names the methods in the message (default: the transforms' names).
  """
  if engine not in ENGINES:
    raise ValueError(f"engine={engine!r}; expected 'auto' or one of {list(ENGINES)}.")
  reasons = engine_reasons(loss_tx, grad_tx, **kwargs)
  if reasons[engine] is not None:
    can = [e for e in ENGINES if reasons[e] is None]
    names = label or "+".join([_name(t) for t in _loss_list(loss_tx)] + [_name(grad_tx)])
    raise ValueError(f"engine={engine!r} cannot serve {names}: {reasons[engine]}; "
                     f"expected one of the engines that can: {can}.")


def gramian_coverage(loss_fn: Callable, params, example_batch) -> float:
  """Fraction of the parameters (by count) whose Gramian block
  :func:`mtlx.value_and_gramian` takes from activations (the rest fall back)."""
  plan = autogram.autogram_plan(loss_fn, params, example_batch)
  sizes = {jax.tree_util.keystr(p): int(jnp.size(x))
           for p, x in jax.tree_util.tree_leaves_with_path(params)}
  total = sum(sizes.values())
  return 1.0 - sum(sizes[p] for p in plan.fallback) / max(total, 1)


def choose_engine(loss_tx, grad_tx, *, loss_fn: Callable | None = None, params=None,
                  example_batch=None, extra_batches: int = 0, rep_grad: bool = False,
                  representation: bool = True, label: str | None = None,
                  flat_regions_rho: float = 0.0) -> str:
  """The cheapest engine that serves the methods (see the module docstring).

  ``gramian`` needs ``loss_fn``, ``params`` and ``example_batch`` to read the
  model's autogram plan; without them a Gramian method gets ``jacobian``.
  """
  reasons = engine_reasons(loss_tx, grad_tx, extra_batches=extra_batches,
                           representation=representation, flat_regions_rho=flat_regions_rho)
  if rep_grad:
    check_engine("representation", loss_tx, grad_tx, extra_batches=extra_batches,
                 representation=representation, label=label,
                 flat_regions_rho=flat_regions_rho)
    return "representation"
  if reasons["one_backward"] is None:
    return "one_backward"
  if reasons["gramian"] is None and example_batch is not None and loss_fn is not None:
    if gramian_coverage(loss_fn, params, example_batch) >= GRAMIAN_COVERAGE:
      return "gramian"
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


def span_weights(gram: jax.Array, task_grads, direction, scale=1.0) -> jax.Array:
  """Least-squares ``w`` with ``Σ_k w_k g_k ≈ d``: ``w = G⁺ [<g_k, d>]`` (the logged
  weights of methods that are not weightings; ``weights_exact`` is then False).

  ``gram`` may be the normalized ``Ĝ = G / s²`` with ``scale = s``
  (:func:`mtlx.jacobian.normalized_gramian`): then ``w = Ĝ⁺ [<g_k/s, d/s>]``."""
  inv = 1.0 / jnp.asarray(scale, jnp.float32)
  scaled = jax.tree_util.tree_map(lambda d: d * inv.astype(d.dtype), direction)
  return jnp.linalg.pinv(gram.astype(jnp.float32)) @ (_dot_rows(task_grads, scaled) * inv)


def cosine_matrix(gram: jax.Array) -> jax.Array:
  """Pairwise cosines of the task gradients (:func:`mtlx.jacobian.cosines`)."""
  return jacobian.cosines(gram)


class Step(NamedTuple):
  """What :func:`make_step` returns.

  Attributes:
    init: ``(params, example_batch, seed=0) -> TrainState`` (placed on the mesh).
    step: jitted ``(state, batch) -> (state, info)``; ``info`` holds ``losses [K]``,
      ``weights [K]``, ``weights_exact`` (bool), ``grad_norm`` and, except on
      ``one_backward``, ``cosines [K, K]``.
    engine: the engine used.
    shardings: the :class:`mtlx.sharding.StepShardings` with ``mesh=``, else None.
    shard_state / shard_batch / shard_eval_batch: place a state / a local batch
      on the mesh (identities without one).
  """
  init: Callable
  step: Callable
  engine: str
  shardings: Any = None
  shard_state: Callable = lambda state: state
  shard_batch: Callable = lambda batch: batch
  shard_eval_batch: Callable = lambda batch: batch


class Representation(NamedTuple):
  """The encoder/decoder split the ``representation`` engine needs.

  ``params`` are then ``{'encoder': ..., 'decoder': ...}``; ``encode(enc_params,
  batch) -> z`` and ``heads(dec_params, z, batch) -> losses[K]``.
  """
  encode: Callable
  heads: Callable


def make_step(loss_fn: Callable, *, loss_tx: Any = None,
              grad_tx: optax.GradientTransformation,
              optimizer: optax.GradientTransformation, engine: str = "auto",
              params: Any = None, example_batch: Any = None,
              representation: Representation | None = None,
              chunk_size: int | None = None, extra_batches: int = 0,
              mesh: Any = None, param_rule: str = "fsdp", shard_tasks: bool = True,
              min_size: int = 2 ** 10, donate: bool = False,
              label: str | None = None, task_mask: Any = None,
              flat_regions_rho: float = 0.0, has_aux: bool = False,
              takes_rng: bool = False) -> Step:
  """The jitted MTO train step ``(state, batch) -> (state, info)`` of any engine.

  Args:
    loss_fn: ``(params, batch) -> losses[K]``.
    loss_tx: the loss-space part: ``None``, one loss-space transform, or a list of
      them (applied in order; the state is the tuple of their states). Weightings
      (:class:`mtlx.LossWeighting`) serve every engine; other loss-space
      transforms (DB-MTL) only ``jacobian``.
    grad_tx: the gradient-space method (stacked grads -> one update).
    optimizer: any optax optimizer (applied after the MTO part).
    engine: ``'auto'`` or one of ``ENGINES`` (module docstring). With ``'auto'``
      the choice is logged (``logging.info``) and in ``Step.engine``.
    params: example params (for ``'auto'``, and the shardings with ``mesh``).
    example_batch: an example batch (for ``'auto'`` to read the autogram plan).
    representation: the encoder/decoder split, for the ``representation`` engine.
    chunk_size: per-task grads ``chunk_size`` at a time (``jacobian``, ``representation``).
    extra_batches: 1 or 2 for methods that read the per-task grads of independent
      mini-batches (MoDo, SDMGrad: ``task_grads_2``, ``task_grads_3``); each batch
      then holds ``1 + extra_batches`` mini-batches stacked along the batch axis.
      ``jacobian`` only.
    mesh: a :func:`mtlx.sharding.make_mesh` mesh: the step then runs with
      ``NamedSharding`` s (:func:`mtlx.sharding.step_shardings`) on the params,
      states, batch (over ``'data'``; ``'data' × 'model'`` with ``param_rule='zero3'``)
      and per-task grads; losses, weights and metrics come out replicated.
      ``None``: plain ``jax.jit``.
    param_rule / shard_tasks / min_size: see :func:`mtlx.sharding.step_shardings`.
    donate: donate the state's buffers to the step.
    label: the methods' names for messages and the log (e.g. ``"dwa+upgrad"``).
    task_mask: steps in which some tasks have no example (per-task datasets,
      :mod:`mtlx.data.mixture`): the key of the batch's per-row task ids
      (``"task_id"``; task ``k`` is present when it has a row) or a function
      ``batch -> [K]`` bool. ``loss_fn`` gives absent tasks a zero, masked loss
      (:func:`mtlx.train.task_mask.masked_task_losses`); on every engine the
      methods then read an absent task's loss as 1 (its gradient stays zero), the
      absent tasks' entries of the loss-space and gradient-space states keep their
      old values (:func:`mtlx.train.task_mask.keep_absent`), ``info['losses']``
      holds the masked losses and ``info['weights']`` the weights (0 when absent:
      they multiply zero rows) and ``info['task_mask']`` the mask.
      Weightings that declare the optional extra ``task_mask`` (MGDA, CAGrad) are given
      the mask and act on the present tasks only; the others see the absent
      tasks' zero rows (module :mod:`mtlx.train.task_mask`). ``None`` (default): every task is
      present, the step is exactly the unmasked one.
    flat_regions_rho: ρ ≥ 0 of task-based flat regions (Phan et al. 2022;
      :func:`mtlx.flat_regions`). ``0``: off (the step is exactly today's). ``> 0``
      (``jacobian`` engine only; ``'auto'`` picks it): every task's gradient is also
      taken at ``θ + ρ g_k/‖g_k‖`` (:func:`mtlx.value_and_sharpness_jacobian`), both
      Jacobians are scaled by the loss-space weights, and the update is
      ``A(J) + A(J^SAM − J)`` with ``A`` the gradient-space method (two copies, each
      with its own state). Cost: a second Jacobian (K more forward and K more
      backward passes, K × P more memory) and the method twice.

  Raises:
    ValueError: before anything is built, for an engine that cannot serve the
      methods (saying why and which engines can), a bad ``extra_batches``, an
      unknown ``param_rule`` or a task axis that does not divide K.
  """
  if extra_batches not in (0, 1, 2):
    raise ValueError(f"extra_batches={extra_batches}; expected 0, 1 or 2.")
  validation.check_number(flat_regions_rho, "flat_regions_rho", low=0, method="make_step")
  loss_txs = _loss_list(loss_tx)
  mask_of = None if task_mask is None else task_mask_lib.presence_fn(task_mask)
  if mask_of is not None:  # the methods read absent tasks' losses as 1 (grads unchanged)
    loss_fn = task_mask_lib.with_filled_losses(loss_fn, mask_of)
    if representation is not None:
      representation = representation._replace(heads=task_mask_lib.with_filled_losses(
          representation.heads, mask_of, batch_arg=2))
  kw = dict(extra_batches=extra_batches, representation=representation is not None)
  if flat_regions_rho:
    kw["flat_regions_rho"] = flat_regions_rho
  hooks = dict(has_aux=has_aux, takes_rng=takes_rng)
  if engine == "auto":
    auto_fn = loss_fn if example_batch is None else step_hooks.bind(
        loss_fn, jax.random.PRNGKey(0), params, example_batch, **hooks).task_losses
    engine = choose_engine(loss_txs, grad_tx, loss_fn=auto_fn, params=params,
                           example_batch=example_batch, **kw)
    logging.info("engine='auto' chose %r for %s", engine,
                 label or "+".join([_name(t) for t in loss_txs] + [_name(grad_tx)]))
  check_engine(engine, loss_txs, grad_tx, label=label, **kw)
  if flat_regions_rho:
    grad_tx = sharpness.flat_regions(grad_tx)
  n_parts = 1 + extra_batches
  weighting = isinstance(grad_tx, GramianWeighting) and not isinstance(
      grad_tx, CrossGramianWeighting)
  sh = None
  if mesh is not None:
    sh = sharding_lib.step_shardings(params, mesh, param_rule=param_rule,
                                     shard_tasks=shard_tasks, min_size=min_size)

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

  def shard_state(state: TrainState) -> TrainState:
    if sh is None:
      return state
    return sharding_lib.shard_state(state, sh.state(state, state.params))

  def init(p, example, seed: int = 0) -> TrainState:
    if sh is not None:
      sh.check_num_tasks(step_hooks.num_tasks(loss_fn, p, parts(example)[0], **hooks))
    loss_state = tuple(t.init(p) for t in loss_txs)
    if engine == "representation":
      z = jax.eval_shape(representation.encode, p["encoder"], parts(example)[0])
      grad_state = grad_tx.init(jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), z))
    else:
      grad_state = grad_tx.init(p)
    state = TrainState(jnp.asarray(0, jnp.int32), p, loss_state, grad_state,
                       optimizer.init(p), jax.random.PRNGKey(seed))
    return shard_state(state)

  def loss_weights(loss_state, losses):
    """Product of the loss weightings' weights (from the losses alone)."""
    losses = jax.lax.stop_gradient(losses)
    w, new = jnp.ones_like(losses), []
    for t, s in zip(loss_txs, loss_state):
      wi, s = t.weights(s, losses)
      w = w * wi.astype(w.dtype)
      new.append(s)
    return w, tuple(new)

  def loss_space(loss_state, losses, rows):
    """The loss-space chain on stacked rows: ``(rows, weights or None, state)``."""
    w, new = jnp.ones_like(losses), []
    for t, s in zip(loss_txs, loss_state):
      if isinstance(t, LossWeighting) and w is not None:
        wi, s = t.weights(s, losses, rows if t.reads_grads else None)
        rows = scale_rows(wi, rows)
        w = w * wi.astype(w.dtype)
      else:
        rows, s = t.update(rows, s, None, task_losses=losses)
        w = None
      new.append(s)
    return rows, w, tuple(new)

  def gradient_space(grad_state, rows, losses, p, extra, gram=None, mask=None):
    """``(direction, weights or None, state)`` of the gradient-space method.

    ``gram``: ``(Ĝ, s)`` of ``rows`` (:func:`mtlx.jacobian.normalized_gramian`)
    when the caller has it (no second ``K² P`` pass). ``mask``: the present tasks,
    for the weightings that declare the ``task_mask`` extra."""
    if weighting:
      g_hat, s = jacobian.normalized_gramian(rows) if gram is None else gram
      # Scale-invariant methods read Ĝ (no float32 under/overflow); the others G = s² Ĝ.
      matrix = g_hat if grad_tx.scale_invariant else (g_hat * s) * s
      u, grad_state = grad_tx.weights(matrix, grad_state, task_losses=losses,
                                      task_mask=mask, **extra)
      return jacobian.combine(u, rows), u, grad_state
    d, grad_state = grad_tx.update(rows, grad_state, p, task_losses=losses, **extra)
    return d, None, grad_state

  def step(state: TrainState, batch):
    state = constrain_state(state)
    if sh is not None:
      batch = constrain(batch, sh.batch(batch))
    batch, *others = parts(batch)
    stored = state.params
    p = stored if sh is None else sh.compute_params(stored)  # gathered under 'zero3'
    info = {}
    hook = step_hooks.bind(loss_fn, state.rng, p, batch, **hooks)  # loss_fn without hooks
    aux_loss = None

    def present(losses):  # [K] bool, or None without task_mask
      return None if mask_of is None else mask_of(batch, losses.shape[0])

    if engine == "one_backward":
      losses, vjp, aux_loss = hook.vjp(p, batch)
      v, loss_state = loss_weights(state.loss_state, losses)
      k = losses.shape[0]
      u, grad_state = grad_tx.weights(jnp.zeros((k, k), v.dtype), state.grad_state,
                                      task_losses=losses, task_mask=present(losses))
      w = (v * u.astype(v.dtype)).astype(losses.dtype)
      grads = vjp(w)[0]
      exact = True
    elif engine == "gramian":
      # Ĝ = G / s² (no float32 under/overflow); scale-invariant methods read Ĝ.
      losses, (gram, scale) = autogram.value_and_normalized_gramian(hook.task_losses)(p, batch)
      gram, scale = replicate((gram, scale))
      v, loss_state = loss_weights(state.loss_state, losses)
      matrix = scale_gramian(v, gram)
      matrix = matrix if grad_tx.scale_invariant else (matrix * scale) * scale
      u, grad_state = grad_tx.weights(matrix, state.grad_state, task_losses=losses,
                                      task_mask=present(losses))
      w = v * u.astype(v.dtype)
      grads, aux_loss = hook.weighted_grad(p, w, batch)
      info["cosines"] = jacobian.cosines(gram)
      exact = True
    elif engine == "jacobian":
      vjac = jacobian.value_and_jacobian(hook.task_losses, chunk_size=chunk_size)
      if flat_regions_rho:
        losses, tg, sharp = sharpness.value_and_sharpness_jacobian(
            hook.task_losses, flat_regions_rho, chunk_size=chunk_size)(p, batch)
      else:
        losses, tg = vjac(p, batch)
      tg = constrain(tg, sh.task_grads) if sh is not None else tg
      extra = {}
      for i, other in enumerate(others):
        tg_i = vjac(p, other)[1]
        extra[f"task_grads_{i + 2}"] = tg_i if sh is None else constrain(tg_i, sh.task_grads)
      # One Gramian serves the method, the cosines and the logged weights: the rows of
      # a loss weighting are diag(v) J, whose Gramian is diag(v) G diag(v).
      # The rare rescaled branch (rows near the float32 limits) takes the Gramian from
      # autogram (which serves any loss: layers it cannot contract fall back to their
      # per-task grads), so no K x P array enters the lax.cond (XLA would copy it).
      def rescaled():
        return autogram.value_and_normalized_gramian(hook.task_losses)(p, batch)[1]

      gram, scale = jacobian.normalized_gramian(tg, rescaled=rescaled)
      rows, v, loss_state = loss_space(state.loss_state, losses, tg)
      rows_gram = None if v is None else (scale_gramian(v, gram), scale)
      if flat_regions_rho:  # the same loss-space weights scale the perturbed rows
        sharp = constrain(sharp, sh.task_grads) if sh is not None else sharp
        extra["task_grads_sharp"] = scale_rows(v, sharp)
      grads, u, grad_state = gradient_space(state.grad_state, rows, losses, p, extra,
                                            rows_gram, present(losses))
      exact = v is not None and u is not None
      w = v * u.astype(v.dtype) if exact else span_weights(gram, tg, grads, scale)
      info["cosines"] = jacobian.cosines(gram)
    else:
      rep = step_hooks.bind_representation(representation, hook.key)
      rj = jacobian.value_and_representation_jacobian(
          rep.encode, rep.heads, chunk_size=chunk_size)(
              p["encoder"], p["decoder"], batch, batch)
      losses = rj.losses
      v, loss_state = loss_weights(state.loss_state, losses)
      rows = scale_rows(v, rj.rep_grads)
      d_z, u, grad_state = gradient_space(state.grad_state, rows, losses, None, {},
                                          mask=present(losses))
      grads = {"encoder": rj.encoder_vjp(d_z), "decoder": rj.heads_vjp(v.astype(losses.dtype))}
      gram = jacobian.gramian(rj.rep_grads)
      exact = u is not None
      w = v * u.astype(v.dtype) if exact else span_weights(gram, rj.rep_grads, d_z)
      info["cosines"] = jacobian.cosines(gram)
    if mask_of is not None:  # absent tasks keep their method state; log their loss as 0
      info["task_mask"] = mask = present(losses)
      loss_state, grad_state = task_mask_lib.keep_absent(
          (loss_state, grad_state), (state.loss_state, state.grad_state), mask,
          task_axes=task_mask_lib.param_aware_task_axes(p, losses.shape[0]))
      losses = jnp.where(mask, losses, jnp.zeros_like(losses))
      w = jnp.where(mask, w, jnp.zeros_like(w))  # they multiply zero rows
    if hook.has_aux_loss and aux_loss is None:  # jacobian, representation: one more VJP
      aux_loss, aux_grads = hook.aux_value_and_grad(p, batch)
      grads = step_hooks.add_grads(grads, aux_grads)
    if aux_loss is not None:
      info["aux_loss"] = aux_loss
    if sh is not None:
      grads = constrain(grads, sh.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, stored)
    new_params = optax.apply_updates(stored, updates)
    info["losses"] = losses
    info["weights"] = w
    info["weights_exact"] = jnp.asarray(exact)
    info["grad_norm"] = optax.global_norm(grads)
    rng = jax.random.split(state.rng)[0]
    new = TrainState(state.step + 1, new_params, loss_state, grad_state, opt_state, rng)
    return constrain_state(new), replicate(info)

  jitted = jax.jit(step, donate_argnums=(0,) if donate else ())
  if sh is None:
    return Step(init, jitted, engine)
  return Step(init, jitted, engine, sh, shard_state,
              lambda batch: sharding_lib.global_batch(batch, mesh, sh.batch_axes),
              lambda batch: sharding_lib.global_eval_batch(batch, mesh))


class Trainer(NamedTuple):
  """What :func:`make_trainer` returns: the :class:`Step` of the model plus evaluation.

  Attributes:
    init: ``(params, example_batch, seed) -> TrainState``.
    step: jitted ``(state, batch) -> (state, info)`` (:class:`Step`).
    eval_stats: jitted ``(params, batch) -> {task: {metric: sums}, '_loss': [K] sums,
      '_count': B}`` (add over batches, then :func:`mtlx.metrics.finalize_metric`).
    loss_fn: ``(params, batch) -> [K]``.
    engine: the step's engine (``one_backward``, ``gramian``, ``jacobian``,
      ``representation``).
    shardings / shard_state / shard_batch / shard_eval_batch: as in :class:`Step`.
  """
  init: Callable
  step: Callable
  eval_stats: Callable
  loss_fn: Callable
  engine: str
  shardings: Any = None
  shard_state: Callable = lambda state: state
  shard_batch: Callable = lambda batch: batch
  shard_eval_batch: Callable = lambda batch: batch

  @property
  def path(self) -> str:
    """The old name of :attr:`engine`."""
    return self.engine


def _leaf_path(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
                  for k in path)


def grouped_methods(default_tx, method_groups: dict, params, num_tasks: int):
  """:func:`mtlx.partition` from ``{method name: "prefix,prefix"}`` over param paths;
  leaves matching no prefix keep ``default_tx``; the longest matching prefix wins."""
  from mtlx.aggregators.partition import partition  # noqa: PLC0415
  groups = dict(method_groups.to_dict() if hasattr(method_groups, "to_dict") else method_groups)
  prefixes = {}
  for name, spec in groups.items():
    for prefix in (spec if isinstance(spec, (list, tuple)) else str(spec).split(",")):
      if prefix.strip():
        prefixes[prefix.strip().strip("/")] = name
  paths = [_leaf_path(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
  unused = sorted(p for p in prefixes if not any(q == p or q.startswith(p + "/") for q in paths))
  if unused:
    raise ValueError(f"method_groups prefixes {unused} match no parameter; expected "
                     f"prefixes of the param paths, e.g. {paths[:4]}.")
  transforms = {"*": default_tx}
  for name in groups:
    transforms[name] = registry.get(name, "gradient").build(num_tasks)

  def label(path, _):
    leaf = _leaf_path(path)
    best = max((p for p in prefixes if leaf == p or leaf.startswith(p + "/")), key=len,
               default=None)
    return "*" if best is None else prefixes[best]

  return partition(transforms, lambda tree: jax.tree_util.tree_map_with_path(label, tree))


def calibrated_methods(grad_tx, branches, params):
  """``optax.chain(mtlx.calibrate_magnitudes(labels, branches), grad_tx)`` with the
  branches given as param-path prefixes (``"encoder/branch_a,encoder/branch_b"``):
  every task's gradient gets the same norm on each branch before ``grad_tx`` (FULLER's
  modality level); leaves under no prefix pass through unchanged."""
  from mtlx.aggregators.partition import calibrate_magnitudes  # noqa: PLC0415
  prefixes = [b.strip().strip("/") for b in (
      branches if isinstance(branches, (list, tuple)) else str(branches).split(","))
      if b.strip()]
  paths = [_leaf_path(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
  unused = [b for b in prefixes if not any(q == b or q.startswith(b + "/") for q in paths)]
  if len(prefixes) < 2 or unused:
    raise ValueError(f"calibrate_branches={branches!r}: expected at least two prefixes of "
                     f"the param paths (e.g. {paths[:4]}); "
                     + (f"{unused} match no parameter." if unused else "got fewer than two."))

  def label(path, _):
    leaf = _leaf_path(path)
    return next((b for b in prefixes if leaf == b or leaf.startswith(b + "/")), "")

  labels = lambda tree: jax.tree_util.tree_map_with_path(label, tree)
  return optax.chain(calibrate_magnitudes(labels, branches=prefixes), grad_tx)


def _rep_mtl_fns(rep_mtl: dict, method: str, weighting: str, heads_fn, encode):
  """``(heads_fn, loss_fn)`` with Rep-MTL's penalties (:func:`mtlx.rep_mtl.rep_mtl_heads`)."""
  from mtlx import rep_mtl as rep_mtl_lib  # noqa: PLC0415
  if (method, weighting) != ("ls", "none"):
    raise ValueError(f"rep_mtl adds its penalties to linear scalarization; got "
                     f"method={method!r}, weighting={weighting!r}; expected 'ls' and 'none'.")
  kw = dict(rep_mtl.to_dict() if hasattr(rep_mtl, "to_dict") else rep_mtl)
  allowed = ("tsr_weight", "csa_weight", "temperature")
  if set(kw) - set(allowed):
    raise ValueError(f"rep_mtl has key(s) {sorted(set(kw) - set(allowed))}; expected some "
                     f"of {list(allowed)}.")
  heads = rep_mtl_lib.rep_mtl_heads(heads_fn, **kw)
  return heads, lambda p, batch: heads(p["decoder"], encode(p["encoder"], batch), batch)


def _focal_fns(tasks, fns, input_key: str, gamma: float):
  """``(loss_fn, heads_fn)`` with every task's loss MFTCoder's token-level focal loss."""
  from mtlx import task_losses as task_losses_lib  # noqa: PLC0415
  validation.check_number(gamma, "focal_gamma", low=0, method="make_trainer")
  bad = [t.name for t in tasks if t.kind != "classification"]
  if bad:
    raise ValueError(f"focal_gamma={gamma} applies to classification tasks; tasks {bad} "
                     "are not; expected focal_gamma=0 for them.")

  def losses_of(outputs, batch):
    ell = [optax.softmax_cross_entropy_with_integer_labels(
        outputs[t.name], batch[t.label_key].reshape(-1).astype(jnp.int32)) for t in tasks]
    ids = jnp.concatenate([jnp.full(e.shape, k, jnp.int32) for k, e in enumerate(ell)])
    return task_losses_lib.focal_task_losses(jnp.concatenate(ell), ids, num_tasks=len(tasks),
                                             gamma=gamma, level="token")[0]

  return (lambda p, batch: losses_of(fns.apply(p, batch[input_key]), batch),
          lambda dec, z, batch: losses_of(fns.decode(dec, z, batch[input_key]), batch))


def make_trainer(fns, tasks: Sequence[Any], input_key: str, params, *, method: str = "ls",
                 weighting: str = "none", optimizer: optax.GradientTransformation,
                 engine: str = "auto", rep_grad: bool = False,
                 method_kwargs: dict | None = None, weighting_kwargs: dict | None = None,
                 example_batch: Any = None, chunk_size: int | None = None,
                 path: str | None = None, extra_batches: int = 0, mesh: Any = None,
                 param_rule: str = "fsdp", shard_tasks: bool = True,
                 min_size: int = 2 ** 10, method_groups: dict | None = None,
                 calibrate_branches: str | Sequence[str] = "",
                 flat_regions_rho: float = 0.0, rep_mtl: dict | None = None,
                 focal_gamma: float = 0.0, aux_loss_weight: float = 0.0,
                 dropout_rng: bool = False) -> Trainer:

  """The jitted train step (:func:`make_step`) and eval function of a multi-task model.

  Args:
    fns: :class:`mtlx.models.ModelFns` of the model.
    tasks: the TaskSpecs, in the order of the model's loss vector.
    input_key: key of the model input in a batch.
    params: example params.
    method / weighting: gradient-space and loss-space names (``mtlx.registry``);
      ``weighting`` may join several with ``+`` (``"dwa+famo"``).
    optimizer: any optax optimizer (applied after the MTO chain).
    engine: ``'auto'`` or one of :data:`ENGINES`; ``rep_grad=True`` is a spelling
      of ``engine='representation'`` (``path=`` the old name of ``engine``).
    method_kwargs / weighting_kwargs: constructor arguments of the methods
      (unknown keys: ``ValueError`` naming them and the accepted ones).
    example_batch: a batch, for ``engine='auto'`` to read the model's autogram plan.
    chunk_size, extra_batches, mesh, param_rule, shard_tasks, min_size: see
      :func:`make_step`.
    method_groups: ``{method name: "prefix,prefix"}``: the parameters whose path
      (``'encoder/fuse/kernel'``) starts with one of the prefixes get that
      gradient-space method (registry defaults), the others ``method``
      (:func:`mtlx.partition`; Jacobian engine). E.g. ``{"upgrad": "encoder/fuse",
      "ls": "decoder"}`` (FULLER: calibrate at the last shared layer).
    calibrate_branches: param-path prefixes of the model's branches
      (``"encoder/branch_a,encoder/branch_b"``): each task's gradient is rescaled to
      a common norm on every branch before the gradient-space method
      (:func:`mtlx.calibrate_magnitudes`, FULLER's modality level; Jacobian engine).
      ``""``: off.
    flat_regions_rho: task-based flat regions' ρ (:func:`make_step`; 0: off).
    rep_mtl: ``None`` (off) or ``{"tsr_weight", "csa_weight", "temperature"}``:
      Rep-MTL's saliency penalties on top of linear scalarization
      (:func:`mtlx.rep_mtl.rep_mtl_heads`; ``method='ls'``, ``weighting='none'``
      only); the logged train losses then include the penalties' share.
    focal_gamma: γ > 0: the training loss of each (classification) task is
      MFTCoder's token-level focal loss ``mean_i (1 - e^{-ℓ_i})^γ ℓ_i``
      (:func:`mtlx.task_losses.focal_task_losses`); 0: the plain mean.
    aux_loss_weight: ``> 0`` adds ``aux_loss_weight × Σ`` of the model's auxiliary
      outputs (``'aux/...'``, :func:`mtlx.models.aux_losses`, e.g. the MoE
      load balance) to the objective, outside the K task losses
      (``make_step(has_aux=True)``; Switch Transformer: 0.01). 0: not trained.
    dropout_rng: call the model with ``dropout_key=`` the step's key
      (``make_step(takes_rng=True)``): dropout is active in training steps,
      not in ``eval_stats``.

  Raises:
    ValueError: for unknown names or keyword arguments, or an engine that cannot
      serve the methods (saying why and which engines can), before anything is built.
  """
  engine = path or engine
  if rep_grad:
    if engine not in ("auto", "representation"):
      raise ValueError(f"rep_grad=True is engine='representation'; got engine={engine!r}.")
    engine = "representation"
  k = len(tasks)
  if "gradnorm" in str(weighting).split("+") and "mask" not in (weighting_kwargs or {}):
    # GradNorm's norms are taken over shared parameters (Chen et al. use the last shared
    # layer); the model's split tells which those are: the encoder.
    weighting_kwargs = dict(weighting_kwargs or {}, mask=shared_params_mask(params))
  loss_tx, grad_tx = build_mto(method, weighting, k, method_kwargs=method_kwargs,
                               weighting_kwargs=weighting_kwargs)
  if method_groups:
    grad_tx = grouped_methods(grad_tx, method_groups, params, k)
  if calibrate_branches:
    grad_tx = calibrated_methods(grad_tx, calibrate_branches, params)

  def loss_fn(p, batch):
    return losses_lib.task_losses(tasks, fns.apply(p, batch[input_key]), batch)

  def heads_fn(dec_params, z, batch):
    return losses_lib.task_losses(tasks, fns.decode(dec_params, z, batch[input_key]), batch)

  if focal_gamma:
    loss_fn, heads_fn = _focal_fns(tasks, fns, input_key, focal_gamma)
  if rep_mtl:
    heads_fn, loss_fn = _rep_mtl_fns(rep_mtl, method, weighting, heads_fn,
                                     lambda enc, batch: fns.encode(enc, batch[input_key]))

  if (focal_gamma or rep_mtl) and (aux_loss_weight > 0 or dropout_rng):
    raise ValueError(
        f"focal_gamma={focal_gamma!r} / rep_mtl={rep_mtl!r} replace the task losses, which "
        f"aux_loss_weight={aux_loss_weight!r} / dropout_rng={dropout_rng!r} also replace; "
        "expected one of the two (set the model's dropout and config.moe_aux_weight to 0 "
        "for focal or Rep-MTL).")
  rep = Representation(lambda enc, batch: fns.encode(enc, batch[input_key]), heads_fn)
  step_loss_fn, rep, hooks = step_hooks.trainer_loss_fns(
      tasks, fns, input_key, aux_loss_weight=aux_loss_weight, dropout_rng=dropout_rng,
      default=(loss_fn, rep))
  st = make_step(step_loss_fn, loss_tx=loss_tx, grad_tx=grad_tx, optimizer=optimizer,
                 engine=engine, params=params, example_batch=example_batch,
                 representation=rep, chunk_size=chunk_size, extra_batches=extra_batches,
                 mesh=mesh, param_rule=param_rule, shard_tasks=shard_tasks,
                 min_size=min_size, label=f"weighting={weighting!r}, method={method!r}",
                 flat_regions_rho=flat_regions_rho, **hooks)
  if st.shardings is not None:
    st.shardings.check_num_tasks(k)
  replicate = (lambda t: t) if st.shardings is None else (
      lambda t: jax.lax.with_sharding_constraint(
          t, jax.tree_util.tree_map(lambda _: st.shardings.replicated(), t)))

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
  return Trainer(st.init, st.step, jax.jit(eval_stats), loss_fn, st.engine, st.shardings,
                 st.shard_state, st.shard_batch, st.shard_eval_batch)


def finalize_eval(tasks: Sequence[Any], sums: dict) -> dict:
  """Flat ``{'loss/<task>': ..., '<metric>/<task>': ...}`` from summed eval stats."""
  out = {}
  count = float(sums["_count"])
  for i, t in enumerate(tasks):
    out[f"loss/{t.name}"] = float(sums["_loss"][i]) / max(count, 1.0)
    for m in t.metrics:
      out[f"{m}/{t.name}"] = metrics_lib.finalize_metric(m, sums[t.name][m])
  return out
