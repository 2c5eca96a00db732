"""
SOLVER.CHECKPOINT_KEEP: the newest N periodic checkpoints stay, with model_final.pth and whatever
last_checkpoint names; a pre-emption checkpoint (off the period's schedule) stays until a newer one is
complete; nothing is deleted before the newer checkpoint and last_checkpoint are written.
"""

import errno
import logging
import os
from glob import glob

import pytest
import torch

import vader_d2.engine.output_dir as output_dir
from vader_d2.checkpoint.checkpointer import VADeRCheckpointer
from vader_d2.cli import build_config
from vader_d2.config import check_solver_config
from vader_d2.errors import UserError
from vader_d2.engine.hooks import RetainingPeriodicCheckpointer
from vader_d2.engine.output_dir import prune_checkpoints

from .helpers import DEMO_CONFIG, check_before_launch, demo_cfg, load_tool
from .test_resume import FixedBatchTrainer, fixed_batch_cfg

train_net = load_tool("train_net")

pytestmark = pytest.mark.usefixtures("single_thread")


def make_checkpoints(folder, iterations, tagged, final=False):
    for iteration in iterations:
        (folder / f"model_{iteration:07d}.pth").write_bytes(b"a checkpoint")
    if final:
        (folder / "model_final.pth").write_bytes(b"the final checkpoint")
    (folder / "last_checkpoint").write_text(tagged)


def checkpoint_names(folder):
    return sorted(name for name in os.listdir(folder) if name.startswith("model_"))


def test_prune_keeps_the_newest_periodic_and_deletes_superseded_preemption_checkpoints(tmp_path):
    # Period 10: periodic checkpoints after iterations 9, 19, 29, 39; 33 was written on a pre-emption.
    make_checkpoints(tmp_path, [9, 19, 29, 33], tagged="model_0000033.pth")
    # The pre-emption checkpoint is the newest: it stays, and so do the newest 2 periodic ones.
    assert prune_checkpoints(str(tmp_path), keep=2, period=10) == ["model_0000009.pth"]
    assert checkpoint_names(tmp_path) == ["model_0000019.pth", "model_0000029.pth", "model_0000033.pth"]

    # The resumed run writes 39: now the pre-emption checkpoint is superseded.
    make_checkpoints(tmp_path, [39], tagged="model_0000039.pth")
    assert prune_checkpoints(str(tmp_path), keep=2, period=10) == ["model_0000019.pth", "model_0000033.pth"]
    assert checkpoint_names(tmp_path) == ["model_0000029.pth", "model_0000039.pth"]

    # model_final.pth is never counted nor deleted.
    make_checkpoints(tmp_path, [49], tagged="model_final.pth", final=True)
    assert prune_checkpoints(str(tmp_path), keep=1, period=10) == ["model_0000029.pth", "model_0000039.pth"]
    assert checkpoint_names(tmp_path) == ["model_0000049.pth", "model_final.pth"]


def test_prune_never_deletes_what_last_checkpoint_names_nor_later_files(tmp_path):
    # The user pointed last_checkpoint back to 19 (e.g. after the loss diverged at 40).
    make_checkpoints(tmp_path, [9, 19, 29, 39], tagged="model_0000019.pth")
    assert prune_checkpoints(str(tmp_path), keep=1, period=10) == ["model_0000009.pth"]
    assert checkpoint_names(tmp_path) == ["model_0000019.pth", "model_0000029.pth", "model_0000039.pth"]

    # An off-schedule checkpoint named by last_checkpoint stays, however small keep is.
    make_checkpoints(tmp_path, [25], tagged="model_0000025.pth")
    assert prune_checkpoints(str(tmp_path), keep=1, period=10) == []
    assert "model_0000025.pth" in checkpoint_names(tmp_path)


def test_prune_does_nothing_without_keep_or_last_checkpoint(tmp_path):
    make_checkpoints(tmp_path, [9, 19, 29], tagged="model_0000029.pth")
    assert prune_checkpoints(str(tmp_path), keep=0, period=10) == []
    os.unlink(tmp_path / "last_checkpoint")
    assert prune_checkpoints(str(tmp_path), keep=1, period=10) == []
    (tmp_path / "last_checkpoint").write_text("")
    assert prune_checkpoints(str(tmp_path), keep=1, period=10) == []
    assert checkpoint_names(tmp_path) == ["model_0000009.pth", "model_0000019.pth", "model_0000029.pth"]


def test_prune_survives_files_that_vanish_or_cannot_be_deleted(tmp_path, monkeypatch, caplog):
    make_checkpoints(tmp_path, [9, 19, 29, 39], tagged="model_0000039.pth")
    listed = output_dir.list_checkpoints

    def list_then_lose_one(folder):
        names = listed(folder)
        os.unlink(os.path.join(folder, "model_0000009.pth"))  # e.g. deleted by hand meanwhile
        return names

    real_unlink = os.unlink

    def unlink_refusing_19(path, *args, **kwargs):
        if path.endswith("model_0000019.pth"):
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(output_dir, "list_checkpoints", list_then_lose_one)
    monkeypatch.setattr(output_dir.os, "unlink", unlink_refusing_19)
    assert prune_checkpoints(str(tmp_path), keep=1, period=10) == ["model_0000029.pth"]
    monkeypatch.undo()
    assert checkpoint_names(tmp_path) == ["model_0000019.pth", "model_0000039.pth"]
    assert "cannot delete" in caplog.text and "model_0000019.pth (Permission denied); it stays" in caplog.text


