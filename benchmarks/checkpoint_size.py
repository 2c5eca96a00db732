"""
What one training checkpoint of a config weighs on disk, and how long the trainer takes to write it.

    python -m benchmarks.checkpoint_size --config-file configs/vader_pretrain.yaml
    python -m benchmarks.checkpoint_size --config-file configs/pixpro_pretrain.yaml --output-dir /scratch/ckpt

The config's trainer is built on the CPU and takes one real step, so that the checkpoint holds what a
periodic one holds: both encoders, the queues, the optimizer's momentum buffers (for the parameters
that get gradients), the LR scheduler and the iteration. The step runs on 2 images of the demo photos
(shuffle-BN groups of 2): the batch size changes no tensor of the checkpoint. The trainer's own
checkpointer then writes it into --output-dir (default: a temporary folder, removed afterwards) through
the same atomic path as a periodic checkpoint (temporary file, fsync, rename, last_checkpoint).

Prints the file's size, the write time, and what the run's periodic checkpoints (MAX_ITER /
CHECKPOINT_PERIOD of them) would take with every checkpoint kept and with SOLVER.CHECKPOINT_KEEP.
"""

import argparse
import os
import shutil
import tempfile
import time

from detectron2.utils.events import EventStorage

from vader_d2.cli import build_config, check_output_dir, run_cli
from vader_d2.config import check_vader_config
from vader_d2.errors import UserError
from vader_d2.engine.trainer import VADeRTrainer, is_pretraining

MB = 1e6


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE", help="a pretraining config, e.g. configs/vader_pretrain.yaml")
    parser.add_argument("--output-dir", help="where the checkpoint is written (default: a temporary folder, removed afterwards)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return parser.parse_args(argv)


def measure(cfg, output_dir):
    """Build the trainer of ``cfg`` into ``output_dir``, take one step, write one checkpoint; return its
    size in bytes and the seconds the write took."""
    trainer = VADeRTrainer(cfg)
    trainer.resume_or_load(resume=False)
    with EventStorage(0):
        trainer.run_step()
    started = time.perf_counter()
    trainer.checkpointer.save("model_0000000", iteration=0)
    seconds = time.perf_counter() - started
    return os.path.getsize(os.path.join(output_dir, "model_0000000.pth")), seconds


def main(args):
    paper = build_config(args.config_file, args.opts)
    if not is_pretraining(paper):
        raise UserError(f"{args.config_file} is not a pretraining config (MODEL.META_ARCHITECTURE {paper.MODEL.META_ARCHITECTURE})")
    output_dir = check_output_dir(args.output_dir, "--output-dir") if args.output_dir else tempfile.mkdtemp(prefix="checkpoint_size_")
    try:
        cfg = build_config(args.config_file, [
            *args.opts,
            "MODEL.DEVICE", "cpu", "SOLVER.IMS_PER_BATCH", "2", "MODEL.MOMENTUM_CONTRAST.BN_GROUP_SIZE", "2",
            "DATASETS.TRAIN", "('vader_demo_photos_train',)", "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", output_dir,
        ])
        check_vader_config(cfg)
        size, seconds = measure(cfg, output_dir)
    finally:
        if not args.output_dir:
            shutil.rmtree(output_dir, ignore_errors=True)
    solver = paper.SOLVER
    periodic = solver.MAX_ITER // solver.CHECKPOINT_PERIOD
    kept = min(periodic, solver.CHECKPOINT_KEEP) if solver.CHECKPOINT_KEEP else periodic
    print(f"{args.config_file}: one checkpoint {size / MB:.1f} MB, written in {seconds:.2f} s (torch.save, fsync, rename) "
          f"into {args.output_dir or 'a temporary folder'} on {os.uname().nodename}")
    print(f"  {periodic} periodic checkpoints (SOLVER.MAX_ITER {solver.MAX_ITER} / CHECKPOINT_PERIOD {solver.CHECKPOINT_PERIOD}) "
          f"+ model_final.pth: {(periodic + 1) * size / MB / 1000:.1f} GB with every checkpoint kept; "
          f"{(kept + 1) * size / MB / 1000:.1f} GB with SOLVER.CHECKPOINT_KEEP {solver.CHECKPOINT_KEEP} ({kept} + model_final.pth)")


if __name__ == "__main__":
    run_cli(main, parse_args())
