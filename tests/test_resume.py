"""
Resuming an interrupted pretraining run.

What is restored exactly, from the checkpoint Detectron2 writes every SOLVER.CHECKPOINT_PERIOD
iterations: the iteration, the query and key encoders, the queue with its image ids and pointer, the
batch-norm statistics (all in the model's state dict), the optimizer (SGD momentum buffers) and the LR
schedule (trainer state). With the same data and random numbers, the steps after a resume are bit for bit
the steps of the uninterrupted run (first test).

What is not restored: the position in the data. Detectron2 seeds every RNG with SEED + rank when a
process starts (``default_setup``) and its TrainingSampler draws its shuffle seed from those, so a
resumed process replays the sampler, the augmentations and the pair sampling from where iteration 0
started, not from where the interrupted run stopped. A resumed run is reproducible (same SEED, same
result), but it sees other batches than the uninterrupted run from the resume point on; over an epoch
the difference is immaterial.
"""

import itertools
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from detectron2.engine import HookBase
from detectron2.solver import build_lr_scheduler, build_optimizer
from detectron2.modeling import build_model

from vader_d2.engine.trainer import VADeRTrainer

from .helpers import DEMO_CONFIG, FEW_PAIRS, REPO, TINY_OPTS, demo_cfg, fake_batch, run_train_net, train_net_env

pytestmark = pytest.mark.usefixtures("single_thread")


