"""In-context function classes: generation, tokens, baselines vs float64 references."""

import jax.numpy as jnp
import numpy as np
import pytest

from mtlx.data import function_classes as F
from mtlx.data import mixture
from mtlx.data import samplers
from tests.reference import function_classes_ref as ref

DIM, N = 5, 9


def _prompts(cls, count=6, **kw):
  src = F.function_class_source(cls, dim=DIM, n_points=N, **kw)
  batch = src.read(np.arange(count))
  xs, ys = F.split_tokens(jnp.asarray(batch["features"]))
  return np.asarray(xs, np.float64), np.asarray(ys, np.float64), batch, src


@pytest.mark.parametrize("cls", ["linear_regression", "decision_tree"])
def test_random_access_and_tokens(cls):
  xs, ys, batch, src = _prompts(cls)
  again = src.read(np.array([4, 2]))
  np.testing.assert_array_equal(again["features"], batch["features"][[4, 2]])
  assert batch["features"].shape == (6, 2 * N, DIM + 1) == (6,) + src.input_shape
  assert src.num_examples is None and src.task.num_outputs == N
  np.testing.assert_array_equal(ys, batch[cls])
  tokens = np.asarray(F.prompt_tokens(jnp.asarray(xs), jnp.asarray(ys)))
  np.testing.assert_allclose(tokens, batch["features"], atol=1e-6)
  assert np.all(tokens[:, 0::2, -1] == 0) and np.all(tokens[:, 1::2, :-1] == 0)
  test = F.function_class_source(cls, split="test", dim=DIM, n_points=N).read(np.arange(2))
  assert not np.allclose(test["features"], batch["features"][:2])  # splits differ


def test_class_structure():
  xs, ys, _, _ = _prompts("decision_tree", count=20)
  assert any(len(np.unique(y)) > 2 for y in ys)
  assert all(len(np.unique(y)) <= 16 for y in ys)  # depth 4: at most 16 leaf values
  # Noiseless linear classes are exactly linear: the LS fit on all n >= d points interpolates.
  for cls in ("linear_regression", "sparse_linear_regression"):
    xs, ys, _, _ = _prompts(cls)
    for x, y in zip(xs, ys):
      w = np.linalg.lstsq(x, y, rcond=None)[0]
      np.testing.assert_allclose(x @ w, y, atol=1e-4)
      if cls == "sparse_linear_regression":
        assert np.sum(np.abs(w) > 1e-4) <= 3
  xs, ys, _, _ = _prompts("noisy_linear_regression", noise_std=1.0)
  resid = [np.linalg.norm(y - x @ np.linalg.lstsq(x, y, rcond=None)[0]) for x, y in zip(xs, ys)]
  assert min(resid) > 1e-2
  # relu2_nn and linear: E[y^2] = d under Garg et al.'s priors (64 prompts x 9 points).
  for cls in ("relu2_nn", "linear_regression"):
    _, ys, _, _ = _prompts(cls, count=64)
    assert 0.7 * DIM < np.mean(ys ** 2) < 1.3 * DIM, cls


def test_least_squares_interpolates_noiseless_prompts():
  xs, ys, _, _ = _prompts("linear_regression", count=16)
  err = np.asarray(F.normalised_error(F.baseline_predictions("least_squares", jnp.asarray(xs),
                                                             jnp.asarray(ys)), jnp.asarray(ys), DIM))
  assert err.shape == (N,)
  assert np.all(err[DIM:] < 1e-6), err  # n >= d examples: error ~ 0
  assert np.all(err[:DIM - 1] > 1e-2)  # fewer than d: under-determined


@pytest.mark.parametrize("name", ["least_squares", "3nn", "averaging"])
def test_baselines_match_float64_references(name):
  xs, ys, _, _ = _prompts("sparse_linear_regression", count=2)
  got = np.asarray(F.baseline_predictions(name, jnp.asarray(xs), jnp.asarray(ys)))
  for x, y, g in zip(xs, ys, got):
    want = {"least_squares": lambda: ref.least_squares(x, y),
            "3nn": lambda: ref.nearest_neighbours(x, y, 3),
            "averaging": lambda: ref.averaging(x, y)}[name]()
    np.testing.assert_allclose(g, want, rtol=1e-3, atol=1e-4)


