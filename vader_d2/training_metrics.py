"""
The scalars VADeR pretraining logs to Detectron2's event storage (``metrics.json``, TensorBoard), and
``metrics.json`` read back.

The model writes these names; the trainer quotes some when the loss diverges, the pictures plot them,
users and tests read them from ``metrics.json``. This module imports nothing of the package, so that
the model can take the names from here as well as everything downstream of it.
"""

import json

__all__ = [
    "POSITIVE_SIMILARITY",
    "NEGATIVE_SIMILARITY",
    "TOP1_ACCURACY",
    "QUEUE_FILL",
    "SKIPPED_IMAGES",
    "VALID_MATCHES",
    "QUERIES_WITHOUT_NEGATIVE",
    "SIMILARITY_STATS",
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


def read_metrics(path):
    """The records of a ``metrics.json`` Detectron2's JSONWriter wrote (one dict per logging step)."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
