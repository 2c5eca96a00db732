"""
Shuffle-BN in one process (MODEL.MOMENTUM_CONTRAST.KEY_BN shuffle): the key encoder normalises over groups of a random
permutation of the batch, the query encoder over contiguous groups. The two-process version is checked
in tests/test_distributed.py.
"""

import pytest
import torch

from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from vader_d2.config import check_vader_config
from vader_d2.errors import UserError
from vader_d2.modeling.vader import sample_grid

from .helpers import FEW_PAIRS, demo_cfg, fake_batch

BATCH = 8
CROP = 32  # 8 x 8 cells
PAIRS = 32


def tiny_model(*opts, seed=0):
    cfg = demo_cfg(
        *FEW_PAIRS, "INPUT.VIEWS.CROP_SIZE", str(CROP), "SOLVER.IMS_PER_BATCH", str(BATCH),
        "MODEL.MOMENTUM_CONTRAST.QUEUE_SIZE", str(BATCH * PAIRS), *opts,
    )
    torch.manual_seed(seed)
    model = build_model(cfg)
    model.reset_key_encoder()
    return model.train()


def record_inputs(encoder):
    """The input of every call of ``encoder``, in call order."""
    inputs = []
    encoder.register_forward_hook(lambda module, args, output: inputs.append(args[0].detach().clone()))
    return inputs


def one_step(model, batch, seed):
    torch.manual_seed(seed)
    with EventStorage(0):
        return model(batch)["loss_vader"]