def assert_same(actual, expected, where="checkpoint"):
    """Nested dicts / lists of tensors and numbers are equal, tensors bit for bit."""
    if isinstance(expected, dict):
        assert set(actual) == set(expected), f"{where}: keys {set(actual) ^ set(expected)}"
        for key in expected:
            assert_same(actual[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected), where
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_same(a, e, f"{where}[{i}]")
    elif isinstance(expected, torch.Tensor):
        assert torch.equal(actual, expected), where
    else:
        assert actual == expected, where


class FixedBatchTrainer(VADeRTrainer):
    """The trainer with one fixed batch for every step, and the RNG seeded from the iteration, so that an
    uninterrupted and a resumed run get the same inputs and draw the same pairs at every iteration."""

    @classmethod
    def build_train_loader(cls, cfg):
        torch.manual_seed(11)
        return itertools.repeat(fake_batch(cfg.SOLVER.IMS_PER_BATCH, cfg.INPUT.VIEWS.CROP_SIZE))

    def build_hooks(self):
        return [SeedFromIteration(), *super().build_hooks()]


class SeedFromIteration(HookBase):
    def before_step(self):
        torch.manual_seed(1000 + self.trainer.iter)


def fixed_batch_cfg(output_dir):
    # The LR changes at every step (warmup, then cosine), the 256-key queue wraps at the third step.
    return demo_cfg(
        *FEW_PAIRS, "INPUT.VIEWS.CROP_SIZE", "32", "SOLVER.IMS_PER_BATCH", "4", "MODEL.MOMENTUM_CONTRAST.QUEUE_SIZE", "256",
        "SOLVER.MAX_ITER", "5", "SOLVER.CHECKPOINT_PERIOD", "2", "SOLVER.WARMUP_ITERS", "2",
        "OUTPUT_DIR", str(output_dir),
    )


def test_steps_after_resume_equal_the_uninterrupted_steps(tmp_path):
    uninterrupted = FixedBatchTrainer(fixed_batch_cfg(tmp_path / "uninterrupted"))
    uninterrupted.resume_or_load(resume=False)
    uninterrupted.train()  # iterations 0..4, checkpoints after iterations 1 and 3

    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    shutil.copy(tmp_path / "uninterrupted" / "model_0000001.pth", resumed_dir)
    (resumed_dir / "last_checkpoint").write_text("model_0000001.pth")
    checkpoint = torch.load(resumed_dir / "model_0000001.pth", map_location="cpu")
    # The state a resume must restore is not trivial: the key encoder lags the query encoder, the queue is filled.
    state = checkpoint["model"]
    assert not torch.equal(state["key_encoder.head.projection.weight"], state["query_encoder.head.projection.weight"])
    assert int(state["queue_ptr"]) == 0 and bool((state["queue_image_ids"] >= 0).all())

    resumed = FixedBatchTrainer(fixed_batch_cfg(resumed_dir))
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 2
    assert_same(resumed.model.state_dict(), checkpoint["model"], "model")
    assert_same(resumed.state_dict(), checkpoint["trainer"], "trainer")
    resumed.train()  # iterations 2..4

    assert resumed.iter == uninterrupted.iter
    assert_same(resumed.model.state_dict(), uninterrupted.model.state_dict(), "model")
    assert_same(resumed.state_dict(), uninterrupted.state_dict(), "trainer")


def resume_opts(output_dir):
    # 12 steps of 4 images x 32 keys: the 640-key queue wraps, and its pointer ends at 256, not 0.
    return [
        "--config-file", DEMO_CONFIG, *TINY_OPTS, "INPUT.VIEWS.CROP_SIZE", "32", "MODEL.MOMENTUM_CONTRAST.QUEUE_SIZE", "640",
        "SOLVER.MAX_ITER", "12", "SOLVER.CHECKPOINT_PERIOD", "3", "SEED", "5", "OUTPUT_DIR", str(output_dir),
    ]


@pytest.mark.slow
def test_sigkill_after_a_checkpoint_then_resume(tmp_path):
    with open(tmp_path / "killed.log", "w") as log:
        run = subprocess.Popen(
            [sys.executable, "tools/train_net.py", *resume_opts(tmp_path)], cwd=REPO, env=train_net_env(), stdout=log, stderr=log
        )
        last_checkpoint = tmp_path / "last_checkpoint"
        deadline = time.monotonic() + 240
        # fvcore writes last_checkpoint after the checkpoint file is complete.
        while not (last_checkpoint.exists() and last_checkpoint.read_text() == "model_0000002.pth"):
            if run.poll() is not None or time.monotonic() > deadline:
                run.kill()
                pytest.fail("the run ended or hung before its first checkpoint:\n" + (tmp_path / "killed.log").read_text()[-3000:])
            time.sleep(0.02)
        run.send_signal(signal.SIGKILL)
        assert run.wait() == -signal.SIGKILL
    assert not (tmp_path / "model_final.pth").exists()
    checkpoint = torch.load(tmp_path / "model_0000002.pth", map_location="cpu")

    # What `--resume` restores, checked in this process with the same config.
    cfg = demo_cfg(*resume_opts(tmp_path)[2:])
    trainer = VADeRTrainer(cfg)
    trainer.resume_or_load(resume=True)
    assert trainer.start_iter == 3
    assert_same(trainer.model.state_dict(), checkpoint["model"], "model")
    assert_same(trainer.state_dict(), checkpoint["trainer"], "trainer")

    resumed = run_train_net("--resume", *resume_opts(tmp_path))
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"Loading trainer from {tmp_path}/model_0000002.pth" in resumed.stdout
    assert "Starting training from iteration 3" in resumed.stdout
    final = torch.load(tmp_path / "model_final.pth", map_location="cpu")
    assert final["iteration"] == 11
    assert int(final["model"]["queue_ptr"]) == 12 * 4 * 32 % 640
    # The LR schedule went on where it stopped: the final LR is that of 12 uninterrupted scheduler steps.
    optimizer = build_optimizer(cfg, build_model(cfg))
    scheduler = build_lr_scheduler(cfg, optimizer)
    for _ in range(12):
        optimizer.step()
        scheduler.step()
    final_lrs = [group["lr"] for group in final["trainer"]["_trainer"]["optimizer"]["param_groups"]]
    assert final_lrs == pytest.approx([group["lr"] for group in optimizer.param_groups], rel=1e-12)
