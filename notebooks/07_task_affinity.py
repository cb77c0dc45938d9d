# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 07 · Task affinity and task grouping
#
# Which tasks should share a model? TAG (Fifty et al., NeurIPS 2021) measures it during one
# joint training run: the *lookahead affinity* of task $i$ onto task $j$ is how much a step on
# task $i$ alone lowers task $j$'s loss on the same batch,
#
# $$Z_{i\to j} = 1 - \frac{L_j(\theta - \eta\, g_i)}{L_j(\theta)},$$
#
# averaged over training; a search over partitions of the tasks then picks the groups with the
# largest within-group affinity. `mtlx.affinity.lookahead_affinity` computes $Z$ from the
# per-task gradients (K vmapped forward passes) and `mtlx.affinity.group_tasks` searches the
# partitions (exhaustive up to K = 10).
#
# The data is `many_tasks` with $K = 6$ regression tasks whose true read-outs $w_k$ are built
# with a planted structure: tasks 0–2 mostly read one direction of the input, tasks 3–5
# another (built below from the generated targets), so the right grouping is known.

# %%
import os

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

import mtlx

STEPS = int(os.environ.get("MTLX_NOTEBOOK_TRAIN_STEPS", 300))
EVERY, BATCH, K, ETA = 10, 64, 6, 0.05
BUILDER_KWARGS = dict(num_tasks=K, rho=0.0, num_train=4000, num_validation=200, num_test=500)
info = mtlx.data.get_info("many_tasks", **BUILDER_KWARGS)
tasks = info.tasks
data = mtlx.data.load_split("many_tasks", "train", builder_kwargs=BUILDER_KWARGS)
x = jnp.asarray(data[info.input_key])
# Planted groups: targets of tasks 0-2 (3-5) mostly read one direction a (b) of x, plus
# 0.3 x the generated task-specific target.
rng = np.random.default_rng(0)
a, b = rng.normal(size=(2, x.shape[1])) / np.sqrt(x.shape[1])
planted = np.where(np.arange(K) < 3, 0, 1)
extra = np.stack([np.asarray(x) @ (a if g == 0 else b) for g in planted], axis=1) * 3.0
train = {info.input_key: x}
for k, t in enumerate(tasks):
  train[t.label_key] = (0.3 * jnp.asarray(data[t.label_key])
                        + jnp.asarray(extra[:, k:k + 1], jnp.float32))
model = mtlx.models.get_model("hps", input_shape=info.input_shape, tasks=tasks, widths=(64,),
                              hidden=32, head_hidden=16, seed=0)
fns, params = mtlx.models.split(model)


def loss_fn(p, batch):
  out = fns.apply(p, batch[info.input_key])
  return jnp.stack([jnp.mean((out[t.name] - batch[t.label_key]) ** 2) for t in tasks])


# %% [markdown]
# Plain linear scalarization with Adam; every `EVERY` steps, the affinity of the *shared*
# parameters' lookahead (TAG moves the shared encoder only: the decoder rows are zeroed).

# %%
opt = optax.adam(3e-3)
opt_state = opt.init(params)
value_and_jac = mtlx.value_and_jacobian(loss_fn)


@jax.jit
def step(p, s, batch):
  losses, grads = jax.value_and_grad(lambda q: jnp.sum(loss_fn(q, batch)))(p)
  updates, s = opt.update(grads, s, p)
  return optax.apply_updates(p, updates), s


@jax.jit
def affinity_now(p, batch):
  losses, tg = value_and_jac(p, batch)
  tg = {"encoder": tg["encoder"], "decoder": jax.tree_util.tree_map(jnp.zeros_like, tg["decoder"])}
  return mtlx.affinity.lookahead_affinity(loss_fn, p, tg, batch, learning_rate=ETA, losses=losses)


n = x.shape[0]
history = []
for i in range(STEPS):
  idx = np.random.default_rng(i).choice(n, BATCH, replace=False)
  batch = {key: v[idx] for key, v in train.items()}
  if i % EVERY == 0:
    history.append(np.asarray(affinity_now(params, batch)))
  params, opt_state = step(params, opt_state, batch)
z = np.mean(history, axis=0)
print(np.round(z, 3))

# %%
fig, ax = plt.subplots(figsize=(4, 3.5))
im = ax.imshow(z, cmap="RdBu_r", vmin=-np.abs(z).max(), vmax=np.abs(z).max())
ax.set_xlabel("target task j"); ax.set_ylabel("source task i")
ax.set_title("mean lookahead affinity $Z_{i\\to j}$")
fig.colorbar(im)
plt.show()

