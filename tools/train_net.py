#!/usr/bin/env python
"""
Train or evaluate with Detectron2 + vader_d2: VADeR pretraining configs and stock downstream configs alike.

    python tools/train_net.py --config-file configs/vader_pretrain_demo.yaml
    python tools/train_net.py --config-file configs/vader_pretrain.yaml --num-gpus 8
    python tools/train_net.py --config-file configs/vader_pretrain.yaml --num-gpus 8 --resume  # after a crash
    python tools/train_net.py --config-file CONFIG --eval-only MODEL.WEIGHTS model_final.pth

Mistakes in the config, the data or a checkpoint end the run with one line `vader_d2: ...` on stderr.
"""

import os
import sys

import torch
import yaml
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from torch.multiprocessing import ProcessExitedException

from vader_d2 import add_vader_config
from vader_d2.config import check_vader_config
from vader_d2.errors import UserError
from vader_d2.trainer import VADeRTrainer, check_datasets_registered, is_pretraining

# Exit status after a UserError, as argparse exits on a command-line mistake.
USER_ERROR_EXIT = 2


def build_config(args):
    """The config of --config-file with the command-line overrides; mistakes in either are UserErrors."""
    cfg = get_cfg()
    add_vader_config(cfg)
    if not os.path.isfile(args.config_file):
        raise UserError(f"--config-file {args.config_file!r} does not exist; pass a yaml file such as configs/vader_pretrain_demo.yaml")
    # yacs reports an unknown key as a KeyError or an AssertionError, a value of the wrong type as a ValueError.
    try:
        cfg.merge_from_file(args.config_file)
    except (KeyError, AssertionError, ValueError, OSError, yaml.YAMLError) as e:
        raise UserError(f"{args.config_file}: {_config_error(e)}") from e
    try:
        cfg.merge_from_list(args.opts)
    except (KeyError, AssertionError, ValueError) as e:
        raise UserError(f"command line: {_config_error(e)}") from e
    return cfg


def _config_error(error):
    message = str(error.args[0] if isinstance(error, KeyError) and error.args else error)
    message = " ".join(message.replace("Non-existent config key:", "unknown config key").replace("Non-existent key:", "unknown config key").split())
    return f"{message}; the keys and their types are in vader_d2/config.py and detectron2/config/defaults.py"


def check_devices(cfg, num_processes_per_machine):
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"MODEL.DEVICE={cfg.MODEL.DEVICE!r} but no CUDA GPU is visible; add MODEL.DEVICE cpu to the command line")
    if torch.cuda.is_available() and num_processes_per_machine > torch.cuda.device_count():
        raise UserError(f"--num-gpus {num_processes_per_machine} but this machine has {torch.cuda.device_count()} GPUs")


def setup(args):
    cfg = build_config(args)
    cfg.freeze()
    default_setup(cfg, args)
    # vader_d2's own warnings (skipped images, view fallbacks) go to the console and log.txt as Detectron2's do.
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="vader_d2")
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


def exit_on_user_error(error):
    print(f"vader_d2: {error}", file=sys.stderr, flush=True)
    sys.exit(USER_ERROR_EXIT)


def worker(args):
    """``main`` in each launched process: a UserError there (data, checkpoint, diverging loss) is
    reported as one line too; with several processes, each process that meets it prints it."""
    if args.num_gpus > 1 and "OMP_NUM_THREADS" not in os.environ:
        # The processes of one machine share its cores: with each using all of them (torch's default),
        # a CPU step becomes many times slower (torchrun even sets OMP_NUM_THREADS=1).
        torch.set_num_threads(max(1, torch.get_num_threads() // args.num_gpus))
    try:
        return main(args)
    except UserError as e:
        exit_on_user_error(e)


def check_before_launch(args):
    """Catch config mistakes in the launching process, before any worker starts."""
    world_size = args.num_gpus * args.num_machines
    cfg = VADeRTrainer.auto_scale_workers(build_config(args), world_size)
    check_devices(cfg, args.num_gpus)
    check_datasets_registered(cfg)
    if is_pretraining(cfg):
        check_vader_config(cfg, world_size)


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    try:
        check_before_launch(args)
        launch(
            worker,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
    except UserError as e:
        exit_on_user_error(e)
    except ProcessExitedException as e:
        if e.exit_code != USER_ERROR_EXIT:
            raise
        sys.exit(USER_ERROR_EXIT)  # the worker has printed its line
