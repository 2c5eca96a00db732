#!/usr/bin/env python
"""
Check our DAVIS measures (vader_d2/evaluation/davis.py) against the official DAVIS 2017 evaluation code
on random mask pairs: noise masks, ellipses, empty masks, image sizes from 5 to 60 pixels.

    git clone https://github.com/davisvideochallenge/davis2017-evaluation /tmp/davis2017-evaluation
    pip install scikit-image      # its f_measure dilates with skimage.morphology.disk
    python experiments/check_davis_measures.py /tmp/davis2017-evaluation [--pairs 3000]

Prints the largest difference in J and in F over the pairs; exits 1 if either exceeds 1e-12. A clone
that cannot be imported ends with one line `vader_d2: ...` and exit status 2, as every vader_d2 command.
"""

import argparse
import sys

import cv2
import numpy as np

from vader_d2.cli import run_cli
from vader_d2.errors import UserError
from vader_d2.evaluation.davis import boundary_f_measure, region_similarity


def random_mask(rng, height, width, kind):
    if kind == "noise":
        return rng.random((height, width)) < rng.random()
    mask = np.zeros((height, width), np.uint8)
    for _ in range(rng.integers(0, 4)):  # 0 ellipses: an empty mask
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        axes = (int(rng.integers(1, width)), int(rng.integers(1, height)))
        cv2.ellipse(mask, centre, axes, float(rng.integers(0, 180)), 0, 360, 1, -1)
    return mask.astype(bool)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("official", help="a clone of github.com/davisvideochallenge/davis2017-evaluation")
    parser.add_argument("--pairs", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sys.path.insert(0, args.official)
    try:
        from davis2017.metrics import db_eval_boundary, db_eval_iou
    except ImportError as e:
        raise UserError(f"cannot import davis2017.metrics from {args.official!r}: {e}") from None

    rng = np.random.default_rng(args.seed)
    worst_j = worst_f = 0.0
    with np.errstate(invalid="ignore"):  # their IoU divides 0 by 0 for two empty masks before setting it to 1
        for index in range(args.pairs):
            height, width = (int(v) for v in rng.integers(5, 60, size=2))
            kind = "noise" if index % 3 == 0 else "ellipses"
            predicted, truth = random_mask(rng, height, width, kind), random_mask(rng, height, width, kind)
            # Theirs take (annotation, segmentation); ours (predicted, truth).
            worst_j = max(worst_j, abs(float(db_eval_iou(truth, predicted)) - region_similarity(predicted, truth)))
            worst_f = max(worst_f, abs(float(db_eval_boundary(truth, predicted)) - boundary_f_measure(predicted, truth)))
    print(f"{args.pairs} mask pairs: largest |J difference| {worst_j:.3g}, largest |F difference| {worst_f:.3g}")
    sys.exit(0 if max(worst_j, worst_f) <= 1e-12 else 1)


if __name__ == "__main__":
    run_cli(main)
