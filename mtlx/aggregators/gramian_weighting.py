"""Turn a weighting of the Gramian (or of the cross matrix of two batches) into a transform."""

from __future__ import annotations

import inspect
from typing import Any, Callable

import jax
import optax

from mtlx import jacobian
from mtlx import validation
from mtlx.aggregators._extras import second_batch

# The extra arguments that carry the other batches (not forwarded to a weighting).
_BATCHES = ("task_grads_2", "task_grads_3")


def _accepted_extras(fn: Callable[..., Any], extra: dict[str, Any]) -> dict[str, Any]:
  """The keyword extras that ``fn``'s signature names (all of them for ``**kwargs``)."""
  params = inspect.signature(fn).parameters
  if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
    return dict(extra)
  return {name: value for name, value in extra.items() if name in params}


def _matrix_weighting(weighting, matrix_of, init, num_tasks, label):
  """The transform ``d = Σ_k w_k h_k`` with ``w = weighting(M[, state], **extras)``.

  ``matrix_of(task_grads, extra) -> (M, direction, extras)`` gives the ``K × K``
  matrix the weights are read from, the stacked grads ``h`` they combine and the
  keyword extras left for the weighting (filtered by its signature).
  """

  def init_fn(params):
    del params
    return optax.EmptyState() if init is None else init(num_tasks)

  def update_fn(task_grads, state, params=None, **extra):
    del params
    k = validation.num_tasks(task_grads)
    validation.check_num_tasks(k, num_tasks, label)
    matrix, direction, extra = matrix_of(task_grads, extra)
    kwargs = _accepted_extras(weighting, extra)
    if init is None:
      weights = weighting(matrix, **kwargs)
    else:
      weights, state = weighting(matrix, state, **kwargs)
    if jax.numpy.shape(weights) != (k,):
      raise ValueError(f"{label} returned weights of shape {jax.numpy.shape(weights)}; "
                       f"expected shape ({k},).")
    return jacobian.combine(weights, direction), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def gramian_weighting(
    weighting: Callable[..., Any], *,
    init: Callable[[int | None], Any] | None = None,
    num_tasks: int | None = None,
    name: str | None = None,
    scale_invariant: bool = False) -> optax.GradientTransformationExtraArgs:
  """Wraps a weighting ``w = f(G)`` of the Gramian as an optax transform.

  .. math::  G = J J^T \\in R^{K×K},\\quad w = f(G),\\quad d = w^T J = \\sum_k w_k g_k

  ``G`` is :func:`mtlx.gramian` of the stacked task grads (a per-leaf contraction,
  so it shards with the params) and the update :func:`mtlx.combine`.

  Args:
    weighting: a pure function of the Gramian.
      Stateless (``init is None``): ``weighting(gramian, **extras) -> weights[K]``.
      Stateful: ``weighting(gramian, state, **extras) -> (weights[K], new_state)``.
      ``extras`` are the keyword extra arguments of ``update`` (``task_losses``
      ...) that the function's signature names; a function with ``**kwargs``
      receives all of them.
    init: for stateful weightings, ``init(num_tasks) -> state`` (a pytree of
      arrays), called by the transform's ``init``.
    num_tasks: K, when the state is sized by the number of tasks; an update with
      another K raises a ``ValueError`` that names both.
    name: the method's name for error messages.
    scale_invariant: declare ``f(c² G) = f(G)`` for every ``c > 0`` (weights
      that do not depend on the scale of the rows: UPGrad, MGDA, DualProj,
      IMTL-G, CAGrad, PCGrad, Krum, the mean ...). ``f`` then reads
      ``Ĝ = (J/s)(J/s)ᵀ`` with ``s`` the largest entry of ``J``
      (:func:`mtlx.jacobian.normalized_gramian`), which neither underflows nor
      overflows in float32, so the method is scale-linear over the whole
      float32 range and finite rows never give NaN.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update(task_grads, state,
    params=None, **extras)`` returns one params-shaped update. The state is the
    weighting's own state (``optax.EmptyState()`` when stateless).

  Cost: the Gramian (``K² P`` multiply-adds) and the combination (``K P``) on top
  of whatever ``weighting`` does on the ``K × K`` matrix; no memory beyond the
  ``K × K`` Gramian. No extra backward pass.

  Example::

    def softmax_of_minus_gramian_diag(gramian):
      return jax.nn.softmax(-jnp.diag(gramian))
    tx = optax.chain(mtlx.gramian_weighting(softmax_of_minus_gramian_diag), optax.sgd(0.1))
  """
  label = name or getattr(weighting, "__name__", "gramian_weighting")

  def gramian_of(task_grads, extra):
    if scale_invariant:
      return jacobian.normalized_gramian(task_grads)[0], task_grads, extra
    return jacobian.gramian(task_grads), task_grads, extra

  return _matrix_weighting(weighting, gramian_of, init, num_tasks, label)