# %% [markdown]
# The search over partitions into at most two groups, and the best partition with any number:

# %%
groups2, score2 = mtlx.affinity.group_tasks(z, num_groups=2)
groups_any, score_any = mtlx.affinity.group_tasks(z)
print("two groups:", groups2, round(score2, 4))
print("any number:", groups_any, round(score_any, 4))

# %% [markdown]
# Checks: a step on a task helps that task most (the diagonal dominates); tasks of the same
# planted group help each other more than tasks of the other group; and the two-group search
# recovers the planted groups.

# %%
off = ~np.eye(K, dtype=bool)
same = (planted[:, None] == planted[None, :]) & off
assert np.all(np.isfinite(z))
assert np.mean(np.diag(z)) > np.mean(z[off])
assert np.mean(z[same]) > np.mean(z[off & ~same])
assert groups2 == [[0, 1, 2], [3, 4, 5]], groups2

# %% [markdown]
# ## On `multi_digits`
#
# The same measurement on the two-digit benchmark (left / right digit of a canvas), with the
# two-branch model whose branches see the left and right halves (`mtlx.models.two_branch`).
# `mtlx.affinity.affinity_fn` bundles the per-task Jacobian and the lookahead; `shared` says
# which parameters the lookahead moves (the encoder). The trainer does the same with
# `--config.affinity_every=N` (rows `affinity/<i>/<j>` in `metrics.jsonl`, the mean and
# the grouping in `affinity.json`).

# %%
MD_STEPS = int(os.environ.get("MTLX_NOTEBOOK_TRAIN_STEPS", 150)) // 2
MD_KWARGS = dict(num_train=4000, num_validation=200, num_test=1000)
md_info = mtlx.data.get_info("multi_digits", **MD_KWARGS)
md_data = mtlx.data.load_split("multi_digits", "train", builder_kwargs=MD_KWARGS)
md_model = mtlx.models.get_model("two_branch", input_shape=md_info.input_shape,
                                 tasks=md_info.tasks, widths=(8, 16), hidden=32,
                                 head_hidden=16, seed=0)
md_fns, md_params = mtlx.models.split(md_model)


def md_loss(p, batch):
  out = md_fns.apply(p, batch[md_info.input_key])
  return jnp.stack([optax.softmax_cross_entropy_with_integer_labels(
      out[t.name], batch[t.label_key]).mean() for t in md_info.tasks])


def encoder_only(p):
  return {"encoder": jax.tree_util.tree_map(lambda _: True, p["encoder"]),
          "decoder": jax.tree_util.tree_map(lambda _: False, p["decoder"])}


md_affinity = jax.jit(mtlx.affinity.affinity_fn(md_loss, learning_rate=0.01, shared=encoder_only))
md_opt = optax.adam(3e-3)
md_state = md_opt.init(md_params)


@jax.jit
def md_step(p, s, batch):
  grads = jax.grad(lambda q: jnp.sum(md_loss(q, batch)))(p)
  updates, s = md_opt.update(grads, s, p)
  return optax.apply_updates(p, updates), s


md_history = []
n_md = len(md_data[md_info.input_key])
for i in range(MD_STEPS):
  idx = np.random.default_rng(i).choice(n_md, 64, replace=False)
  batch = {key: jnp.asarray(v[idx]) for key, v in md_data.items()}
  if i % 5 == 0:
    md_history.append(np.asarray(md_affinity(md_params, batch)))
  md_params, md_state = md_step(md_params, md_state, batch)
z_md = np.mean(md_history, axis=0)
names = [t.name for t in md_info.tasks]
print(names)
print(np.round(z_md, 4))
print("grouping:", mtlx.affinity.group_tasks(z_md))

# %% [markdown]
# Each digit's step helps its own loss more than the other digit's (the diagonal dominates);
# whether the search puts the two digits together depends on the sign of the cross terms
# (positive: one model; negative: two).

# %%
md_groups, _ = mtlx.affinity.group_tasks(z_md)
assert np.all(np.isfinite(z_md)) and len(md_history) == -(-MD_STEPS // 5)
assert np.mean(np.diag(z_md)) > np.mean(z_md[~np.eye(2, dtype=bool)])
assert sorted(sum(md_groups, [])) == [0, 1]
assert (md_groups == [[0, 1]]) == (z_md[0, 1] + z_md[1, 0] > 0)
