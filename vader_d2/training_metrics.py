"""
The scalars pretraining logs to Detectron2's event storage (``metrics.json``, TensorBoard), and
``metrics.json`` read back.

The models write these names (each method lists its own in ``metric_names``); the trainer quotes some
when the loss diverges, the pictures plot them, users and tests read them from ``metrics.json``. This
module imports nothing of the package, so that the models can take the names from here as well as
everything downstream of them.
"""

import json

from .errors import UserError

__all__ = [
    "POSITIVE_SIMILARITY",
    "NEGATIVE_SIMILARITY",
    "TOP1_ACCURACY",
    "QUEUE_FILL",
    "SKIPPED_IMAGES",
    "VALID_MATCHES",
    "QUERIES_WITHOUT_NEGATIVE",
    "QUEUE_STATS",
    "SIMILARITY_STATS",
    "DENSECL_GLOBAL_TOP1_ACCURACY",
    "DENSECL_DENSE_TOP1_ACCURACY",
    "DENSECL_DENSE_POSITIVE_SIMILARITY",
    "DENSECL_CELLS_WITH_POSITIVE",
    "DENSECL_QUEUE_FILL",
    "PIXPRO_MOMENTUM",
    "PIXPRO_POSITIVE_PAIRS",
    "read_metrics",
]

# Mean cosine similarity of a query to its positive key, and to the usable negatives of the queue.
POSITIVE_SIMILARITY = "vader_positive_similarity"
NEGATIVE_SIMILARITY = "vader_negative_similarity"
# Fraction of queries whose positive beats every usable negative.
TOP1_ACCURACY = "vader_top1_accuracy"
QUEUE_FILL = "vader_queue_fill"
# Unreadable files skipped by the loaders of every process since the run began.
SKIPPED_IMAGES = "vader_skipped_images"
# Cells of view 1 with a match in view 2, per image (dense loss only).
VALID_MATCHES = "vader_valid_matches"
# Fraction of queries none of whose negatives is usable (all from the query's own image, or empty
# slots): their loss is 0 and they learn nothing. A share that stays high means the data cannot teach.
QUERIES_WITHOUT_NEGATIVE = "vader_queries_without_negative"

# How well the queries tell their positive from the negatives: what to look at when training diverges.
SIMILARITY_STATS = (POSITIVE_SIMILARITY, NEGATIVE_SIMILARITY, TOP1_ACCURACY)
# What a method that contrasts against one queue (VADeR, the MoCo baseline) logs of it.
QUEUE_STATS = (*SIMILARITY_STATS, QUERIES_WITHOUT_NEGATIVE, QUEUE_FILL)

# DenseCL: the top-1 accuracy of its global and of its dense queries, the dense queries' mean cosine
# similarity to their positive key, the share of query cells with a positive (all of them with feature
# matching) and how full its queues are.
DENSECL_GLOBAL_TOP1_ACCURACY = "densecl_global_top1_accuracy"
DENSECL_DENSE_TOP1_ACCURACY = "densecl_dense_top1_accuracy"
DENSECL_DENSE_POSITIVE_SIMILARITY = "densecl_dense_positive_similarity"
DENSECL_CELLS_WITH_POSITIVE = "densecl_cells_with_positive"
DENSECL_QUEUE_FILL = "densecl_queue_fill"

# PixPro: the momentum of its momentum encoder at the step, and positive cell pairs per image.
PIXPRO_MOMENTUM = "pixpro_momentum"
PIXPRO_POSITIVE_PAIRS = "pixpro_positive_pairs"


def read_metrics(path):
    """The records of a ``metrics.json`` Detectron2's JSONWriter wrote (one dict per logging step); a
    missing or unreadable file, or a line that is not a JSON record, is one line naming it."""
    try:
        with open(path) as f:
            lines = f.readlines()
    except FileNotFoundError:
        raise UserError(f"{path} does not exist: did the run write any metrics?") from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise UserError(f"{path} line {number} is not a JSON record (a truncated write?)") from None
        if not isinstance(record, dict):
            raise UserError(f"{path} line {number} is not a JSON record")
        records.append(record)
    return records
