"""In-context learning of function classes (Garg, Tsipras, Liang & Valiant, NeurIPS 2022).

A prompt is ``(x_1, f(x_1), …, x_n, f(x_n))`` with ``x_i ~ N(0, I_d)`` and one
function ``f`` drawn from a class; a causal sequence model reads the prompt and
predicts every ``f(x_i)`` from the prefix ``(x_1, f(x_1), …, x_i)``. Each class is
a task of a multi-task run (the setting of "How does Multi-Task Training Affect
Transformer In-Context Capabilities? Investigations with Function Classes",
Bhasin et al., 2024, and "Pretraining task diversity and the emergence of
non-Bayesian in-context learning for regression", Raventós et al., 2023).

Function classes (``f`` drawn afresh for every prompt; Garg et al.'s priors):

=========================  ===================================================
``linear_regression``      ``f(x) = wᵀx``, ``w ~ N(0, I_d)``
``sparse_linear_regression``  the same with all but ``sparsity`` (3) random
                           coordinates of ``w`` zeroed
``noisy_linear_regression``  ``f(x) = wᵀx + σε``, ``ε ~ N(0, 1)``, ``σ = noise_std`` (1)
``relu2_nn``               ``f(x) = √(2/h) Σ_j a_j ReLU(W_jᵀx)``, ``a, W ~ N(0, 1)``,
                           ``h = hidden`` (100)
``decision_tree``          a full binary tree of depth ``depth`` (4): internal
                           node tests ``x_c > 0`` on a uniform random coordinate
                           ``c``, leaves ``~ N(0, 1)``
=========================  ===================================================

Generation is jittable JAX: prompt ``i`` of a source is a pure function of
``jax.random.fold_in(key(seed, class, split), i)``, so sources are endless,
random access and need no files. Tokens (``prompt_tokens``): ``2n`` vectors of
size ``d + 1``, ``[x_i, 0]`` then ``[0_d, y_i]``; the model's prediction for
``y_i`` is read at the token of ``x_i`` (position ``2i``).

Loss per task: the mean squared error over positions and prompts. Metric:
the squared error at position ``i`` divided by ``d`` (`normalised_error`), as a
curve over the number ``i`` of in-context examples (Garg et al. plot this; for
``linear_regression`` the zero predictor scores 1). Classical baselines on the
same prompts (``BASELINES``; each predicts ``y_i`` from the first ``i`` pairs,
0 when ``i = 0``): minimum-norm least squares, the lasso (FISTA, fixed
iterations), 3-nearest neighbours and averaging ``ŵ = (1/i) Σ_{j<i} y_j x_j``.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from mtlx.data.specs import TaskSpec
from mtlx.data.specs import loss_mask_key

FUNCTION_CLASSES = ("linear_regression", "sparse_linear_regression",
                    "noisy_linear_regression", "relu2_nn", "decision_tree")
SPLIT_IDS = {"train": 0, "validation": 1, "test": 2}
LASSO_ITERATIONS = 300
GENERATION_CHUNK = 32  # rows generated per jitted call by the sources


def _check_class(name):
  if name not in FUNCTION_CLASSES:
    raise ValueError(f"function_class={name!r}; expected one of {list(FUNCTION_CLASSES)}.")


def sample_prompt(key: jax.Array, function_class: str, n_points: int, dim: int, *,
                  sparsity: int = 3, noise_std: float = 1.0, hidden: int = 100,
                  depth: int = 4, active_dims=None) -> tuple[jax.Array, jax.Array]:
  """One prompt ``(xs [n, d], ys [n])`` of a class (float32; see the module table).

  ``active_dims`` (a traced int, default ``dim``): coordinates ``>= active_dims`` of
  every ``x`` are zero (Garg et al.'s curriculum on the dimension), and ``f`` is
  evaluated on those ``x``.
  """
  _check_class(function_class)
  kx, kf, kn = jax.random.split(key, 3)
  xs = jax.random.normal(kx, (n_points, dim), jnp.float32)
  if active_dims is not None:
    xs = xs * (jnp.arange(dim) < active_dims).astype(xs.dtype)
  if function_class in ("linear_regression", "noisy_linear_regression",
                        "sparse_linear_regression"):
    kw, ks = jax.random.split(kf)
    w = jax.random.normal(kw, (dim,), jnp.float32)
    if function_class == "sparse_linear_regression":
      keep = jax.random.permutation(ks, dim) < sparsity
      w = jnp.where(keep, w, 0.0)
    ys = xs @ w
    if function_class == "noisy_linear_regression":
      ys = ys + noise_std * jax.random.normal(kn, (n_points,), jnp.float32)
    return xs, ys
  if function_class == "relu2_nn":
    kw, ka = jax.random.split(kf)
    w1 = jax.random.normal(kw, (hidden, dim), jnp.float32)
    a = jax.random.normal(ka, (hidden,), jnp.float32)
    return xs, jnp.sqrt(2.0 / hidden) * jax.nn.relu(xs @ w1.T) @ a
  kc, kl = jax.random.split(kf)
  coords = jax.random.randint(kc, (2 ** depth - 1,), 0, dim)
  leaves = jax.random.normal(kl, (2 ** depth,), jnp.float32)

  def walk(x):
    node = jnp.zeros((), jnp.int32)
    for _ in range(depth):
      node = 2 * node + 1 + (x[coords[node]] > 0).astype(jnp.int32)
    return leaves[node - (2 ** depth - 1)]

  return xs, jax.vmap(walk)(xs)


def prompt_tokens(xs: jax.Array, ys: jax.Array) -> jax.Array:
  """``[..., 2n, d + 1]`` tokens: ``[x_i, 0]`` at ``2i``, ``[0_d, y_i]`` at ``2i + 1``."""
  zeros_x = jnp.zeros(xs.shape[:-1] + (1,), xs.dtype)
  x_tok = jnp.concatenate([xs, zeros_x], axis=-1)
  y_tok = jnp.concatenate([jnp.zeros_like(xs), ys[..., None]], axis=-1)
  tokens = jnp.stack([x_tok, y_tok], axis=-2)  # [..., n, 2, d+1]
  return tokens.reshape(xs.shape[:-2] + (2 * xs.shape[-2], xs.shape[-1] + 1))


def split_tokens(tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Inverse of `prompt_tokens`: ``(xs [..., n, d], ys [..., n])``."""
  n2, d1 = tokens.shape[-2:]
  pairs = tokens.reshape(tokens.shape[:-2] + (n2 // 2, 2, d1))
  return pairs[..., 0, :-1], pairs[..., 1, -1]


def class_key(seed: int, function_class: str, split: str) -> jax.Array:
  """The base key of one class's prompts in one split."""
  _check_class(function_class)
  if split not in SPLIT_IDS:
    raise ValueError(f"split={split!r}; expected one of {list(SPLIT_IDS)}.")
  key = jax.random.PRNGKey(int(seed))
  return jax.random.fold_in(jax.random.fold_in(key, FUNCTION_CLASSES.index(function_class)),
                            SPLIT_IDS[split])


@functools.partial(jax.jit, static_argnames=("function_class", "n_points", "dim", "sparsity",
                                             "noise_std", "hidden", "depth"))
def sample_prompts(key: jax.Array, indices: jax.Array, *, function_class: str, n_points: int,
                   dim: int, sparsity: int = 3, noise_std: float = 1.0, hidden: int = 100,
                   depth: int = 4, active_dims=None) -> tuple[jax.Array, jax.Array]:
  """Prompts ``indices`` of the stream ``key``: ``(xs [B, n, d], ys [B, n])``."""
  keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(indices)
  return jax.vmap(lambda k: sample_prompt(k, function_class, n_points, dim,
                                          sparsity=sparsity, noise_std=noise_std,
                                          hidden=hidden, depth=depth,
                                          active_dims=active_dims))(keys)


def curriculum_value(step: int, start: int, end: int, increment: int, interval: int) -> int:
  """Garg et al.'s schedule: ``min(start + increment · ⌊step / interval⌋, end)`` (they
  grow the dimension from 5 to 20 by 1 and the prompt length from 11 to 41 by 2, every
  2000 steps)."""
  return int(min(start + increment * (int(step) // max(int(interval), 1)), end))


@functools.partial(jax.jit, static_argnames=("function_class", "n_points", "dim", "sparsity",
                                             "noise_std", "hidden", "depth"))
def _tokens_and_ys(key, indices, active_dims, **options):
  xs, ys = sample_prompts(key, indices, active_dims=active_dims, **options)
  return prompt_tokens(xs, ys), ys


def function_class_source(function_class: str, *, split: str = "train", seed: int = 0,
                          dim: int = 20, n_points: int = 41, sparsity: int = 3,
                          noise_std: float = 1.0, hidden: int = 100, depth: int = 4,
                          name: str = "", curriculum_dims=None, curriculum_points=None):
  """An endless `mtlx.data.sources.TaskSource` of one class's prompts.

  Input ``features`` float32 ``[2 n_points, dim + 1]`` (`prompt_tokens`); label
  ``ys`` float32 ``[n_points]`` under the task's name (a regression task with
  ``n_points`` outputs, so the task loss is the MSE over positions). Batches are
  generated in chunks of ``GENERATION_CHUNK`` rows (one compilation per class and
  options, whatever the per-step counts).

  ``curriculum_dims = (start, increment, interval)`` (Garg et al.: ``(5, 1, 2000)``
  with ``dim = 20``): at training step ``t`` only the first
  ``curriculum_value(t, start, dim, increment, interval)`` coordinates of ``x`` are
  non-zero (the source then reads the step: ``read(indices, step)``; without a
  step, as in evaluation, every coordinate is active).

  ``curriculum_points = (start, increment, interval)`` (Garg et al.: ``(11, 2, 2000)``
  with ``n_points = 41``): at step ``t`` only the first ``n_t =
  curriculum_value(t, start, n_points, increment, interval)`` positions of each
  prompt enter the loss. The source then also returns the task's loss mask
  (`mtlx.data.specs.loss_mask_key`: 1 on positions ``< n_t``, all ones without a
  step), and the loss is the MSE over those positions
  (`mtlx.train.task_mask.masked_task_losses`). With a causal model (``icl_gpt``)
  this is exactly training on prompts of ``n_t`` points: a prediction never reads a
  later position, so the masked positions change nothing else.
  """
  from mtlx.data.sources import generator_source  # pylint: disable=import-outside-toplevel
  _check_class(function_class)
  for key_name, value, low in (("dim", dim, 1), ("n_points", n_points, 1),
                               ("sparsity", sparsity, 1), ("hidden", hidden, 1),
                               ("depth", depth, 1)):
    if int(value) != value or value < low:
      raise ValueError(f"{key_name}={value}; expected an int >= {low}.")
  if sparsity > dim:
    raise ValueError(f"sparsity={sparsity}; expected <= dim={dim}.")
  if not noise_std >= 0:
    raise ValueError(f"noise_std={noise_std}; expected >= 0.")
  key = class_key(seed, function_class, split)
  options = dict(function_class=function_class, n_points=int(n_points), dim=int(dim),
                 sparsity=int(sparsity), noise_std=float(noise_std), hidden=int(hidden),
                 depth=int(depth))
  task = TaskSpec(name or function_class, "regression", int(n_points), ("mae",), (False,),
                  name or function_class)

  curriculum_dims = _curriculum("curriculum_dims", curriculum_dims)
  curriculum_points = _curriculum("curriculum_points", curriculum_points)
  mask_key = loss_mask_key(task.label_key)

  def generate(indices, step=None):
    active = dim
    if curriculum_dims is not None and step is not None:
      start, increment, interval = curriculum_dims
      active = curriculum_value(step, start, dim, increment, interval)
    idx = np.asarray(indices, np.int64).reshape(-1)
    m = len(idx)
    padded = np.zeros(-(-max(m, 1) // GENERATION_CHUNK) * GENERATION_CHUNK, np.int64)
    padded[:m] = idx
    parts = [_tokens_and_ys(key, jnp.asarray(chunk, jnp.uint32), jnp.asarray(active, jnp.int32),
                            **options)
             for chunk in padded.reshape(-1, GENERATION_CHUNK)]
    tokens = np.concatenate([np.asarray(p[0]) for p in parts])[:m]
    ys = np.concatenate([np.asarray(p[1]) for p in parts])[:m]
    out = {"features": tokens.astype(np.float32), task.label_key: ys.astype(np.float32)}
    if curriculum_points is not None:
      length = n_points
      if step is not None:
        start, increment, interval = curriculum_points
        length = curriculum_value(step, start, n_points, increment, interval)
      out[mask_key] = np.broadcast_to(np.arange(n_points) < length,
                                      (m, n_points)).astype(np.float32)
    return out

  return generator_source(task, "features", (2 * int(n_points), int(dim) + 1), generate,
                          reads_step=curriculum_dims is not None or curriculum_points is not None)


def _curriculum(name, value):
  """``(start, increment, interval)`` of positive ints, or None (``()`` in a config)."""
  if value is None or len(value) == 0:
    return None
  if len(value) != 3 or min(int(v) for v in value) < 1 or any(int(v) != v for v in value):
    raise ValueError(f"{name}={tuple(value)}; expected (start, increment, interval) of "
                     "positive ints.")
  return tuple(int(v) for v in value)


# ---- metric and classical baselines --------------------------------------------------


def normalised_error(preds: jax.Array, ys: jax.Array, dim: int) -> jax.Array:
  """``[n]``: mean over prompts of ``(ŷ_i − y_i)² / d`` at each position ``i``."""
  return jnp.mean((preds - ys) ** 2, axis=0) / dim


def _prefix_masks(n):
  return jnp.arange(n)[None, :] < jnp.arange(n)[:, None]  # [i, j]: j < i


def least_squares(xs: jax.Array, ys: jax.Array) -> jax.Array:
  """``[n]`` predictions: ``x_iᵀ X_{<i}⁺ y_{<i}`` (minimum-norm least squares)."""
  def at(mask, x):
    xm = xs * mask[:, None]
    return x @ (jnp.linalg.pinv(xm) @ (ys * mask))
  return jax.vmap(at)(_prefix_masks(xs.shape[0]).astype(xs.dtype), xs)


def lasso_weights(a: jax.Array, b: jax.Array, alpha: float = 0.1,
                  iterations: int = LASSO_ITERATIONS) -> jax.Array:
  """``argmin_w ½‖a w − b‖² + α‖w‖₁`` by FISTA (Beck & Teboulle, 2009).

  From ``w = 0`` with step ``1/L``, ``L = λ_max(aᵀa)``, for a fixed number of
  ``iterations`` (default 300; no tolerance test, so it traces once). The
  objective gap after ``t`` steps is at most ``2L‖w* ‖²/(t+1)²``; where the
  minimiser is not unique or the problem is badly conditioned the iterate itself
  may still be far from the reference minimiser while the objective is close.
  """
  lip = jnp.linalg.eigvalsh(a.T @ a)[-1] + 1e-6
  soft = lambda v, t: jnp.sign(v) * jnp.maximum(jnp.abs(v) - t, 0.0)

  def body(_, carry):
    w, z, t = carry
    w_new = soft(z - a.T @ (a @ z - b) / lip, alpha / lip)
    t_new = (1 + jnp.sqrt(1 + 4 * t * t)) / 2
    return w_new, w_new + (t - 1) / t_new * (w_new - w), t_new

  zero = jnp.zeros(a.shape[1], a.dtype)
  return jax.lax.fori_loop(0, iterations, body, (zero, zero, jnp.ones((), a.dtype)))[0]


def lasso(xs: jax.Array, ys: jax.Array, alpha: float = 0.1,
          iterations: int = LASSO_ITERATIONS) -> jax.Array:
  """``[n]`` predictions ``x_iᵀ ŵ_i`` with ``ŵ_i = argmin ½‖X_{<i}w − y_{<i}‖² + α‖w‖₁``
  (`lasso_weights`). ``α = 0.1`` suits Garg et al.'s scale (noiseless, sparsity 3)."""
  def at(mask, x):
    return x @ lasso_weights(xs * mask[:, None], ys * mask, alpha, iterations)
  return jax.vmap(at)(_prefix_masks(xs.shape[0]).astype(xs.dtype), xs)


def nearest_neighbours(xs: jax.Array, ys: jax.Array, k: int = 3) -> jax.Array:
  """``[n]`` predictions: mean ``y`` of the ``min(k, i)`` nearest previous ``x``."""
  n = xs.shape[0]
  d2 = jnp.sum((xs[:, None, :] - xs[None, :, :]) ** 2, axis=-1)
  valid = _prefix_masks(n)
  d2 = jnp.where(valid, d2, jnp.inf)
  kk = min(k, n)
  neg, idx = jax.lax.top_k(-d2, kk)
  use = jnp.isfinite(neg).astype(xs.dtype)
  return jnp.sum(ys[idx] * use, axis=1) / jnp.maximum(jnp.sum(use, axis=1), 1.0)


def averaging(xs: jax.Array, ys: jax.Array) -> jax.Array:
  """``[n]`` predictions ``x_iᵀ ŵ_i``, ``ŵ_i = (1/i) Σ_{j<i} y_j x_j`` (Garg et al.)."""
  mask = _prefix_masks(xs.shape[0]).astype(xs.dtype)
  w = (mask * ys[None, :]) @ xs / jnp.maximum(mask.sum(axis=1), 1.0)[:, None]
  return jnp.sum(w * xs, axis=1)


BASELINES: dict[str, Callable] = {
    "least_squares": least_squares,
    "lasso": lasso,
    "3nn": nearest_neighbours,
    "averaging": averaging,
}


@functools.partial(jax.jit, static_argnames=("name",))
def baseline_predictions(name: str, xs: jax.Array, ys: jax.Array) -> jax.Array:
  """``[B, n]`` predictions of baseline ``name`` on a batch of prompts."""
  return jax.vmap(BASELINES[name])(xs, ys)


def baseline_curves(xs, ys, names=None) -> dict[str, np.ndarray]:
  """``{baseline: normalised error curve [n]}`` on prompts ``xs [B, n, d]``, ``ys [B, n]``."""
  names = list(BASELINES) if names is None else list(names)
  bad = [n for n in names if n not in BASELINES]
  if bad:
    raise ValueError(f"baselines {bad}; expected some of {list(BASELINES)}.")
  dim = xs.shape[-1]
  return {n: np.asarray(normalised_error(baseline_predictions(n, xs, ys), ys, dim))
          for n in names}
