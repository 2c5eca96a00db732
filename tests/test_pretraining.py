"""End to end: `tools/train_net.py` on the demo config learns, and its checkpoint holds the whole state."""

import os

import pytest
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from .conftest import PRETRAIN_ITERS, SHORT_PRETRAIN_ITERS, SHORT_PRETRAIN_OPTS
from .helpers import demo_cfg


def series(metrics, name):
    return [(m["iteration"], m[name]) for m in metrics if name in m]


@pytest.mark.slow
def test_demo_pretraining_lowers_loss_and_raises_top1(pretrained_demo):
    # The queue (16384 keys, 2048 per step) is full from iteration 8 on: compare the first record after
    # that with the last one, so the change reflects learning rather than a growing set of negatives.
    # With a single loss term Detectron2 logs it as total_loss only.
    loss = series(pretrained_demo["metrics"], "total_loss")
    top1 = series(pretrained_demo["metrics"], "vader_top1_accuracy")
    assert loss[-1][0] == PRETRAIN_ITERS - 1 and len(loss) >= 3, loss
    assert loss[-1][1] < loss[0][1] - 0.3, loss
    # Top-1 is measured on one batch per record: average two records at each end against that noise.
    first, last = (top1[0][1] + top1[1][1]) / 2, (top1[-1][1] + top1[-2][1]) / 2
    assert last > 1.5 * first and last > first + 0.02, top1
    fill = series(pretrained_demo["metrics"], "vader_queue_fill")
    assert fill[-1][1] == 1.0
    matches = series(pretrained_demo["metrics"], "vader_valid_matches")
    assert all(m >= 32 for _, m in matches)


def test_demo_pretraining_leaves_checkpoint_metrics_and_events(short_pretraining):
    files = os.listdir(short_pretraining["output_dir"])
    assert "model_final.pth" in files and "metrics.json" in files and "last_checkpoint" in files
    assert any(f.startswith("events.out.tfevents") for f in files)
    assert "eta:" in short_pretraining["log"]  # D2's progress / ETA logging


def test_checkpoint_restores_key_encoder_and_queue_exactly(short_pretraining):
    saved = torch.load(short_pretraining["checkpoint"], map_location="cpu", weights_only=False)
    assert saved["iteration"] == SHORT_PRETRAIN_ITERS - 1
    model = build_model(demo_cfg(*SHORT_PRETRAIN_OPTS))
    DetectionCheckpointer(model).load(short_pretraining["checkpoint"])
    state = model.state_dict()
    key_entries = [k for k in saved["model"] if k.startswith("key_encoder.")]
    assert key_entries
    for name in key_entries + ["queue", "queue_image_ids", "queue_ptr"]:
        assert torch.equal(state[name], saved["model"][name]), name
    # A trained key encoder is a moving average of the query encoder: close to it, but not equal.
    query = state["query_encoder.head.projection.weight"]
    key = state["key_encoder.head.projection.weight"]
    assert not torch.equal(query, key)
    assert (query - key).norm() < 0.5 * query.norm()
    assert (model.queue_image_ids >= 0).all()
    torch.testing.assert_close(model.queue.norm(dim=1), torch.ones(model.queue.shape[0]))
