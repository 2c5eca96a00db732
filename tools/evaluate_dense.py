#!/usr/bin/env python
"""
Evaluate the frozen dense features of a checkpoint (library: vader_d2/evaluation):

- correspondence on held-out photos (vader_demo_photos_val, or your own: --correspondence-dataset folder:/path/to/photos,
  or --correspondence-folder /path/to/photos): random homography + photometric view pairs,
  nearest-neighbour matching of dense embeddings, PCK at 2/4/8 pixels and mean / median error;
- linear probe: mIoU of a 1x1 classifier trained on frozen features of vader_cutpaste_sem_seg_train,
  scored on vader_cutpaste_sem_seg_val.

Any checkpoint of a D2 ResNet-FPN: give the config it was trained with and MODEL.WEIGHTS (empty for the
seeded random initialisation; a .pkl exported by tools/convert_vader_to_d2.py works too):

    python tools/evaluate_dense.py --config-file configs/vader_pretrain_demo.yaml --output vader.json \\
        MODEL.DEVICE cpu MODEL.WEIGHTS output/vader_pretrain_demo/model_final.pth
    python tools/evaluate_dense.py --config-file configs/moco_global_demo.yaml --name moco \\
        MODEL.DEVICE cpu MODEL.WEIGHTS output/moco_global_demo/model_final.pth
    python tools/evaluate_dense.py --table vader.json moco.json     # one table for several runs
    python tools/evaluate_dense.py ... --beside moco.json ...       # evaluate, print one table with moco.json

Features: "head" (VADeR's dense head, dense checkpoints only) and "p2" (FPN p2, L2-normalised, every
model); by default every source the model has. Prints a markdown table; --output writes JSON.
"""

import argparse
import dataclasses
import os
import time

import torch

from detectron2.data import DatasetCatalog
from detectron2.data.detection_utils import read_image

from vader_d2.checkpoint.atomic_io import atomic_write_json
from vader_d2.cli import build_config, check_input_file, check_output_file, run_cli
from vader_d2.data.datasets import load_image_folder, register_named_datasets
from vader_d2.errors import UserError
from vader_d2.evaluation import (
    FEATURE_SOURCES,
    CorrespondenceProtocol,
    LinearProbeProtocol,
    build_feature_extractor,
    evaluate_correspondence,
    evaluate_linear_probe,
    format_results_table,
    make_view_pairs,
    read_results_files,
)

TASKS = ("correspondence", "probe")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", metavar="FILE", help="the config the checkpoint was trained with")
    parser.add_argument("--name", help="row label (default: the weights' folder, or 'random_init')")
    parser.add_argument("--output", metavar="JSON", help="write the results here")
    parser.add_argument("--features", nargs="+", choices=FEATURE_SOURCES, help="default: every source the model has")
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    parser.add_argument("--seed", type=int, default=0, help="view pairs, probe and random initialisation")
    parser.add_argument("--correspondence-dataset", default="vader_demo_photos_val",
                        help="a registered dataset, or folder:/path/to/photos")
    parser.add_argument("--correspondence-folder", metavar="DIR", help="photos under DIR instead of --correspondence-dataset")
    parser.add_argument("--pairs-per-image", type=int, default=CorrespondenceProtocol.pairs_per_image)
    parser.add_argument("--view-size", type=int, default=CorrespondenceProtocol.view_size)
    parser.add_argument("--probe-train-dataset", default="vader_cutpaste_sem_seg_train")
    parser.add_argument("--probe-val-dataset", default="vader_cutpaste_sem_seg_val")
    parser.add_argument("--probe-train-images", type=int, help="use only the first N training images (default: all)")
    parser.add_argument("--probe-val-images", type=int, help="use only the first N validation images (default: all)")
    parser.add_argument("--table", nargs="+", metavar="JSON", help="print one table of earlier --output files and exit")
    parser.add_argument("--beside", action="append", default=[], metavar="JSON",
                        help="an earlier --output file (e.g. the random init's) to print above this run in one table; repeatable")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides, e.g. MODEL.WEIGHTS path")
    return parser.parse_args(argv)


