"""The benchmark measures what it says, and the lean hot path computes what the plain formulation does."""

import json
import os

import pytest
import torch

from detectron2.modeling import build_model
from detectron2.solver import build_optimizer
from detectron2.utils.events import EventStorage

from benchmarks import vader_overhead as cli
from benchmarks.report import format_report
from benchmarks.steps import BareNetworkStep, build_benchmark_config, build_step_model
from vader_d2.errors import UserError
from vader_d2.modeling.losses import NegativeLogSumExp, info_nce_loss

from .helpers import REPO, demo_cfg, fake_batch, unit


def tiny_cfg(queue_size=128, **overrides):
    settings = dict(depth=18, crop_size=64, batch_size=2, queue_size=queue_size, device="cpu", amp=False,
                    channels_last=False, dataset="vader_demo_photos_train", num_workers=0)
    settings.update(overrides)
    return build_benchmark_config(os.path.join(REPO, "configs", "vader_pretrain.yaml"), **settings)


def test_bare_and_full_steps_train_the_same_network():
    cfg = tiny_cfg()
    bare, full = build_step_model(cfg, bare=True), build_step_model(cfg, bare=False)
    assert isinstance(bare, BareNetworkStep) and type(full).__name__ == "VADeR"
    for name in ("query_encoder", "key_encoder"):
        bare_net, full_net = getattr(bare, name), getattr(full, name)
        modules = [[(n, type(m)) for n, m in net.named_modules()] for net in (bare_net, full_net)]
        assert modules[0] == modules[1]
        bare_params, full_params = dict(bare_net.named_parameters()), dict(full_net.named_parameters())
        assert bare_params.keys() == full_params.keys()
        for n, p in bare_params.items():
            assert p.shape == full_params[n].shape and p.requires_grad == full_params[n].requires_grad, n
            assert torch.equal(p, full_params[n]), f"{name}.{n}: the paths must start from the same weights"
    # The optimizer steps the same parameters in both.
    groups = [[p.shape for g in build_optimizer(cfg, m).param_groups for p in g["params"]] for m in (bare, full)]
    assert groups[0] == groups[1] and len(groups[0]) == len(list(full.query_encoder.parameters()))

    # The bare step runs the encoders (gradient into the query encoder, none into the key encoder) and
    # none of VADeR's own work.
    batch = fake_batch(2, crop=64)
    key_before = [p.clone() for p in bare.key_encoder.parameters()]
    with EventStorage(0):
        bare(batch)["loss_bare"].backward()
        full(batch)["loss_vader"].backward()
    assert all(p.grad is not None for p in bare.query_encoder.parameters())
    assert all(p.grad is None for p in bare.key_encoder.parameters())
    assert all(torch.equal(a, b) for a, b in zip(key_before, bare.key_encoder.parameters()))
    assert int(bare.queue_ptr) == 0 and int(full.queue_ptr) == 2 * full.pairs_per_image


def reference_info_nce(queries, keys, negatives, query_ids, negative_ids, temperature):
    """The plain autograd formulation: masked (N, K) logits and torch.logsumexp."""
    positive = (queries * keys).sum(dim=1) / temperature
    logits = queries @ negatives.t() / temperature
    excluded = (negative_ids[None, :] < 0) | (negative_ids[None, :] == query_ids[:, None])
    logits = logits.masked_fill(excluded, torch.finfo(logits.dtype).min)
    return (torch.logaddexp(positive, torch.logsumexp(logits, dim=1)) - positive).mean()


def test_loss_and_gradient_match_the_plain_formulation():
    torch.manual_seed(0)
    queries, keys, negatives = unit(12, 16), unit(12, 16), unit(50, 16)
    query_ids = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    negative_ids = torch.randint(-1, 6, (50,))
    negative_ids[:3] = 0  # own-image keys and empty slots are both in there
    # Image 3 has no usable negative at all: its rows must contribute a zero loss and no gradient.
    for ids in (negative_ids, torch.where(negative_ids == 3, 4, negative_ids)):
        q1, q2 = queries.clone().requires_grad_(), queries.clone().requires_grad_()
        loss, positive, hardest, excluded = info_nce_loss(q1, keys, negatives, query_ids, ids, 0.1)
        expected = reference_info_nce(q2, keys, negatives, query_ids, ids, 0.1)
        loss.backward()
        expected.backward()
        torch.testing.assert_close(loss, expected, rtol=1e-12, atol=0)
        torch.testing.assert_close(q1.grad, q2.grad, rtol=1e-10, atol=1e-14)
        masked = (queries @ negatives.t() / 0.1).masked_fill(excluded, float("-inf")).amax(dim=1)
        usable_rows = ~excluded.all(dim=1)
        torch.testing.assert_close(hardest[usable_rows], masked[usable_rows])
    all_excluded = NegativeLogSumExp.apply(queries, negatives, torch.ones(12, 50, dtype=torch.bool))[0]
    assert torch.isfinite(all_excluded).all()

    q = queries[:4].clone().requires_grad_()
    mask = torch.rand(4, 50) < 0.3
    assert torch.autograd.gradcheck(lambda x: NegativeLogSumExp.apply(x, negatives, mask)[0], (q,))


