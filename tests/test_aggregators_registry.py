"""Shared suites that every gradient-space line of ``mtlx.registry.METHODS`` joins with
no test edit: the names a registry line promises are exported, and the trace-time
errors every transform gives (leaves that disagree on K; a K-sized state built
without ``num_tasks`` or updated with another K). Method-specific tests live in
tests/aggregators/test_<name>.py; the other shared suites (properties, references,
training, reliability, jit) read the registry the same way.
"""

import jax.numpy as jnp
import numpy as np
import pytest

import mtlx
from mtlx import registry
from tests import registry_lines

PARAMS = {"a": jnp.zeros(3), "b": jnp.zeros((2, 2))}


def gradient_names(where=lambda m: True):
  return registry_lines.names("gradient", where)


def _tree(k, seed=0):
  rng = np.random.default_rng(seed)
  return {"a": jnp.asarray(rng.normal(size=(k, 3))),
          "b": jnp.asarray(rng.normal(size=(k, 2, 2)))}


@pytest.mark.parametrize("name", gradient_names())
def test_constructor_and_weight_function_are_exported(name):
  m = registry.METHODS[name]
  ctor = m.constructor.__name__
  assert getattr(mtlx, ctor) is m.constructor and ctor in mtlx.aggregators.__all__
  if m.weights is not None:  # the pure weight function next to its transform
    assert getattr(mtlx, m.weights.__name__) is m.weights
    assert m.weights.__name__ == f"{ctor}_weights"


@pytest.mark.parametrize("name", gradient_names())
def test_leaves_with_different_k_are_rejected(name):
  m = registry.METHODS[name]
  k = 5  # enough tasks for every registry default (krum's n_byzantine=1 needs 4)
  tx = m.build(k if m.takes_num_tasks else None)
  tg = _tree(k)
  bad = {"a": tg["a"], "b": tg["b"][:2]}
  with pytest.raises(ValueError, match="disagree on the task axis"):
    tx.update(bad, tx.init(PARAMS), PARAMS, task_losses=jnp.ones(k), task_grads_2=bad)


@pytest.mark.parametrize("name", gradient_names(lambda m: m.takes_num_tasks))
def test_k_different_from_num_tasks_names_both(name):
  tx = registry.METHODS[name].build(5)
  tg = _tree(4)
  with pytest.raises(ValueError, match=r"num_tasks=5 but the update received K=4"):
    tx.update(tg, tx.init(PARAMS), PARAMS, task_losses=jnp.ones(4), task_grads_2=tg)


@pytest.mark.parametrize("name", gradient_names(lambda m: m.takes_num_tasks))
def test_missing_num_tasks_is_a_clear_error(name):
  """Built by name without ``num_tasks``: a ValueError that says to pass it, from the
  registry (constructors that require it: GradVac, Nash-MTL) or from ``init``."""
  with pytest.raises(ValueError, match="num_tasks=K"):
    tx = registry.get_gradient_method(name)
    tx.init(PARAMS)
