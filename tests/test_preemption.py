"""
Pre-emption (vader_d2/preemption.py): on a configured signal every process finishes its iteration, the
processes agree on it, rank 0 writes its checkpoint, all exit with PREEMPTED_EXIT, and --resume continues
as if nothing had happened; a metrics write that fails (a full disk) stops with one line and the last
checkpoint intact.
"""

import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch
import torch.multiprocessing as mp
from detectron2.engine import HookBase

from vader_d2.checkpoint import checkpoint_problem
from vader_d2.config import check_solver_config
from vader_d2.errors import UserError
from vader_d2.preemption import PREEMPTED_EXIT, RECORDER, PreemptionCheckpointer, parse_signal_names
from vader_d2.trainer import VADeRTrainer

from .helpers import demo_cfg
from .test_config_errors import DEMO_CONFIG, REPO, TINY_OPTS, single_thread, train_net_env  # noqa: F401
from .test_resume import FixedBatchTrainer, assert_same, fixed_batch_cfg

pytestmark = pytest.mark.usefixtures("single_thread")

STOP_LINE = re.compile(r"received (SIG\w+) at iteration (\d+); checkpoint (model_\d{7}\.pth) written in (\d+\.\d) s; resume with --resume")


@pytest.fixture
def handlers():
    """The process's pre-emption handlers for the default signals, as train_net installs them, removed afterwards."""
    RECORDER.install(["SIGTERM", "SIGUSR1"])
    yield RECORDER
    RECORDER.uninstall()
    RECORDER.received = None


@pytest.fixture
def vader_log():
    """The lines logged on the vader_d2 logger."""
    lines = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    logger = logging.getLogger("vader_d2")
    logger.addHandler(handler)
    yield lines
    logger.removeHandler(handler)


class SignalBeforeStep(HookBase):
    """Sends ``sig`` to this process before iteration ``iteration`` runs: it arrives during that iteration."""

    def __init__(self, sig, iteration):
        self.sig, self.iteration = sig, iteration

    def before_step(self):
        if self.trainer.iter == self.iteration:
            os.kill(os.getpid(), self.sig)


class SignalledTrainer(FixedBatchTrainer):
    signal_at = None  # (signal, iteration)

    def build_hooks(self):
        return [SignalBeforeStep(*self.signal_at), *super().build_hooks()]


# ---------------------------------------------------------------------------------------------------
# The configured signals


@pytest.mark.parametrize(
    "value, expected",
    [
        ("['SIGTERMINATE']", "'SIGTERMINATE' is not a signal name on this system"),
        ("['SIGKILL']", "SIGKILL cannot be used: it cannot be caught"),
        ("['SIGCHLD']", "SIGCHLD cannot be used"),
        ("[15]", "must be a list of signal names"),
    ],
)
def test_bad_signal_names_are_one_line_before_the_start(value, expected):
    cfg = demo_cfg("SOLVER.PREEMPTION_SIGNALS", value)
    with pytest.raises(UserError) as error:
        check_solver_config(cfg)
    assert expected in str(error.value) and "SOLVER.PREEMPTION_SIGNALS" in str(error.value)
    assert "\n" not in str(error.value)


def test_signal_names_parse_in_order_without_repeats():
    assert parse_signal_names(["SIGUSR1", "SIGTERM", "SIGUSR1"]) == (signal.SIGUSR1, signal.SIGTERM)
    assert parse_signal_names([]) == ()


def test_recorder_notes_the_first_signal_and_restores_the_handlers():
    before = signal.getsignal(signal.SIGUSR2)
    recorder = RECORDER.__class__().install(["SIGUSR2"])
    try:
        os.kill(os.getpid(), signal.SIGUSR2)
        os.kill(os.getpid(), signal.SIGUSR2)
        assert recorder.received == signal.SIGUSR2
        recorder.install(["SIGUSR2", "SIGHUP"])  # installed again (train_net's launched process): no gap
        assert recorder.signals == (signal.SIGUSR2, signal.SIGHUP)
    finally:
        recorder.uninstall()
    assert signal.getsignal(signal.SIGUSR2) == before


# ---------------------------------------------------------------------------------------------------
# The agreement between processes


def agree_worker(rank, requests, rendezvous, results):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=len(requests))
    try:
        results[rank] = [PreemptionCheckpointer._agree(request) for request in requests[rank]]
    finally:
        dist.destroy_process_group()


def test_processes_agree_on_the_largest_request(tmp_path):
    """One all-reduce MAX per iteration: nothing requested, a signal on one rank, different signals on
    the two ranks, a failed write beside a signal."""
    failed = PreemptionCheckpointer.WRITE_FAILED
    requests = [[0, 0, int(signal.SIGUSR1), int(signal.SIGTERM)], [0, int(signal.SIGTERM), int(signal.SIGTERM), failed]]
    with mp.Manager() as manager:
        results = manager.dict()
        mp.start_processes(agree_worker, args=(requests, tmp_path / "rendezvous", results), nprocs=2, start_method="fork")
        results = dict(results)
    expected = [0, int(signal.SIGTERM), int(signal.SIGTERM), failed]
    assert results == {0: expected, 1: expected}
    assert PreemptionCheckpointer._agree(int(signal.SIGUSR1)) == int(signal.SIGUSR1)  # one process: its own


