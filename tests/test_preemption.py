"""
Pre-emption (vader_d2/engine/preemption.py): on a configured signal every process finishes its iteration, the
processes agree on it, rank 0 writes its checkpoint, all exit with PREEMPTED_EXIT, and --resume continues
as if nothing had happened; a metrics write that fails (a full disk) stops with one line and the last
checkpoint intact.
"""

import itertools
import logging
import os
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta

import pytest
import torch
import torch.multiprocessing as mp
from detectron2.engine import HookBase, launch
from detectron2.utils import comm
from detectron2.utils.events import EventStorage, TensorboardXWriter
from torch.multiprocessing import ProcessExitedException

from vader_d2.checkpoint.atomic_io import checkpoint_problem
from vader_d2.cli import build_config
from vader_d2.config import check_solver_config
from vader_d2.errors import UserError
from vader_d2.engine.preemption import PREEMPTED_EXIT, RECORDER, PreemptionCheckpointer, StopOnWriteFailure, parse_signal_names
from vader_d2.engine.trainer import VADeRTrainer

from .helpers import DEMO_CONFIG, REPO, TINY_OPTS, demo_cfg, fake_batch, train_net_env
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


class SignalAfterTraining(HookBase):
    """Sends SIGUSR1 when training ends, as one arriving during the final evaluation would."""

    def after_train(self):
        os.kill(os.getpid(), signal.SIGUSR1)


def test_a_signal_after_the_last_iteration_lets_the_run_complete(tmp_path, handlers, vader_log):
    class SignalledAtTheEnd(FixedBatchTrainer):
        def build_hooks(self):
            return [SignalAfterTraining(), *super().build_hooks()]

    trainer = SignalledAtTheEnd(fixed_batch_cfg(tmp_path))
    trainer.resume_or_load(resume=False)
    trainer.train()  # no SystemExit: status 0
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    assert "received SIGUSR1 after the last iteration; the run is complete, model_final.pth written" in vader_log


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


# ---------------------------------------------------------------------------------------------------
# tools/train_net.py, as a scheduler stops it


def start_train_net(output_dir, *args):
    """tools/train_net.py on the tiny config for up to 500 iterations; returns the process and its log files."""
    output_dir.mkdir(parents=True, exist_ok=True)
    stdout, stderr = output_dir.parent / f"{output_dir.name}.out", output_dir.parent / f"{output_dir.name}.err"
    with open(stdout, "w") as out, open(stderr, "w") as err:
        process = subprocess.Popen(
            [sys.executable, "tools/train_net.py", *args, "--config-file", DEMO_CONFIG, *TINY_OPTS, "SOLVER.MAX_ITER", "500",
             "SOLVER.CHECKPOINT_PERIOD", "1000", "OUTPUT_DIR", str(output_dir)],
            cwd=REPO, env=train_net_env(), stdout=out, stderr=err,
        )
    return process, stdout, stderr


def wait_for_training(process, stdout, timeout=240):
    """Until the training loop starts; a signal from then on stops the run after the iteration in flight."""
    deadline = time.monotonic() + timeout
    while "Starting training from iteration 0" not in stdout.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail("the run ended or hung before training:\n" + stdout.read_text()[-3000:])
        time.sleep(0.05)


def check_stopped_run(output_dir, process, stdout, stderr, sig):
    """The run ended with PREEMPTED_EXIT, one line naming the signal and the checkpoint of that iteration,
    nothing on stderr; returns the iteration."""
    assert process.wait(timeout=240) == PREEMPTED_EXIT, stdout.read_text()[-3000:] + stderr.read_text()[-3000:]
    assert stderr.read_text() == ""
    lines = [m for m in map(STOP_LINE.search, stdout.read_text().splitlines()) if m]
    assert len(lines) == 1, stdout.read_text()[-3000:]
    name, iteration, checkpoint = lines[0][1], int(lines[0][2]), lines[0][3]
    assert name == sig.name and checkpoint == f"model_{iteration:07d}.pth"
    assert (output_dir / "last_checkpoint").read_text() == checkpoint
    assert torch.load(output_dir / checkpoint, map_location="cpu")["iteration"] == iteration
    return iteration


def check_resume_restores(output_dir, iteration):
    """What `--resume` would restore, checked in this process: the state of the checkpoint, from the next iteration."""
    opts = [*TINY_OPTS, "SOLVER.MAX_ITER", "500", "SOLVER.CHECKPOINT_PERIOD", "1000", "OUTPUT_DIR", str(output_dir)]
    trainer = VADeRTrainer(demo_cfg(*opts))
    trainer.resume_or_load(resume=True)
    assert trainer.start_iter == iteration + 1
    checkpoint = torch.load(output_dir / f"model_{iteration:07d}.pth", map_location="cpu")
    assert_same(trainer.model.state_dict(), checkpoint["model"], "model")
    assert_same(trainer.state_dict(), checkpoint["trainer"], "trainer")


