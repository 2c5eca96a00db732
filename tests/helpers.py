"""Small builders shared by the tests, and the ways they run the repository's commands."""

import importlib.util
import json
import os
import socket
import subprocess
import sys

import numpy as np
import torch

from vader_d2.cli import build_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_CONFIG = "configs/vader_pretrain_demo.yaml"
# The builtin datasets were registered at import under this root, relative to the current folder.
DATASETS_ROOT = os.path.abspath(os.getenv("DETECTRON2_DATASETS", "datasets"))

# The paper's 32 pairs per image: the demo recipe's 256 need views of at least 64 px, the fast tests use
# smaller ones.
FEW_PAIRS = ["MODEL.VADER.PAIRS_PER_IMAGE", "32", "INPUT.VIEWS.MIN_SHARED_CELLS", "32"]
# A few seconds per run on 2 CPU cores: 64 px views, batch 4, 32 pairs, a 512-key queue, no loader workers.
TINY_OPTS = [
    *FEW_PAIRS,
    "INPUT.VIEWS.CROP_SIZE", "64",
    "SOLVER.IMS_PER_BATCH", "4",
    "MODEL.MOMENTUM_CONTRAST.BN_GROUP_SIZE", "2",  # shuffle-BN groups that divide the batch of 1 or 2 processes
    "MODEL.MOMENTUM_CONTRAST.QUEUE_SIZE", "512",
    "DATALOADER.NUM_WORKERS", "0",
    "SOLVER.WARMUP_ITERS", "2",
]


def demo_cfg(*opts):
    """The CPU demo pretraining config, on the CPU, with optional overrides."""
    return build_config(DEMO_CONFIG, ["MODEL.DEVICE", "cpu", *opts])


def fake_batch(batch_size, crop, first_image_id=0):
    """Mapper-shaped inputs with random pixels and an identity correspondence (every cell valid)."""
    cells = crop // 4
    ys, xs = torch.meshgrid(torch.arange(cells).float(), torch.arange(cells).float(), indexing="ij")
    return [
        {
            "view1": torch.randint(0, 256, (3, crop, crop), dtype=torch.uint8),
            "view2": torch.randint(0, 256, (3, crop, crop), dtype=torch.uint8),
            "correspondence": torch.stack([xs, ys], dim=-1),
            "valid": torch.ones(cells, cells, dtype=torch.bool),
            "image_id": first_image_id + i,
        }
        for i in range(batch_size)
    ]


def unit(*shape, dtype=torch.float64):
    """Random vectors of length 1 along the last dimension (torch's global generator)."""
    return torch.nn.functional.normalize(torch.randn(*shape, dtype=dtype), dim=-1)


def coordinate_image(h, w):
    """float32 (h, w, 3): each pixel holds its own continuous centre (x + 0.5, y + 0.5), and 1."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.dstack([xs + 0.5, ys + 0.5, np.ones_like(xs)])


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on now (the system's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------------
# The repository's commands in a new process


def load_tool(name, folder="tools"):
    """FOLDER/NAME.py of the repository (a tool, or an experiment script) as a fresh module, not run."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, folder, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def train_net_env(env=None):
    """The environment of a user's shell, plus: warnings that torch and fvcore print on this machine (a
    deprecation at import, "No CUDA runtime is found") silenced, so that stderr holds exactly what
    vader_d2 reports; and one thread per process (see the ``single_thread`` fixture). A None value in
    ``env`` removes the variable."""
    full_env = dict(os.environ, PYTHONWARNINGS="ignore", TORCH_LOGS="-all", OMP_NUM_THREADS="1")
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))
    for name, value in (env or {}).items():
        if value is None:
            full_env.pop(name, None)
        else:
            full_env[name] = value
    return full_env


def run_python(*args, env=None, timeout=300):
    """Run `python ARGS` in the repository the way a user does, in ``train_net_env(env)``; the finished process."""
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, env=train_net_env(env), capture_output=True, text=True, timeout=timeout
    )


def run_train_net(*args, env=None, timeout=300):
    """Run tools/train_net.py the way a user does."""
    return run_python("tools/train_net.py", *args, env=env, timeout=timeout)


def single_error_line(result):
    """The run failed with exit status 2 and exactly one line on stderr, which is returned."""
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith("vader_d2: ")
    return lines[0]


def assert_one_line_refusal(result, expected):
    """The command ended with exit status 2 and stderr is exactly one line, 'vader_d2: ...' holding ``expected``."""
    assert result.returncode == 2
    assert result.stderr.startswith("vader_d2: ") and expected in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr


def run_tool(*args, env=None, timeout=None):
    """Run `python ARGS` in the repository, in this process's environment (or ``env``), and assert that it
    succeeded (the tail of its output otherwise); its stdout."""
    result = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def datasets_script_json(script, *args, datasets_root, timeout=None):
    """Run the Python source ``script`` with ARGS in a new process whose builtin datasets are registered under
    ``datasets_root`` ($DETECTRON2_DATASETS); it must succeed and print JSON last, which is returned."""
    stdout = run_tool(
        "-W", "ignore", "-c", script, *args, env={**os.environ, "DETECTRON2_DATASETS": str(datasets_root)}, timeout=timeout
    )
    return json.loads(stdout.strip().splitlines()[-1])


def prepare_dataset(script, dataset, env=None):
    """The manifest of DATASETS_ROOT/DATASET, prepared first by datasets/SCRIPT if it is not there."""
    if not os.path.exists(os.path.join(DATASETS_ROOT, dataset, "manifest.json")):
        command = [sys.executable, os.path.join(REPO, "datasets", script), "--root", DATASETS_ROOT]
        result = subprocess.run(command, capture_output=True, text=True, env=env)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    with open(os.path.join(DATASETS_ROOT, dataset, "manifest.json")) as f:
        return json.load(f)


def assert_second_preparation_is_a_no_op(script, env=None):
    """datasets/SCRIPT run again on DATASETS_ROOT, where it already prepared its dataset, says it is up to date."""
    command = [sys.executable, os.path.join(REPO, "datasets", script), "--root", DATASETS_ROOT]
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    assert result.returncode == 0 and "up to date" in result.stdout, result.stdout + result.stderr


def check_before_launch(args, launched=None):
    """What tools/train_net.py checks before it launches a run of ``args`` (its config built as the tool does)."""
    from vader_d2.cli import build_config
    from vader_d2.engine.launch import check_before_launch as check

    return check(args, build_config, launched)
