"""Task samplers: how many examples of each task go into every global batch.

A multi-task run whose tasks come from separate datasets (one `mtlx.data.sources`
source per task) must decide, at every step, the per-task counts ``c_t ∈ ℕ^K``
with ``Σ_k c_{t,k} = B`` (the global batch). A sampler is the rule

.. math::   p_t = \\text{probabilities}(s_t, t),\\qquad
            c_t \\sim \\text{Multinomial}(B, p_t)   \\ (\\text{mixed rows}),

or, for an *unmixed* sampler with ``S`` slices (``S`` = 1: the whole step holds
one task; ``S`` = the ``data`` axis size: one task per device slice), each of the
``S`` equal slices of ``B/S`` rows is given one task drawn i.i.d. from ``p_t``.
Adaptive samplers then update their state from the step's per-task losses:
``s_{t+1} = update(s_t, c_t, L_t)``.

Design (why not grain): the per-step randomness is ``np.random.default_rng([seed,
step, 0x5A3])``, so step ``t``'s draw is a pure function of ``(seed, t, s_t)`` and the
whole stream is reproduced from the small state ``s_t`` (a tuple of NumPy arrays,
saved in the orbax checkpoint with the train state). Adaptive samplers need the
losses of step ``t`` before drawing step ``t + 1``, a feedback loop that grain's
``MapDataset.mix`` (fixed weights) and its prefetching iterators do not model;
every other sampler here is a special case of the same two functions, so one
small NumPy implementation serves all of them and adds no dependency.

Samplers (``config.sampler.name``; arguments beside it):

=================  ===========================================================
name               ``p_t``
=================  ===========================================================
fixed              ``weights / Σ weights`` (``config.sampler.weights``)
proportional       ``n_k / Σ n`` (dataset sizes)
temperature        ``n_k^{1/τ} / Σ n^{1/τ}`` (τ = 1 proportional, τ → ∞ uniform;
                   Arivazhagan et al. 2019 use τ = 5)
uniform            ``1 / K``
unmixed            any rule above (``base``), one task per slice (``num_slices``)
staged             a list of ``(steps, sampler)``: stage ``i`` from step
                   ``Σ_{j<i} steps_j`` on; the last stage continues forever
bandit             EXP3 (default) or UCB1 over tasks, rewarded by loss decrease
loss_proportional  ``∝ (L̄_k)^α`` of each task's last observed loss, mixed with
                   ``ε`` uniform
=================  ===========================================================

Rewards of the bandit (Graves et al., 2017, "Automated Curriculum Learning for
Neural Networks", the *loss-decrease* progress signal): for a task present at
step ``t``, ``r_k = clip((L̄_k − L_{t,k}) / L̄_k, −1, 1)`` mapped to ``[0, 1]`` as
``(r_k + 1)/2``, where ``L̄_k`` is the task's loss the last time it was present
(a task's first observation gives reward 1/2).

* EXP3 (Auer et al., 2002): ``p = (1 − γ) softmax(η·S) + γ/K`` with cumulated
  importance-weighted rewards ``S_k += r_k · c_k / (B p_k)`` (unbiased, since
  ``E[c_k] = B p_k``), ``η = γ / K``.  Defaults ``γ = 0.1``.
* UCB1 (Auer et al., 2002): every task once first (lowest index among the
  untried), then ``argmax_k  r̄_k + c √(2 ln t / n_k)`` with ``n_k`` the number of
  steps task ``k`` was present and ``r̄_k`` its mean reward; ``p`` is one-hot,
  so a UCB step holds one task (``c = 1``).

Every sampler state holds no Python objects, so ``jax.tree_util`` and orbax save
it as is.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

SAMPLER_NAMES = ("fixed", "proportional", "temperature", "uniform", "unmixed", "staged",
                 "bandit", "loss_proportional")
_SALT = 0x5A3


class TaskSampler(NamedTuple):
  """A task-sampling rule (see the module docstring).

  Attributes:
    init: ``() -> state`` (a tuple of NumPy arrays; ``()`` when stateless).
    probabilities: ``(state, step) -> p [K]`` float64, non-negative, sums to 1.
    update: ``(state, counts [K], losses [K], step) -> state`` (identity when the
      rule does not adapt). ``losses`` of tasks with ``counts == 0`` are ignored.
    num_slices: ``step -> S``: 0 for mixed batches (each row's task i.i.d. from
      ``p``); ``S >= 1`` for unmixed batches (``S`` equal slices, one task each).
    adaptive: whether ``update`` reads the losses (the trainer must feed them).
    num_tasks: K.
  """
  init: Callable[[], Any]
  probabilities: Callable[[Any, int], np.ndarray]
  update: Callable[[Any, np.ndarray, np.ndarray, int], Any]
  num_slices: Callable[[int], int]
  adaptive: bool
  num_tasks: int


def _mixed(step):
  del step
  return 0


def _stateless(p: np.ndarray) -> TaskSampler:
  p = np.asarray(p, np.float64)
  return TaskSampler(lambda: (), lambda state, step: p,
                     lambda state, counts, losses, step: state, _mixed, False, len(p))


def _check_sizes(sizes, name):
  if sizes is None:
    raise ValueError(f"sampler {name!r} needs the dataset sizes; got sizes=None "
                     "(a source without a size, e.g. a generator). Expected a finite "
                     "num_examples for every task, or another sampler.")
  sizes = np.asarray(sizes, np.float64)
  if sizes.ndim != 1 or len(sizes) < 1 or np.any(~np.isfinite(sizes)) or np.any(sizes <= 0):
    raise ValueError(f"sizes={sizes.tolist()}; expected one positive size per task.")
  return sizes


def fixed(weights: Sequence[float]) -> TaskSampler:
  """``p = weights / Σ weights`` (non-negative, at least one positive)."""
  w = np.asarray(weights, np.float64)
  if w.ndim != 1 or len(w) < 1 or np.any(~np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
    raise ValueError(f"sampler.weights={list(np.atleast_1d(w))}; expected one non-negative "
                     "finite weight per task, not all zero.")
  return _stateless(w / w.sum())


def uniform(num_tasks: int) -> TaskSampler:
  """``p = 1/K``."""
  if int(num_tasks) < 1:
    raise ValueError(f"num_tasks={num_tasks}; expected >= 1.")
  return _stateless(np.full(int(num_tasks), 1.0 / int(num_tasks)))


def temperature(sizes: Sequence[float], tau: float = 1.0) -> TaskSampler:
  """``p_k ∝ n_k^{1/τ}`` (Arivazhagan et al., 2019; τ = inf gives uniform)."""
  sizes = _check_sizes(sizes, "temperature")
  tau = float(tau)
  if not tau > 0:
    raise ValueError(f"sampler.temperature={tau}; expected > 0 (1: proportional, inf: uniform).")
  logits = np.log(sizes) / tau
  p = np.exp(logits - logits.max())
  return _stateless(p / p.sum())


def proportional(sizes: Sequence[float]) -> TaskSampler:
  """``p_k = n_k / Σ n`` (temperature with τ = 1)."""
  return temperature(sizes, 1.0)


def unmixed(base: TaskSampler, num_slices: int = 1) -> TaskSampler:
  """``base``'s probabilities, but each of ``num_slices`` equal slices of the global
  batch holds a single task (1: one task per step; the ``data`` axis size: one per
  device slice)."""
  if int(num_slices) < 1:
    raise ValueError(f"sampler.num_slices={num_slices}; expected an int >= 1.")
  s = int(num_slices)
  return base._replace(num_slices=lambda step: s)


def staged(stages: Sequence[tuple[int, TaskSampler]]) -> TaskSampler:
  """Stage ``i`` (``(steps_i, sampler_i)``) rules steps ``[Σ_{j<i} steps_j,
  Σ_{j≤i} steps_j)``; the last stage also every later step. Each stage keeps its
  own state; only the active stage's is updated. Stages must agree on K; the
  active stage's ``num_slices`` applies."""
  if not stages:
    raise ValueError("sampler.stages is empty; expected a list of (steps, sampler).")
  lengths = [int(s) for s, _ in stages]
  if any(n < 1 for n in lengths[:-1]):
    raise ValueError(f"sampler.stages steps={lengths}; expected every stage but the last to "
                     "last >= 1 step.")
  samplers = [s for _, s in stages]
  ks = {s.num_tasks for s in samplers}
  if len(ks) != 1:
    raise ValueError(f"sampler.stages disagree on the number of tasks {sorted(ks)}; expected one K.")
  bounds = np.cumsum(lengths)

  def stage(step):
    return int(min(np.searchsorted(bounds, step, side="right"), len(samplers) - 1))

  def init():
    return tuple(s.init() for s in samplers)

  def probabilities(state, step):
    i = stage(step)
    return samplers[i].probabilities(state[i], step)

  def update(state, counts, losses, step):
    i = stage(step)
    return tuple(samplers[j].update(state[j], counts, losses, step) if j == i else state[j]
                 for j in range(len(samplers)))

  def num_slices(step):
    return samplers[stage(step)].num_slices(step)

  return TaskSampler(init, probabilities, update, num_slices,
                     any(s.adaptive for s in samplers), ks.pop())


