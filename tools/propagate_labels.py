#!/usr/bin/env python
"""
Video label propagation with frozen dense features, scored with DAVIS 2017's J (region IoU), F (boundary
F-measure) and J&F (library: vader_d2/evaluation/label_propagation.py and davis.py).

The first frame's masks of every video are propagated to the following frames by feature affinity: a
context of the first frame and the --context-frames frames before the current one, the --topk most
similar context cells within --radius feature cells, weighted by softmax(cosine / --temperature).
Defaults are CRW's DAVIS setting (topk 10, context 20, radius 12, temperature 0.05). The first and last
frames are not scored, as in the DAVIS 2017 evaluation.

Data: the DAVIS 2017 layout under --davis-root (default $DETECTRON2_DATASETS/DAVIS), or the offline test
videos of `python datasets/prepare_videos.py` (--davis-root datasets/vader_videos/DAVIS):

    python tools/propagate_labels.py --config-file configs/vader_pretrain_demo.yaml \\
        --davis-root datasets/vader_videos/DAVIS --output vader.json \\
        MODEL.DEVICE cpu MODEL.WEIGHTS output/vader_pretrain_demo/model_final.pth
    python tools/propagate_labels.py --config-file configs/vader_pretrain_demo.yaml \\
        --davis-root datasets/vader_videos/DAVIS --output random.json MODEL.DEVICE cpu   # seeded random init
    python tools/propagate_labels.py --table vader.json random.json
    python tools/propagate_labels.py ... --beside random.json ...    # evaluate, print one table with random.json

Any checkpoint of a D2 ResNet-FPN is read as tools/evaluate_dense.py reads it: give the config it was
trained with and MODEL.WEIGHTS (empty: the random initialisation seeded with --seed; a .pkl export works
too). Features: "head" (VADeR's dense embedding) and "p2" (FPN p2, L2-normalised), both at stride 4; by
default every source the model has. A reference row propagates the true masks themselves ("oracle"),
the best this protocol can do at stride 4.
"""

import argparse
import dataclasses
import os
import time

import torch

from detectron2.data.detection_utils import read_image

from vader_d2.checkpoint.atomic_io import atomic_write_json
from vader_d2.cli import build_config, check_input_file, check_output_dir, check_output_file, run_cli
from vader_d2.config import OUTPUT_STRIDE
from vader_d2.errors import UserError
from vader_d2.evaluation import FEATURE_SOURCES, build_feature_extractor, format_propagation_table, read_results_files
from vader_d2.evaluation.davis import davis_root, davis_video_files, list_davis_videos, read_davis_video
from vader_d2.evaluation.label_propagation import PropagationProtocol, evaluate_label_propagation, oracle_features

ORACLE = "oracle"


def parse_args(argv=None):
    defaults = PropagationProtocol()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", metavar="FILE", help="the config the checkpoint was trained with")
    parser.add_argument("--name", help="row label (default: the weights' folder, or 'random_init')")
    parser.add_argument("--output", metavar="JSON", help="write the results here")
    parser.add_argument("--features", nargs="+", choices=FEATURE_SOURCES, help="default: every source the model has")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random initialisation (MODEL.WEIGHTS empty)")
    parser.add_argument("--davis-root", metavar="DIR", help="DAVIS 2017 folder (default: $DETECTRON2_DATASETS/DAVIS)")
    parser.add_argument("--image-set", default="val", help="ImageSets/2017/<name>.txt lists the videos (default: val)")
    parser.add_argument("--resolution", default="480p", help="sub-folder of JPEGImages/ and Annotations/ (default: 480p)")
    parser.add_argument("--videos", nargs="+", metavar="NAME", help="only these videos of the image set")
    parser.add_argument("--context-frames", type=int, default=defaults.context_frames, help="frames before the current one in the context, besides the first")
    parser.add_argument("--topk", type=int, default=defaults.topk, help="context cells that vote for a cell's label")
    parser.add_argument("--temperature", type=float, default=defaults.temperature, help="softmax temperature of the votes' cosine similarities")
    parser.add_argument("--radius", type=int, default=defaults.radius, help="context cells farther than this many cells (per axis) do not vote")
    parser.add_argument("--no-oracle", action="store_true", help="skip the reference row that propagates the true masks")
    parser.add_argument("--save-masks", metavar="DIR", help="write the predicted masks as palette PNGs to DIR/<features>/<video>/")
    parser.add_argument("--table", nargs="+", metavar="JSON", help="print one table of earlier --output files and exit")
    parser.add_argument("--beside", action="append", default=[], metavar="JSON",
                        help="an earlier --output file (e.g. the random init's) to print above this run in one table; repeatable")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides, e.g. MODEL.WEIGHTS path")
    return parser.parse_args(argv)