@pytest.mark.parametrize("group_size", [2, 4])
def test_keys_are_those_of_their_permuted_group_and_queries_of_their_contiguous_group(group_size):
    model = tiny_model("MODEL.MOMENTUM_CONTRAST.BN_GROUP_SIZE", str(group_size))
    torch.manual_seed(5)
    batch = fake_batch(BATCH, CROP, first_image_id=100)
    query_inputs, key_inputs = record_inputs(model.query_encoder), record_inputs(model.key_encoder)
    one_step(model, batch, seed=7)

    # The draws of the step, replayed: the permutation first, then the pairs.
    torch.manual_seed(7)
    permutation = torch.randperm(BATCH)
    view1 = model.stack([x["view1"] for x in batch], "cpu")
    view2 = model.stack([x["view2"] for x in batch], "cpu")
    valid = torch.stack([x["valid"] for x in batch]).flatten(1)
    matches = torch.stack([x["correspondence"] for x in batch]).flatten(1, 2)
    _, positions = model.sample_cells(valid, matches)
    groups = BATCH // group_size
    assert not torch.equal(permutation, torch.arange(BATCH))

    # Queries: the encoder ran once per contiguous group of view 1.
    assert len(query_inputs) == groups
    for g, seen in enumerate(query_inputs):
        assert torch.equal(seen, model.normalize(view1[g * group_size : (g + 1) * group_size]))

    # Keys: the key encoder run on each permuted group alone, read at its images' positions, land in the
    # queue at their image's place, with their image's id.
    assert len(key_inputs) == groups
    expected = torch.empty(BATCH, PAIRS, model.queue.shape[1])
    with torch.no_grad():
        for g in range(groups):
            members = permutation[g * group_size : (g + 1) * group_size]
            assert torch.equal(key_inputs[g], model.normalize(view2[members]))
            expected[members] = sample_grid(model.key_encoder(model.normalize(view2[members])), positions[members], "bilinear")
    queued = model.queue[: BATCH * PAIRS].view(BATCH, PAIRS, -1)
    torch.testing.assert_close(queued, expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(model.queue_image_ids[: BATCH * PAIRS], torch.arange(100, 100 + BATCH).repeat_interleave(PAIRS))

    # The control: the statistics are the group's, not the batch's.
    with torch.no_grad():
        whole = sample_grid(model.key_encoder(model.normalize(view2)), positions, "bilinear")
    assert (whole - expected).abs().max() > 1e-3


def test_one_group_is_the_plain_batch_norm_step():
    """BN_GROUP_SIZE = the batch: one group, which no permutation changes: exactly KEY_BN sync with plain BN."""
    batch = fake_batch(BATCH, CROP)
    runs = {}
    for key_bn in ("shuffle", "sync"):
        model = tiny_model("MODEL.MOMENTUM_CONTRAST.KEY_BN", key_bn, "MODEL.MOMENTUM_CONTRAST.BN_GROUP_SIZE", str(BATCH))
        loss = one_step(model, batch, seed=3)
        loss.backward()
        runs[key_bn] = (loss, model)
    (shuffle_loss, shuffle), (sync_loss, sync) = runs["shuffle"], runs["sync"]
    assert shuffle_loss.item() == sync_loss.item()
    assert torch.equal(shuffle.queue, sync.queue)
    for (name, a), b in zip(shuffle.query_encoder.named_parameters(), sync.query_encoder.parameters()):
        assert torch.equal(a.grad, b.grad), name

    # The control: two groups give another loss.
    two_groups = tiny_model("MODEL.MOMENTUM_CONTRAST.BN_GROUP_SIZE", str(BATCH // 2))
    assert one_step(two_groups, batch, seed=3).item() != pytest.approx(sync_loss.item(), rel=1e-4)


def test_global_baseline_shuffles_its_image_keys_too():
    model = tiny_model("MODEL.VADER.LOSS", "global", "MODEL.MOMENTUM_CONTRAST.QUEUE_SIZE", str(BATCH), "MODEL.MOMENTUM_CONTRAST.BN_GROUP_SIZE", "2")
    key_inputs = record_inputs(model.key_encoder)
    batch = fake_batch(BATCH, CROP)
    torch.manual_seed(1)
    with EventStorage(0):
        model(batch)
    assert len(key_inputs) == BATCH // 2
    torch.manual_seed(1)
    permutation = torch.randperm(BATCH)
    view2 = model.stack([x["view2"] for x in batch], "cpu")
    with torch.no_grad():
        expected = torch.cat([model.key_encoder(model.normalize(view2[g])) for g in permutation.split(2)])
    ordered = torch.empty_like(expected)
    ordered[permutation] = expected
    torch.testing.assert_close(model.queue, ordered, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "opts, world_size, expected",
    [
        (["MODEL.MOMENTUM_CONTRAST.BN_GROUP_SIZE", "3"], 1, "BN_GROUP_SIZE=3 must divide the 8 images"),
        (["MODEL.MOMENTUM_CONTRAST.BN_GROUP_SIZE", "4"], 4, "e.g. MODEL.MOMENTUM_CONTRAST.BN_GROUP_SIZE 2"),
        (["MODEL.MOMENTUM_CONTRAST.BN_GROUP_SIZE", "0"], 1, "BN_GROUP_SIZE=0"),
        (["MODEL.RESNETS.NORM", "naiveSyncBN"], 1, "KEY_BN shuffle needs per-process batch norm"),
        (["MODEL.MOMENTUM_CONTRAST.KEY_BN", "sync"], 2, "needs synchronised batch norm"),
        (["MODEL.MOMENTUM_CONTRAST.KEY_BN", "shufle"], 1, "must be 'shuffle' or 'sync'"),
    ],
)
def test_batch_norm_settings_that_cannot_work_are_refused(opts, world_size, expected):
    with pytest.raises(UserError, match=expected):
        check_vader_config(demo_cfg(*opts), world_size)


def test_demo_config_has_two_groups_per_process_and_passes_its_checks():
    cfg = demo_cfg()
    assert cfg.MODEL.MOMENTUM_CONTRAST.KEY_BN == "shuffle"
    assert cfg.SOLVER.IMS_PER_BATCH // cfg.MODEL.MOMENTUM_CONTRAST.BN_GROUP_SIZE == 2
    check_vader_config(cfg, 1)
    check_vader_config(cfg, 2)
