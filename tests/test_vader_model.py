"""The meta-architecture: loss formula, momentum arithmetic, queue order, gradients, checkpoints."""

import math

import pytest
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from vader_d2 import MoCo, add_vader_config
from vader_d2.cli import build_config
from vader_d2.config import check_vader_config
from vader_d2.errors import UserError

from vader_d2.modeling.losses import info_nce_loss
from vader_d2.modeling.vader import sample_grid

from .helpers import demo_cfg, fake_batch, unit


def direct_info_nce(q, k, negatives, q_ids, neg_ids, t):
    """The formula of method.md, written out per query in float64."""
    total = 0.0
    for i in range(q.shape[0]):
        pos = math.exp(float(q[i] @ k[i]) / t)
        neg = sum(
            math.exp(float(q[i] @ negatives[j]) / t)
            for j in range(negatives.shape[0])
            if neg_ids[j] >= 0 and neg_ids[j] != q_ids[i]
        )
        total += -math.log(pos / (pos + neg))
    return total / q.shape[0]


@pytest.mark.parametrize("temperature", [0.07, 0.5])
def test_loss_matches_direct_formula(temperature):
    torch.manual_seed(0)
    q, k, negatives = unit(6, 8), unit(6, 8), unit(20, 8)
    q_ids = torch.tensor([0, 0, 1, 1, 2, 3])
    neg_ids = torch.tensor([0, 1, 2, 5, 6, -1, -1, 7, 0, 1, 8, 9, 3, 3, 4, 4, 5, 5, -1, 9])
    loss, *_ = info_nce_loss(q, k, negatives, q_ids, neg_ids, temperature)
    expected = direct_info_nce(q, k, negatives, q_ids, neg_ids, temperature)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("temperature", [0.01, 0.07, 0.5])
def test_loss_and_gradient_match_masked_logsumexp_in_float64(temperature):
    # 0.01 puts ordinary negatives far below the loss's exp floor: it must not show in value or gradient.
    torch.manual_seed(2)
    q, k, negatives = unit(6, 8).requires_grad_(), unit(6, 8), unit(40, 8)
    q_ids = torch.tensor([0, 0, 1, 1, 2, 7])
    neg_ids = torch.randint(0, 8, (40,))
    neg_ids[::3] = -1
    loss, *_ = info_nce_loss(q, k, negatives, q_ids, neg_ids, temperature)
    (grad,) = torch.autograd.grad(loss, q)

    reference_q = q.detach().clone().requires_grad_()
    usable = (neg_ids[None] >= 0) & (neg_ids[None] != q_ids[:, None])
    logits = torch.cat([(reference_q * k).sum(1, keepdim=True), reference_q @ negatives.t()], dim=1) / temperature
    logits = logits.masked_fill(~torch.cat([torch.ones(6, 1, dtype=torch.bool), usable], dim=1), float("-inf"))
    reference = (torch.logsumexp(logits, dim=1) - logits[:, 0]).mean()
    (reference_grad,) = torch.autograd.grad(reference, reference_q)
    assert loss.item() == pytest.approx(reference.item(), rel=1e-10)
    assert torch.allclose(grad, reference_grad, rtol=1e-8, atol=1e-12)


def test_negatives_from_own_image_do_not_count():
    torch.manual_seed(1)
    q, k, negatives = unit(4, 8), unit(4, 8), unit(10, 8)
    q_ids = torch.tensor([3, 3, 4, 4])
    neg_ids = torch.tensor([3, 3, 3, 4, 7, 7, 8, 8, -1, 3])
    _, _, _, excluded = info_nce_loss(q, k, negatives, q_ids, neg_ids, 0.1)
    assert torch.equal(excluded, (neg_ids[None] == q_ids[:, None]) | (neg_ids[None] < 0))

    q_ids = torch.tensor([3, 3, 3, 3])
    loss = info_nce_loss(q, k, negatives, q_ids, neg_ids, 0.1)[0]
    # Moving a negative of the queries' own image (or an empty slot) must not change the loss.
    moved = negatives.clone()
    moved[[0, 1, 2, 8, 9]] = q[0]
    assert info_nce_loss(q, k, moved, q_ids, neg_ids, 0.1)[0].item() == pytest.approx(loss.item(), rel=1e-12)
    # ...while moving a negative of another image does.
    moved[3] = q[0]
    assert info_nce_loss(q, k, moved, q_ids, neg_ids, 0.1)[0].item() != pytest.approx(loss.item(), rel=1e-6)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_model(demo_cfg())
    m.train()
    return m


