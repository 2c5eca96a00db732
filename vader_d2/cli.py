"""
What every command-line tool of vader_d2 shares: one way to build a config from ``--config-file`` and
``KEY VALUE`` overrides, and one way to end on a mistake: the line ``vader_d2: ...`` on stderr and exit
status 2 (as argparse exits on a bad command line), never a traceback.

    from vader_d2.cli import build_config, run_cli

    def main(args):
        cfg = build_config(args.config_file, args.opts)
        ...

    if __name__ == "__main__":
        run_cli(main, parse_args())
"""

import os
import sys

import torch
import yaml
from detectron2.config import get_cfg

from .config import add_vader_config, moved_keys_of_a_file, resolve_old_spellings, with_moved_keys_renamed
# The exit status and the path checks are the package's (vader_d2/errors.py); tools take them from here.
from .errors import (
    USER_ERROR_EXIT, UserError, check_input_file, check_output_dir, check_output_file, read_json_file, report_user_error,
)

__all__ = [
    "USER_ERROR_EXIT",
    "build_config",
    "choose_device",
    "merge_opts",
    "report_user_error",
    "run_cli",
    "check_input_file",
    "check_output_dir",
    "check_output_file",
    "read_json_file",
]


def build_config(config_file, opts=()):
    """The config of ``config_file`` with the ``KEY VALUE`` overrides ``opts``; mistakes in either are UserErrors."""
    cfg = get_cfg()
    add_vader_config(cfg)
    if not config_file:
        raise UserError("--config-file is required; pass a yaml file such as configs/vader_pretrain_demo.yaml")
    if not os.path.isfile(config_file):
        raise UserError(f"--config-file {config_file!r} does not exist; pass a yaml file such as configs/vader_pretrain_demo.yaml")
    # yacs reports an unknown key as a KeyError or an AssertionError, a value of the wrong type as a ValueError.
    try:
        cfg.merge_from_file(config_file)
        with open(config_file) as f:
            leaf = yaml.safe_load(f) or {}
        cfg.merge_from_list(moved_keys_of_a_file(cfg, leaf))
    except (KeyError, AssertionError, ValueError, TypeError, OSError, yaml.YAMLError) as e:
        raise UserError(f"{config_file}: {_config_error(e)}") from e
    return choose_device(resolve_old_spellings(merge_opts(cfg, opts)))


def choose_device(cfg):
    """
    ``MODEL.DEVICE auto`` (the demo configs): the GPU where one is visible, else the CPU, said on stdout.
    Detectron2 itself knows only concrete devices, so the choice is made here, once, for every tool.
    """
    if cfg.MODEL.DEVICE == "auto":
        cfg.MODEL.DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
        why = f"a CUDA GPU is visible ({torch.cuda.get_device_name(0)})" if cfg.MODEL.DEVICE == "cuda" else "no CUDA GPU is visible"
        print(f"[vader_d2] MODEL.DEVICE auto: running on {cfg.MODEL.DEVICE}, {why}", flush=True)
    return cfg


def merge_opts(cfg, opts):
    """Apply ``KEY VALUE`` overrides to ``cfg`` (a moved key under its old name too); an unknown key, a
    value of the wrong type or an odd number of items is a UserError."""
    try:
        cfg.merge_from_list(with_moved_keys_renamed(list(opts or ())))
    except (KeyError, AssertionError, ValueError, TypeError) as e:
        raise UserError(f"command line: {_config_error(e)}") from e
    return cfg


def _config_error(error):
    message = str(error.args[0] if isinstance(error, KeyError) and error.args else error)
    message = message.replace("Non-existent config key:", "unknown config key").replace("Non-existent key:", "unknown config key")
    return f"{' '.join(message.split())}; the keys and their types are in vader_d2/config/config.py and detectron2/config/defaults.py"


def run_cli(main, *args):
    """Run ``main(*args)``: a UserError ends the process with one line and exit status 2; an integer
    result is the exit status."""
    try:
        result = main(*args)
    except UserError as e:
        report_user_error(e)
    if isinstance(result, int) and not isinstance(result, bool):
        sys.exit(result)
    return result