def setup(args):
    cfg = build_config(args.config_file, args.opts)
    cfg.freeze()
    # Paths are checked before the evaluation, which takes minutes.
    check_input_file(cfg.MODEL.WEIGHTS, "MODEL.WEIGHTS")
    if args.output:
        check_output_file(args.output, "--output")
    return cfg


def dataset_dicts(name):
    register_named_datasets([name])
    if name not in DatasetCatalog.list():
        raise UserError(f"dataset {name!r} is not registered; registered: {', '.join(sorted(DatasetCatalog.list()))}")
    return DatasetCatalog.get(name)


def rgb_tensor(file_name):
    return torch.from_numpy(read_image(file_name, format="RGB").transpose(2, 0, 1).copy())


def evaluate(cfg, args):
    weights = cfg.MODEL.WEIGHTS
    name = args.name or (os.path.basename(os.path.dirname(os.path.abspath(weights))) if weights else "random_init")
    extractor = build_feature_extractor(cfg, args.features, seed=args.seed)
    result = {
        "name": name,
        "config_file": args.config_file,
        "weights": weights,
        "seed": args.seed,
        "feature_sources": list(extractor.sources),
        "correspondence_protocol": dataclasses.asdict(
            CorrespondenceProtocol(view_size=args.view_size, pairs_per_image=args.pairs_per_image)
        ),
        "seconds": {},
    }
    if "correspondence" in args.tasks:
        start = time.perf_counter()
        if args.correspondence_folder:
            photos = args.correspondence_folder
            file_names = [d["file_name"] for d in load_image_folder(photos, missing_hint="check --correspondence-folder")]
        else:
            photos = args.correspondence_dataset
            if photos in cfg.DATASETS.TRAIN:
                raise UserError(f"--correspondence-dataset {photos} is in the model's DATASETS.TRAIN; evaluate on held-out photos")
            file_names = [d["file_name"] for d in dataset_dicts(photos)]
        protocol = CorrespondenceProtocol(**result["correspondence_protocol"])
        pairs = make_view_pairs(file_names, protocol, seed=args.seed)
        result["correspondence_dataset"] = {"name": photos, "images": len(file_names)}
        result["correspondence"] = evaluate_correspondence(extractor, pairs, protocol.thresholds)
        result["seconds"]["correspondence"] = round(time.perf_counter() - start, 1)
    if "probe" in args.tasks:
        start = time.perf_counter()
        train = dataset_dicts(args.probe_train_dataset)[: args.probe_train_images]
        val = dataset_dicts(args.probe_val_dataset)[: args.probe_val_images]
        protocol = LinearProbeProtocol()
        result["linear_probe_protocol"] = dataclasses.asdict(protocol)
        result["linear_probe_datasets"] = {
            "train": {"name": args.probe_train_dataset, "images": len(train)},
            "val": {"name": args.probe_val_dataset, "images": len(val)},
        }
        result["linear_probe"] = evaluate_linear_probe(
            lambda d: extractor(rgb_tensor(d["file_name"])), train, val, args.probe_val_dataset, protocol, seed=args.seed
        )
        result["seconds"]["linear_probe"] = round(time.perf_counter() - start, 1)
    return result


def load_results(paths):
    return read_results_files(paths, holding="correspondence_protocol", kind="dense evaluation")


def main(args):
    if args.table:
        print(format_results_table(load_results(args.table)))
        return
    if not args.config_file:
        raise UserError("--config-file is required (the config the checkpoint was trained with)")
    earlier = load_results(args.beside)  # read before the minutes of work, to fail first
    result = evaluate(setup(args), args)
    print(format_results_table([*earlier, result]))
    if args.output:
        atomic_write_json(args.output, result, what="the results")
        print(f"wrote {args.output}")


if __name__ == "__main__":
    run_cli(main, parse_args())