def _reward(last, seen, present, losses):
  """Loss-decrease rewards in [0, 1] for present tasks (1/2 at a first sight)."""
  safe_last = np.where(np.abs(last) > 0, last, 1.0)
  decrease = np.clip((last - losses) / np.abs(safe_last), -1.0, 1.0)
  return np.where(seen, (decrease + 1.0) / 2.0, 0.5) * present


def bandit(num_tasks: int, algorithm: str = "exp3", gamma: float = 0.1,
           c: float = 1.0) -> TaskSampler:
  """A bandit over tasks rewarded by each task's loss decrease (module docstring).

  State ``(score[K], last_loss[K], seen[K] bool, pulls[K], reward_sum[K], t)``:
  EXP3 reads ``score``; UCB1 reads ``pulls``, ``reward_sum`` and ``t``.
  Non-finite losses are ignored (the state is left as it was for those tasks).
  """
  k = int(num_tasks)
  if k < 1:
    raise ValueError(f"num_tasks={num_tasks}; expected >= 1.")
  if algorithm not in ("exp3", "ucb"):
    raise ValueError(f"sampler.algorithm={algorithm!r}; expected one of ['exp3', 'ucb'].")
  if not 0 < gamma <= 1:
    raise ValueError(f"sampler.gamma={gamma}; expected in (0, 1].")
  if not c >= 0:
    raise ValueError(f"sampler.c={c}; expected >= 0.")
  eta = gamma / k

  def init():
    z = np.zeros(k, np.float64)
    return (z, z.copy(), np.zeros(k, bool), np.zeros(k, np.int64), z.copy(),
            np.zeros((), np.int64))

  def probabilities(state, step):
    score, _, _, pulls, reward_sum, t = state
    if algorithm == "exp3":
      e = np.exp(eta * (score - score.max()))
      return (1 - gamma) * e / e.sum() + gamma / k
    untried = np.flatnonzero(pulls == 0)
    if len(untried):
      best = untried[0]
    else:
      ucb = reward_sum / pulls + c * np.sqrt(2.0 * np.log(max(int(t), 1)) / pulls)
      best = int(np.argmax(ucb))
    return np.eye(k)[best]

  def update(state, counts, losses, step):
    del step
    score, last, seen, pulls, reward_sum, t = state
    losses = np.asarray(losses, np.float64)
    counts = np.asarray(counts)
    present = (counts > 0) & np.isfinite(losses)
    r = _reward(last, seen, present, np.where(present, losses, 0.0))
    p = probabilities(state, 0)
    b = max(int(counts.sum()), 1)
    if algorithm == "exp3":
      score = score + np.where(present, r * counts / (b * np.maximum(p, 1e-12)), 0.0)
    pulls = pulls + present
    reward_sum = reward_sum + r
    last = np.where(present, losses, last)
    seen = seen | present
    return (score, last, seen, pulls, reward_sum, t + 1)

  return TaskSampler(init, probabilities, update, _mixed, True, k)