def test_lasso_reaches_the_reference_objective():
  xs, ys, _, _ = _prompts("sparse_linear_regression", count=1)
  x, y = xs[0], ys[0]
  objective = lambda a, b, w: 0.5 * np.sum((a @ w - b) ** 2) + 0.1 * np.sum(np.abs(w))
  for i in (1, 3, 6, N):
    w = np.asarray(F.lasso_weights(jnp.asarray(x[:i]), jnp.asarray(y[:i]), 0.1), np.float64)
    w_ref = ref.lasso_coordinate_descent(x[:i], y[:i], 0.1)
    assert objective(x[:i], y[:i], w) <= objective(x[:i], y[:i], w_ref) + 1e-3, i
  # Well-posed (i = N > d, strongly convex): the minimiser itself matches.
  np.testing.assert_allclose(w, w_ref, atol=1e-3)
  # The prefix predictions use the same solver on the masked prefix.
  preds = np.asarray(F.baseline_predictions("lasso", jnp.asarray(xs), jnp.asarray(ys)))[0]
  assert preds[0] == 0
  np.testing.assert_allclose(preds[N - 1], x[N - 1] @ np.asarray(
      F.lasso_weights(jnp.asarray(x[:N - 1]), jnp.asarray(y[:N - 1]), 0.1)), atol=1e-4)


def test_baseline_curves_and_errors():
  xs, ys, _, _ = _prompts("linear_regression", count=4)
  curves = F.baseline_curves(jnp.asarray(xs), jnp.asarray(ys), ["averaging", "3nn"])
  assert set(curves) == {"averaging", "3nn"} and curves["3nn"].shape == (N,)
  np.testing.assert_allclose(curves["3nn"][0], np.mean(ys[:, 0] ** 2) / DIM, rtol=1e-5)
  with pytest.raises(ValueError, match="baselines"):
    F.baseline_curves(jnp.asarray(xs), jnp.asarray(ys), ["ridge"])
  with pytest.raises(ValueError, match="function_class='cubic'"):
    F.function_class_source("cubic")
  with pytest.raises(ValueError, match="sparsity=9"):
    F.function_class_source("sparse_linear_regression", dim=5, sparsity=9)


def test_function_classes_mix():
  srcs = [F.function_class_source(c, dim=DIM, n_points=N) for c in F.FUNCTION_CLASSES]
  it = mixture.MixtureIterator(srcs, samplers.uniform(5), batch_size=10, seed=1,
                               process_index=0, process_count=1)
  batch = next(it)
  assert batch["features"].shape == (10, 2 * N, DIM + 1)
  for k, c in enumerate(F.FUNCTION_CLASSES):
    rows = batch["task_id"] == k
    _, ys = F.split_tokens(jnp.asarray(batch["features"][rows]))
    np.testing.assert_allclose(np.asarray(ys), batch[c][rows])
    assert np.all(batch[c][~rows] == 0)


