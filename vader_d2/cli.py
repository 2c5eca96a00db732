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

import json
import os
import sys
import tempfile

import torch
import yaml
from detectron2.config import get_cfg

from .config import add_vader_config, moved_keys_of_a_file, resolve_old_spellings, with_moved_keys_renamed
from .errors import UserError

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

# Exit status after a UserError, as argparse exits on a command-line mistake.
USER_ERROR_EXIT = 2


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
    return f"{' '.join(message.split())}; the keys and their types are in vader_d2/config.py and detectron2/config/defaults.py"


def report_user_error(error):
    """Print ``vader_d2: <error>`` as one line on stderr and exit with status 2."""
    print(f"vader_d2: {' '.join(str(error).split())}", file=sys.stderr, flush=True)
    sys.exit(USER_ERROR_EXIT)


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


def check_input_file(path, what):
    """``path`` names an existing file (URLs are left to the code that fetches them)."""
    if not path or "://" in path:
        return
    if not os.path.exists(path):
        raise UserError(f"{what} {path!r} does not exist")
    if not os.path.isfile(path):
        raise UserError(f"{what} {path!r} is not a file")


def check_output_dir(path, what):
    """Create the folder ``path`` if needed and make sure a file can be written into it, so that a run
    fails at start-up rather than when it first writes. Returns ``path``."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {what} {path!r}: {e.strerror or e}; choose a folder you can write") from None
    if not os.path.isdir(path):
        raise UserError(f"{what} {path!r} is not a folder; choose a folder you can write")
    try:
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise UserError(f"cannot write into {what} {path!r}: {e.strerror or e}; choose a folder you can write") from None
    return path


def check_output_file(path, what):
    """The file ``path`` can be written: its folder exists or can be created and is writable, and
    ``path`` is not a folder. Nothing is written at ``path`` itself."""
    if os.path.isdir(path):
        raise UserError(f"{what} {path!r} is a folder; give a file name")
    check_output_dir(os.path.dirname(os.path.abspath(path)), f"the folder of {what}")
    return path


def read_json_file(path, what="results file"):
    """The JSON content of ``path``; a missing, empty, truncated or malformed file is one line naming it."""
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        raise UserError(f"the {what} {path} does not exist") from None
    except OSError as e:
        raise UserError(f"cannot read the {what} {path}: {e.strerror or e}") from None
    if not text.strip():
        raise UserError(f"the {what} {path} is empty; delete it so that its run is made again")
    try:
        return json.loads(text)
    except ValueError as e:
        raise UserError(f"the {what} {path} is not valid JSON (truncated? {e}); delete it so that its run is made again") from None
