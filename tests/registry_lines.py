"""The registry lines the shared test suites run: ``mtlx.registry.METHODS`` with its
aliases left out (``linear_scalarization`` is ``ls``, ``rlw`` is
``random_loss_weighting`` ...: the same constructor and defaults; the shortest name
stands for them), so a new registry line joins every suite with no test edit."""

from mtlx import registry


def names(kind=None, where=lambda method: True):
  """Sorted registry names, one per (constructor, defaults), of ``kind`` (``'gradient'``,
  ``'loss'`` or None for both) whose :class:`mtlx.registry.Method` satisfies ``where``."""
  seen, out = set(), []
  for name, m in sorted(registry.METHODS.items(), key=lambda nm: (len(nm[0]), nm[0])):
    key = (m.constructor, tuple(sorted(m.defaults.items())))
    if (kind is None or m.kind == kind) and where(m) and key not in seen:
      seen.add(key)
      out.append(name)
  return sorted(out)


def build(name, num_tasks):
  """The registry line ``name`` built with its defaults (``num_tasks`` where it takes it)."""
  m = registry.METHODS[name]
  return m.build(num_tasks if m.takes_num_tasks else None)
