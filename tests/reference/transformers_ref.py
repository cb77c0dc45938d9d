"""float64 NumPy references for the transformer parts of ``mtlx.models`` (never calls mtlx).

* ``moe_route``: top-k routing of a softmax router with renormalised gates
  (Mixtral; Shazeer et al. 2017 top-k gating).
* ``balance_loss``: the load-balancing loss of the Switch Transformer (Fedus et al.,
  JMLR 2022, eq. 4) with GShard's top-k assignment count:
  ``E · Σ_e f_e P_e``, ``f_e`` = share of the N·k assignments that go to expert e,
  ``P_e`` = mean router probability of e.
* ``lm_task_losses``: masked mean next-token cross-entropy per task.
"""

import numpy as np


def softmax(z, axis=-1):
  z = np.asarray(z, np.float64)
  z = z - z.max(axis=axis, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=axis, keepdims=True)


def moe_route(x, w_router, k):
  """x [N, D], w_router [D, E] -> (probs [N, E], top [N, k] indices, gates [N, E])."""
  probs = softmax(np.asarray(x, np.float64) @ np.asarray(w_router, np.float64))
  n, e = probs.shape
  top = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
  gates = np.zeros((n, e))
  for i in range(n):
    chosen = probs[i, top[i]]
    gates[i, top[i]] = chosen / chosen.sum()
  return probs, top, gates


def balance_loss(probs, top):
  n, e = probs.shape
  k = top.shape[1]
  f = np.bincount(top.reshape(-1), minlength=e) / (n * k)
  p = probs.mean(axis=0)
  return e * float(np.sum(f * p))


def moe_forward(x, w_router, w1, b1, w2, b2, k):
  """Top-k MoE MLP with GELU (tanh approximation, as jax.nn.gelu's default)."""
  x = np.asarray(x, np.float64)
  _, _, gates = moe_route(x, w_router, k)

  def gelu(h):
    return 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h ** 3)))

  y = np.zeros_like(x)
  for e in range(w1.shape[0]):
    out = gelu(x @ w1[e] + b1[e]) @ w2[e] + b2[e]
    y += gates[:, e:e + 1] * out
  return y


def lm_task_losses(logits, targets, masks):
  logits = np.asarray(logits, np.float64)
  logp = logits - logits.max(-1, keepdims=True)
  logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
  ce = -np.take_along_axis(logp, np.asarray(targets)[..., None], -1)[..., 0]
  masks = np.asarray(masks, np.float64)
  return (masks * ce[None]).sum((1, 2)) / np.maximum(masks.sum((1, 2)), 1.0)
