"""
Run integrity: one run per OUTPUT_DIR, no run that overwrites another's checkpoints, checkpoints that are
complete or absent, a resume that finds the newest complete checkpoint, MODEL.WEIGHTS that are what they
claim, and a distributed start-up that says what it waits for and gives up in bounded time.
"""

import errno
import hashlib
import json
import logging
import os
import pickle
import resource
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from vader_d2.checkpoint.atomic_io import checkpoint_problem
from vader_d2.checkpoint.checkpointer import VADeRCheckpointer
from vader_d2.checkpoint.export import export_to_detectron2
from vader_d2.cli import build_config
from vader_d2.errors import UserError
from vader_d2.engine.output_dir import LOCK_FILE, OutputDirLock, claim_output_dir, select_resume_checkpoint
from vader_d2.engine.trainer import VADeRTrainer

from .helpers import DEMO_CONFIG, REPO, TINY_OPTS, demo_cfg, free_port, run_train_net, single_error_line, train_net_env
from .test_resume import FixedBatchTrainer, assert_same, fixed_batch_cfg

pytestmark = pytest.mark.usefixtures("single_thread")


def snapshot(folder):
    """Every file under ``folder`` -> sha256 of its bytes."""
    digests = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                digests[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return digests


# ---------------------------------------------------------------------------------------------------
# One run per output folder


def test_a_held_folder_is_refused_naming_the_holder(tmp_path):
    first = OutputDirLock(str(tmp_path)).acquire()
    try:
        with pytest.raises(UserError) as error:
            OutputDirLock(str(tmp_path)).acquire()  # a second open file description: flock refuses it too
        message = str(error.value)
        assert f"is in use by the run with PID {os.getpid()} on {socket.gethostname()} (started " in message
        assert "another OUTPUT_DIR" in message
    finally:
        first.release()
    assert not (tmp_path / LOCK_FILE).exists()
    OutputDirLock(str(tmp_path)).acquire().release()  # free again


def test_a_stale_lock_is_taken_over_with_a_log_line(tmp_path):
    # What a SIGKILLed run leaves: the file naming it, without the flock (which died with the process).
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": 999999, "host": "gone-host", "started": "2024-01-01 00:00:00"}))
    claim = claim_output_dir(str(tmp_path), resume=True, start_over=False)
    try:
        assert any("locked by the run with PID 999999 on gone-host" in note and "taking it over" in note for note in claim.notes), claim.notes
        holder = json.loads((tmp_path / LOCK_FILE).read_text())
        assert holder["pid"] == os.getpid()
    finally:
        claim.release()


@pytest.mark.slow
def test_second_run_into_a_held_folder_is_refused_and_changes_nothing(tmp_path):
    """A run is stopped (SIGSTOP) right after its first checkpoint, so that the folder cannot change;
    a second run with --resume into it must stop with one line naming the first, and write nothing."""
    log_path = tmp_path / "first.log"
    out = tmp_path / "out"
    opts = ["--config-file", DEMO_CONFIG, *TINY_OPTS, "INPUT.VIEWS.CROP_SIZE", "32", "SOLVER.MAX_ITER", "500",
            "SOLVER.CHECKPOINT_PERIOD", "1", "OUTPUT_DIR", str(out)]
    with open(log_path, "w") as log:
        first = subprocess.Popen([sys.executable, "tools/train_net.py", *opts], cwd=REPO, env=train_net_env(), stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 240
        while not (out / "last_checkpoint").exists():
            if first.poll() is not None or time.monotonic() > deadline:
                pytest.fail("the first run ended or hung before its first checkpoint:\n" + log_path.read_text()[-3000:])
            time.sleep(0.05)
        first.send_signal(signal.SIGSTOP)
        before = snapshot(out)
        assert any(name.startswith("model_") for name in before)

        line = single_error_line(run_train_net("--resume", *opts))
        assert f"is in use by the run with PID {first.pid} on {socket.gethostname()}" in line
        assert snapshot(out) == before
    finally:
        first.kill()
        first.wait()


# ---------------------------------------------------------------------------------------------------
# A fresh run never overwrites an earlier run's checkpoints


def test_fresh_run_into_a_folder_with_checkpoints_is_one_line(tmp_path):
    (tmp_path / "model_0000299.pth").write_bytes(b"an earlier run's checkpoint")
    (tmp_path / "model_final.pth").write_bytes(b"its final weights")
    before = snapshot(tmp_path)
    line = single_error_line(run_train_net("--config-file", DEMO_CONFIG, *TINY_OPTS, "OUTPUT_DIR", str(tmp_path)))
    assert "holds the checkpoints of an earlier run (model_0000299.pth .. model_final.pth)" in line
    assert "--resume" in line and "--start-over" in line
    assert snapshot(tmp_path) == before  # not even config.yaml or log.txt written


def test_start_over_moves_the_earlier_run_aside(tmp_path):
    run_files = {"model_0000001.pth": b"1", "model_final.pth": b"final", "last_checkpoint": b"model_final.pth",
                 "metrics.json": b"{}", "config.yaml": b"a: 1", "log.txt": b"log"}
    for name, data in run_files.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "notes.md").write_text("the user's own file")  # not a run's file: stays
    with pytest.raises(UserError, match="give one of them"):
        claim_output_dir(str(tmp_path), resume=True, start_over=True)
    claim = claim_output_dir(str(tmp_path), resume=False, start_over=True)
    claim.release()
    (moved,) = (tmp_path / "previous_runs").iterdir()
    assert {p.name: p.read_bytes() for p in moved.iterdir()} == run_files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.md", "previous_runs"]
    assert any(str(moved) in note for note in claim.notes)


def test_leftover_temporary_checkpoint_files_are_removed_at_start(tmp_path):
    (tmp_path / ".model_0000005.pth.1a2b3c4d.tmp").write_bytes(b"half a checkpoint")
    claim = claim_output_dir(str(tmp_path), resume=True, start_over=False)
    claim.release()
    assert not (tmp_path / ".model_0000005.pth.1a2b3c4d.tmp").exists()
    assert any(".model_0000005.pth.1a2b3c4d.tmp" in note for note in claim.notes)


# ---------------------------------------------------------------------------------------------------
# Checkpoints: written atomically, resumed from the newest complete one


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A 5-iteration run saving after iterations 1 and 3 and at the end (model_final, iteration 4)."""
    folder = tmp_path_factory.mktemp("finished_run")
    trainer = FixedBatchTrainer(fixed_batch_cfg(folder))
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert sorted(p.name for p in folder.glob("model_*.pth")) == ["model_0000001.pth", "model_0000003.pth", "model_final.pth"]
    return folder


def copy_run(finished_run, folder, names):
    folder.mkdir()
    for name in names:
        os.link(finished_run / name, folder / name)  # the originals stay untouched
    return folder


def resumed_trainer(folder):
    trainer = FixedBatchTrainer(fixed_batch_cfg(folder))
    trainer.resume_or_load(resume=True)
    return trainer


def test_resume_without_last_checkpoint_continues_from_the_newest(finished_run, tmp_path, caplog):
    folder = copy_run(finished_run, tmp_path / "run", ["model_0000001.pth", "model_0000003.pth"])
    with caplog.at_level(logging.WARNING, logger="vader_d2"):
        trainer = resumed_trainer(folder)
    assert trainer.start_iter == 4
    assert f"Resuming from {folder}/model_0000003.pth, the newest complete checkpoint" in caplog.text
    assert "no last_checkpoint file" in caplog.text
    assert_same(trainer.model.state_dict(), torch.load(folder / "model_0000003.pth", map_location="cpu")["model"], "model")
    trainer.train()  # iteration 4, saved as model_final
    assert torch.load(folder / "model_final.pth", map_location="cpu")["iteration"] == 4


def test_truncated_newest_checkpoint_falls_back_to_the_one_before(finished_run, tmp_path, caplog):
    folder = copy_run(finished_run, tmp_path / "run", ["model_0000001.pth"])
    whole = (finished_run / "model_0000003.pth").read_bytes()
    (folder / "model_0000003.pth").write_bytes(whole[: len(whole) // 2])  # a crash or a full disk mid-write
    (folder / "last_checkpoint").write_text("model_0000003.pth")
    with pytest.raises(RuntimeError):
        torch.load(folder / "model_0000003.pth", map_location="cpu")
    with caplog.at_level(logging.WARNING, logger="vader_d2"):
        trainer = resumed_trainer(folder)
    assert trainer.start_iter == 2
    assert "names model_0000003.pth, which is truncated" in caplog.text
    assert f"Resuming from {folder}/model_0000001.pth" in caplog.text
    assert_same(trainer.model.state_dict(), torch.load(folder / "model_0000001.pth", map_location="cpu")["model"], "model")


def test_torn_checkpoint_is_not_resumed(finished_run, tmp_path):
    """Two writers into one file leave records whose CRC fails, which torch.load does not check."""
    folder = copy_run(finished_run, tmp_path / "run", ["model_0000001.pth", "model_0000003.pth"])
    torn = bytearray((finished_run / "model_final.pth").read_bytes())
    middle = len(torn) // 2
    torn[middle : middle + 4096] = bytes(4096)
    (folder / "model_final.pth").write_bytes(bytes(torn))
    torch.load(folder / "model_final.pth", map_location="cpu")  # accepted: the danger
    assert "fails its CRC check" in checkpoint_problem(str(folder / "model_final.pth"))
    assert select_resume_checkpoint(str(folder)) == str(folder / "model_0000003.pth")


def test_resume_with_only_damaged_checkpoints_is_one_line(tmp_path):
    (tmp_path / "model_0000009.pth").write_bytes(b"PK\x03\x04 half a zip")
    (tmp_path / "model_0000019.pth").write_bytes(b"")
    with pytest.raises(UserError) as error:
        select_resume_checkpoint(str(tmp_path))
    message = str(error.value)
    assert "no checkpoint in" in message and "model_0000019.pth: is empty" in message
    assert "model_0000009.pth: is truncated" in message and "--start-over" in message


def test_resume_in_an_empty_folder_starts_from_iteration_0(tmp_path):
    assert select_resume_checkpoint(str(tmp_path)) is None


class Weights(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(256, 256)


def test_a_full_disk_leaves_no_partial_checkpoint(tmp_path):
    """RLIMIT_FSIZE makes writes past 64 KiB fail as a full disk does (EFBIG instead of ENOSPC)."""
    checkpointer = VADeRCheckpointer(Weights(), str(tmp_path))
    checkpointer.save("model_0000001")  # ~260 KB
    before = snapshot(tmp_path)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    try:
        with pytest.raises(UserError) as error:
            checkpointer.save("model_0000002")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous_handler)
    message = str(error.value)
    assert "\n" not in message
    assert f"cannot write checkpoint {tmp_path}/model_0000002.pth: File too large (errno {errno.EFBIG})" in message
    assert "nothing was written under that name" in message
    assert snapshot(tmp_path) == before  # no partial file, no temporary file, last_checkpoint unchanged
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"


# ---------------------------------------------------------------------------------------------------
# MODEL.WEIGHTS that are not what they claim


def fresh_trainer(folder, weights, *opts):
    cfg = fixed_batch_cfg(folder)
    cfg.merge_from_list(["MODEL.WEIGHTS", str(weights), *opts])
    return FixedBatchTrainer(cfg)


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"<html><body>404 Not Found</body></html>", "cannot be read by torch.load (UnpicklingError"),
        (b"", "is empty (0 bytes)"),
        ("half", "is truncated"),
    ],
    ids=["not-a-checkpoint", "empty", "truncated"],
)
def test_bad_weights_file_is_one_line(finished_run, tmp_path, content, expected):
    weights = tmp_path / "weights.pth"
    if content == "half":
        whole = (finished_run / "model_0000001.pth").read_bytes()
        content = whole[: len(whole) // 2]
    weights.write_bytes(content)
    trainer = fresh_trainer(tmp_path / "out", weights)
    with pytest.raises(UserError) as error:
        trainer.resume_or_load(resume=False)
    message = str(error.value)
    assert message.startswith(f"MODEL.WEIGHTS '{weights}' {expected}"), message
    assert "expected a .pth written by torch.save" in message and "\n" not in message


def test_bad_pickle_is_one_line(tmp_path):
    weights = tmp_path / "weights.pkl"
    weights.write_bytes(b"\x80\x04\x95 cut short")
    trainer = fresh_trainer(tmp_path / "out", weights)
    with pytest.raises(UserError, match=r"^MODEL.WEIGHTS '.*weights.pkl' cannot be read as a checkpoint \(.*expected a \.pth"):
        trainer.resume_or_load(resume=False)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Detectron2 .pkl exports of a ResNet-18 and of a ResNet-34 VADeR model with random weights."""
    folder = tmp_path_factory.mktemp("exported")
    files = {}
    for depth in (18, 34):
        model = VADeRTrainer.build_model(demo_cfg("MODEL.RESNETS.DEPTH", str(depth), "MODEL.MOMENTUM_CONTRAST.QUEUE_SIZE", "256"))
        VADeRCheckpointer(model, str(folder)).save(f"r{depth}")
        files[depth] = str(folder / f"r{depth}.pkl")
        export_to_detectron2(str(folder / f"r{depth}.pth"), files[depth])
        os.unlink(folder / f"r{depth}.pth")
    return files


def test_pkl_of_the_same_depth_starts_pretraining_in_both_encoders(exported, tmp_path):
    """Detectron2 alone matches each bare .pkl name to both encoders and fails ("Cannot match one
    checkpoint key to multiple keys"); the trainer loads it into the query encoder, and a fresh run
    copies that into the key encoder."""
    trainer = fresh_trainer(tmp_path / "out", exported[18])
    trainer.resume_or_load(resume=False)
    state = trainer.model.state_dict()
    with open(exported[18], "rb") as f:
        weights = pickle.load(f)["model"]
    for name in ("stem.conv1.weight", "res5.1.conv2.norm.running_var", "fpn_output3.weight"):
        prefix = "backbone." if name.startswith("fpn") else "backbone.bottom_up."
        for encoder in ("query", "key"):
            assert torch.equal(state[f"{encoder}_encoder.{prefix}{name}"], torch.from_numpy(weights[name])), (encoder, name)


def test_pkl_of_another_depth_fails_pretraining_before_training(exported, tmp_path):
    # Every ResNet-18 name is in a ResNet-34 (same channels, more blocks): all of them load, silently.
    trainer = fresh_trainer(tmp_path / "out", exported[34])
    with pytest.raises(UserError) as error:
        trainer.resume_or_load(resume=False)
    message = str(error.value)
    assert message.startswith(f"MODEL.WEIGHTS '{exported[34]}' holds ")
    assert "backbone tensors that have no place in the model VADeR (MODEL.RESNETS.DEPTH=18" in message
    assert "e.g. res2.2." in message or "e.g. res3.3." in message or "e.g. res4." in message


@pytest.mark.slow
def test_pkl_of_another_depth_fails_a_downstream_run_before_training(exported, tmp_path):
    cfg = build_config(
        "configs/downstream/cutpaste_mask_rcnn_R_18_FPN.yaml",
        ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", exported[34], "OUTPUT_DIR", str(tmp_path), "DATALOADER.NUM_WORKERS", "0"],
    )
    trainer = VADeRTrainer(cfg)
    with pytest.raises(UserError, match=r"holds \d+ backbone tensors that have no place in the model GeneralizedRCNN"):
        trainer.resume_or_load(resume=False)
    # The same file of the right depth loads whole.
    cfg.defrost()
    cfg.MODEL.WEIGHTS = exported[18]
    VADeRTrainer(cfg).resume_or_load(resume=False)


# ---------------------------------------------------------------------------------------------------
# Distributed start-up


def test_a_missing_machine_ends_with_one_line_within_the_timeout(tmp_path):
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    started = time.monotonic()
    result = run_train_net(
        "--num-machines", "2", "--machine-rank", "0", "--dist-url", url, "--dist-timeout", "6",
        "--config-file", DEMO_CONFIG, *TINY_OPTS, "OUTPUT_DIR", str(tmp_path), timeout=90,
    )
    elapsed = time.monotonic() - started
    line = single_error_line(result)
    assert f"the 2 processes of the run at --dist-url {url} (this is machine 0 of --num-machines 2, running process 0)" in line
    assert "did not all arrive within --dist-timeout 6 s" in line and "--machine-rank" in line
    waiting = [l for l in result.stdout.splitlines() if l.startswith("vader_d2: waiting for the 2 processes")]
    assert len(waiting) >= 2, result.stdout[-2000:]
    assert elapsed < 60
    # The process that hosted the rendezvous on machine 0 is gone: its port is free again.
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))


def test_a_file_system_without_locks_trains_unprotected_and_says_so(tmp_path, monkeypatch):
    import fcntl

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    claim = claim_output_dir(str(tmp_path), resume=False, start_over=False)
    claim.release()
    assert any("cannot lock files (No locks available): a second run into this folder would not be stopped" in n for n in claim.notes)
