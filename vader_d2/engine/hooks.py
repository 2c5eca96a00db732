"""Training hooks of VADeR pretraining."""

import logging
import math

from detectron2.engine import HookBase, hooks
from detectron2.utils import comm

from ..modeling.momentum import QUERIES_WITHOUT_NEGATIVE, pretraining_method
from .output_dir import prune_checkpoints

__all__ = ["NegativesWatch", "RetainingPeriodicCheckpointer"]

logger = logging.getLogger("vader_d2")


class NegativesWatch(HookBase):
    """
    Warns when queries keep finding no usable negative, i.e. when pretraining cannot learn.

    The model logs ``vader_queries_without_negative`` (the share of the batch's queries whose queued
    keys all come from their own image or from empty slots; their loss is 0) every
    ``MODEL.MOMENTUM_CONTRAST.METRICS_PERIOD`` iterations. Once the queue has had time to fill, this hook logs a
    warning when the share stays above ``threshold`` for ``patience`` consecutive records, and again
    every ``10 * patience`` records while it stays there. A model that does not log the scalar is left
    alone.
    """

    SCALAR = QUERIES_WITHOUT_NEGATIVE

    def __init__(self, fill_iterations, threshold=0.5, patience=3):
        self.fill_iterations = fill_iterations
        self.threshold = threshold
        self.patience = patience
        self._last_record = None
        self._streak = []  # (iteration, share) of consecutive records above the threshold
        self.warnings = 0

    @classmethod
    def from_config(cls, cfg, **kwargs):
        """The queue is full after QUEUE_SIZE / keys-per-step steps; records before that are not judged."""
        keys_per_step, _ = pretraining_method(cfg).keys_enqueued_per_step(cfg)
        return cls(math.ceil(cfg.MODEL.MOMENTUM_CONTRAST.QUEUE_SIZE / keys_per_step), **kwargs)

    def after_step(self):
        record = self.trainer.storage.latest().get(self.SCALAR)
        if record is None:
            return
        share, iteration = record
        if iteration == self._last_record:
            return  # no new record since the last step
        self._last_record = iteration
        if iteration < self.fill_iterations:
            return
        if share <= self.threshold:
            self._streak = []
            return
        self._streak.append((iteration, share))
        n = len(self._streak)
        if n == self.patience or (n > self.patience and (n - self.patience) % (10 * self.patience) == 0):
            self.warnings += 1
            shares = [s for _, s in self._streak[-self.patience:]]
            logger.warning(
                f"{min(shares):.0%} to {max(shares):.0%} of the queries had no usable negative in the last "
                f"{self.patience} records (iterations {self._streak[-self.patience][0]}..{iteration}; {n} records in a "
                f"row above {self.threshold:.0%}): their queued keys all come from their own image, so their loss is 0 "
                "and they learn nothing. Train on more distinct images, or raise SOLVER.IMS_PER_BATCH or "
                "MODEL.MOMENTUM_CONTRAST.QUEUE_SIZE"
            )


class RetainingPeriodicCheckpointer(hooks.PeriodicCheckpointer):
    """
    Detectron2's PeriodicCheckpointer hook that, after each checkpoint it writes, applies
    ``SOLVER.CHECKPOINT_KEEP`` (``keep``; 0 keeps everything) with ``prune_checkpoints``.

    fvcore's own ``max_to_keep`` is not used: it deletes only the checkpoints this process wrote, so a run
    resumed after a pre-emption would keep every checkpoint of its earlier parts forever, and it does not
    look at ``last_checkpoint``. Here the folder is pruned as it is, after ``save`` has returned, i.e.
    after the new checkpoint and then ``last_checkpoint`` were written completely (atomic writes); a
    failed write raises before anything is deleted.
    """

    def __init__(self, checkpointer, period, keep):
        super().__init__(checkpointer, period)
        self.keep = keep

    def step(self, iteration, **kwargs):
        super().step(iteration, **kwargs)
        saved = (iteration + 1) % self.period == 0 or (self.max_iter is not None and iteration >= self.max_iter - 1)
        # Only the process that writes checkpoints deletes them (Detectron2 builds this hook on rank 0 only).
        if saved and self.keep and comm.is_main_process() and self.checkpointer.save_to_disk:
            prune_checkpoints(self.checkpointer.save_dir, self.keep, self.period)
