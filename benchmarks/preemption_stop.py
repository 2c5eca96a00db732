"""
How long a pre-empted run takes from the signal to its exit, and what of it is the checkpoint write.

    python -m benchmarks.preemption_stop --config-file configs/vader_pretrain.yaml
    python -m benchmarks.preemption_stop --config-file configs/vader_pretrain.yaml --signal SIGUSR1

Runs ``tools/train_net.py`` on the config as a user would, on the CPU with 2 images a step from the demo
photos (shuffle-BN groups of 2; the batch changes no tensor of the checkpoint, so the checkpoint is the
config's), into a temporary folder (removed afterwards). Once the training loop has started, the signal
is sent; the run finishes the iteration in flight, writes that iteration's checkpoint and exits with
status 75. Prints the seconds from the signal to the exit, the write time the run logged, and the size
of the checkpoint. On a GPU the iteration in flight takes a fraction of what it takes here.
"""

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from vader_d2.cli import run_cli
from vader_d2.errors import UserError
from vader_d2.engine.preemption import PREEMPTED_EXIT

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STOP_LINE = re.compile(r"received (SIG\w+) at iteration (\d+); checkpoint (model_\d+\.pth) written in ([\d.]+) s")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE", help="a pretraining config, e.g. configs/vader_pretrain.yaml")
    parser.add_argument("--signal", default="SIGTERM", choices=["SIGTERM", "SIGUSR1"], help="the signal to send (default SIGTERM)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return parser.parse_args(argv)


def main(args):
    output_dir = tempfile.mkdtemp(prefix="preemption_stop_")
    log_path = os.path.join(output_dir, "train_net.out")
    command = [
        sys.executable, "tools/train_net.py", "--config-file", args.config_file, *args.opts,
        "MODEL.DEVICE", "cpu", "SOLVER.IMS_PER_BATCH", "2", "MODEL.MOMENTUM_CONTRAST.BN_GROUP_SIZE", "2",
        "DATASETS.TRAIN", "('vader_demo_photos_train',)", "DATALOADER.NUM_WORKERS", "0",
        "OUTPUT_DIR", os.path.join(output_dir, "run"),
    ]
    try:
        with open(log_path, "w") as log:
            run = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        while "Starting training from iteration" not in open(log_path).read():
            if run.poll() is not None:
                raise UserError(f"the run ended before training (status {run.returncode}): {open(log_path).read()[-2000:]}")
            time.sleep(0.05)
        sent = time.perf_counter()
        run.send_signal(signal.Signals[args.signal])
        status = run.wait()
        seconds = time.perf_counter() - sent
        output = open(log_path).read()
        stop = STOP_LINE.search(output)
        if status != PREEMPTED_EXIT or stop is None:
            raise UserError(f"the run did not stop as a pre-empted run (status {status}): {output[-2000:]}")
        size = os.path.getsize(os.path.join(output_dir, "run", stop[3]))
    finally:
        shutil.rmtree(output_dir, ignore_errors=True)
    print(
        f"{args.config_file}: {args.signal} at iteration {stop[2]} -> exit status {status} after {seconds:.1f} s; "
        f"checkpoint {size / 1e6:.0f} MB written in {stop[4]} s (the rest: the iteration in flight on the CPU, "
        f"2 images, and the process's end); on {os.uname().nodename}, load average {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    run_cli(main, parse_args())