def loss_proportional(num_tasks: int, alpha: float = 1.0, epsilon: float = 0.1) -> TaskSampler:
  """``p = (1 − ε) L̄^α / Σ L̄^α + ε / K`` with ``L̄_k`` each task's last observed loss
  (uniform until every task was seen; losses are assumed non-negative).

  State ``(last_loss[K], seen[K] bool)``.
  """
  k = int(num_tasks)
  if k < 1:
    raise ValueError(f"num_tasks={num_tasks}; expected >= 1.")
  if not 0 <= epsilon <= 1:
    raise ValueError(f"sampler.epsilon={epsilon}; expected in [0, 1].")
  if not alpha >= 0:
    raise ValueError(f"sampler.alpha={alpha}; expected >= 0.")

  def init():
    return (np.zeros(k, np.float64), np.zeros(k, bool))

  def probabilities(state, step):
    last, seen = state
    if not seen.all():
      return np.full(k, 1.0 / k)
    mass = np.maximum(last, 0.0) ** alpha
    if not mass.sum() > 0:
      return np.full(k, 1.0 / k)
    return (1 - epsilon) * mass / mass.sum() + epsilon / k

  def update(state, counts, losses, step):
    del step
    last, seen = state
    losses = np.asarray(losses, np.float64)
    present = (np.asarray(counts) > 0) & np.isfinite(losses)
    return (np.where(present, losses, last), seen | present)

  return TaskSampler(init, probabilities, update, _mixed, True, k)


