#!/usr/bin/env python
"""
A Detectron2 model-zoo .pkl with its FPN left out: the ResNet of an export alone, so that the downstream
model's FPN starts from Detectron2's initialisation, as it does from an ImageNet, MoCo v2, DenseCL or
PixPro export. Used by the in-domain study (docs/results.md, "VADeR's ResNet alone").

    python experiments/resnet_only_weights.py --input output/vader/d2.pkl --output output/vader/resnet.pkl
"""

import argparse
import os
import pickle

from vader_d2.cli import check_input_file, check_output_file, run_cli
from vader_d2.errors import UserError

FPN_PREFIX = "fpn_"


def main(args):
    check_input_file(args.input, "--input")
    check_output_file(args.output, "--output")
    try:
        with open(args.input, "rb") as f:
            weights = pickle.load(f)
        model = weights["model"]
    except (OSError, pickle.UnpicklingError, EOFError, KeyError, TypeError) as e:
        raise UserError(f"--input {args.input!r} is not a Detectron2 model-zoo .pkl ({type(e).__name__}: {e})")
    resnet = {name: value for name, value in model.items() if not name.startswith(FPN_PREFIX)}
    if len(resnet) == len(model):
        raise UserError(f"--input {args.input!r} has no FPN tensors ({FPN_PREFIX}*) to leave out")
    # Written beside and renamed: a run killed mid-write leaves no .pkl that a re-run would take as done.
    partial = args.output + ".partial"
    with open(partial, "wb") as f:
        pickle.dump({**weights, "model": resnet}, f)
    os.replace(partial, args.output)
    print(f"{args.output}: {len(resnet)} ResNet tensors, {len(model) - len(resnet)} FPN tensors left out")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="a model-zoo .pkl (tools/convert_vader_to_d2.py)")
    parser.add_argument("--output", required=True, help="the .pkl to write")
    run_cli(main, parser.parse_args())
