"""Turn a weighting of the Gramian (or of the cross matrix of two batches) into a transform.

The transforms are typed: :class:`GramianWeighting` and :class:`CrossGramianWeighting`
are ``optax.GradientTransformationExtraArgs`` (they chain like any optax transform)
that also carry their pure weight function, its state init and the keyword extras
it reads, so a training step can call the weight function directly on a Gramian
it computed another way (``mtlx.value_and_gramian``) instead of running ``update``
on a ``K × P`` Jacobian.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import optax

from mtlx import jacobian
from mtlx import validation
from mtlx.aggregators._extras import check_extras
from mtlx.aggregators._extras import second_batch

# The extra arguments that carry the other batches (not forwarded to a weighting).
_BATCHES = ("task_grads_2", "task_grads_3")


def _check_extras(extras: Sequence[str], label: str) -> tuple[str, ...]:
  if isinstance(extras, str) or not all(isinstance(e, str) for e in extras):
    raise ValueError(f"{label}: extras={extras!r}; expected a sequence of keyword "
                     "names such as ('task_losses',).")
  return tuple(extras)


# Extras a weighting may declare but that are not required: ``task_mask`` ([K] bool,
# the tasks present in the step; `mtlx.train.make_step(task_mask=...)` passes it to
# the weightings that declare it, e.g. MGDA, whose min-norm point otherwise collapses
# to the zero gradient of an absent task, and CAGrad).
OPTIONAL_EXTRAS = ("task_mask",)


class GramianWeighting(optax.GradientTransformationExtraArgs):
  """A gradient-space transform ``d = Σ_k w_k g_k`` whose weights are ``w = f(G)``.

  An ``optax.GradientTransformationExtraArgs`` (the ``(init, update)`` pair, so it
  chains and unpacks like any optax transform) that also carries, as attributes:

  Attributes:
    weight_fn: the pure weighting ``f``: ``f(G, **extras) -> w[K]`` when
      ``state_init is None``, else ``f(G, state, **extras) -> (w[K], state)``.
    state_init: ``state_init(num_tasks) -> state`` or ``None`` (stateless).
    num_tasks: K when the state is sized by it, else ``None``.
    extras: names of the keyword extra arguments of ``update`` that ``weight_fn``
      reads (e.g. ``('task_losses',)``); the others are not passed to it. They are
      required (a missing one is a ``ValueError`` naming the method, the extra
      and what passes it, before ``weight_fn`` is called), except those in
      ``OPTIONAL_EXTRAS`` (``task_mask``), passed only when given.
    name: the method's name (error messages, logs).
    needs_gramian: False for fixed weightings (linear scalarization, mean) whose
      ``weight_fn`` only reads K from the matrix's shape: the one-backward engine
      serves them.

  :meth:`weights` is the one call every engine makes: ``(G, state, **extra) ->
  (w, new_state)`` with the checks of ``update``.
  """

  # extras the transform consumes itself before the weighting (never passed to it)
  _consumed: tuple[str, ...] = ()

  def __new__(cls, init, update, weight_fn=None, state_init=None, num_tasks=None,
              extras=(), name="gramian_weighting", needs_gramian=True,
              scale_invariant=False):
    self = super().__new__(cls, init, update)
    self.needs_gramian = bool(needs_gramian)
    self.scale_invariant = bool(scale_invariant)
    # Attributes, not tuple fields: optax.chain unpacks transforms as (init, update).
    self.weight_fn = weight_fn
    self.state_init = state_init
    self.num_tasks = num_tasks
    self.extras = tuple(extras)
    self.name = name
    return self

  def weights(self, matrix: jax.Array, state: Any, **extra) -> tuple[jax.Array, Any]:
    """``(w[K], new_state)`` of the weighting for the ``K × K`` matrix ``matrix``.

    ``extra`` may hold any keyword extras; those named in :attr:`extras` are passed.
    Raises ``ValueError`` for a K that differs from ``num_tasks``, a missing
    extra named in :attr:`extras` (naming it and which engine or argument
    provides it) or a weight vector of the wrong shape.
    """
    k = jax.numpy.shape(matrix)[0]
    validation.check_num_tasks(k, self.num_tasks, self.name)
    reads = tuple(n for n in self.extras if n not in self._consumed)
    check_extras(extra, tuple(n for n in reads if n not in OPTIONAL_EXTRAS), self.name)
    kwargs = {n: extra[n] for n in reads if extra.get(n) is not None}
    if self.scale_invariant and self.needs_gramian:
      # f(c G) = f(G): read G over a power of two near its largest diagonal entry (exact
      # scaling), the same matrix whichever engine computed G (the Jacobian engine
      # already hands in the underflow-safe normalized_gramian).
      matrix = matrix / jacobian._power_of_two_scale(  # noqa: SLF001
          jax.numpy.max(jax.numpy.diagonal(matrix)))
    if self.state_init is None:
      weights, new_state = self.weight_fn(matrix, **kwargs), state
    else:
      weights, new_state = self.weight_fn(matrix, state, **kwargs)
    if jax.numpy.shape(weights) != (k,):
      raise ValueError(f"{self.name} returned weights of shape {jax.numpy.shape(weights)}; "
                       f"expected shape ({k},).")
    # The Gramian engine calls this directly: a non-finite matrix or extra (or new
    # state) gives NaN weights and leaves the state as it was.
    return validation.guard_step(weights, new_state, state, matrix, *kwargs.values())


class CrossGramianWeighting(GramianWeighting):
  """A :class:`GramianWeighting` whose matrix is the cross matrix ``C = J₁ J₂ᵀ`` of two
  independent mini-batches (MoDo, SDMGrad): it cannot run on one batch's Gramian,
  so only the Jacobian engine (with the extra batches) serves it."""

  _consumed = _BATCHES  # read by the transform (the cross matrix), checked there


def _typed(cls, weighting, matrix_of, init, num_tasks, label, extras, scale_invariant=False):
  """The transform ``d = Σ_k w_k h_k`` with ``w = weighting(M[, state], **extras)``.

  ``matrix_of(task_grads, extra) -> (M, direction, extras)`` gives the ``K × K``
  matrix the weights are read from, the stacked grads ``h`` they combine and the
  keyword extras left for the weighting.
  """

  def init_fn(params):
    del params
    return optax.EmptyState() if init is None else init(num_tasks)

  def update_fn(task_grads, state, params=None, **extra):
    del params
    validation.num_tasks(task_grads)
    matrix, direction, extra = matrix_of(task_grads, extra)
    weights, state = tx.weights(matrix, state, **extra)
    return jacobian.combine(weights, direction), state

  def guarded(task_grads, state, params=None, **extra):
    # validation.guarded_update without its K x P finiteness pass: task_grads (and
    # task_grads_2) reach the weights only through the K x K matrix, and a non-finite
    # entry makes a row of the matrix non-finite (G_kk = sum of squares; 0 * inf =
    # NaN), so tx.weights already returns NaN weights (an all-NaN update) and the old
    # state. The other inputs (task_losses, task_grads_3, ...) are checked here.
    validation.check_task_grads_match_params(task_grads, params, label)
    updates, new_state = update_fn(task_grads, state, params, **extra)
    rest = [v for n, v in extra.items() if v is not None and n != "task_grads_2"]
    return validation.guard_step(updates, new_state, state, *rest)

  guarded.__doc__ = update_fn.__doc__
  guarded.__wrapped__ = update_fn
  tx = cls(init_fn, guarded, weighting, init, num_tasks,
           _check_extras(extras, label), label, scale_invariant=scale_invariant)
  return tx


def gramian_weighting(
    weighting: Callable[..., Any], *,
    init: Callable[[int | None], Any] | None = None,
    num_tasks: int | None = None,
    name: str | None = None,
    extras: Sequence[str] = (),
    scale_invariant: bool = False) -> GramianWeighting:
  """Wraps a weighting ``w = f(G)`` of the Gramian as an optax transform.

  .. math::  G = J J^T \\in R^{K×K},\\quad w = f(G),\\quad d = w^T J = \\sum_k w_k g_k

  ``G`` is :func:`mtlx.gramian` of the stacked task grads (a per-leaf contraction,
  so it shards with the params) and the update :func:`mtlx.combine`.

  Args:
    weighting: a pure function of the Gramian.
      Stateless (``init is None``): ``weighting(gramian, **extras) -> weights[K]``.
      Stateful: ``weighting(gramian, state, **extras) -> (weights[K], new_state)``.
    init: for stateful weightings, ``init(num_tasks) -> state`` (a pytree of
      arrays), called by the transform's ``init``.
    num_tasks: K, when the state is sized by the number of tasks; an update with
      another K raises a ``ValueError`` that names both.
    name: the method's name for error messages.
    extras: names of the keyword extra arguments of ``update`` that ``weighting``
      reads (e.g. ``('task_losses',)``); only those are passed. They are required:
      an update without one raises a ``ValueError`` that names the method, the
      missing extra and which engine or argument provides it (instead of a
      ``TypeError`` from inside ``weighting``).
    scale_invariant: declare ``f(c² G) = f(G)`` for every ``c > 0`` (weights
      that do not depend on the scale of the rows: UPGrad, MGDA, DualProj,
      IMTL-G, CAGrad, PCGrad, Krum, the mean ...). ``f`` then reads
      ``Ĝ = (J/s)(J/s)ᵀ`` with ``s`` the largest entry of ``J``
      (:func:`mtlx.jacobian.normalized_gramian`), which neither underflows nor
      overflows in float32, so the method is scale-linear over the whole
      float32 range and finite rows never give NaN.

  Returns:
    A :class:`GramianWeighting` (an ``optax.GradientTransformationExtraArgs``);
    ``update(task_grads, state, params=None, **extras)`` returns one
    params-shaped update. The state is the weighting's own state
    (``optax.EmptyState()`` when stateless). The transform carries ``weighting``,
    so the Gramian engine of :func:`mtlx.train.make_step` calls it on the Gramian
    of :func:`mtlx.value_and_gramian` and never forms the ``K × P`` Jacobian.

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

  return _typed(GramianWeighting, weighting, gramian_of, init, num_tasks, label, extras,
                scale_invariant)


def cross_gramian_weighting(
    weighting: Callable[..., Any], *,
    init: Callable[[int | None], Any] | None = None,
    num_tasks: int | None = None,
    name: str | None = None,
    extras: Sequence[str] = ()) -> CrossGramianWeighting:
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
    init: for stateful weightings, ``init(num_tasks) -> state`` (a pytree of
      arrays), called by the transform's ``init``.
    num_tasks: K, when the state is sized by the number of tasks; an update with
      another K raises a ``ValueError`` that names both.
    name: the method's name for error messages.
    extras: names of the keyword extra arguments of ``update`` other than the
      batches (``task_losses`` ...) that ``weighting`` reads.

  Extra arguments of ``update``:
    task_grads_2: per-task grads of a second, independent mini-batch (same
      pytree, shapes and K as ``task_grads``). Required: a missing one raises a
      ``ValueError`` that says what to pass; a mismatched one a ``ValueError``
      that names the difference.
    task_grads_3: optional third batch for the direction ``d`` (checked the
      same way); without it, ``d`` is built from ``task_grads``.

  Returns:
    A :class:`CrossGramianWeighting`; ``update(task_grads, state,
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

  return _typed(CrossGramianWeighting, weighting, cross_of, init, num_tasks, label, extras)