def draw_counts(sampler, state, step: int, batch_size: int, seed: int) -> np.ndarray:
  """Per-task counts ``c [K]`` (int64, summing to ``batch_size``) of global step ``step``.

  A pure function of ``(sampler, state, step, batch_size, seed)``.
  """
  p = np.asarray(sampler.probabilities(state, step), np.float64)
  p = np.maximum(p, 0.0)
  p = p / p.sum()
  rng = np.random.default_rng([int(seed), int(step), _SALT])
  slices = sampler.num_slices(step)
  if slices:
    if batch_size % slices:
      raise ValueError(f"batch_size={batch_size} is not divisible by sampler.num_slices="
                       f"{slices}; expected a multiple.")
    picks = rng.choice(len(p), size=slices, p=p)
    return np.bincount(picks, minlength=len(p)).astype(np.int64) * (batch_size // slices)
  return rng.multinomial(batch_size, p).astype(np.int64)


def _get(cfg, key, default):
  if cfg is None:
    return default
  if hasattr(cfg, "get"):
    value = cfg.get(key, default)
  else:
    value = getattr(cfg, key, default)
  return default if value is None else value


def make_sampler(cfg, num_tasks: int, sizes: Sequence[float] | None = None):
  """A sampler from a config (``config.sampler``: a ConfigDict or dict).

  ``cfg.name`` ∈ ``SAMPLER_NAMES``; arguments beside it: ``weights`` (fixed),
  ``temperature`` (τ, temperature), ``base`` (a nested sampler config, unmixed;
  default uniform) and ``num_slices``, ``stages`` (staged: a list of
  ``{"steps": n, "sampler": {...}}`` or ``(n, {...})``), ``algorithm``,
  ``gamma``, ``c`` (bandit), ``alpha``, ``epsilon`` (loss_proportional).
  ``sizes`` are the tasks' dataset sizes (None entries for generators).

  Raises:
    ValueError: an unknown name (listing the valid ones) or bad arguments.
  """
  name = _get(cfg, "name", "uniform")
  if name not in SAMPLER_NAMES:
    raise ValueError(f"config.sampler.name={name!r}; expected one of {list(SAMPLER_NAMES)}.")
  if sizes is not None and any(s is None for s in sizes):
    sizes = None
  if name == "fixed":
    weights = _get(cfg, "weights", None)
    if weights is None or len(weights) != num_tasks:
      raise ValueError(f"config.sampler.weights={weights}; expected {num_tasks} weights "
                       "(one per task).")
    return fixed(weights)
  if name == "uniform":
    return uniform(num_tasks)
  if name == "proportional":
    return proportional(sizes)
  if name == "temperature":
    return temperature(sizes, float(_get(cfg, "temperature", 1.0)))
  if name == "unmixed":
    base = _get(cfg, "base", None) or {"name": "uniform"}
    if _get(base, "name", "uniform") in ("unmixed", "staged"):
      raise ValueError(f"config.sampler.base.name={_get(base, 'name', '')!r}; expected a "
                       "mixing rule (fixed, proportional, temperature, uniform, bandit, "
                       "loss_proportional).")
    return unmixed(make_sampler(base, num_tasks, sizes), int(_get(cfg, "num_slices", 1)))
  if name == "staged":
    stages = []
    for entry in _get(cfg, "stages", ()):
      if hasattr(entry, "get") or isinstance(entry, dict):
        steps, sub = _get(entry, "steps", 0), _get(entry, "sampler", None)
      else:
        steps, sub = entry
      if _get(sub, "name", "") == "staged":
        raise ValueError("config.sampler.stages: a stage is itself 'staged'; expected a "
                         "non-staged sampler.")
      stages.append((int(steps), make_sampler(sub, num_tasks, sizes)))
    return staged(stages)
  if name == "bandit":
    return bandit(num_tasks, _get(cfg, "algorithm", "exp3"), float(_get(cfg, "gamma", 0.1)),
                  float(_get(cfg, "c", 1.0)))
  return loss_proportional(num_tasks, float(_get(cfg, "alpha", 1.0)),
                           float(_get(cfg, "epsilon", 0.1)))
