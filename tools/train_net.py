#!/usr/bin/env python
"""
Train or evaluate with Detectron2 + vader_d2: VADeR pretraining configs and stock downstream configs alike.

    python tools/train_net.py --config-file configs/vader_pretrain_demo.yaml
    python tools/train_net.py --config-file configs/vader_pretrain.yaml --num-gpus 8
    python tools/train_net.py --config-file CONFIG --eval-only MODEL.WEIGHTS model_final.pth
"""

import sys

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.engine import default_argument_parser, default_setup, launch

from vader_d2 import add_vader_config
from vader_d2.config import check_vader_config
from vader_d2.errors import UserError
from vader_d2.trainer import VADeRTrainer, is_pretraining


def setup(args):
    cfg = get_cfg()
    add_vader_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = VADeRTrainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        return VADeRTrainer.test(cfg, model)
    trainer = VADeRTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def check_before_launch(args):
    """Catch config mistakes in the launching process, before any worker starts."""
    cfg = get_cfg()
    add_vader_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    if is_pretraining(cfg):
        check_vader_config(cfg, args.num_gpus * args.num_machines)


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    try:
        check_before_launch(args)
        launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
    except UserError as e:
        sys.exit(f"vader_d2: {e}")