def cross_gramian_weighting(
    weighting: Callable[..., Any], *,
    init: Callable[[int | None], Any] | None = None,
    num_tasks: int | None = None,
    name: str | None = None) -> optax.GradientTransformationExtraArgs:
  """Wraps a weighting ``w = f(C)`` of the cross matrix of two batches as an optax transform.

  .. math::  C = J_1 J_2^T \\in R^{K×K},\\quad w = f(C),\\quad
             d = \\sum_k w_k g^{(3)}_k \\ \\ (\\text{or } g^{(1)}_k)

  For methods that need two independent mini-batches ("double sampling": MoDo,
  SDMGrad): ``C_{kl} = ⟨g¹_k, g²_l⟩`` (:func:`mtlx.jacobian.cross_gramian`, a
  per-leaf contraction) estimates the Gramian of the expected gradients without
  bias, since the noise of the two batches is independent. The update combines
  the per-task grads of a third batch when given, else those of the first
  (:func:`mtlx.combine`). Otherwise the contract is that of
  :func:`mtlx.gramian_weighting`.

  Args:
    weighting: a pure function of the cross matrix.
      Stateless (``init is None``): ``weighting(cross, **extras) -> weights[K]``.
      Stateful: ``weighting(cross, state, **extras) -> (weights[K], new_state)``.
      ``extras`` are the keyword extra arguments of ``update`` other than the
      batches (``task_losses`` ...) that the function's signature names; a
      function with ``**kwargs`` receives all of them.
    init: for stateful weightings, ``init(num_tasks) -> state`` (a pytree of
      arrays), called by the transform's ``init``.
    num_tasks: K, when the state is sized by the number of tasks; an update with
      another K raises a ``ValueError`` that names both.
    name: the method's name for error messages.

  Extra arguments of ``update``:
    task_grads_2: per-task grads of a second, independent mini-batch (same
      pytree, shapes and K as ``task_grads``). Required: a missing one raises a
      ``ValueError`` that says what to pass; a mismatched one a ``ValueError``
      that names the difference.
    task_grads_3: optional third batch for the direction ``d`` (checked the
      same way); without it, ``d`` is built from ``task_grads``.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update(task_grads, state,
    params=None, *, task_grads_2, task_grads_3=None, **extras)`` returns one
    params-shaped update. The state is the weighting's own state
    (``optax.EmptyState()`` when stateless).

  Cost: two (three) Jacobians, i.e. 2K (3K) backward passes by the caller; the
  cross matrix (``K² P`` multiply-adds) and the combination (``K P``) on top of
  whatever ``weighting`` does on the ``K × K`` matrix; no memory beyond it.

  Example::

    def stochastic_mgda_step(cross, lam):  # one projected step on ½‖Jᵀλ‖²
      lam = mtlx.solvers.project_simplex(lam - 0.1 * cross @ lam)
      return lam, lam
    tx = mtlx.cross_gramian_weighting(stochastic_mgda_step, num_tasks=2,
                                      init=lambda k: jnp.ones((k,)) / k)
    update, state = tx.update(grads_1, tx.init(params), task_grads_2=grads_2)
  """
  label = name or getattr(weighting, "__name__", "cross_gramian_weighting")

  def cross_of(task_grads, extra):
    tg2 = second_batch(task_grads, extra, label)
    tg3 = second_batch(task_grads, extra, label, "task_grads_3", required=False)
    rest = {n: v for n, v in extra.items() if n not in _BATCHES}
    direction = task_grads if tg3 is None else tg3
    return jacobian.cross_gramian(task_grads, tg2), direction, rest

  return _matrix_weighting(weighting, cross_of, init, num_tasks, label)
