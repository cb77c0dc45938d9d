"""Different MTO methods for different groups of parameters (``optax.multi_transform``
over stacked task grads), and per-branch magnitude calibration (FULLER)."""

from __future__ import annotations

from typing import Any, Callable, Hashable, Mapping, Sequence

import jax
import jax.numpy as jnp
import optax

from mtlx import validation

PyTree = Any


def _labels_for(labels, tree):
  return labels(tree) if callable(labels) else labels


def _check_labels(label_tree, tree, known, who):
  flat = jax.tree_util.tree_leaves(label_tree)
  struct_l = jax.tree_util.tree_structure(label_tree)
  struct_t = jax.tree_util.tree_structure(tree)
  if struct_l != struct_t:
    raise ValueError(f"{who}: labels have pytree structure {struct_l}; expected the "
                     f"params' structure {struct_t} (one label per leaf).")
  unknown = sorted({repr(l) for l in flat if l not in known})
  if unknown:
    raise ValueError(f"{who}: labels {unknown} have no transform; expected each label "
                     f"to be one of {sorted(map(repr, known))}.")


def partition(transforms: Mapping[Hashable, optax.GradientTransformation],
              labels: PyTree | Callable[[PyTree], PyTree]
              ) -> optax.GradientTransformationExtraArgs:
  """One gradient-space method per group of parameters.

  Like ``optax.multi_transform``, but over stacked task grads: the leaves labelled
  ``l`` (each with a leading K axis) form the sub-Jacobian ``J_l`` and
  ``transforms[l]`` maps it to that group's update, so a Gramian method on group
  ``l`` reads ``G_l = J_l J_lᵀ`` only::

    d_l = f_l(J_l)  for every label l;   d = concat_l d_l

  E.g. UPGrad on the last shared block, the plain sum on the heads (conflict tends to
  sit in a few layers), as in FULLER's multi-level calibration (Huang et al., ICCV
  2023) where task gradients are calibrated at the backbone's last layer::

    tx = mtlx.partition({"shared": mtlx.upgrad(), "heads": mtlx.linear_scalarization()},
                        labels=lambda p: {"encoder": jax.tree.map(lambda _: "shared", p["encoder"]),
                                          "decoder": jax.tree.map(lambda _: "heads", p["decoder"])})

  Args:
    transforms: label -> gradient-space transform (stacked grads -> update).
    labels: a pytree of labels with the params' structure, or a function
      ``params -> labels`` (called on ``params`` when ``update`` gets them, else on
      the stacked task grads: decide by path/structure, not by shape).

  Returns:
    An ``optax.GradientTransformationExtraArgs``; its state is ``{label: state}``.
    Keyword extras (``task_losses``, ``task_grads_2`` ...) reach every group; extras
    shaped like the params (a second batch's task grads) are masked like them.

  Raises:
    ValueError: at ``init``/trace time, for labels whose structure differs from the
      params' or that name no transform.

  Cost: the sum of the groups' costs; a Gramian method on a group of ``P_l``
  parameters costs ``K² P_l`` instead of ``K² P``. With one group it is exactly the
  plain method.
  """
  if not transforms:
    raise ValueError("partition: transforms is empty; expected a dict label -> transform.")
  known = tuple(transforms)

  def masked(label, tree):
    label_tree = _labels_for(labels, tree)
    _check_labels(label_tree, tree, known, "mtlx.partition")
    mask = jax.tree_util.tree_map(lambda l: l == label, label_tree)
    return optax.masked(transforms[label], mask, mask_compatible_extra_args=True)

  def init(params):
    return {label: masked(label, params).init(params) for label in known}

  def update(task_grads, state, params=None, **extra):
    reference = params if params is not None else task_grads
    new_state = {}
    updates = task_grads
    for label in known:
      updates, new_state[label] = masked(label, reference).update(
          updates, state[label], params, **extra)
    return updates, new_state

  return optax.GradientTransformationExtraArgs(init, update)


def calibrate_magnitudes(labels: PyTree | Callable[[PyTree], PyTree], *,
                         branches: Sequence[Hashable] | None = None,
                         eps: float = 0.0) -> optax.GradientTransformationExtraArgs:
  """Rescales each branch's task gradients to a common norm (FULLER's modality level).

  For task k and branch b (the leaves labelled b) with ``n_{kb} = ‖g_{k,b}‖``:

  .. math::  g_{k,b} \\mapsto g_{k,b}\\, \\frac{c_k}{n_{kb}}, \\qquad
             c_k = \\frac{1}{B}\\sum_b n_{kb}

  so every branch carries the same gradient magnitude for each task while the total
  stays of the same order (FULLER, Huang et al., ICCV 2023: modality branches of a
  multi-modal backbone otherwise learn at very different rates). A zero branch
  gradient stays zero. Stacked grads in, stacked grads out: chain it in front of any
  gradient-space method (or of :func:`partition`).

  Args:
    labels: a pytree of branch labels with the params' structure (or a function
      ``params -> labels``, called on the stacked grads).
    branches: the labels to equalise (default: every label); leaves with other
      labels (the fusion layer, the heads) pass through unchanged.
    eps: added to ``n_{kb}`` before dividing (0: exact; zero norms are guarded).

  Cost: ``O(K P)``; no state; reads no losses.
  """
  validation.check_number(eps, "eps", low=0, method="calibrate_magnitudes")

  def update(task_grads, state, params=None, **extra):
    del extra
    reference = params if params is not None else task_grads
    label_tree = _labels_for(labels, reference)
    flat_labels = jax.tree_util.tree_leaves(label_tree)
    leaves, treedef = jax.tree_util.tree_flatten(task_grads)
    if len(flat_labels) != len(leaves):
      raise ValueError(f"calibrate_magnitudes: {len(flat_labels)} labels for "
                       f"{len(leaves)} task-grad leaves; expected one label per leaf.")
    k = validation.num_tasks(task_grads)
    chosen = sorted(set(flat_labels) if branches is None else set(branches), key=repr)
    missing = [b for b in chosen if b not in flat_labels]
    if missing:
      raise ValueError(f"calibrate_magnitudes: branches {missing} label no leaf; expected "
                       f"some of {sorted(set(map(repr, flat_labels)))}.")
    acc = jnp.promote_types(leaves[0].dtype, jnp.float32)
    sq = {b: jnp.zeros((k,), acc) for b in chosen}
    for lab, g in zip(flat_labels, leaves):
      if lab in sq:
        sq[lab] = sq[lab] + jnp.sum(jnp.reshape(g.astype(acc) ** 2, (k, -1)), axis=1)
    norms = {b: jnp.sqrt(v) for b, v in sq.items()}
    common = sum(norms.values()) / len(chosen)
    scale = {b: jnp.where(n > 0, common / (n + eps), 0.0) for b, n in norms.items()}
    # non-finite rows propagate (inf/nan norms give nan scales)
    out = [g if lab not in scale else
           (g.astype(acc) * scale[lab].reshape((k,) + (1,) * (g.ndim - 1))).astype(g.dtype)
           for lab, g in zip(flat_labels, leaves)]
    return jax.tree_util.tree_unflatten(treedef, out), state

  return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update)