def setup(args):
    cfg = build_config(args.config_file, args.opts)
    cfg.freeze()
    # Paths and videos are checked before the features are computed, which takes minutes.
    check_input_file(cfg.MODEL.WEIGHTS, "MODEL.WEIGHTS")
    if args.output:
        check_output_file(args.output, "--output")
    if args.save_masks:
        check_output_dir(args.save_masks, "--save-masks")
    return cfg


def video_names(args):
    """The videos to evaluate, their folders checked (listings only) before any work starts."""
    root = davis_root(args.davis_root)
    names = list_davis_videos(root, args.image_set)
    if args.videos:
        unknown = [v for v in args.videos if v not in names]
        if unknown:
            raise UserError(f"--videos {unknown[0]!r} is not in {args.image_set}.txt of {root} ({len(names)} videos, e.g. {names[0]!r})")
        names = args.videos
    for name in names:
        davis_video_files(root, name, args.resolution)
    return root, names


def evaluate(cfg, args):
    weights = cfg.MODEL.WEIGHTS
    name = args.name or (os.path.basename(os.path.dirname(os.path.abspath(weights))) if weights else "random_init")
    protocol = PropagationProtocol(
        context_frames=args.context_frames, topk=args.topk, temperature=args.temperature, radius=args.radius
    ).check()
    root, names = video_names(args)
    extractor = build_feature_extractor(cfg, args.features, seed=args.seed)

    def frame_features(video, index):
        image = torch.from_numpy(read_image(video.frame_files[index], format="RGB").transpose(2, 0, 1).copy())
        features = extractor(image)
        if not args.no_oracle:
            features[ORACLE] = oracle_features(video.annotations[index], video.num_objects, OUTPUT_STRIDE)
        # The affinities, the bulk of the work at DAVIS's resolution, are computed where the model runs.
        return {source: f.to(extractor.device) for source, f in features.items()}

    start = time.perf_counter()
    # One video's annotations in memory at a time: DAVIS's val set holds about a gigabyte of them.
    videos = (read_davis_video(root, name, args.resolution) for name in names)
    scores = evaluate_label_propagation(videos, frame_features, OUTPUT_STRIDE, protocol, save_masks=args.save_masks)
    return {
        "name": name,
        "config_file": args.config_file,
        "weights": weights,
        "seed": args.seed,
        "feature_sources": list(extractor.sources),
        "davis": {"root": root, "image_set": args.image_set, "resolution": args.resolution, "videos": names},
        "label_propagation_protocol": dataclasses.asdict(protocol),
        "label_propagation": {source: s for source, s in scores.items() if source != ORACLE},
        "label_propagation_ceiling": scores.get(ORACLE),
        "seconds": {"label_propagation": round(time.perf_counter() - start, 1)},
    }


def load_results(paths):
    return read_results_files(paths, holding="label_propagation", kind="label propagation")


def main(args):
    if args.table:
        print(format_propagation_table(load_results(args.table)))
        return
    if not args.config_file:
        raise UserError("--config-file is required (the config the checkpoint was trained with)")
    earlier = load_results(args.beside)  # read before the minutes of work, to fail first
    result = evaluate(setup(args), args)
    print(format_propagation_table([*earlier, result]))
    if args.output:
        atomic_write_json(args.output, result, what="the results")
        print(f"wrote {args.output}")


if __name__ == "__main__":
    run_cli(main, parse_args())
