#!/usr/bin/env python
"""
How far a pretraining moved each part of the query encoder (stem, res2..res5, FPN, head) from its
start (library: vader_d2/evaluation/weight_change.py): cosine between start and end weights and
||end - start|| / ||start|| per part. A part with cosine ~1 transfers like its initialisation.

The start is the seeded random initialisation the run began from, rebuilt from the run's config and
SEED as tools/train_net.py builds it (one process), or --start, another VADeR checkpoint:

    python tools/weight_change.py --config-file configs/vader_pretrain_demo.yaml \\
        output/vader_pretrain_demo/model_final.pth
"""

import argparse
import json
import pickle

import torch

from detectron2.modeling import build_model
from detectron2.utils.env import seed_all_rng

from vader_d2.cli import build_config, check_input_file, check_output_file, run_cli
from vader_d2.errors import UserError
from vader_d2.evaluation.weight_change import weight_change

ENCODER = "query_encoder."


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a VADeR training checkpoint (.pth)")
    parser.add_argument("--config-file", required=True, metavar="FILE", help="the config the checkpoint was trained with")
    parser.add_argument("--start", metavar="PTH", help="compare with this VADeR checkpoint instead of the seeded initialisation")
    parser.add_argument("--output", metavar="JSON", help="also write the result here")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides the run was given")
    return parser.parse_args(argv)


def load_encoder_parameters(path, names):
    """The query encoder's parameters ``names`` (relative to the encoder) from a VADeR checkpoint."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as e:
        raise UserError(f"cannot read checkpoint {path}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else {}
    missing = [n for n in names if ENCODER + n not in state]
    if missing:
        raise UserError(f"{path} lacks {len(missing)} query-encoder parameters of this config's model (e.g. "
                        f"{ENCODER + missing[0]}); give a VADeR .pth trained with this config")
    return {n: state[ENCODER + n] for n in names}


def main(args):
    cfg = build_config(args.config_file, args.opts)
    cfg.MODEL.DEVICE = "cpu"
    check_input_file(args.checkpoint, "checkpoint")
    if args.start:
        check_input_file(args.start, "--start")
    if args.output:
        check_output_file(args.output, "--output")
    if args.start is None:
        if cfg.SEED < 0:
            raise UserError("SEED is negative: the run's random initialisation cannot be rebuilt; pass --start")
        if cfg.MODEL.WEIGHTS:
            raise UserError(f"the run started from MODEL.WEIGHTS={cfg.MODEL.WEIGHTS!r}; pass that file as --start")
        seed_all_rng(cfg.SEED)  # as rank 0 of tools/train_net.py does before it builds the model
    encoder = build_model(cfg).query_encoder
    # Parameters only: the optimizer does not move batch-norm running statistics.
    start = {n: p.detach() for n, p in encoder.named_parameters()}
    if args.start:
        start = load_encoder_parameters(args.start, list(start))
    end = load_encoder_parameters(args.checkpoint, list(start))
    change = weight_change(start, end)
    print(f"{'part':<12} {'cosine':>8} {'rel. change':>12} {'parameters':>11}")
    for part, row in change.items():
        print(f"{part:<12} {row['cosine']:8.3f} {row['relative_change']:12.3f} {row['parameters']:11d}")
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"checkpoint": args.checkpoint, "start": args.start or f"seeded init (SEED {cfg.SEED})", "parts": change}, f, indent=1)
    return 0


if __name__ == "__main__":
    run_cli(main, parse_args())
