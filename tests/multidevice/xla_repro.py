"""Pure-JAX reproduction of an XLA SPMD partitioner bug (jax/jaxlib 0.10.2, CPU).

The program: ``relu(conv(relu(conv(x, c1)), c2))`` flattened into a dense kernel
``d``; the gradient w.r.t. both conv kernels. With ``d`` split along its INPUT
(contracting) axis over a mesh axis of size 2, and 4 devices arranged as
``(model=2, other=2)``, XLA returns both conv-kernel gradients multiplied by 2
(the size of the replicated ``other`` axis: an all-reduce over devices that hold
identical values); on 8 devices as ``(2, 4)`` by 4. Everything is tiny (one
example, a 2×2 one-channel image, one-channel kernels, 8 outputs). Seen with the
Shardy partitioner (the default) and GSPMD; the same program with ``d`` split
along its OUTPUT axis is correct, which is why ``mtlx.sharding``'s FSDP rule splits
only a leaf's last axis.

``tests/test_multidevice_matrix.py`` runs :func:`run` (in its 8-device
subprocess) and marks the bad layout ``xfail`` for these versions, so an upgrade
that fixes XLA shows up as an unexpected pass. Run directly::

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/multidevice/xla_repro.py
"""

import os

if __name__ == "__main__":
  os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
  os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402


def _conv(x, w):
  return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _loss(c1, c2, x, d):
  h = jax.nn.relu(_conv(x, c1))
  h = jax.nn.relu(_conv(h, c2))
  return jnp.sum((h.reshape(h.shape[0], -1) @ d) ** 2)


def run(d_spec=P("model", None), devices=4) -> dict:
  """Max relative error of the sharded conv-kernel gradients vs. one device, and
  their ratio to the one-device gradients (2.0 when the bug is present)."""
  keys = jax.random.split(jax.random.key(0), 4)
  x = jax.random.normal(keys[0], (1, 2, 2, 1))
  c1 = jax.random.normal(keys[1], (3, 3, 1, 1))
  c2 = jax.random.normal(keys[2], (3, 3, 1, 1))
  d = jax.random.normal(keys[3], (4, 8))
  grad = jax.grad(_loss, argnums=(0, 1))
  ref = jax.jit(grad)(c1, c2, x, d)
  mesh = Mesh(np.asarray(jax.devices()[:devices]).reshape(2, devices // 2),
              ("model", "other"))
  out = jax.jit(grad)(c1, c2, x, jax.device_put(d, NamedSharding(mesh, d_spec)))
  ref, out = [np.asarray(r) for r in ref], [np.asarray(o) for o in out]
  rel = max(float(np.abs(o - r).max() / np.abs(r).max()) for o, r in zip(out, ref))
  o, r = np.concatenate([a.ravel() for a in out]), np.concatenate([a.ravel() for a in ref])
  import jaxlib  # pylint: disable=import-outside-toplevel
  return {"max_rel": rel, "ratio": float(o @ r / (r @ r)), "jax": jax.__version__,
          "jaxlib": jaxlib.__version__}


if __name__ == "__main__":
  print("input axis of d split (bad):", run(P("model", None)))
  print("output axis of d split (mtlx's rule):", run(P(None, "model")))
  print("input axis of d split, 8 devices:", run(P("model", None), devices=8))
