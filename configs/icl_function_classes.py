"""In-context learning of function classes as a multi-task problem (Garg et al. 2022).

  python -m experiments.icl_function_classes --config configs/icl_function_classes.py \
      --config.workdir=runs/icl --config.sampler.name=uniform --config.method=ls

(``python -m experiments.train`` with this config trains without the curves.)
Tasks: the five function classes of `mtlx.data.function_classes` (prompts made on
the fly from the seed), all with dimension ``dim`` and ``n_points`` examples per
prompt; one causal model (``icl_gpt``: the library GPT, `mtlx.models.gpt`, read out
at every x token, experiments/icl_model.py) with one head per class.
``config.icl.variants`` (empty: the config itself) trains several sampler / method
variants and plots them against the baselines (`experiments.icl_function_classes`);
``readme_variants`` (``--config configs/icl_function_classes.py:readme``) is the
README's measured comparison. Sizes here are small so
a CPU run finishes in minutes; Garg et al. use d = 20, n = 41, a 12-layer GPT-2 and
500k steps.
"""

import ml_collections

from configs import digits_mixture

CLASSES = ("linear_regression", "sparse_linear_regression", "noisy_linear_regression",
           "relu2_nn", "decision_tree")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """``arg='readme'`` (``--config configs/icl_function_classes.py:readme``): the
  README's measured comparison, a few CPU minutes (d = 5, n = 11, 2000 steps of 64
  prompts, the five ``readme_variants``)."""
  c = digits_mixture.get_config()
  dim, n_points = 8, 17
  c.tasks = [ml_collections.ConfigDict({
      "source": "function_class", "function_class": name, "dim": dim, "n_points": n_points,
      "sparsity": 3, "noise_std": 0.5, "hidden": 100, "depth": 4,
      "curriculum_dims": (), "curriculum_points": ()})  for name in CLASSES]
  c.sampler = digits_mixture.sampler_config("uniform")
  c.sampler.weights = (1.0,) * len(CLASSES)
  c.sampler.stages = [  # staged: linear regression alone first, then uniform
      {"steps": 500, "sampler": {"name": "fixed", "weights": [1.0, 0.0, 0.0, 0.0, 0.0]}},
      {"steps": 1, "sampler": {"name": "uniform"}}]
  c.model = "icl_gpt"
  c.model_kwargs = ml_collections.ConfigDict({"preset": "tiny", "dim": 32, "depth": 2,
                                              "heads": 2})
  c.learning_rate = 3e-4
  c.batch_size = 64
  c.eval_batch_size = 256
  c.eval_examples = 256      # prompts per class at each eval
  c.num_steps = 2000
  c.log_every = 50
  c.eval_every = 500
  c.checkpoint_every = 500
  c.workdir = "runs/icl_function_classes"
  # curriculum_dims / curriculum_points (start, increment, interval): Garg et al.'s
  # curriculum on the dimension / on the prompt length (the loss reads the first n_t
  # positions) for every class, e.g. (2, 1, 200) / (5, 2, 200); () = none.
  # icl.curriculum: the pair the compare line ``curriculum`` (experiments/compare.py)
  # and the README's curriculum variant use. Sampler comparisons:
  # --config.sampler.name=uniform | fixed | loss_proportional | bandit | staged | unmixed
  # (proportional / temperature need dataset sizes: the function classes are endless).
  c.icl = ml_collections.ConfigDict({
      "eval_prompts": 256, "curriculum_dims": (), "curriculum_points": (), "variants": [],
      "curriculum": garg_curriculum(c.num_steps, dim, n_points)})
  if arg == "readme":
    for t in c.tasks:
      t.dim, t.n_points = 5, 11
    c.num_steps, c.learning_rate = 2000, 1e-3
    c.eval_every = c.checkpoint_every = 2000
    c.eval_examples = 64
    c.workdir = "runs/icl_readme"
    c.icl.curriculum = garg_curriculum(c.num_steps, 5, 11)
    c.icl.variants = readme_variants(c.num_steps, 5, 11)
  elif arg:
    raise ValueError(f"config argument {arg!r}; expected none or 'readme'.")
  return c


def garg_curriculum(num_steps: int, dim: int, n_points: int) -> dict:
  """Garg et al.'s curriculum scaled to ``num_steps``: the dimension grows from 2 by 1
  and the prompt length from ``min(5, n)`` by 2, each reaching its end by half of
  training (they: d 5 → 20, n 11 → 41, every 2000 of 500k steps)."""
  half = max(num_steps // 2, 1)
  start_points = min(5, n_points)
  return {"dims": (min(2, dim), 1, max(half // max(dim - 2, 1), 1)),
          "points": (start_points, 2,
                     max(half // max(-(-(n_points - start_points) // 2), 1), 1))}


def readme_variants(num_steps: int, dim: int, n_points: int) -> list:
  """The README's comparison: samplers (uniform, loss-proportional, a Garg et al.
  curriculum: linear regression alone for the first third of training, then
  uniform, with the dimension and the prompt length growing over the first half,
  `garg_curriculum`) and MTO methods (FAMO, UPGrad) with uniform sampling.
  Temperature sampling needs dataset sizes; the function classes are endless
  generators (`mtlx.data.samplers.temperature`)."""
  third = max(num_steps // 3, 1)
  garg = garg_curriculum(num_steps, dim, n_points)
  return [
      {"name": "uniform+ls", "sampler": {"name": "uniform"}, "method": "ls"},
      {"name": "loss_prop+ls", "sampler": {"name": "loss_proportional", "epsilon": 0.2},
       "method": "ls"},
      {"name": "curriculum+ls", "method": "ls", "curriculum_dims": garg["dims"],
       "curriculum_points": garg["points"],
       "sampler": {"name": "staged", "stages": [
           {"steps": third, "sampler": {"name": "fixed", "weights": [1, 0, 0, 0, 0]}},
           {"steps": 1, "sampler": {"name": "uniform"}}]}},
      {"name": "uniform+famo", "sampler": {"name": "uniform"}, "weighting": "famo",
       "method": "ls"},
      {"name": "uniform+upgrad", "sampler": {"name": "uniform"}, "method": "upgrad"},
  ]