def test_curriculum_on_the_dimension():
  src = F.function_class_source("linear_regression", dim=DIM, n_points=N,
                                curriculum_dims=(2, 1, 3))
  assert src.reads_step
  assert [F.curriculum_value(t, 2, DIM, 1, 3) for t in (0, 2, 3, 8, 100)] == [2, 2, 3, 4, DIM]
  early = src.read(np.arange(4), 0)["features"]
  later = src.read(np.arange(4), 3)["features"]
  full = src.read(np.arange(4))["features"]
  assert not np.any(early[:, 0::2, 2:DIM]) and np.all(early[:, 0::2, :2] != 0)
  assert not np.any(later[:, 0::2, 3:DIM]) and np.all(later[:, 0::2, 2] != 0)
  assert np.all(full[:, 0::2, :DIM] != 0)
  xs, ys = F.split_tokens(jnp.asarray(early))  # y = f(x) of the masked x: still linear
  for x, y in zip(np.asarray(xs, np.float64), np.asarray(ys, np.float64)):
    w = np.linalg.lstsq(x[:, :2], y, rcond=None)[0]
    np.testing.assert_allclose(x[:, :2] @ w, y, atol=1e-4)
  it = mixture.MixtureIterator([src], samplers.uniform(1), batch_size=4, seed=0,
                               process_index=0, process_count=1)
  first = next(it)
  assert not np.any(first["features"][:, 0::2, 2:DIM])  # the mixture passes the step
  with pytest.raises(ValueError, match="curriculum_dims"):
    F.function_class_source("linear_regression", curriculum_dims=(0, 1, 1))


def test_curriculum_on_the_prompt_length_masks_the_loss_positions():
  """Garg et al.'s curriculum on the number of points: at step t only the first n_t
  positions enter the loss (a loss mask beside the label); the prompts are those of
  the plain source, evaluation (no step) reads every position."""
  from mtlx.data.specs import loss_mask_key
  from mtlx.train import task_mask as TM
  plain = F.function_class_source("linear_regression", dim=DIM, n_points=N)
  src = F.function_class_source("linear_regression", dim=DIM, n_points=N,
                                curriculum_points=(3, 2, 4))
  key = loss_mask_key("linear_regression")
  assert src.reads_step and key not in plain.read(np.arange(2))
  for step, n_t in ((0, 3), (3, 3), (4, 5), (8, 7), (1000, N)):
    part = src.read(np.arange(4), step)
    np.testing.assert_array_equal(part["linear_regression"],
                                  plain.read(np.arange(4))["linear_regression"])
    np.testing.assert_array_equal(part[key], np.tile(np.arange(N) < n_t, (4, 1)))
  np.testing.assert_array_equal(src.read(np.arange(2))[key], np.ones((2, N)))
  # The mixture carries the mask under "<task>/loss_mask"; the task loss is the MSE over
  # the masked positions of its own rows (NumPy reference), zeros in other tasks' rows.
  other = F.function_class_source("relu2_nn", dim=DIM, n_points=N)
  it = mixture.MixtureIterator([src, other], samplers.fixed([0.5, 0.5]), batch_size=8,
                               seed=0, process_index=0, process_count=1)
  next(it)
  it.update(np.ones(2))
  batch = next(it)  # step 1: n_t = 3
  rows = batch["task_id"] == 0
  np.testing.assert_array_equal(batch[key][rows], np.tile(np.arange(N) < 3, (rows.sum(), 1)))
  assert not np.any(batch[key][~rows])
  rng = np.random.default_rng(0)
  preds = {t: rng.normal(size=(8, N)).astype(np.float32) for t in ("linear_regression",
                                                                   "relu2_nn")}
  tasks = mixture.check_sources([src, other]).tasks
  losses, counts = TM.masked_task_losses(tasks, {k: jnp.asarray(v) for k, v in preds.items()},
                                         {k: jnp.asarray(v) for k, v in batch.items()})
  err = (preds["linear_regression"] - batch["linear_regression"]).astype(np.float64) ** 2
  np.testing.assert_allclose(losses[0], err[rows][:, :3].mean(), rtol=1e-5)
  err2 = (preds["relu2_nn"] - batch["relu2_nn"]).astype(np.float64) ** 2
  np.testing.assert_allclose(losses[1], err2[~rows].mean(), rtol=1e-5)
  with pytest.raises(ValueError, match="curriculum_points"):
    F.function_class_source("linear_regression", curriculum_points=(3, 2))
  with pytest.raises(ValueError, match="loss_mask"):
    TM.per_example_loss("classification", jnp.zeros((2, 3)), jnp.zeros(2), jnp.ones((2, 3)))
