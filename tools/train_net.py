#!/usr/bin/env python
"""
Train or evaluate with Detectron2 + vader_d2: VADeR pretraining configs and stock downstream configs alike.

    python tools/train_net.py --config-file configs/vader_pretrain_demo.yaml
    python tools/train_net.py --config-file configs/vader_pretrain.yaml --num-gpus 8
    python tools/train_net.py --config-file configs/vader_pretrain.yaml --num-gpus 8 --resume  # after a crash
    torchrun --nproc-per-node 8 tools/train_net.py --config-file configs/vader_pretrain.yaml  # or srun: docs/cluster.md
    python tools/train_net.py --config-file CONFIG --eval-only MODEL.WEIGHTS model_final.pth

One run per OUTPUT_DIR: a second run into a folder in use stops at start-up, and a new run into a folder
that holds checkpoints stops unless it continues them (--resume) or sets them aside (--start-over).
Mistakes in the config, the data or a checkpoint end the run with one line `vader_d2: ...` on stderr
and exit status 2.
"""

import logging

from detectron2.engine import default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from vader_d2.checkpoint import VADeRCheckpointer
from vader_d2.cli import build_config, run_cli
from vader_d2.engine import RECORDER, VADeRTrainer, load_model_weights, schedule_in_epochs, select_resume_checkpoint
from vader_d2.engine.launch import launch_argument_parser, launch_training


def parse_args(argv=None):
    return launch_argument_parser().parse_args(argv)


def setup(args, notes=()):
    cfg, epochs_note = schedule_in_epochs(build_config(args.config_file, args.opts))
    notes = [*notes, *([epochs_note] if epochs_note and not args.eval_only else [])]
    cfg.freeze()
    default_setup(cfg, args)
    # vader_d2's own warnings (skipped images, view fallbacks) go to the console and log.txt as Detectron2's do.
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="vader_d2")
    if comm.is_main_process():
        for note in notes:
            logging.getLogger("vader_d2").warning(note)
    return cfg


def main(args, notes=()):
    cfg = setup(args, notes)
    if args.eval_only:
        model = VADeRTrainer.build_model(cfg)
        # As Detectron2's train_net: --resume evaluates the run's checkpoint, else MODEL.WEIGHTS.
        resumed = select_resume_checkpoint(cfg.OUTPUT_DIR) if args.resume else None
        if resumed:
            VADeRCheckpointer(model).load(resumed, what="the checkpoint to evaluate")
        else:
            load_model_weights(cfg, model, cfg.MODEL.WEIGHTS)
        return VADeRTrainer.test(cfg, model)
    # In each launched process (vader_d2/engine/preemption.py); a one-process run handles them since launch_training.
    RECORDER.install(cfg.SOLVER.PREEMPTION_SIGNALS)
    trainer = VADeRTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def run(args):
    """Check the config, then train or evaluate in every process of the run (vader_d2/engine/launch.py:
    --num-gpus, torchrun, srun; OUTPUT_DIR held for the run; one line and status 2 on a mistake)."""
    return launch_training(main, args, build_config)


if __name__ == "__main__":
    run_cli(run, parse_args())
