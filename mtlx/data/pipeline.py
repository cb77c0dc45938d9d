"""Deterministic shuffling, per-host sharding and batching over a random-access source.

Pure NumPy, independent of tfds. For epoch e the global order is
``perm_e = default_rng([seed, e]).permutation(n)`` (``arange(n)`` without
shuffling). Host p of P keeps ``perm_e[p::P][: n // P]`` (every host gets the
same count, so multi-host steps never hang), and cuts it into batches of
``batch_size``. The union of the P host batches at step t is exactly the global
slice ``perm_e[t*B*P : (t+1)*B*P]``: a run on P hosts with per-host batch B sees
the same global batches as one host with batch B*P. Batches never straddle an
epoch boundary. Batch t of the stream is a pure function of (seed, t), so
``start_step`` jumps straight to it without reading anything.
"""

from typing import Iterator

import numpy as np


class BatchPlan:
  """Which example indices make up each batch of one host's stream."""

  def __init__(self, num_examples: int, *, batch_size: int, seed: int = 0,
               shuffle: bool = True, num_epochs: int | None = None,
               drop_remainder: bool = True, process_index: int = 0,
               process_count: int = 1):
    if (isinstance(batch_size, bool) or not float(batch_size).is_integer()
        or batch_size < 1):
      raise ValueError(f"batch_size={batch_size!r}; expected a positive int.")
    if process_count < 1 or not 0 <= process_index < process_count:
      raise ValueError(f"process_index={process_index}, process_count={process_count}; "
                       "expected 0 <= process_index < process_count.")
    if num_epochs is not None and num_epochs < 0:
      raise ValueError(f"num_epochs={num_epochs}; expected None (forever) or >= 0.")
    self.num_examples = int(num_examples)
    self.batch_size = int(batch_size)
    self.seed = int(seed)
    self.shuffle = shuffle
    self.num_epochs = num_epochs
    self.drop_remainder = drop_remainder
    self.process_index = process_index
    self.process_count = process_count
    self.per_host = self.num_examples // process_count
    if drop_remainder:
      self.steps_per_epoch = self.per_host // self.batch_size
    else:
      self.steps_per_epoch = -(-self.per_host // self.batch_size)
    if self.steps_per_epoch == 0:
      raise ValueError(
          f"batch_size={batch_size}: a split of {num_examples} examples over "
          f"{process_count} process(es) gives {self.per_host} per host, fewer than one "
          "batch; use a smaller batch_size or drop_remainder=False.")

  @property
  def total_steps(self) -> int | None:
    return None if self.num_epochs is None else self.num_epochs * self.steps_per_epoch

  def epoch_indices(self, epoch: int) -> np.ndarray:
    """This host's example indices for one epoch, in order."""
    if self.shuffle:
      order = np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)
    else:
      order = np.arange(self.num_examples)
    return order[self.process_index::self.process_count][:self.per_host]

  def batches(self, start_step: int = 0) -> Iterator[np.ndarray]:
    """Index arrays of batches start_step, start_step + 1, ..."""
    if start_step < 0:
      raise ValueError(f"start_step={start_step}; expected >= 0.")
    epoch, offset = divmod(start_step, self.steps_per_epoch)
    while self.num_epochs is None or epoch < self.num_epochs:
      indices = self.epoch_indices(epoch)
      for step in range(offset, self.steps_per_epoch):
        yield indices[step * self.batch_size:(step + 1) * self.batch_size]
      epoch, offset = epoch + 1, 0

