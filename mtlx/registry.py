"""Names of methods, for configs and command-line flags: the one place names resolve.

Every method is one :class:`Method` entry in :data:`METHODS`, holding both halves
of what a trainer needs: its constructor (the optax transform) and what it is
(``kind``: ``'gradient'`` for stacked task grads -> one update, ``'loss'`` for a
loss-space re-weighting), whether the constructor takes ``num_tasks=K``, the
engines of :func:`mtlx.train.make_step` that can serve it, registry defaults, and
its pure weight function where it has one (``mtlx.<name>_weights``).

Adding a method is one file (``mtlx/aggregators/<name>.py`` or
``mtlx/loss_weighting/<name>.py``) plus one line here; the shared test suites read
this table.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, NamedTuple

import optax

from mtlx import aggregators as agg
import mtlx.loss_weighting as lw
from mtlx import validation

# Engines (mtlx.train.ENGINES) by what a method is.
ALL_ENGINES = ("one_backward", "gramian", "jacobian", "representation")
GRAMIAN_ENGINES = ("gramian", "jacobian", "representation")  # weightings of the Gramian
STACKED_ENGINES = ("jacobian", "representation")  # act on the task grads themselves
JACOBIAN_ONLY = ("jacobian",)  # read per-task parameter grads, or two batches


class Method(NamedTuple):
  """One registry entry.

  Attributes:
    name: the short name configs use.
    constructor: ``(**kwargs) -> optax.GradientTransformationExtraArgs``.
    kind: ``'gradient'`` (stacked task grads -> one update) or ``'loss'``
      (stacked -> re-weighted stacked task grads).
    takes_num_tasks: the constructor takes ``num_tasks=K`` (K-sized state).
    engines: the engines of :func:`mtlx.train.make_step` that serve it (alone;
      in a chain, the intersection).
    defaults: constructor arguments the registry passes unless overridden.
    weights: the pure weight function (``mtlx.<name>_weights``), or None.
  """
  name: str
  constructor: Callable[..., Any]
  kind: str
  takes_num_tasks: bool = False
  engines: tuple = ALL_ENGINES
  defaults: dict = {}
  weights: Callable[..., Any] | None = None

  def accepted(self) -> list[str]:
    """Keyword arguments a config may pass (``num_tasks`` is filled in)."""
    params = inspect.signature(self.constructor).parameters
    return sorted(n for n, p in params.items() if n != "num_tasks" and p.kind in (
        p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))

  def config_defaults(self) -> dict:
    """The constructor's defaults a config can hold and a flag can override
    (bool, int, float, str, tuple values; registry defaults included)."""
    params = inspect.signature(self.constructor).parameters
    out = {n: p.default for n, p in params.items()
           if n in self.accepted() and p.default is not p.empty
           and isinstance(p.default, (bool, int, float, str, tuple))}
    return dict(out, **self.defaults)

  def build(self, num_tasks: int | None = None, kwargs: dict | None = None):
    """The transform, from ``defaults`` updated with ``kwargs`` (a dict or ConfigDict).

    Raises:
      ValueError: for a key the constructor does not take, naming it and the
        accepted ones; for a method whose state is sized by K built without
        ``num_tasks`` where its constructor requires it.
    """
    kwargs = dict(kwargs.to_dict() if hasattr(kwargs, "to_dict") else (kwargs or {}))
    if self.takes_num_tasks and "num_tasks" in kwargs:  # num_tasks= passed as a keyword
      num_tasks = kwargs.pop("num_tasks")
    accepted = self.accepted()
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
      raise ValueError(f"{self.kind}-space method {self.name!r} got unknown argument(s) "
                       f"{unknown}; expected some of {accepted}.")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    kwargs = dict(self.defaults, **kwargs)
    if self.takes_num_tasks and num_tasks is not None:
      kwargs.setdefault("num_tasks", num_tasks)
    elif self.takes_num_tasks and "num_tasks" not in kwargs and (
        inspect.signature(self.constructor).parameters["num_tasks"].default
        is inspect.Parameter.empty):  # a ValueError, not Python's TypeError
      validation.require_num_tasks(None, self.name)
    return self.constructor(**kwargs)


def _g(name, ctor, *, engines=GRAMIAN_ENGINES, num_tasks=False, weights=None, **defaults):
  return Method(name, ctor, "gradient", num_tasks, engines, defaults, weights)


def _l(name, ctor, *, engines=ALL_ENGINES, num_tasks=True, **defaults):
  return Method(name, ctor, "loss", num_tasks, engines, defaults)


_ENTRIES = [
    # gradient space: one line per method
    _g("ls", agg.linear_scalarization, engines=ALL_ENGINES),
    _g("linear_scalarization", agg.linear_scalarization, engines=ALL_ENGINES),
    _g("mean", agg.mean, engines=ALL_ENGINES, weights=agg.mean_weights),
    _g("mgda", agg.mgda, weights=agg.mgda_weights),
    _g("pcgrad", agg.pcgrad, weights=agg.pcgrad_weights),
    _g("gradvac", agg.gradvac, num_tasks=True, weights=agg.gradvac_weights),
    _g("graddrop", agg.graddrop, engines=STACKED_ENGINES),
    _g("cagrad", agg.cagrad, weights=agg.cagrad_weights),
    _g("imtl_g", agg.imtl_g, weights=agg.imtl_g_weights),
    _g("nash_mtl", agg.nash_mtl, num_tasks=True, weights=agg.nash_mtl_weights),
    _g("aligned_mtl", agg.aligned_mtl, weights=agg.aligned_mtl_weights),
    _g("upgrad", agg.upgrad, weights=agg.upgrad_weights),
    _g("dualproj", agg.dualproj, weights=agg.dualproj_weights),
    _g("config", agg.config, weights=agg.config_weights),
    _g("krum", agg.krum, weights=agg.krum_weights, n_byzantine=1),  # needs K >= 4
    _g("trimmed_mean", agg.trimmed_mean, engines=STACKED_ENGINES, trim_number=1),  # K >= 3
    # "crmogm" with no arguments smooths the mean weights (a no-op EMA); configs pick
    # the wrapped weighting by name: crmogm(weighting="mgda").
    _g("crmogm", agg.crmogm, num_tasks=True),
    _g("excess_mtl", agg.excess_mtl, engines=STACKED_ENGINES, num_tasks=True),
    _g("fairgrad", agg.fairgrad, num_tasks=True, weights=agg.fairgrad_weights),
    _g("moco", agg.moco, engines=STACKED_ENGINES, num_tasks=True),
    _g("modo", agg.modo, engines=JACOBIAN_ONLY, num_tasks=True, weights=agg.modo_weights),
    _g("pcd", agg.pcd, weights=agg.pcd_weights),
    _g("sdmgrad", agg.sdmgrad, engines=JACOBIAN_ONLY, num_tasks=True,
       weights=agg.sdmgrad_weights),
    # loss space
    _l("uncertainty", lw.uncertainty_weighting),
    _l("uncertainty_weighting", lw.uncertainty_weighting),
    _l("dwa", lw.dwa),
    _l("rlw", lw.random_loss_weighting, num_tasks=False),
    _l("random_loss_weighting", lw.random_loss_weighting, num_tasks=False),
    _l("gls", lw.geometric_loss, num_tasks=False),
    _l("geometric_loss", lw.geometric_loss, num_tasks=False),
    _l("scale_invariant", lw.scale_invariant, num_tasks=False),
    _l("imtl_l", lw.imtl_l),
    _l("gradnorm", lw.gradnorm, engines=JACOBIAN_ONLY),
    _l("db_mtl", lw.db_mtl, engines=JACOBIAN_ONLY),
    _l("famo", lw.famo),
    _l("stch", lw.stch),
    _l("normalize_task_scale", lw.normalize_task_scale),
]

# name -> Method: the one table (both kinds share one namespace).
METHODS: dict[str, Method] = {m.name: m for m in _ENTRIES}


def _table(kind: str) -> dict[str, Method]:
  return {n: m for n, m in METHODS.items() if m.kind == kind}


def get(name: str, kind: str | None = None) -> Method:
  """The entry ``name`` (of ``kind`` when given); unknown names list the valid ones."""
  table = METHODS if kind is None else _table(kind)
  if name not in table:
    what = "method" if kind is None else f"{kind}-space method"
    raise ValueError(f"unknown {what} {name!r}; expected one of {sorted(table)}.")
  return table[name]


def gradient_methods() -> dict[str, Callable[..., Any]]:
  """Short name -> constructor of every gradient-space method."""
  return {n: m.constructor for n, m in _table("gradient").items()}


def loss_methods() -> dict[str, Callable[..., Any]]:
  """Short name -> constructor of every loss-space method."""
  return {n: m.constructor for n, m in _table("loss").items()}


def get_gradient_method(name: str, **kwargs):
  """Builds the gradient-space method ``name``; unknown names list the valid ones."""
  return get(name, "gradient").build(None, kwargs)


def get_loss_method(name: str, **kwargs):
  """Builds the loss-space method ``name``; unknown names list the valid ones."""
  return get(name, "loss").build(None, kwargs)


def weighting_names(weighting: str | None) -> list[str]:
  """``"dwa+famo" -> ['dwa', 'famo']``; ``"none"`` / None / ``""`` -> ``[]``."""
  if weighting in (None, "", "none"):
    return []
  return [w.strip() for w in str(weighting).split("+") if w.strip()]


def check_names(method: str, weighting: str | None = "none") -> None:
  """Raises ValueError listing the valid names for an unknown method or weighting."""
  grads, losses = _table("gradient"), _table("loss")
  if method not in grads:
    raise ValueError(f"config.method={method!r} is not a gradient-space method; "
                     f"expected one of {sorted(grads)} (loss-space methods go in "
                     f"config.weighting: {sorted(losses)}).")
  for w in weighting_names(weighting):
    if w not in losses:
      raise ValueError(f"config.weighting={weighting!r}: {w!r} is not a loss-space "
                       f"method; expected 'none' or one of {sorted(losses)} (several "
                       "joined with '+').")


def build(method: str, weighting: str | None = "none", num_tasks: int | None = None, *,
          method_kwargs: dict | None = None, weighting_kwargs: dict | None = None):
  """``(loss_tx, grad_tx)`` from names: ``loss_tx`` is None, one loss-space transform,
  or (``"dwa+famo"``) a list of them; ``num_tasks`` goes to constructors that take it.

  ``weighting_kwargs`` go to the (single) loss-space method; with several, a dict
  ``{name: kwargs}`` per method.

  Raises:
    ValueError: for an unknown name (listing the valid ones) or an unknown
      constructor argument (naming it and the accepted ones).
  """
  check_names(method, weighting)
  grad_tx = get(method, "gradient").build(num_tasks, method_kwargs)
  names = weighting_names(weighting)
  if not names:
    return None, grad_tx
  if len(names) == 1:
    return get(names[0], "loss").build(num_tasks, weighting_kwargs), grad_tx
  per = dict(weighting_kwargs or {})
  unknown = sorted(set(per) - set(names))
  if unknown:
    raise ValueError(f"weighting_kwargs has key(s) {unknown}; with weighting={weighting!r} "
                     f"expected a dict per method, keyed by some of {names}.")
  return [get(n, "loss").build(num_tasks, per.get(n)) for n in names], grad_tx


def engines(method: str, weighting: str | None = "none") -> tuple[str, ...]:
  """The engines that serve ``weighting+method`` (the intersection of their entries)."""
  out = set(get(method, "gradient").engines)
  for w in weighting_names(weighting):
    out &= set(get(w, "loss").engines)
  return tuple(e for e in ALL_ENGINES if e in out)


def mto_transform(method: str = "ls", weighting: str = "none", *,
                  num_tasks: int | None = None, method_kwargs: dict | None = None,
                  weighting_kwargs: dict | None = None):
  """The MTO part of a chain from names: ``chain(<weighting(s)>, <method>)``.

  Args:
    method: a gradient-space method name (``mtlx.registry.gradient_methods()``).
    weighting: a loss-space method name, ``'+'``-joined names, or ``"none"``.
    num_tasks: passed as ``num_tasks=`` to constructors that take it.
    method_kwargs / weighting_kwargs: constructor arguments (see :func:`build`).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` from stacked task grads to one
    update (chain it with an optimizer); the method itself when ``weighting`` is
    ``"none"``.

  Raises:
    ValueError: for an unknown name or argument, listing the valid ones.
  """
  loss_tx, grad_tx = build(method, weighting, num_tasks, method_kwargs=method_kwargs,
                           weighting_kwargs=weighting_kwargs)
  if loss_tx is None:
    return grad_tx
  parts = loss_tx if isinstance(loss_tx, list) else [loss_tx]
  return optax.chain(*parts, grad_tx)


def parse_method_spec(spec: str) -> tuple[str, str]:
  """``"dwa+pcgrad" -> ("pcgrad", "dwa")``; ``"famo" -> ("ls", "famo")`` for a
  loss-space name alone; ``"mgda" -> ("mgda", "none")``.

  Returns ``(method, weighting)``. Raises ``ValueError`` for unknown names.
  """
  parts = spec.split("+")
  grads, losses = _table("gradient"), _table("loss")
  if len(parts) == 2:
    weighting, method = parts
    get(weighting, "loss")
    get(method, "gradient")
    return method, weighting
  if len(parts) != 1:
    raise ValueError(f"method spec {spec!r}; expected 'method' or 'weighting+method'.")
  if spec in grads:
    return spec, "none"
  if spec in losses:
    return "ls", spec
  raise ValueError(f"unknown method {spec!r}; expected one of "
                   f"{sorted(set(grads) | set(losses))} or 'weighting+method'.")