def test_sigterm_to_train_net_checkpoints_and_exits_with_the_documented_status(tmp_path):
    output_dir = tmp_path / "run"
    process, stdout, stderr = start_train_net(output_dir)
    wait_for_training(process, stdout)
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    iteration = check_stopped_run(output_dir, process, stdout, stderr, signal.SIGTERM)
    assert time.monotonic() - sent < 60
    check_resume_restores(output_dir, iteration)


def launched_processes(launcher_pid):
    """The training processes Detectron2's launch spawned (not multiprocessing's resource tracker), in start order."""
    with open(f"/proc/{launcher_pid}/task/{launcher_pid}/children") as f:
        children = [int(pid) for pid in f.read().split()]
    workers = []
    for pid in sorted(children):
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            command = f.read().replace(b"\0", b" ")
        if b"spawn_main" in command and b"resource_tracker" not in command:
            workers.append(pid)
    return workers


@pytest.mark.slow
@pytest.mark.parametrize("target", ["launcher", "rank 1"])
def test_sigterm_with_two_processes_stops_both_at_one_iteration(tmp_path, target):
    """`--num-gpus 2` on the CPU (gloo): SIGTERM to the launcher (it forwards it) or to one training
    process only; both processes stop after the same iteration, whose checkpoint rank 0 writes."""
    output_dir = tmp_path / "run"
    process, stdout, stderr = start_train_net(output_dir, "--num-gpus", "2", "--dist-url", "auto")
    wait_for_training(process, stdout)
    workers = launched_processes(process.pid)
    assert len(workers) == 2
    os.kill(process.pid if target == "launcher" else workers[1], signal.SIGTERM)
    iteration = check_stopped_run(output_dir, process, stdout, stderr, signal.SIGTERM)
    # Rank 1 stopped after the same iteration (its log is its own file).
    rank1 = [m for m in map(STOP_LINE.search, (output_dir / "log.txt.rank1").read_text().splitlines()) if m]
    assert [int(m[2]) for m in rank1] == [iteration]
    check_resume_restores(output_dir, iteration)


# ---------------------------------------------------------------------------------------------------
# Two processes, exact resume


class ShareOfFixedBatchTrainer(SignalledTrainer):
    """The fixed-batch trainer with each process given its share of the global batch of 4."""

    @classmethod
    def build_train_loader(cls, cfg):
        torch.manual_seed(11)
        share = cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size()
        batch = fake_batch(cfg.SOLVER.IMS_PER_BATCH, cfg.INPUT.VIEWS.CROP_SIZE)[comm.get_rank() * share:][:share]
        return itertools.repeat(batch)

    def build_hooks(self):
        hooks = super().build_hooks()
        return hooks if comm.get_rank() == 1 else hooks[1:]  # only rank 1 gets the signal


def two_process_fixed_batch_worker(output_dir, signal_at, resume, result_path):
    torch.set_num_threads(1)
    RECORDER.install(["SIGTERM", "SIGUSR1"])
    ShareOfFixedBatchTrainer.signal_at = signal_at
    torch.manual_seed(0)
    cfg = fixed_batch_cfg(output_dir)
    cfg.MODEL.MOMENTUM_CONTRAST.BN_GROUP_SIZE = 2  # the per-process batch
    trainer = ShareOfFixedBatchTrainer(cfg)
    trainer.resume_or_load(resume=resume)
    trainer.train()
    if comm.is_main_process():
        torch.save({"model": trainer.model.module.state_dict(), "trainer": trainer.state_dict()}, result_path)


def launch_two(rendezvous, *args):
    # A file rendezvous is used once: a later launch that found it would wait for peers that are gone.
    launch(two_process_fixed_batch_worker, 2, dist_url=f"file://{rendezvous}", args=args, timeout=timedelta(minutes=2))