class FakeTrainer:
    def __init__(self, max_iter):
        self.max_iter = max_iter
        self.iter = 0


def run_hook(hook, iterations):
    for iteration in iterations:
        hook.trainer.iter = iteration
        hook.after_step()


def test_hook_over_a_preempted_and_resumed_run(tmp_path, monkeypatch):
    """Checkpoints after iterations 2, 5, 8 (period 3), a pre-emption checkpoint at 10 written through the
    same checkpointer, then a resumed process (a new hook, which remembers nothing) writing 11 and the final."""
    checkpointer = VADeRCheckpointer(torch.nn.Linear(2, 2), str(tmp_path))

    def started_hook():
        hook = RetainingPeriodicCheckpointer(checkpointer, period=3, keep=2)
        hook.trainer = FakeTrainer(max_iter=14)
        hook.before_train()
        return hook

    first = started_hook()
    run_hook(first, range(0, 10))
    assert checkpoint_names(tmp_path) == ["model_0000005.pth", "model_0000008.pth"]
    checkpointer.save("model_0000010", iteration=10)  # what a pre-emption writes
    assert checkpoint_names(tmp_path) == ["model_0000005.pth", "model_0000008.pth", "model_0000010.pth"]

    resumed = started_hook()
    # A write that fails (a full disk) deletes nothing: the pre-emption checkpoint is still the one to resume.
    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("vader_d2.checkpoint.checkpointer.torch.save", no_space)
    with pytest.raises(UserError, match="No space left on device"):
        run_hook(resumed, [11])
    monkeypatch.undo()
    assert checkpoint_names(tmp_path) == ["model_0000005.pth", "model_0000008.pth", "model_0000010.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000010.pth"

    run_hook(resumed, [11])
    assert checkpoint_names(tmp_path) == ["model_0000008.pth", "model_0000011.pth"]
    run_hook(resumed, [12, 13])
    assert checkpoint_names(tmp_path) == ["model_0000008.pth", "model_0000011.pth", "model_final.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    assert torch.load(tmp_path / "model_0000011.pth")["iteration"] == 11


def test_trainer_keeps_the_newest_checkpoints_of_a_real_run(tmp_path):
    cfg = fixed_batch_cfg(tmp_path)
    cfg.SOLVER.CHECKPOINT_PERIOD = 1
    cfg.SOLVER.CHECKPOINT_KEEP = 2
    trainer = FixedBatchTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()  # iterations 0..4, a checkpoint after each
    assert checkpoint_names(tmp_path) == ["model_0000003.pth", "model_0000004.pth", "model_final.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"


class RecordedLogs(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)


def test_a_periodic_checkpoint_on_a_full_disk_stops_without_a_traceback(tmp_path, monkeypatch):
    """A UserError in a hook (the periodic checkpoint of iteration 1 cannot be written) stops training as a
    pre-emption does: train() raises it, to be reported as one line, and Detectron2's loop logs nothing
    of it (it logs every Exception that passes through it with its whole traceback)."""
    trainer = FixedBatchTrainer(fixed_batch_cfg(tmp_path))
    trainer.resume_or_load(resume=False)

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("vader_d2.checkpoint.checkpointer.torch.save", no_space)
    logs = RecordedLogs()
    loop_logger = logging.getLogger("detectron2.engine.train_loop")
    loop_logger.addHandler(logs)
    try:
        with pytest.raises(UserError, match="No space left on device") as error:
            trainer.train()
    finally:
        loop_logger.removeHandler(logs)
    assert "\n" not in str(error.value)
    assert trainer.iter == 1  # the iteration whose checkpoint failed; no later step ran
    assert not [record for record in logs.records if record.exc_info], [record.getMessage() for record in logs.records]
    assert checkpoint_names(tmp_path) == []


@pytest.mark.parametrize("value", ["-1", "2.5", "two", "True"])
def test_bad_keep_values_are_one_line_before_the_start(value):
    args = train_net.parse_args(["--config-file", DEMO_CONFIG, "SOLVER.CHECKPOINT_KEEP", value])
    with pytest.raises(UserError) as error:
        check_before_launch(args)
    message = str(error.value)
    assert "SOLVER.CHECKPOINT_KEEP" in message and "\n" not in message, message
    if value == "-1":
        assert message == "SOLVER.CHECKPOINT_KEEP must be a whole number of checkpoints >= 0 (0 keeps them all), got -1"


def test_keep_values_set_in_python_are_checked_too():
    cfg = demo_cfg()
    for value in (1.5, True, "3"):
        cfg.SOLVER.CHECKPOINT_KEEP = value
        with pytest.raises(UserError, match=f"^SOLVER.CHECKPOINT_KEEP must be a whole number .*, got {value!r}$"):
            check_solver_config(cfg)
    cfg.SOLVER.CHECKPOINT_KEEP = 0
    check_solver_config(cfg)


def test_paper_configs_keep_fallbacks_and_demo_configs_keep_everything():
    for config in ("configs/vader_pretrain.yaml", "configs/densecl_pretrain.yaml", "configs/pixpro_pretrain.yaml"):
        assert build_config(config).SOLVER.CHECKPOINT_KEEP == 3, config
    demos = glob("configs/*_demo*.yaml")
    assert len(demos) >= 5
    for config in demos:
        assert build_config(config, ["MODEL.DEVICE", "cpu"]).SOLVER.CHECKPOINT_KEEP == 0, config
