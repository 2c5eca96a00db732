#!/usr/bin/env python
"""
Benchmark VADeR's training step against its bare network, the view mapper and the data loader.

    python tools/benchmark.py                                   # CPU default: R50-FPN, 224 px, batch 8
    python tools/benchmark.py --depth 18 --size 128 --batch 4   # a quick look
    python tools/benchmark.py --device cuda --amp --channels-last --batch 128 --pipeline-steps 20

Prints a table and the ratios the performance targets are about, and writes everything (settings,
machine, load average, every step time) to the --output JSON. See docs/benchmarks.md.
"""

import argparse
import os

import torch

from vader_d2.benchmark import format_report, run_benchmark, write_json
from vader_d2.cli import check_output_file, run_cli


def build_parser():
    parser = argparse.ArgumentParser(
        description=__doc__.strip().splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--config-file", default="configs/vader_pretrain.yaml",
                        help="VADeR config the benchmark starts from (hyper-parameters: pairs per image, "
                             "temperature, momentum, head, optimizer); the options below override its sizes")
    parser.add_argument("--depth", type=int, default=50,
                        help="ResNet depth of the FPN backbone (18, 34, 50, 101, 152)")
    parser.add_argument("--size", type=int, default=224,
                        help="side of the square views in pixels (INPUT.VIEWS.CROP_SIZE)")
    parser.add_argument("--batch", type=int, default=8, help="images per step (SOLVER.IMS_PER_BATCH)")
    parser.add_argument("--queue-sizes", type=int, nargs="+", default=[65536, 262144],
                        help="one full step is timed per queue size (MODEL.VADER.QUEUE_SIZE); ratios are "
                             "taken against the first")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="MODEL.DEVICE the steps run on")
    parser.add_argument("--amp", action="store_true",
                        help="mixed precision (SOLVER.AMP.ENABLED: Detectron2's AMPTrainer, CUDA only)")
    parser.add_argument("--channels-last", action="store_true",
                        help="encoders and inputs in channels_last memory order (MODEL.VADER.CHANNELS_LAST)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="intra-op CPU threads of the steps (torch.set_num_threads); on a CPU shared with other "
                             "jobs use 1 and read the CPU-time columns")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first (one step of every path per round)")
    parser.add_argument("--steps", type=int, default=5, help="timed rounds; each path's median step time is reported")
    parser.add_argument("--dataset", default="vader_demo_photos_train",
                        help="registered dataset the views are cut from (the batch, the mapper and the loader)")
    parser.add_argument("--mapper-images", type=int, default=30, help="view pairs the mapper is timed on")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="data loader worker processes (DATALOADER.NUM_WORKERS)")
    parser.add_argument("--loader-batches", type=int, default=5,
                        help="batches the data loader is timed on after its first one (0: skip the loader)")
    parser.add_argument("--pipeline-steps", type=int, default=0,
                        help="timed full steps fed by the data loader instead of a device-resident batch "
                             "(0: skip; a GPU run should measure it)")
    parser.add_argument("--output", default="output/benchmark/benchmark.json", help="where the JSON result is written")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                        help="config overrides as KEY VALUE pairs, applied last, e.g. MODEL.VADER.PAIRS_PER_IMAGE 16")
    return parser


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("batch", "size", "steps", "mapper_images", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("warmup", "workers", "loader_batches", "pipeline_steps"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must not be negative")
    return args


def main(argv=None):
    args = parse_args(argv)
    check_output_file(args.output, "--output")  # before minutes of measurements
    result = run_benchmark(args, log=lambda message: print(message, flush=True))
    print()
    print(format_report(result))
    write_json(result, args.output)
    print(f"JSON: {args.output}")


if __name__ == "__main__":
    run_cli(main)