def test_loss_is_float32_under_autocast():
    torch.manual_seed(1)
    queries, keys, negatives = (unit(*s, dtype=torch.float32) for s in ((8, 16), (8, 16), (64, 16)))
    query_ids, negative_ids = torch.arange(8) // 4, torch.arange(64) % 5
    plain = info_nce_loss(queries, keys, negatives, query_ids, negative_ids, 0.07)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = info_nce_loss(queries, keys, negatives, query_ids, negative_ids, 0.07)[0]
    assert mixed.dtype == torch.float32
    assert mixed.item() == plain.item()


def test_step_under_autocast_keeps_the_queue_float32_and_normalised():
    """What SOLVER.AMP.ENABLED does to the step on a GPU, here with the CPU's bfloat16 autocast."""
    torch.manual_seed(0)
    model = build_model(demo_cfg("INPUT.VIEWS.CROP_SIZE", 64))
    with EventStorage(0), torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(fake_batch(2, crop=64))["loss_vader"]
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    keys = model.queue[: int(model.queue_ptr)]
    assert model.queue.dtype == torch.float32 and len(keys) == 2 * model.pairs_per_image
    torch.testing.assert_close(keys.norm(dim=1), torch.ones(len(keys)), rtol=0, atol=1e-5)


def test_channels_last_changes_the_memory_order_not_the_result():
    batch = fake_batch(2, crop=64)
    losses = {}
    for channels_last in (False, True):
        torch.manual_seed(0)
        model = build_model(demo_cfg("MODEL.MOMENTUM_CONTRAST.CHANNELS_LAST", channels_last, "INPUT.VIEWS.CROP_SIZE", 64))
        conv = model.query_encoder.backbone.bottom_up.stem.conv1.weight
        assert conv.is_contiguous(memory_format=torch.channels_last) == channels_last
        torch.manual_seed(1)
        with EventStorage(0):
            losses[channels_last] = model(batch)["loss_vader"]
    torch.testing.assert_close(losses[True], losses[False], rtol=1e-4, atol=1e-5)


def test_benchmark_runs_and_reports_every_ratio(tmp_path):
    output = tmp_path / "bench.json"
    args = cli.parse_args([
        "--depth", "18", "--size", "64", "--batch", "2", "--queue-sizes", "128", "256", "--device", "cpu",
        "--warmup", "0", "--steps", "1", "--mapper-images", "1", "--workers", "0", "--loader-batches", "1",
        "--output", str(output),
    ])
    result = cli.run_benchmark(args, log=lambda message: None)
    assert set(result["steps"]) == {"bare", "full_q128", "full_q256"}
    assert all(step["median_s"] > 0 and len(step["times_s"]) == 1 for step in result["steps"].values())
    assert set(result["ratios"]) == {
        "full_over_bare", "mapper_per_image_over_step_per_image", "queue_128_to_256_step_change"
    }
    full, bare = result["steps"]["full_q128"]["median_s"], result["steps"]["bare"]["median_s"]
    assert result["ratios"]["full_over_bare"]["value"] == pytest.approx(full / bare)
    # The larger queue is part of the state the full step keeps: 128 more 128-d float keys and their ids.
    grown = result["steps"]["full_q256"]["state_mb"] - result["steps"]["full_q128"]["state_mb"]
    assert grown * 2**20 == pytest.approx(128 * (128 * 4 + 8))
    assert result["settings"]["device"] == "cpu" and result["load_average_start"] is not None
    assert "full_over_bare" in format_report(result)
    cli.write_json(result, str(output))
    assert json.loads(output.read_text())["settings"]["queue_sizes"] == [128, 256]


def test_help_documents_every_option():
    parser = cli.build_parser()
    for action in parser._actions:
        assert action.help and action.help.strip(), action.dest


def test_mistakes_are_one_line_user_errors():
    # --amp on the CPU is bfloat16 autocast (vader_d2/engine/mixed_precision.py), no longer a mistake.
    assert tiny_cfg(amp=True).SOLVER.AMP.ENABLED
    with pytest.raises(UserError, match="QUEUE_SIZE"):
        tiny_cfg(queue_size=100)