def test_momentum_update_arithmetic(model):
    torch.manual_seed(2)
    with torch.no_grad():
        for p in model.query_encoder.parameters():
            p.add_(torch.randn_like(p))
    before = [p.detach().clone() for p in model.key_encoder.parameters()]
    query = [p.detach().clone() for p in model.query_encoder.parameters()]
    model.momentum_update_key_encoder()
    m = model.momentum
    for b, q, after in zip(before, query, model.key_encoder.parameters()):
        expected = (m * b.double() + (1 - m) * q.double()).float()
        torch.testing.assert_close(after, expected, rtol=0, atol=2e-6)
    assert not any(torch.equal(b, a) for b, a in zip(before, model.key_encoder.parameters()))


def test_reset_key_encoder_copies_query(model):
    model.reset_key_encoder()
    for (name, q), k in zip(model.query_encoder.state_dict().items(), model.key_encoder.state_dict().values()):
        assert torch.equal(q, k), name


def test_queue_is_fifo_and_wraps(model):
    size, dim = model.queue.shape
    model.queue.zero_()
    model.queue_image_ids.fill_(-1)
    model.queue_ptr.zero_()
    chunk = size // 4 + 3  # not a divisor of the queue size: exercises the wrap inside one write
    written = []
    for step in range(6):
        keys = torch.full((chunk, dim), float(step))
        ids = torch.arange(chunk) + 100_000 * step
        model.enqueue(keys, ids)
        written.append(ids)
    stream = torch.cat(written)
    # The queue holds the last `size` ids written, each in slot (position in stream) mod size.
    last = stream[-size:]
    slots = (torch.arange(stream.numel() - size, stream.numel())) % size
    assert torch.equal(model.queue_image_ids[slots], last)
    assert int(model.queue_ptr) == stream.numel() % size
    assert torch.equal(model.queue[slots, 0], (last // 100_000).float())


def test_no_gradient_reaches_key_encoder(model):
    model.zero_grad(set_to_none=True)
    with EventStorage(0):
        losses = model(fake_batch(4, crop=128))
    sum(losses.values()).backward()
    assert all(p.grad is None and not p.requires_grad for p in model.key_encoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.query_encoder.parameters())


def test_batch_of_one_image_has_no_negatives(model):
    """Every key in the queue comes from the query's own image: nothing to contrast, loss exactly 0."""
    model.queue_image_ids.fill_(-1)
    batch = fake_batch(3, crop=128)
    for x in batch:
        x["image_id"] = 42
    with EventStorage(0):
        loss = model(batch)["loss_vader"]
    assert loss.item() == 0.0


def test_checkpoint_restores_key_encoder_and_queue(model, tmp_path):
    with EventStorage(0):
        for _ in range(2):
            model(fake_batch(4, crop=128))
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("snapshot")
    torch.manual_seed(123)
    restored = build_model(demo_cfg())
    DetectionCheckpointer(restored).load(str(tmp_path / "snapshot.pth"))
    original = model.state_dict()
    for name, value in restored.state_dict().items():
        assert torch.equal(value, original[name]), name
    assert int(restored.queue_ptr) == int(model.queue_ptr) != 0


def test_dense_embeddings_are_unit_vectors_at_stride_4(model):
    model.eval()
    try:
        out = model([{"image": torch.randint(0, 256, (3, 100, 150), dtype=torch.uint8)}])
    finally:
        model.train()
    embedding = out[0]["embedding"]
    assert embedding.shape == (model.key_encoder.head.projection.out_channels, 25, 38)
    torch.testing.assert_close(embedding.norm(dim=0), torch.ones(25, 38), rtol=0, atol=1e-5)


def test_sample_grid_reads_cells_exactly_and_interpolates_between():
    torch.manual_seed(3)
    embeddings = torch.nn.functional.normalize(torch.randn(2, 4, 5, 7), dim=1)
    positions = torch.tensor([[[0.0, 0.0], [6.0, 4.0]], [[3.0, 2.0], [1.0, 1.0]]])
    for mode in ("bilinear", "nearest"):
        sampled = sample_grid(embeddings, positions, mode)
        for b in range(2):
            for p in range(2):
                x, y = positions[b, p].long()
                torch.testing.assert_close(sampled[b, p], embeddings[b, :, y, x])
    halfway = sample_grid(embeddings[:1], torch.tensor([[[2.5, 1.0]]]), "bilinear")[0, 0]
    expected = torch.nn.functional.normalize(embeddings[0, :, 1, 2] + embeddings[0, :, 1, 3], dim=0)
    torch.testing.assert_close(halfway, expected)
    nearest = sample_grid(embeddings[:1], torch.tensor([[[2.4, 0.6]]]), "nearest")[0, 0]
    torch.testing.assert_close(nearest, embeddings[0, :, 1, 2])


def test_reset_run_state_empties_every_slot_and_the_skip_count(model):
    batch = fake_batch(2, crop=128)
    batch[1]["num_skipped"] = 3
    with EventStorage(0):
        model(batch)
    assert (model.queue_image_ids >= 0).any()
    assert int(model.state_dict()["skipped_images"]) == 3  # saved with checkpoints: a resumed run goes on counting
    model.reset_run_state()
    assert (model.queue_image_ids == -1).all() and int(model.queue_ptr) == 0
    assert not model.queue.any() and int(model.skipped_images) == 0


def moco_step_recomputed(model, batch):
    """The MoCo baseline's queries and keys for ``batch``, recomputed from its encoders (one BN group)."""
    view1 = model.normalize(torch.stack([x["view1"] for x in batch]))
    view2 = model.normalize(torch.stack([x["view2"] for x in batch]))
    with torch.no_grad():
        return model.query_encoder(view1).double(), model.key_encoder(view2).double()


@pytest.mark.parametrize("enqueue", ["after_loss", "before_loss"])
def test_moco_negatives_are_earlier_steps_keys_after_loss_and_the_batchs_too_before(enqueue):
    """ENQUEUE after_loss is MoCo's order: a step's negatives are the queue as the step found it (empty
    at the first step: loss 0), and the step's keys enter it afterwards; before_loss adds the batch's
    other images. Both checked against the float64 formula on the model's own queries and keys."""
    cfg = demo_cfg(
        "MODEL.VADER.LOSS", "global", "MODEL.MOMENTUM_CONTRAST.ENQUEUE", enqueue, "MODEL.MOMENTUM_CONTRAST.KEY_BN", "sync",
        "MODEL.MOMENTUM_CONTRAST.QUEUE_SIZE", "8", "MODEL.VADER.TEMPERATURE", "0.2", "MODEL.VADER.GLOBAL_HEAD.HIDDEN_DIM", "64",
    )
    torch.manual_seed(0)
    moco = build_model(cfg).train()
    moco.momentum = 1.0  # the key encoder stays put, so the recomputation sees the step's weights
    first, second = fake_batch(4, crop=64), fake_batch(4, crop=64, first_image_id=4)
    ids = torch.arange(8)
    with EventStorage(0):
        first_loss = moco(first)["loss_moco"].item()
        queue_before = moco.queue.double().clone()
        second_loss = moco(second)["loss_moco"].item()
    q1, k1 = moco_step_recomputed(moco, first)
    q2, k2 = moco_step_recomputed(moco, second)
    if enqueue == "after_loss":
        assert first_loss == 0.0  # nothing queued yet, nothing to contrast
        expected = direct_info_nce(q2, k2, queue_before[:4], ids[4:], ids[:4], 0.2)
    else:
        assert first_loss == pytest.approx(direct_info_nce(q1, k1, k1, ids[:4], ids[:4], 0.2), rel=1e-5)
        expected = direct_info_nce(q2, k2, torch.cat([k1, k2]), ids[4:], ids, 0.2)
    assert second_loss == pytest.approx(expected, rel=1e-5)
    # Either way both steps' keys end up queued, in step order.
    torch.testing.assert_close(moco.queue.double(), torch.cat([k1, k2]), rtol=0, atol=1e-6)
    assert torch.equal(moco.queue_image_ids, ids)


def test_old_spelling_of_the_moco_baseline_is_moco_with_the_values_it_gives():
    """MODEL.VADER.LOSS global (configs from before MoCo was a meta-architecture of its own) builds MoCo with
    MODEL.VADER's TEMPERATURE, SYMMETRIC and GLOBAL_HEAD.*, the same model as the new spelling, whose
    state dict has the names of the old checkpoints."""
    old = demo_cfg(
        "MODEL.VADER.LOSS", "global", "MODEL.MOMENTUM_CONTRAST.QUEUE_SIZE", "64", "MODEL.VADER.TEMPERATURE", "0.3", "MODEL.VADER.SYMMETRIC", "True",
        "MODEL.VADER.GLOBAL_HEAD.IN_FEATURE", "res4", "MODEL.VADER.GLOBAL_HEAD.HIDDEN_DIM", "64",
    )
    new = build_config("configs/moco_global_demo.yaml", [
        "MODEL.DEVICE", "cpu", "MODEL.MOCO.TEMPERATURE", "0.3", "MODEL.MOCO.SYMMETRIC", "True", "MODEL.MOCO.IN_FEATURE", "res4",
        "MODEL.MOCO.HIDDEN_DIM", "64",
    ])
    assert old.MODEL.META_ARCHITECTURE == "MoCo" and old.MODEL.MOCO == new.MODEL.MOCO
    check_vader_config(old)
    torch.manual_seed(0)
    from_old = build_model(old)
    torch.manual_seed(0)
    from_new = build_model(new)
    assert type(from_old) is MoCo and from_old.temperature == 0.3 and from_old.symmetric
    state = from_new.state_dict()
    assert list(from_old.state_dict()) == list(state)
    assert all(torch.equal(value, state[name]) for name, value in from_old.state_dict().items())
    top_level = {name for name in state if "." not in name}
    assert top_level == {"queue", "queue_image_ids", "queue_ptr", "skipped_images"}
    assert {"query_encoder.head.0.weight", "query_encoder.head.2.weight", "key_encoder.head.2.bias"} <= set(state)


def test_old_spelling_mixed_with_the_new_or_not_translated_is_one_line():
    with pytest.raises(UserError, match=r"^MODEL.MOCO.TEMPERATURE is set in a config of the old spelling MODEL.VADER.LOSS global"):
        demo_cfg("MODEL.VADER.LOSS", "global", "MODEL.MOCO.TEMPERATURE", "0.5")
    # An old key on a MoCo config would do nothing.
    with pytest.raises(UserError, match=r"^MODEL.VADER.TEMPERATURE does not apply to MODEL.META_ARCHITECTURE MoCo; set MODEL.MOCO.TEMPERATURE$"):
        build_config("configs/moco_global_demo.yaml", ["MODEL.VADER.TEMPERATURE", "0.2"])
    # A config built without vader_d2.cli.build_config, which translates the old spelling.
    cfg = get_cfg()
    add_vader_config(cfg)
    cfg.merge_from_file("configs/vader_pretrain_demo.yaml")
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.VADER.LOSS", "global", "MODEL.MOMENTUM_CONTRAST.QUEUE_SIZE", "64"])
    for step in (check_vader_config, build_model):
        with pytest.raises(UserError, match=r"^MODEL.VADER.LOSS global: the MoCo baseline is MODEL.META_ARCHITECTURE MoCo now"):
            step(cfg)
