#!/usr/bin/env python
"""
Move weights between VADeR pretraining and Detectron2 fine-tuning (library: vader_d2/checkpoint/export.py, vader_d2/checkpoint/load_checks.py).

VADeR checkpoint -> D2 model-zoo weights for any downstream config (MODEL.WEIGHTS vader_r50.pkl):

    python tools/convert_vader_to_d2.py --input output/vader_pretrain/model_final.pth --output vader_r50.pkl
        [--encoder query|key]  [--check-config configs/downstream/coco_mask_rcnn_R_50_FPN_1x.yaml]

torchvision ResNet state dict or MoCo checkpoint -> initialisation of VADeR pretraining
(MODEL.WEIGHTS r50_init.pth in a pretraining config):

    python tools/convert_vader_to_d2.py --from-resnet --input moco_v2_800ep.pth.tar --output r50_init.pth
        [--check-config configs/vader_pretrain.yaml]

--check-config builds that config's model on the CPU, loads the written file into it and fails unless
every pretrained backbone tensor arrived (trailing KEY VALUE pairs override the config, as in train_net).
"""

import argparse

from vader_d2.checkpoint.export import ENCODERS, check_torchvision_conventions, convert_resnet_to_vader_init, export_to_detectron2
from vader_d2.checkpoint.load_checks import check_weights_load
from vader_d2.cli import build_config, check_input_file, check_output_file, run_cli
from vader_d2.errors import UserError


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="VADeR checkpoint (.pth), or with --from-resnet a ResNet/MoCo checkpoint")
    parser.add_argument("--output", required=True, help=".pkl for D2 fine-tuning, or with --from-resnet a .pth for VADeR")
    parser.add_argument(
        "--encoder",
        choices=ENCODERS,
        default="query",
        help="which VADeR encoder to export (default: query, the one gradients trained, as MoCo transfers)",
    )
    parser.add_argument(
        "--from-resnet",
        action="store_true",
        help="convert a torchvision ResNet state dict or a MoCo checkpoint into a VADeR initialisation",
    )
    parser.add_argument("--check-config", metavar="CONFIG", help="verify the written file loads into this config's model")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides for --check-config")
    return parser.parse_args(argv)


def main(args):
    if args.opts and not args.check_config:
        raise UserError(f"config overrides {args.opts} given without --check-config")
    # Mistakes in the config or the paths show before anything is converted.
    cfg = build_config(args.check_config, args.opts) if args.check_config else None
    check_input_file(args.input, "--input")
    check_output_file(args.output, "--output")
    if args.from_resnet:
        if args.encoder != "query":
            raise UserError("--encoder applies to exporting a VADeR checkpoint, not to --from-resnet")
        if cfg is not None:
            check_torchvision_conventions(cfg)
        summary = convert_resnet_to_vader_init(args.input, args.output)
    else:
        summary = export_to_detectron2(args.input, args.output, encoder=args.encoder)
    print(summary.format())
    if args.check_config:
        # The global baseline exports no FPN; its absence downstream is then expected.
        expect_fpn = not args.from_resnet and summary.written_by_part()["FPN"] > 0
        left_missing = check_weights_load(cfg, args.output, expect_fpn=expect_fpn)
        absent = ", ".join(f"{part} {len(keys)}" for part, keys in sorted(left_missing.items())) or "none"
        print(f"checked {args.check_config}: every pretrained backbone tensor loaded; not in the file: {absent}")


if __name__ == "__main__":
    run_cli(main, parse_args())
