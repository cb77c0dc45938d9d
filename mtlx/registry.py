"""Names of methods, for configs and command-line flags."""

from __future__ import annotations

import inspect
from typing import Any, Callable

import optax

from mtlx import aggregators
import mtlx.loss_weighting as weighting


def _lookup(table: dict[str, Callable[..., Any]], name: str, kind: str):
  if name not in table:
    raise ValueError(f"unknown {kind} {name!r}; expected one of {sorted(table)}.")
  return table[name]


def gradient_methods() -> dict[str, Callable[..., Any]]:
  """Short name -> constructor of every gradient-space method."""
  return dict(aggregators.REGISTRY)


def loss_methods() -> dict[str, Callable[..., Any]]:
  """Short name -> constructor of every loss-space method."""
  return dict(weighting.REGISTRY)


def get_gradient_method(name: str, **kwargs):
  """Builds the gradient-space method ``name``; unknown names list the valid ones."""
  return _lookup(gradient_methods(), name, "gradient-space method")(**kwargs)


def get_loss_method(name: str, **kwargs):
  """Builds the loss-space method ``name``; unknown names list the valid ones."""
  return _lookup(loss_methods(), name, "loss-space method")(**kwargs)


def _construct(ctor: Callable[..., Any], num_tasks: int | None, kwargs: dict):
  params = inspect.signature(ctor).parameters
  if num_tasks is not None and "num_tasks" in params and "num_tasks" not in kwargs:
    kwargs = dict(kwargs, num_tasks=num_tasks)
  return ctor(**kwargs)


def mto_transform(method: str = "ls", weighting: str = "none", *,
                  num_tasks: int | None = None, method_kwargs: dict | None = None,
                  weighting_kwargs: dict | None = None):
  """The MTO part of a chain from names: ``chain(<weighting>, <method>)``.

  Args:
    method: a gradient-space method name (``mtlx.registry.gradient_methods()``).
    weighting: a loss-space method name, or ``"none"``.
    num_tasks: passed as ``num_tasks=`` to constructors that take it.
    method_kwargs / weighting_kwargs: extra constructor arguments.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` from stacked task grads to one
    update (chain it with an optimizer).

  Raises:
    ValueError: for an unknown name, listing the valid ones.
  """
  grad_tx = _construct(_lookup(gradient_methods(), method, "gradient-space method"),
                       num_tasks, method_kwargs or {})
  if weighting in (None, "none"):
    return grad_tx
  loss_tx = _construct(_lookup(loss_methods(), weighting, "loss-space method"),
                       num_tasks, weighting_kwargs or {})
  return optax.chain(loss_tx, grad_tx)


def parse_method_spec(spec: str) -> tuple[str, str]:
  """``"dwa+pcgrad" -> ("pcgrad", "dwa")``; ``"famo" -> ("ls", "famo")`` for a
  loss-space name alone; ``"mgda" -> ("mgda", "none")``.

  Returns ``(method, weighting)``. Raises ``ValueError`` for unknown names.
  """
  parts = spec.split("+")
  if len(parts) == 2:
    weighting, method = parts
    _lookup(loss_methods(), weighting, "loss-space method")
    _lookup(gradient_methods(), method, "gradient-space method")
    return method, weighting
  if len(parts) != 1:
    raise ValueError(f"method spec {spec!r}; expected 'method' or 'weighting+method'.")
  if spec in gradient_methods():
    return spec, "none"
  if spec in loss_methods():
    return "ls", spec
  raise ValueError(f"unknown method {spec!r}; expected one of "
                   f"{sorted(set(gradient_methods()) | set(loss_methods()))} "
                   "or 'weighting+method'.")
