"""Two input branches fused into one shared representation (a two-"modality" model)."""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from mtlx.models import base
from mtlx.models import layers
from mtlx.models.hard_sharing import HPSDecoder


class TwoBranchEncoder(nnx.Module):
  """``z = relu(W [trunk_a(x_a); trunk_b(x_b)])`` with ``x_a``/``x_b`` the two halves of the
  input's last spatial (or feature) axis."""

  def __init__(self, input_shape, widths, hidden, *, rngs):
    shape = tuple(int(s) for s in input_shape)
    self.axis = 1 if layers.is_image(shape) else 0  # width axis of [H, W, C], else features
    self.cut = shape[self.axis] // 2
    half_a = list(shape); half_a[self.axis] = self.cut
    half_b = list(shape); half_b[self.axis] = shape[self.axis] - self.cut
    self.branch_a = layers.Trunk(layers.trunk_specs(half_a, widths, hidden, True), rngs=rngs)
    self.branch_b = layers.Trunk(layers.trunk_specs(half_b, widths, hidden, True), rngs=rngs)
    self.fuse = nnx.Linear(2 * int(hidden), int(hidden), rngs=rngs)

  def __call__(self, x):
    ax = self.axis + 1  # the batch axis comes first
    xa = jax.lax.slice_in_dim(x, 0, self.cut, axis=ax)
    xb = jax.lax.slice_in_dim(x, self.cut, x.shape[ax], axis=ax)
    za, zb = self.branch_a(xa), self.branch_b(xb)
    return jax.nn.relu(self.fuse(jnp.concatenate([za, zb], axis=-1)))


def two_branch(input_shape: Sequence[int], tasks: Sequence[Any], *, widths=(16, 32),
               hidden: int = 64, head_hidden: int = 32, seed: int = 0) -> base.MTLModel:
  """Two branches (left / right half of the input), a fusion layer, one head per task.

  A stand-in for a two-modality backbone (FULLER's setting: each modality has its own
  branch, fused before the task heads). Encoder params: ``branch_a``, ``branch_b``
  (each a trunk as in :func:`mtlx.models.hps`) and ``fuse`` (the last shared layer);
  decoder: the heads. On ``multi_digits`` the branches see the left and right halves of
  the canvas. Per-example tasks only.
  """
  layers.check_tasks(tasks, input_shape)
  if layers.any_dense(tasks):
    raise ValueError("two_branch supports per-example tasks only; got a dense task in "
                     f"{[getattr(t, 'name', t) for t in tasks]}.")
  rngs = nnx.Rngs(seed)
  enc = TwoBranchEncoder(input_shape, widths, hidden, rngs=rngs)
  dec = HPSDecoder(tasks, (int(hidden),), base.out_hw(input_shape), head_hidden, rngs=rngs)
  return base.MTLModel(enc, dec, tasks, input_shape)


def branch_labels(params: Any) -> Any:
  """Labels for :func:`mtlx.partition` / :func:`mtlx.calibrate_magnitudes` on a
  :func:`two_branch` model's params: ``'branch_a'``, ``'branch_b'``, ``'fuse'`` (the
  last shared layer) and ``'heads'``."""
  def label(path, _):
    keys = [getattr(k, "key", getattr(k, "name", None)) for k in path]
    if keys[0] == "decoder":
      return "heads"
    for name in ("branch_a", "branch_b", "fuse"):
      if name in keys:
        return name
    raise ValueError(f"unexpected two_branch parameter {jax.tree_util.keystr(path)}.")
  return jax.tree_util.tree_map_with_path(label, params)
