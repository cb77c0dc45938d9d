"""Reusable trainer pieces: the jitted MTO step, task losses, checkpoints, writers.

``experiments/train.py`` is the readable loop built on them.
"""

from mtlx.train.checkpoint import CheckpointSaveError
from mtlx.train.checkpoint import Checkpointer
from mtlx.train.losses import task_loss
from mtlx.train.losses import task_losses
from mtlx.train.step import ENGINES
from mtlx.train.step import PATHS
from mtlx.train.step import Representation
from mtlx.train.step import Step
from mtlx.train.step import TrainState
from mtlx.train.step import Trainer
from mtlx.train.step import build_mto
from mtlx.train.step import check_engine
from mtlx.train.step import check_method_names
from mtlx.train.step import choose_engine
from mtlx.train.step import cosine_matrix
from mtlx.train.step import engine_reasons
from mtlx.train.step import finalize_eval
from mtlx.train.step import gramian_coverage
from mtlx.train.step import make_optimizer
from mtlx.train.step import make_step
from mtlx.train.step import make_trainer
from mtlx.train.step import span_weights
from mtlx.train.writer import MetricWriter
from mtlx.train.writer import read_jsonl

from mtlx.train import task_mask  # noqa: F401  (per-task presence masks)

__all__ = [
    "CheckpointSaveError", "Checkpointer", "ENGINES", "MetricWriter", "PATHS", "Representation", "Step",
    "TrainState", "Trainer", "build_mto", "check_engine", "check_method_names",
    "choose_engine", "cosine_matrix", "engine_reasons", "finalize_eval", "gramian_coverage",
    "make_optimizer", "make_step", "make_trainer", "read_jsonl", "span_weights", "task_loss",
    "task_losses", "task_mask",
]
