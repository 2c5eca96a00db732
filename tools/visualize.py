#!/usr/bin/env python
"""
Pictures of a checkpoint's dense features on a view pair of the correspondence benchmark
(library: vader_d2/evaluation/visualization.py):

    matches.png     the two views, true correspondences as lines, green where the nearest neighbour agrees
    pca.png         PCA -> RGB of both views' embeddings beside the views
    similarity.png  cosine similarity of one view-1 cell to all of view 2
    training.png    loss, top-1 accuracy and similarities over the run (from --metrics, by default the
                    metrics.json beside MODEL.WEIGHTS, when there is one)

    python tools/visualize.py --config-file configs/vader_pretrain_demo.yaml \\
        --output-dir output/vader_pretrain_demo/pictures \\
        MODEL.DEVICE cpu MODEL.WEIGHTS output/vader_pretrain_demo/model_final.pth

The pair comes from --image (any photo) or the --image-index-th photo of --dataset (default the held-out
vader_demo_photos_val), drawn with --seed as tools/evaluate_dense.py draws its pairs.
"""

import argparse
import os

import matplotlib.pyplot as plt

from detectron2.data import DatasetCatalog

from vader_d2.cli import build_config, check_input_file, check_output_dir, run_cli
from vader_d2.data.datasets import register_named_datasets
from vader_d2.data.decoding import UnreadableImageError, read_source_image
from vader_d2.errors import UserError
from vader_d2.evaluation import FEATURE_SOURCES, CorrespondenceProtocol, build_feature_extractor, make_view_pair
from vader_d2.evaluation.correspondence import MAX_SOURCE_SIZE, seeded_numpy
from vader_d2.evaluation.visualization import (
    central_valid_cell,
    plot_matches,
    plot_pca,
    plot_similarity,
    plot_training_curves,
)
from vader_d2.evaluation.report import read_metrics


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE", help="the config the checkpoint was trained with")
    parser.add_argument("--output-dir", required=True, help="where the PNGs go")
    parser.add_argument("--features", choices=FEATURE_SOURCES, help="default: 'head' where the model has one, else 'p2'")
    parser.add_argument("--image", help="a photo to use instead of the dataset's")
    parser.add_argument("--dataset", default="vader_demo_photos_val", help="a registered dataset, or folder:/path/to/photos")
    parser.add_argument("--image-index", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0, help="the view pair and the random initialisation")
    parser.add_argument("--title", help="model name in the pictures' titles (default: MODEL.WEIGHTS)")
    parser.add_argument("--metrics", metavar="JSON", help="the run's metrics.json for training.png "
                        "(default: metrics.json in MODEL.WEIGHTS's folder, if it exists)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides, e.g. MODEL.WEIGHTS path")
    return parser.parse_args(argv)


def pick_image(args):
    if args.image:
        return args.image
    register_named_datasets([args.dataset])
    if args.dataset not in DatasetCatalog.list():
        raise UserError(f"dataset {args.dataset!r} is not registered")
    dicts = DatasetCatalog.get(args.dataset)
    if not 0 <= args.image_index < len(dicts):
        raise UserError(f"--image-index {args.image_index} is out of range: {args.dataset} has {len(dicts)} images")
    return dicts[args.image_index]["file_name"]


def metrics_beside(weights):
    """The metrics.json Detectron2 wrote into the folder of a training checkpoint, if there is one."""
    path = os.path.join(os.path.dirname(weights), "metrics.json") if weights else None
    return path if path and os.path.isfile(path) else None


def main(args):
    cfg = build_config(args.config_file, args.opts)
    cfg.freeze()
    check_input_file(cfg.MODEL.WEIGHTS, "MODEL.WEIGHTS")
    check_output_dir(args.output_dir, "--output-dir")
    if args.metrics:
        check_input_file(args.metrics, "--metrics")
    extractor = build_feature_extractor(cfg, [args.features] if args.features else None, seed=args.seed)
    source = args.features or extractor.sources[0]

    file_name = pick_image(args)
    try:
        image = read_source_image(file_name, MAX_SOURCE_SIZE)
    except UnreadableImageError as e:
        raise UserError(f"cannot read {file_name}: {e}") from None
    with seeded_numpy(args.seed):
        pair = make_view_pair(image, CorrespondenceProtocol(), file_name)
    features1, features2 = extractor(pair.view1)[source], extractor(pair.view2)[source]

    model = args.title or cfg.MODEL.WEIGHTS or "random initialisation"
    title = f"{model} [{source} features] on {os.path.basename(file_name)}"
    figures = {
        "matches.png": plot_matches(pair, features1, features2, title, seed=args.seed),
        "pca.png": plot_pca(pair, features1, features2, title),
        "similarity.png": plot_similarity(pair, features1, features2, central_valid_cell(pair.valid), title),
    }
    metrics_path = args.metrics or metrics_beside(cfg.MODEL.WEIGHTS)
    if metrics_path:
        try:
            metrics = read_metrics(metrics_path)
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read the training metrics {metrics_path}: {e}") from None
        figures["training.png"] = plot_training_curves(metrics, f"training curves: {metrics_path}")
    for name, figure in figures.items():
        path = os.path.join(args.output_dir, name)
        figure.savefig(path)
        plt.close(figure)
        print(f"wrote {path}")


if __name__ == "__main__":
    run_cli(main, parse_args())
