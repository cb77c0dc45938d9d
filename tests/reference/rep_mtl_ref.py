"""Float64 NumPy reference of Rep-MTL's two saliency penalties (from the module's equations)."""

import numpy as np


def penalties(s, temperature=0.1, eps=1e-12):
  s = np.asarray(s, np.float64)
  k, b = s.shape[:2]
  s = s.reshape(k, b, -1)
  if k == 1:
    return 0.0, 0.0
  a = np.abs(s)
  tsr_sum = 0.0
  for bi in range(b):
    for f in range(s.shape[2]):
      p = a[:, bi, f] / (a[:, bi, f].sum() + eps)
      tsr_sum += -sum(pk * np.log(pk) for pk in p if pk > 0)
  tsr = tsr_sum / (b * s.shape[2]) / np.log(k)
  u = s / (np.linalg.norm(s, axis=-1, keepdims=True) + eps)
  total, pairs = 0.0, 0
  for i in range(k):
    for j in range(k):
      if i == j:
        continue
      pairs += 1
      for bi in range(b):
        logits = np.array([u[i, bi] @ u[j, c] for c in range(b)]) / temperature
        m = logits.max()
        total += (m + np.log(np.exp(logits - m).sum()) - logits[bi]) / b
  return tsr, total / pairs