@pytest.mark.slow
def test_two_processes_resume_exactly_after_a_signal_to_one_of_them(tmp_path):
    """Uninterrupted: 5 steps of two processes. Interrupted: SIGUSR1 to rank 1 during iteration 2; both stop
    after it; resumed, they end with the uninterrupted run's weights, queue, optimizer and LR schedule."""
    never = (signal.SIGUSR1, -1)
    launch_two(tmp_path / "first", str(tmp_path / "uninterrupted"), never, False, str(tmp_path / "uninterrupted.pth"))
    with pytest.raises(ProcessExitedException) as stopped:
        launch_two(tmp_path / "second", str(tmp_path / "interrupted"), (signal.SIGUSR1, 2), False, None)
    assert stopped.value.exit_code == PREEMPTED_EXIT
    assert (tmp_path / "interrupted" / "last_checkpoint").read_text() == "model_0000002.pth"
    launch_two(tmp_path / "third", str(tmp_path / "interrupted"), never, True, str(tmp_path / "resumed.pth"))
    uninterrupted, resumed = torch.load(tmp_path / "uninterrupted.pth"), torch.load(tmp_path / "resumed.pth")
    assert resumed["trainer"]["iteration"] == uninterrupted["trainer"]["iteration"] == 5  # Detectron2's count after the loop
    assert_same(resumed, uninterrupted)


# ---------------------------------------------------------------------------------------------------
# Every method, and downstream


@pytest.mark.parametrize("method", ["MoCo", "DenseCL", "PixPro"])
def test_every_pretraining_method_checkpoints_the_signalled_iteration(tmp_path, handlers, vader_log, method):
    from .test_methods import CONFIGS, TINY, FixedBatchesTrainer, mapped_batches

    config = "configs/moco_global_demo.yaml" if method == "MoCo" else CONFIGS[method]
    cfg = build_config(config, ["MODEL.DEVICE", "cpu", *TINY, "SOLVER.MAX_ITER", "5", "OUTPUT_DIR", str(tmp_path)])
    FixedBatchesTrainer.batches = mapped_batches(cfg, 1)
    trainer = FixedBatchesTrainer(cfg)
    trainer.register_hooks([SignalBeforeStep(signal.SIGUSR1, 1)])
    trainer.resume_or_load(resume=False)
    with pytest.raises(SystemExit) as stop:
        trainer.train()
    assert stop.value.code == PREEMPTED_EXIT
    assert [m[2] for m in map(STOP_LINE.fullmatch, vader_log) if m] == ["1"]
    checkpoint = torch.load(tmp_path / "model_0000001.pth", map_location="cpu")
    assert checkpoint["iteration"] == 1
    assert_same(checkpoint["model"], trainer.model.state_dict())


def test_a_downstream_run_checkpoints_the_signalled_iteration(tmp_path, handlers, vader_log):
    """A stock Detectron2 Mask R-CNN through the same trainer, on the cut-paste data set."""
    cfg = build_config("configs/downstream/cutpaste_mask_rcnn_R_18_FPN.yaml", [
        "MODEL.DEVICE", "cpu", "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0", "INPUT.MIN_SIZE_TRAIN", "(128,)",
        "INPUT.MAX_SIZE_TRAIN", "160", "OUTPUT_DIR", str(tmp_path),
    ])
    trainer = VADeRTrainer(cfg)
    trainer.register_hooks([SignalBeforeStep(signal.SIGTERM, 0)])
    trainer.resume_or_load(resume=False)
    with pytest.raises(SystemExit) as stop:
        trainer.train()
    assert stop.value.code == PREEMPTED_EXIT
    assert [m[2] for m in map(STOP_LINE.fullmatch, vader_log) if m] == ["0"]
    assert torch.load(tmp_path / "model_0000000.pth", map_location="cpu")["iteration"] == 0
    resumed = VADeRTrainer(cfg)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 1
    assert_same(resumed.model.state_dict(), trainer.model.state_dict(), "model")


def test_a_failed_tensorboard_write_is_reported_once_from_the_main_thread(tmp_path, monkeypatch):
    """RLIMIT_FSIZE makes TensorBoard's writer thread fail as on a full disk (EFBIG instead of ENOSPC); the
    thread's exception does not reach Python's report of thread exceptions (a traceback on stderr)."""
    reported = []
    monkeypatch.setattr(threading, "excepthook", lambda args: reported.append(args.exc_value))
    hook = PreemptionCheckpointer()
    writer = StopOnWriteFailure(TensorboardXWriter(str(tmp_path)), hook, "the TensorBoard events")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        with EventStorage(0) as storage:
            storage.put_scalar("loss", 1.0)
            writer.write()  # opens the events file (its header is written)
            resource.setrlimit(resource.RLIMIT_FSIZE, (0, hard))
            deadline = time.monotonic() + 60
            while hook.write_failure is None and time.monotonic() < deadline:
                storage.iter += 1
                storage.put_scalar("loss", 1.0)
                writer.write()
                time.sleep(0.05)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous_handler)
    writer.close()
    assert hook.write_failure == "cannot write the TensorBoard events: File too large (errno 27)"
    assert writer.failed
    assert reported == []