# ---------------------------------------------------------------------------------------------------
# One process, in this process: the checkpoint, the line, and an exact resume


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """5 iterations of the fixed-batch trainer, checkpoints after iterations 1 and 3."""
    torch.manual_seed(0)  # the initial weights, as the interrupted runs'
    trainer = FixedBatchTrainer(fixed_batch_cfg(tmp_path_factory.mktemp("uninterrupted")))
    trainer.resume_or_load(resume=False)
    trainer.train()
    return {"model": trainer.model.state_dict(), "trainer": trainer.state_dict(), "dir": trainer.cfg.OUTPUT_DIR}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1], ids=["SIGTERM", "SIGUSR1"])
def test_a_signal_checkpoints_its_iteration_and_resume_continues_exactly(tmp_path, handlers, vader_log, uninterrupted, sig):
    # Iteration 2 is off the checkpoint period (2): the checkpoint is the pre-emption's own.
    SignalledTrainer.signal_at = (sig, 2)
    torch.manual_seed(0)  # the uninterrupted run's initial weights
    trainer = SignalledTrainer(fixed_batch_cfg(tmp_path))
    trainer.resume_or_load(resume=False)
    with pytest.raises(SystemExit) as stop:
        trainer.train()
    assert stop.value.code == PREEMPTED_EXIT
    lines = [m for m in map(STOP_LINE.fullmatch, vader_log) if m]
    assert [(m[1], m[2], m[3]) for m in lines] == [(sig.name, "2", "model_0000002.pth")]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000002.pth"
    checkpoint = torch.load(tmp_path / "model_0000002.pth", map_location="cpu")
    assert checkpoint["iteration"] == 2
    assert not (tmp_path / "model_final.pth").exists()

    handlers.received = None  # the requeued run is a new process
    resumed = FixedBatchTrainer(fixed_batch_cfg(tmp_path))
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 3
    assert_same(resumed.model.state_dict(), checkpoint["model"], "model")
    resumed.train()  # iterations 3..4
    assert_same(resumed.model.state_dict(), uninterrupted["model"], "model")  # weights, key encoder, queue, skip count
    assert_same(resumed.state_dict(), uninterrupted["trainer"], "trainer")  # optimizer, LR schedule, iteration


def test_signals_during_the_checkpoint_write_do_not_tear_it(tmp_path, handlers, vader_log, uninterrupted):
    """Signals keep arriving while the checkpoint is written: it is complete and holds what the
    uninterrupted run's periodic checkpoint of the same iteration holds."""

    class SignallingWhileWriting(SignalledTrainer):
        def build_hooks(self):
            hooks = super().build_hooks()
            save = self.checkpointer.save

            def save_under_fire(name, **kwargs):
                if self.iter < self.signal_at[1]:
                    return save(name, **kwargs)
                writing = threading.Event()
                def fire():
                    while not writing.is_set():
                        os.kill(os.getpid(), signal.SIGTERM)
                        os.kill(os.getpid(), signal.SIGUSR1)
                        time.sleep(0.001)
                thread = threading.Thread(target=fire)
                thread.start()
                try:
                    save(name, **kwargs)
                finally:
                    writing.set()
                    thread.join()

            self.checkpointer.save = save_under_fire
            return hooks

    # A periodic checkpoint's iteration, to compare with: both its writes (periodic, then pre-emption) under fire.
    SignallingWhileWriting.signal_at = (signal.SIGTERM, 3)
    torch.manual_seed(0)  # the uninterrupted run's initial weights
    trainer = SignallingWhileWriting(fixed_batch_cfg(tmp_path))
    trainer.resume_or_load(resume=False)
    with pytest.raises(SystemExit) as stop:
        trainer.train()
    assert stop.value.code == PREEMPTED_EXIT
    assert [m[2] for m in map(STOP_LINE.fullmatch, vader_log) if m] == ["3"]
    assert checkpoint_problem(str(tmp_path / "model_0000003.pth")) is None
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000003.pth"
    written = torch.load(tmp_path / "model_0000003.pth", map_location="cpu")
    periodic = torch.load(os.path.join(uninterrupted["dir"], "model_0000003.pth"), map_location="cpu")
    assert_same(written, periodic)


def test_a_signal_at_the_last_iteration_lets_the_run_complete(tmp_path, handlers, vader_log):
    SignalledTrainer.signal_at = (signal.SIGTERM, 4)
    trainer = SignalledTrainer(fixed_batch_cfg(tmp_path))
    trainer.resume_or_load(resume=False)
    trainer.train()  # no SystemExit: status 0
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    assert not (tmp_path / "model_0000004.pth").exists()
    assert "received SIGTERM at the last iteration (4); the run is complete, model_final.pth written" in vader_log


def test_a_full_disk_under_metrics_json_stops_with_one_line_and_the_checkpoint_intact(tmp_path):
    """metrics.json on /dev/full, where every write fails with ENOSPC: Detectron2's writers first write
    after iteration 19, after the checkpoint of iteration 14."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    os.symlink("/dev/full", tmp_path / "metrics.json")
    cfg = fixed_batch_cfg(tmp_path)
    cfg.merge_from_list(["SOLVER.MAX_ITER", "40", "SOLVER.CHECKPOINT_PERIOD", "15"])
    trainer = FixedBatchTrainer(cfg)
    trainer.resume_or_load(resume=False)
    with pytest.raises(UserError) as error:
        trainer.train()
    assert str(error.value) == (
        f"cannot write {tmp_path}/metrics.json: No space left on device (errno 28); training stopped after iteration 19 "
        "and the last checkpoint, model_0000014.pth, is intact; free space on that disk and rerun with --resume"
    )
    assert trainer.iter == 19
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000014.pth"
    assert checkpoint_problem(str(tmp_path / "model_0000014.pth")) is None
