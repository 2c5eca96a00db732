"""
DenseCL and PixPro beside VADeR: each loss against its paper's formula written out in float64, DenseCL's
matching, PixPro's positive pairs and propagation module, LARS, and each method through the trainer
(loss goes down, export loads downstream, resume is exact, mistakes are one line).

Small everywhere: ResNet-18, 96 px views (3 x 3 res5 cells), batch 4, narrow heads.
"""

import copy
import itertools
import math
import os
import pickle
from datetime import timedelta

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from detectron2.data import DatasetCatalog
from detectron2.engine import HookBase, create_ddp_model, launch
from detectron2.modeling import build_model
from detectron2.utils import comm
from detectron2.utils.events import EventStorage

from vader_d2.checkpoint.export import export_to_detectron2
from vader_d2.checkpoint.load_checks import check_weights_load, load_weights
from vader_d2.cli import build_config
from vader_d2.config import check_vader_config
from vader_d2.data import VADeRViewMapper
from vader_d2.data.decoding import read_source_image
from vader_d2.data.transforms import ProjectiveTransform
from vader_d2.errors import UserError
from vader_d2.evaluation import build_feature_extractor
from vader_d2.modeling.cell_geometry import nearest_cells_in_other_view, pixpro_positive_mask, source_cells
from vader_d2.modeling.densecl import dense_contrastive_loss, dense_positive_cells
from vader_d2.modeling.pixpro import PixelPropagation, pixpro_loss, pixpro_momentum
from vader_d2.engine.solver import LARS, build_optimizer
from vader_d2.engine.trainer import VADeRTrainer, load_model_weights
from vader_d2.modeling.momentum import SKIPPED_IMAGES

from .helpers import FEW_PAIRS, run_train_net, single_error_line
from .test_resume import assert_same
from .test_transfer import DOWNSTREAM, load_cfg, pretrained_part, randomize_, transfer_mismatches

pytestmark = pytest.mark.usefixtures("single_thread")

CONFIGS = {"DenseCL": "configs/densecl_demo.yaml", "PixPro": "configs/pixpro_demo.yaml"}
CROP = 96
STRIDE = 32  # res5
CELLS = CROP // STRIDE
TINY = [
    *FEW_PAIRS,
    "INPUT.VIEWS.CROP_SIZE", str(CROP),
    "SOLVER.IMS_PER_BATCH", "4",
    "MODEL.MOMENTUM_CONTRAST.BN_GROUP_SIZE", "2",
    "MODEL.MOMENTUM_CONTRAST.QUEUE_SIZE", "16",
    "MODEL.MOMENTUM_CONTRAST.METRICS_PERIOD", "1",
    "MODEL.DENSECL.HIDDEN_DIM", "64",
    "MODEL.PIXPRO.HIDDEN_DIM", "64",
    "MODEL.PIXPRO.EMBED_DIM", "32",
    "DATALOADER.NUM_WORKERS", "0",
    "SOLVER.WARMUP_ITERS", "2",
]


def method_cfg(method, *opts):
    return build_config(CONFIGS[method], ["MODEL.DEVICE", "cpu", *TINY, *opts])


def mapped_batches(cfg, count, seed=0):
    """``count`` batches of real mapper output (demo photos, the config's views), reproducibly."""
    np.random.seed(seed)
    mapper = VADeRViewMapper(cfg, is_train=True)
    records = DatasetCatalog.get("vader_demo_photos_train")
    size = cfg.SOLVER.IMS_PER_BATCH
    return [[mapper(dict(records[i], image_id=i)) for i in range(b * size, (b + 1) * size)] for b in range(count)]


def view_geometry(cfg, count, seed=0):
    """(view-pair geometry, source height, source width) of ``count`` demo photos, drawn by the mapper."""
    np.random.seed(seed)
    mapper = VADeRViewMapper(cfg, is_train=True)
    geometry = []
    for record in DatasetCatalog.get("vader_demo_photos_train")[:count]:
        image = read_source_image(record["file_name"], cfg.INPUT.VIEWS.MAX_SOURCE_SIZE)
        geometry.append((mapper.sample_geometry(image), image.shape[0], image.shape[1]))
    return geometry


def matrices_and_sizes(geometry):
    first = torch.tensor(np.stack([g.view1_transform.matrix for g, _, _ in geometry]))
    second = torch.tensor(np.stack([g.view2_transform.matrix for g, _, _ in geometry]))
    heights = torch.tensor([float(h) for _, h, _ in geometry], dtype=torch.float64)
    widths = torch.tensor([float(w) for _, _, w in geometry], dtype=torch.float64)
    return first, second, heights, widths


# ---------------------------------------------------------------------------------------------------
# DenseCL


def info_nce_float64(query, positive_key, negatives):
    """-log(exp(q.k+/t) / (exp(q.k+/t) + sum_n exp(q.n/t))) for one query, temperature folded in by the caller."""
    logits = torch.cat([(query * positive_key).sum()[None], negatives @ query])
    return -(logits[0] - torch.logsumexp(logits, dim=0))


def test_densecl_dense_loss_equals_the_formula_in_float64_with_its_gradient():
    torch.manual_seed(0)
    b, d, s, t = 3, 8, 3, 0.2
    query = F.normalize(torch.randn(b, d, s, s), dim=1).requires_grad_()
    key = F.normalize(torch.randn(b, d, s, s), dim=1)
    cells = torch.randint(0, s * s, (b, s * s))
    matched = torch.rand(b, s * s) > 0.3
    queue = F.normalize(torch.randn(10, d), dim=1)
    queue_ids = torch.tensor([0, 1, 2, 5, 6, -1, 1, 7, -1, 8])
    image_ids = torch.tensor([0, 1, 2])

    loss, _, _ = dense_contrastive_loss(query, key, cells, matched, queue, queue_ids, image_ids, t)
    loss.backward()

    query64 = query.detach().double().requires_grad_()
    terms = []
    for n in range(b):
        usable = queue.double()[(queue_ids != image_ids[n]) & (queue_ids >= 0)]
        for i in range(s * s):
            if matched[n, i]:
                q = query64[n, :, i // s, i % s] / t
                k = key.double()[n, :, cells[n, i] // s, cells[n, i] % s]
                terms.append(info_nce_float64(q, k, usable))
    expected = torch.stack(terms).mean()
    expected.backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    torch.testing.assert_close(query.grad.double(), query64.grad, rtol=1e-4, atol=1e-7)


def test_densecl_matching_picks_the_most_similar_backbone_cell():
    torch.manual_seed(1)
    b, c, s = 2, 16, 3
    query = F.normalize(torch.randn(b, c, s, s), dim=1)
    # The key view holds the query's cells in another order, slightly disturbed: cell i's match is order[i].
    order = torch.stack([torch.randperm(s * s) for _ in range(b)])
    shuffled = torch.empty(b, c, s * s)
    for n in range(b):
        shuffled[n, :, order[n]] = query[n].flatten(1)
    key = F.normalize(shuffled + 0.05 * torch.randn_like(shuffled), dim=1).view(b, c, s, s)

    cells = dense_positive_cells(query, key)

    assert torch.equal(cells, order)
    brute = torch.tensor([[max(range(s * s), key=lambda j: float(query[n, :, i // s, i % s] @ key[n, :, j // s, j % s]))
                           for i in range(s * s)] for n in range(b)])
    assert torch.equal(cells, brute)


def test_densecl_geometric_positives_equal_the_views_transforms():
    cfg = method_cfg("DenseCL")
    geometry = view_geometry(cfg, 6)
    cells, valid = nearest_cells_in_other_view(*matrices_and_sizes(geometry), CELLS, CELLS, STRIDE)
    for n, (pair, height, width) in enumerate(geometry):
        for r, c in itertools.product(range(CELLS), range(CELLS)):
            centre = np.array([[(c + 0.5) * STRIDE, (r + 0.5) * STRIDE]])
            in_view2 = pair.view2_transform.apply_coords(pair.view1_transform.inverse().apply_coords(centre))[0]
            column, row = int(np.floor(in_view2[0] / STRIDE)), int(np.floor(in_view2[1] / STRIDE))
            inside = 0 <= column < CELLS and 0 <= row < CELLS
            expected = bool(pair.view1_transform.is_content(centre)[0]) and inside
            assert bool(valid[n, r * CELLS + c]) == expected, (n, r, c)
            if expected:
                assert int(cells[n, r * CELLS + c]) == row * CELLS + column
    assert valid.any()


@pytest.mark.parametrize("enqueue", ["before_loss", "after_loss"])
def test_densecl_model_loss_is_the_weighted_sum_of_the_papers_two_losses(enqueue):
    """The model's two loss terms, recomputed in float64 from its own encoders' outputs (gradient too).
    With ENQUEUE after_loss (DenseCL's order) the negatives are both queues as an earlier step left them."""
    cfg = method_cfg("DenseCL", "MODEL.MOMENTUM_CONTRAST.KEY_BN", "sync", "MODEL.MOMENTUM_CONTRAST.ENQUEUE", enqueue)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    model.momentum = 1.0  # the key encoder stays what it is, so the recomputation sees the same weights
    earlier, batch = mapped_batches(cfg, 2)
    with EventStorage(0):
        if enqueue == "after_loss":
            with torch.no_grad():
                model(earlier)
            negatives = [model.queue.clone(), model.queue_image_ids.clone(), model.dense_queue.clone(), model.dense_queue_image_ids.clone()]
        losses = model(batch)
    sum(losses.values()).backward()
    grad = model.query_encoder.dense_head[2].weight.grad.clone()
    model.zero_grad()

    if enqueue == "before_loss":
        # The queues now hold the batch's keys, as the loss saw them.
        negatives = [model.queue, model.queue_image_ids, model.dense_queue, model.dense_queue_image_ids]
    else:
        # The batch's keys were enqueued after its loss, behind the earlier step's.
        assert torch.equal(model.queue_image_ids[4:8], torch.tensor([x["image_id"] for x in batch]))
        assert torch.equal(model.queue_image_ids[:4], negatives[1][:4])
    # Recompute everything from the encoders.
    view1 = model.normalize(torch.stack([x["view1"] for x in batch]))
    view2 = model.normalize(torch.stack([x["view2"] for x in batch]))
    q_global, q_dense, _, q_features = model.query_encoder(view1)
    with torch.no_grad():
        k_global, k_dense, _, k_features = model.key_encoder(view2)
    t, lam = 0.2, 0.5
    queue, queue_ids, dense_queue, dense_queue_ids = negatives
    queue, dense_queue = queue.double(), dense_queue.double()
    global_terms, dense_terms = [], []
    for n, x in enumerate(batch):
        usable = (queue_ids != x["image_id"]) & (queue_ids >= 0)
        global_terms.append(info_nce_float64(q_global[n].double() / t, k_global[n].double(), queue[usable]))
        usable_dense = (dense_queue_ids != x["image_id"]) & (dense_queue_ids >= 0)
        for i in range(CELLS * CELLS):
            similarity = [float(q_features.detach()[n, :, i // CELLS, i % CELLS] @ k_features[n, :, j // CELLS, j % CELLS]) for j in range(CELLS * CELLS)]
            j = int(np.argmax(similarity))
            q = q_dense[n, :, i // CELLS, i % CELLS].double() / t
            dense_terms.append(info_nce_float64(q, k_dense[n, :, j // CELLS, j % CELLS].double(), dense_queue[usable_dense]))
    expected_global, expected_dense = torch.stack(global_terms).mean(), torch.stack(dense_terms).mean()
    ((1 - lam) * expected_global + lam * expected_dense).backward()

    assert losses["loss_densecl_global"].item() == pytest.approx((1 - lam) * expected_global.item(), rel=1e-5)
    assert losses["loss_densecl_dense"].item() == pytest.approx(lam * expected_dense.item(), rel=1e-5)
    torch.testing.assert_close(grad, model.query_encoder.dense_head[2].weight.grad, rtol=1e-3, atol=1e-6)


# ---------------------------------------------------------------------------------------------------
# PixPro


def brute_force_positive_mask(first_transform, second_transform, height, width, radius):
    """PixPro's rule from the two ProjectiveTransforms, point by point, in its normalised source units."""
    scale = np.array([width, height], dtype=np.float64)

    def cell(transform, r, c):
        to_source = transform.inverse()
        centre_view = np.array([[(c + 0.5) * STRIDE, (r + 0.5) * STRIDE]])
        centre = to_source.apply_coords(centre_view)[0] / scale
        corners = to_source.apply_coords(np.array([[c, r], [c + 1, r], [c, r + 1], [c + 1, r + 1]], float) * STRIDE) / scale
        diagonal = max(np.linalg.norm(corners[3] - corners[0]), np.linalg.norm(corners[2] - corners[1]))
        return centre, diagonal, bool(transform.is_content(centre_view)[0])

    grid = list(itertools.product(range(CELLS), range(CELLS)))
    first = [cell(first_transform, r, c) for r, c in grid]
    second = [cell(second_transform, r, c) for r, c in grid]
    return torch.tensor([
        [ok1 and ok2 and np.linalg.norm(c1 - c2) < radius * max(d1, d2) for c2, d2, ok2 in second]
        for c1, d1, ok1 in first
    ])


@pytest.mark.parametrize("radius", [0.7, 2.0])
def test_pixpro_positive_mask_equals_a_brute_force_distance_computation(radius):
    # Large scale range and every geometric augmentation of the demo: crops, flips, affine, homography.
    cfg = method_cfg("PixPro", "INPUT.VIEWS.CROP_SCALE", "(0.08, 1.0)", "INPUT.VIEWS.MIN_SHARED_CELLS", "32")
    geometry = view_geometry(cfg, 8, seed=3)
    mask = pixpro_positive_mask(*matrices_and_sizes(geometry), CELLS, CELLS, STRIDE, radius)
    for n, (pair, height, width) in enumerate(geometry):
        assert torch.equal(mask[n], brute_force_positive_mask(pair.view1_transform, pair.view2_transform, height, width, radius)), n
    assert mask.any() and not mask.all()


def test_pixpro_crop_bins_are_pixpro_boxes():
    """For a plain crop, a cell's source centre and bin diagonal are PixPro's box arithmetic."""
    cfg = method_cfg("PixPro", "INPUT.VIEWS.AFFINE_PROB", "0.0", "INPUT.VIEWS.HOMOGRAPHY_PROB", "0.0")
    geometry = view_geometry(cfg, 4, seed=5)
    first, _, heights, widths = matrices_and_sizes(geometry)
    centres, diagonals, content = source_cells(first, heights, widths, CELLS, CELLS, STRIDE)
    for n, (pair, height, width) in enumerate(geometry):
        # The crop box in normalised source units; a flip swaps its x ends, as PixPro's coordinates do.
        (x0, y0), (x1, y1) = pair.view1_transform.inverse().apply_coords(np.array([[0.0, 0.0], [CROP, CROP]])) / [width, height]
        bin_w, bin_h = (x1 - x0) / CELLS, (y1 - y0) / CELLS
        for r, c in itertools.product(range(CELLS), range(CELLS)):
            expected = [x0 + (c + 0.5) * bin_w, y0 + (r + 0.5) * bin_h]
            torch.testing.assert_close(centres[n, r * CELLS + c], torch.tensor(expected, dtype=torch.float64))
        torch.testing.assert_close(diagonals[n], torch.full((CELLS * CELLS,), math.hypot(bin_w, bin_h), dtype=torch.float64))
        assert content[n].all()


def test_pixel_propagation_equals_its_formula():
    torch.manual_seed(2)
    module = PixelPropagation(channels=6, gamma=2.0, transform_layers=1, norm="BN").double()
    x = torch.randn(2, 6, 3, 3, dtype=torch.float64)
    y = module(x)
    g = F.normalize(module.transform(x), dim=1)
    for n in range(2):
        cells = [(r, c) for r in range(3) for c in range(3)]
        for r, c in cells:
            expected = sum(
                max(F.cosine_similarity(x[n, :, r, c], x[n, :, r2, c2], dim=0).item(), 0.0) ** 2 * g[n, :, r2, c2]
                for r2, c2 in cells
            )
            torch.testing.assert_close(y[n, :, r, c], expected)
    assert isinstance(module.transform, torch.nn.Conv2d)  # the paper's one transform layer


def pixpro_loss_float64(predictions, targets, positive):
    """-2 x per image the mean cosine over positive pairs, averaged over images (0 for none), one direction."""
    per_image = []
    for n in range(predictions.shape[0]):
        pairs = [(i, j) for i in range(positive.shape[1]) for j in range(positive.shape[2]) if positive[n, i, j]]
        cosines = [F.cosine_similarity(predictions[n, :, i], targets[n, :, j], dim=0) for i, j in pairs]
        per_image.append(torch.stack(cosines).mean() if cosines else predictions.new_zeros(()))
    return -2 * torch.stack(per_image).mean()


def test_pixpro_loss_equals_the_formula_in_float64_with_its_gradient():
    torch.manual_seed(3)
    b, d, p = 3, 5, 4
    # Unnormalised leaves: the gradient then includes the normalisation, as in the model.
    predictions = torch.randn(b, d, p, requires_grad=True)
    targets = torch.randn(b, d, p)
    positive = torch.rand(b, p, p) > 0.6
    positive[2] = False  # an image without a positive pair adds 0

    unit_predictions, unit_targets = F.normalize(predictions, dim=1), F.normalize(targets, dim=1)
    loss = pixpro_loss(unit_predictions, unit_targets, positive) + pixpro_loss(unit_targets, unit_predictions, positive.transpose(1, 2))
    loss.backward()
    predictions64 = predictions.detach().double().requires_grad_()
    expected = pixpro_loss_float64(predictions64, targets.double(), positive) + pixpro_loss_float64(
        targets.double(), predictions64, positive.transpose(1, 2)
    )
    expected.backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    torch.testing.assert_close(predictions.grad.double(), predictions64.grad, rtol=1e-5, atol=1e-7)


def test_pixpro_model_loss_is_the_papers_symmetric_loss():
    """The model's loss, recomputed in float64 from its encoders, the propagation formula and the brute-force mask."""
    cfg = method_cfg("PixPro", "MODEL.PIXPRO.MOMENTUM", "1.0")  # the momentum encoder keeps its weights
    torch.manual_seed(0)
    model = build_model(cfg).train()
    batch = mapped_batches(cfg, 1)[0]
    with EventStorage(0):
        loss = model(batch)["loss_pixpro"]
    loss.backward()
    grad = model.propagation.transform.weight.grad.clone()
    model.zero_grad()

    views = [model.normalize(torch.stack([x[name] for x in batch])) for name in ("view1", "view2")]
    online = [model.query_encoder(v).double() for v in views]
    with torch.no_grad():
        targets = [model.key_encoder(v).double().flatten(2) for v in views]
    transform = copy.deepcopy(model.propagation.transform).double()
    propagated = []
    for x in online:  # y_i = sum_j max(cos(x_i, x_j), 0)^2 normalize(g(x_j)), cell by cell
        g = F.normalize(transform(x), dim=1).flatten(2)
        cells = x.flatten(2)
        y = torch.stack([
            torch.stack([
                sum(F.cosine_similarity(cells[n, :, i], cells[n, :, j], dim=0).clamp(min=0) ** 2 * g[n, :, j] for j in range(CELLS * CELLS))
                for i in range(CELLS * CELLS)
            ], dim=1)
            for n in range(len(batch))
        ])
        propagated.append(y)
    mask = torch.stack([brute_force_positive_mask(*transforms_of(x), x["height"], x["width"], 0.7) for x in batch])
    expected = pixpro_loss_float64(propagated[0], targets[1], mask) + pixpro_loss_float64(propagated[1], targets[0], mask.transpose(1, 2))
    expected.backward()
    assert mask.any()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    torch.testing.assert_close(grad.double(), transform.weight.grad, rtol=1e-3, atol=1e-6)


def transforms_of(sample):
    """The two view transforms of a mapped sample, rebuilt from the matrices it carries."""
    source = (sample["height"], sample["width"])
    return [ProjectiveTransform(sample[f"{view}_matrix"].numpy(), source, (CROP, CROP)) for view in ("view1", "view2")]


def test_pixpro_momentum_rises_from_base_to_one_on_a_cosine():
    assert pixpro_momentum(0.99, 0, 100) == pytest.approx(0.99)
    assert pixpro_momentum(0.99, 50, 100) == pytest.approx(0.995)
    assert pixpro_momentum(0.99, 100, 100) == pytest.approx(1.0)
    assert pixpro_momentum(0.99, 25, 100) == pytest.approx(1 - 0.01 * (math.cos(math.pi / 4) + 1) / 2)

    cfg = method_cfg("PixPro", "SOLVER.MAX_ITER", "100")
    model = build_model(cfg).train()
    with torch.no_grad():
        for p in model.query_encoder.parameters():
            p.add_(1.0)
    before = [p.clone() for p in model.key_encoder.parameters()]
    with EventStorage(25):
        model(mapped_batches(cfg, 1)[0])
    m = pixpro_momentum(0.99, 25, 100)
    for old, new, online in zip(before, model.key_encoder.parameters(), model.query_encoder.parameters()):
        torch.testing.assert_close(new, m * old + (1 - m) * online)


# ---------------------------------------------------------------------------------------------------
# LARS


def test_lars_step_equals_its_formula_and_leaves_biases_and_norms_unadapted():
    torch.manual_seed(4)
    weight = torch.nn.Parameter(torch.randn(4, 3))
    bias = torch.nn.Parameter(torch.randn(4))
    lr, momentum, decay, eta = 0.5, 0.9, 0.01, 0.001
    optimizer = LARS(
        [{"params": [weight], "weight_decay": decay, "adapt": True}, {"params": [bias], "weight_decay": 0.0, "adapt": False}],
        lr=lr, momentum=momentum, trust_coefficient=eta,
    )
    expected_weight, expected_bias = weight.detach().clone(), bias.detach().clone()
    buffers = [None, None]
    for _ in range(3):
        weight.grad, bias.grad = torch.randn(4, 3), torch.randn(4)
        step = weight.grad + decay * expected_weight
        step = eta * expected_weight.norm() / step.norm() * step
        buffers[0] = step if buffers[0] is None else momentum * buffers[0] + step
        buffers[1] = bias.grad.clone() if buffers[1] is None else momentum * buffers[1] + bias.grad
        expected_weight -= lr * buffers[0]
        expected_bias -= lr * buffers[1]
        optimizer.step()
        torch.testing.assert_close(weight.detach(), expected_weight)
        torch.testing.assert_close(bias.detach(), expected_bias)


def test_solver_optimizer_lars_is_built_for_any_method():
    cfg = method_cfg("PixPro", "SOLVER.OPTIMIZER", "LARS", "SOLVER.WEIGHT_DECAY", "1e-5")
    model = build_model(cfg)
    optimizer = build_optimizer(cfg, model)
    assert isinstance(optimizer, LARS)
    adapted, plain = optimizer.param_groups
    assert adapted["adapt"] and adapted["weight_decay"] == 1e-5 and all(p.ndim > 1 for p in adapted["params"])
    assert not plain["adapt"] and plain["weight_decay"] == 0.0 and all(p.ndim <= 1 for p in plain["params"])
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(adapted["params"]) + len(plain["params"]) == len(trainable)
    sgd_cfg = method_cfg("PixPro")
    assert isinstance(build_optimizer(sgd_cfg, build_model(sgd_cfg)), torch.optim.SGD)


def test_warmup_then_cosine_is_pixpros_schedule_and_reaches_the_trainer():
    """WarmupThenCosineLR against PixPro's GradualWarmupScheduler + CosineAnnealingLR written out in
    float64: lr(t) = base / m (1 + (m - 1) t / W) up to W, then eta + (base - eta)(1 + cos(pi (t - W) / (T - W))) / 2."""
    base, eta, total, warmup, multiplier = 4.0, 1e-6, 40, 8, 100
    cfg = method_cfg(
        "PixPro", "SOLVER.LR_SCHEDULER_NAME", "WarmupThenCosineLR", "SOLVER.BASE_LR", str(base), "SOLVER.BASE_LR_END", str(eta),
        "SOLVER.MAX_ITER", str(total), "SOLVER.WARMUP_ITERS", str(warmup), "SOLVER.WARMUP_FACTOR", str(1 / multiplier),
    )
    check_vader_config(cfg)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base)
    scheduler = VADeRTrainer.build_lr_scheduler(cfg, optimizer)
    for t in range(total):
        if t <= warmup:
            expected = base / multiplier * (1 + (multiplier - 1) * t / warmup)
        else:
            expected = eta + (base - eta) * (1 + math.cos(math.pi * (t - warmup) / (total - warmup))) / 2
        assert optimizer.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-9, abs=1e-12), t
        optimizer.step()
        scheduler.step()
    with pytest.raises(UserError, match=r"^SOLVER.WARMUP_ITERS must be below SOLVER.MAX_ITER=40 with WarmupThenCosineLR"):
        check_vader_config(method_cfg("PixPro", "SOLVER.LR_SCHEDULER_NAME", "WarmupThenCosineLR", "SOLVER.MAX_ITER", "40", "SOLVER.WARMUP_ITERS", "40"))


# ---------------------------------------------------------------------------------------------------
# Through the trainer


class RecordLoss(HookBase):
    def __init__(self):
        self.losses = []

    def after_step(self):
        self.losses.append(self.trainer.storage.history("total_loss").latest())


class FixedBatchesTrainer(VADeRTrainer):
    """The trainer on a cycle of a few real mapped batches, the RNG seeded from the iteration: the same
    inputs and draws at every iteration of an uninterrupted and a resumed run."""

    batches = None

    @classmethod
    def build_train_loader(cls, cfg):
        return itertools.cycle(cls.batches)

    def build_hooks(self):
        return [SeedFromIteration(), *super().build_hooks()]


class SeedFromIteration(HookBase):
    def before_step(self):
        torch.manual_seed(1000 + self.trainer.iter)


def trainer_for(cfg, batches, *hooks):
    FixedBatchesTrainer.batches = batches
    trainer = FixedBatchesTrainer(cfg)
    trainer.register_hooks(hooks)
    return trainer


@pytest.mark.parametrize("method", ["DenseCL", "PixPro"])
def test_short_pretraining_lowers_the_loss_and_exports_the_resnet(method, tmp_path):
    cfg = method_cfg(method, "SOLVER.MAX_ITER", "12", "SOLVER.BASE_LR", "0.05", "SEED", "1", "OUTPUT_DIR", str(tmp_path))
    recorder = RecordLoss()
    torch.manual_seed(1)
    trainer = trainer_for(cfg, mapped_batches(cfg, 2), recorder)
    trainer.resume_or_load(resume=False)
    trainer.train()
    # From the fourth step on DenseCL's 16-key queues are full (4 images a step): before, its loss rises
    # with the number of negatives, not with what the network knows.
    first, last = np.mean(recorder.losses[3:6]), np.mean(recorder.losses[-3:])
    assert last < first - 0.1, recorder.losses

    summary = export_to_detectron2(str(tmp_path / "model_final.pth"), str(tmp_path / "exported.pkl"))
    assert set(summary.written_by_part()) == {"ResNet"}
    assert "never trained" in summary.format()
    for downstream in ("mask_rcnn", "keypoint_rcnn", "semantic"):
        config = f"configs/downstream/cutpaste_{downstream}_R_18_FPN.yaml"
        missing = check_weights_load(load_cfg(config), str(tmp_path / "exported.pkl"), expect_fpn=False)
        assert "ResNet" not in missing and missing["FPN"], config


@pytest.mark.parametrize("pretrain", ["configs/moco_v2_pretrain.yaml", "configs/densecl_pretrain.yaml", "configs/pixpro_pretrain.yaml", *CONFIGS.values()])
def test_downstream_configs_match_the_methods_pretraining(pretrain):
    """RGB, torchvision mean/std, STRIDE_IN_1X1, depth, norm family: what loads silently when it differs."""
    pretrain_cfg = load_cfg(pretrain)
    same_depth = [load_cfg(c) for c in DOWNSTREAM if load_cfg(c).MODEL.RESNETS.DEPTH == pretrain_cfg.MODEL.RESNETS.DEPTH]
    assert len(same_depth) >= 3
    for downstream in same_depth:
        assert transfer_mismatches(pretrain_cfg, downstream) == []


def write_random_checkpoint(cfg, folder, seed):
    model = build_model(cfg)
    with torch.no_grad():
        randomize_(model.state_dict(), torch.Generator().manual_seed(seed))
    path = os.path.join(str(folder), "model_final.pth")
    torch.save({"model": model.state_dict(), "iteration": 1}, path)
    return path, {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def method_export(tmp_path_factory):
    """(method, depth) -> the query encoder's state of a random checkpoint and its exported .pkl, made on
    first use: each test worker makes only the ones its tests ask for (the tests run method by method)."""
    exports = {}

    def export(method, depth):
        if (method, depth) not in exports:
            folder = tmp_path_factory.mktemp(f"{method}_r{depth}")
            wider = ["MODEL.RESNETS.RES2_OUT_CHANNELS", "256"] if depth == 50 else []
            cfg = method_cfg(method, "MODEL.RESNETS.DEPTH", str(depth), *wider)
            path, state = write_random_checkpoint(cfg, folder, seed=depth)
            export_to_detectron2(path, str(folder / "exported.pkl"))
            exports[method, depth] = (state, str(folder / "exported.pkl"))
        return exports[method, depth]

    return export


@pytest.mark.parametrize("config", DOWNSTREAM)
@pytest.mark.parametrize("method", list(CONFIGS))
def test_export_loads_into_every_downstream_config(method, config, method_export):
    cfg = load_cfg(config)
    state, exported = method_export(method, cfg.MODEL.RESNETS.DEPTH)
    with open(exported, "rb") as f:
        assert not any(name.startswith("fpn_") for name in pickle.load(f)["model"])
    model = build_model(cfg)
    incompatible = load_weights(model, exported)
    assert not incompatible.incorrect_shapes
    resnet_missing = [k for k in incompatible.missing_keys if pretrained_part(k) and ".fpn_" not in pretrained_part(k)]
    assert not resnet_missing, resnet_missing[:5]
    loaded = 0
    for key, value in model.state_dict().items():
        source = pretrained_part(key)
        if source is not None and ".fpn_" not in source:
            assert torch.equal(value, state[source]), key
            loaded += 1
    assert loaded == sum(1 for k in state if k.startswith("query_encoder.backbone.bottom_up."))


@pytest.mark.parametrize("method", ["DenseCL", "PixPro"])
def test_steps_after_resume_equal_the_uninterrupted_steps(method, tmp_path):
    def cfg(output_dir):
        return method_cfg(method, "SOLVER.MAX_ITER", "5", "SOLVER.CHECKPOINT_PERIOD", "2", "OUTPUT_DIR", str(output_dir))

    batches = mapped_batches(cfg(tmp_path), 2)
    uninterrupted = trainer_for(cfg(tmp_path / "uninterrupted"), batches)
    uninterrupted.resume_or_load(resume=False)
    uninterrupted.train()

    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    (resumed_dir / "model_0000001.pth").write_bytes((tmp_path / "uninterrupted" / "model_0000001.pth").read_bytes())
    (resumed_dir / "last_checkpoint").write_text("model_0000001.pth")
    checkpoint = torch.load(resumed_dir / "model_0000001.pth", map_location="cpu")
    resumed = trainer_for(cfg(resumed_dir), batches)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 2
    assert_same(resumed.model.state_dict(), checkpoint["model"], "model")
    resumed.train()
    assert_same(resumed.model.state_dict(), uninterrupted.model.state_dict(), "model")
    assert_same(resumed.state_dict(), uninterrupted.state_dict(), "trainer")


@pytest.mark.parametrize("method", list(CONFIGS))
def test_skipped_files_are_counted_and_logged(method):
    cfg = method_cfg(method)
    model = build_model(cfg).train()
    batch = mapped_batches(cfg, 1)[0]
    for index, image in enumerate(batch):
        image["num_skipped"] = index  # unreadable files the mapper skipped before this image
    with EventStorage(0) as storage:
        model(batch)
        assert storage.latest()[SKIPPED_IMAGES][0] == 6
    assert int(model.skipped_images) == 6


@pytest.mark.parametrize("method", list(CONFIGS))
def test_inference_embeds_each_res5_cell_of_any_image_size(method):
    torch.manual_seed(0)
    model = build_model(method_cfg(method)).eval()
    images = [torch.randint(0, 256, (3, 70, 100), dtype=torch.uint8), torch.randint(0, 256, (3, 96, 64), dtype=torch.uint8)]
    outputs = model([{"image": image} for image in images])
    # ceil(H / 32) x ceil(W / 32) cells each: the padded batch's extra cells are cut off.
    assert [o["embedding"].shape[1:] for o in outputs] == [(3, 4), (3, 2)]
    for output in outputs:
        assert torch.allclose(output["embedding"].norm(dim=0), torch.ones(()), atol=1e-5)
    # Alone, the first image is padded to the same 96 x 128 as in the batch: the other image (eval-mode
    # BN) must not change its embedding.
    alone = model([{"image": images[0]}])[0]["embedding"]
    assert torch.allclose(outputs[0]["embedding"], alone, atol=1e-5)


@pytest.mark.parametrize("method", list(CONFIGS))
def test_frozen_feature_tools_read_the_trained_resnet_through_p2(method, tmp_path):
    """tools/evaluate_dense.py and propagate_labels.py on a method's checkpoint: its query ResNet, seen via p2."""
    torch.manual_seed(5)  # another initialisation than the extractor's seeded one (0)
    state = build_model(method_cfg(method)).state_dict()
    path = str(tmp_path / "model_final.pth")
    torch.save({"model": state, "iteration": 1}, path)
    cfg = method_cfg(method, "MODEL.WEIGHTS", path)
    extractor = build_feature_extractor(cfg, seed=0)
    assert extractor.sources == ("p2",)
    resnet = {k: v for k, v in extractor.backbone.state_dict().items() if k.startswith("bottom_up.")}
    assert resnet and all(torch.equal(v, state[f"query_encoder.backbone.{k}"]) for k, v in resnet.items())
    features = extractor(torch.randint(0, 256, (3, 50, 70), dtype=torch.uint8))["p2"]
    assert features.shape == (cfg.MODEL.FPN.OUT_CHANNELS, 13, 18)
    assert torch.allclose(features.norm(dim=0), torch.ones(()), atol=1e-5)
    with pytest.raises(UserError, match="feature source 'head' needs a dense VADeR model"):
        build_feature_extractor(cfg, ["head"])


def test_densecl_weights_start_a_run_with_other_queue_sizes(tmp_path):
    """MODEL.WEIGHTS from a DenseCL checkpoint: weights load, both queues are sized by the new config."""
    torch.save({"model": build_model(method_cfg("DenseCL", "MODEL.MOMENTUM_CONTRAST.QUEUE_SIZE", "16")).state_dict()}, tmp_path / "d.pth")
    cfg = method_cfg("DenseCL", "MODEL.MOMENTUM_CONTRAST.QUEUE_SIZE", "32")
    model = build_model(cfg)
    load_model_weights(cfg, model, str(tmp_path / "d.pth"))
    assert model.queue.shape[0] == model.dense_queue.shape[0] == 32


# ---------------------------------------------------------------------------------------------------
# Mistakes: one line naming the key


@pytest.mark.parametrize(
    "method, opts, message",
    [
        ("DenseCL", ["MODEL.DENSECL.POSITIVE", "nearest"], "MODEL.DENSECL.POSITIVE must be 'feature' or 'geometric', got 'nearest'"),
        ("DenseCL", ["MODEL.DENSECL.LOSS_WEIGHT", "1.5"], "MODEL.DENSECL.LOSS_WEIGHT must be a probability"),
        ("DenseCL", ["MODEL.DENSECL.TEMPERATURE", "0.0"], "MODEL.DENSECL.TEMPERATURE must be positive"),
        ("DenseCL", ["MODEL.MOMENTUM_CONTRAST.QUEUE_SIZE", "6"], "MODEL.MOMENTUM_CONTRAST.QUEUE_SIZE=6 must be a positive multiple of the keys enqueued per step (4 = SOLVER.IMS_PER_BATCH x 1 key per image)"),
        ("DenseCL", ["INPUT.VIEWS.CROP_SIZE", "80"], "INPUT.VIEWS.CROP_SIZE=80 must be a multiple of 32, the stride of res5"),
        ("PixPro", ["MODEL.PIXPRO.TRANSFORM_LAYERS", "3"], "MODEL.PIXPRO.TRANSFORM_LAYERS must be 0, 1 or 2, got 3"),
        ("PixPro", ["MODEL.PIXPRO.POSITIVE_RADIUS", "-1.0"], "MODEL.PIXPRO.POSITIVE_RADIUS must be positive"),
        ("PixPro", ["MODEL.PIXPRO.PROPAGATION_GAMMA", "0.5"], "MODEL.PIXPRO.PROPAGATION_GAMMA must be at least 1"),
        ("PixPro", ["MODEL.PIXPRO.IN_FEATURE", "p5"], "MODEL.PIXPRO.IN_FEATURE must be one of"),
        ("PixPro", ["MODEL.PIXPRO.NORM", "GN", "MODEL.PIXPRO.HIDDEN_DIM", "40"], "MODEL.PIXPRO.NORM='GN' cannot normalise MODEL.PIXPRO.HIDDEN_DIM=40"),
        ("PixPro", ["SOLVER.OPTIMIZER", "Adam"], "SOLVER.OPTIMIZER must be 'SGD' or 'LARS', got 'Adam'"),
        ("PixPro", ["SOLVER.LARS.TRUST_COEFFICIENT", "0.0"], "SOLVER.LARS.TRUST_COEFFICIENT must be in (0, 1]"),
    ],
)
def test_bad_values_are_one_line_errors(method, opts, message):
    with pytest.raises(UserError) as error:
        check_vader_config(method_cfg(method, *opts))
    assert message in str(error.value) and "\n" not in str(error.value)


def test_train_net_reports_a_densecl_mistake_in_one_line(tmp_path):
    result = run_train_net(
        "--config-file", CONFIGS["DenseCL"], *TINY, "MODEL.DENSECL.POSITIVE", "nearest", "OUTPUT_DIR", str(tmp_path / "out")
    )
    assert result.returncode == 2
    assert single_error_line(result) == "vader_d2: MODEL.DENSECL.POSITIVE must be 'feature' or 'geometric', got 'nearest'"


# ---------------------------------------------------------------------------------------------------
# Two processes (gloo) compute what one process computes with the same global batch


GLOO_STEPS = 3
# Every shuffle-BN group mixes the images of both ranks (images 0, 1 are rank 0's, 2, 3 rank 1's).
GLOO_PERMUTATIONS = [torch.tensor([2, 0, 3, 1]), torch.tensor([1, 3, 0, 2]), torch.tensor([3, 0, 1, 2])]


def gloo_cfg(method):
    # DenseCL: shuffle-BN with one group of 2 images per rank, i.e. 2 groups in one process. PixPro:
    # batch norm over the global batch (naiveSyncBN), as its recipe has it.
    if method == "DenseCL":
        return method_cfg(method, "MODEL.MOMENTUM_CONTRAST.BN_GROUP_SIZE", "2")
    norm = ["MODEL.RESNETS.NORM", "naiveSyncBN", "MODEL.FPN.NORM", "naiveSyncBN", "MODEL.PIXPRO.NORM", "naiveSyncBN"]
    return method_cfg(method, *norm)


def gloo_train(method, batches):
    """GLOO_STEPS SGD steps in float64 on this process's share of each global batch, as the trainer does them."""
    rank, world_size = comm.get_rank(), comm.get_world_size()
    per_rank = len(batches[0]) // world_size
    cfg = gloo_cfg(method)
    torch.manual_seed(0)
    model = build_model(cfg).double()
    model.reset_key_encoder()
    if method == "DenseCL":
        # An instance attribute shadows the method: both runs use the same permutations.
        model.key_permutation = lambda batch_size: GLOO_PERMUTATIONS[step]
    optimizer = build_optimizer(cfg, model)
    ddp_model = create_ddp_model(model, broadcast_buffers=False, device_ids=None)
    losses = []
    with EventStorage():
        for step, batch in enumerate(batches):
            loss = sum(ddp_model(batch[rank * per_rank : (rank + 1) * per_rank]).values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            mean_loss = loss.detach().clone()
            if world_size > 1:
                torch.distributed.all_reduce(mean_loss)
            losses.append(mean_loss.item() / world_size)
    return {"losses": losses, "state": {k: v.clone() for k, v in model.state_dict().items()}}


def gloo_worker(out_dir, batches):
    torch.set_num_threads(1)
    for method, method_batches in batches.items():
        torch.save(gloo_train(method, method_batches), os.path.join(out_dir, f"{method}_rank{comm.get_rank()}.pth"))


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tmp_path):
    batches = {method: mapped_batches(method_cfg(method), GLOO_STEPS) for method in CONFIGS}
    for method_batches in batches.values():
        for batch in method_batches:
            for image in batch:
                image.pop("correspondence")  # stride-4 VADeR matches: neither method reads them
    launch(gloo_worker, 2, dist_url=f"file://{tmp_path}/rendezvous", args=(str(tmp_path), batches), timeout=timedelta(minutes=2))
    for method in CONFIGS:
        one = gloo_train(method, batches[method])
        rank0, rank1 = (torch.load(tmp_path / f"{method}_rank{r}.pth") for r in range(2))
        assert rank0["losses"] == pytest.approx(one["losses"], rel=1e-9), method
        compared = 0
        for name, value in one["state"].items():
            if name.endswith(("running_mean", "running_var", "num_batches_tracked")):
                continue  # BN's running state differs by design: per-group vs per-step updates, Bessel's correction
            if not value.is_floating_point():  # queue image ids and pointers
                assert torch.equal(rank0["state"][name], value) and torch.equal(rank1["state"][name], value), (method, name)
                continue
            assert torch.equal(rank0["state"][name], rank1["state"][name]), (method, name)
            assert torch.allclose(rank0["state"][name], value, rtol=1e-6, atol=1e-9), (method, name)
            compared += 1
        assert compared > 50, method


# ---------------------------------------------------------------------------------------------------
# Initialisation as the official code does it


def test_densecl_global_head_is_he_normal_and_dense_head_pytorch_default():
    """DenseCL's neck: linear layers He-normal over their fan in with zero bias; its 1x1 convs PyTorch's default."""
    torch.manual_seed(0)
    model = build_model(method_cfg("DenseCL", "MODEL.DENSECL.HIDDEN_DIM", "256"))
    for layer in (model.query_encoder.global_head[0], model.query_encoder.global_head[2]):
        fan_in = layer.weight.shape[1]
        assert layer.bias.abs().max().item() == 0.0
        # 65536 / 32768 draws: the std is within 2% of He's sqrt(2 / fan in) (PyTorch's default: 0.41 x that).
        assert layer.weight.std().item() == pytest.approx(math.sqrt(2.0 / fan_in), rel=0.02)
    for conv in (model.query_encoder.dense_head[0], model.query_encoder.dense_head[2]):
        fan_in = conv.weight[0].numel()
        assert conv.weight.abs().max().item() <= 1.0 / math.sqrt(fan_in)  # PyTorch's uniform bound
    torch.testing.assert_close(model.key_encoder.global_head[0].weight, model.query_encoder.global_head[0].weight)


def test_densecl_resnet_convs_are_he_normal_over_their_fan_in_like_densecls():
    """DenseCL's ResNet.init_weights: kaiming_init(mode='fan_in'); the other methods keep Detectron2's fan out."""
    torch.manual_seed(0)
    densecl = build_model(method_cfg("DenseCL")).query_encoder.backbone.bottom_up
    pixpro = build_model(method_cfg("PixPro")).query_encoder.backbone.bottom_up
    # The stem (3 -> 64, 7 x 7) and a 1x1 shortcut (64 -> 128): fan in and fan out differ 21x and 2x.
    for name in ("stem.conv1", "res3.0.shortcut"):
        weight = dict(densecl.named_modules())[name].weight
        fan_in, fan_out = weight[0].numel(), weight.shape[0] * weight[0, 0].numel()
        assert weight.std().item() == pytest.approx(math.sqrt(2.0 / fan_in), rel=0.05), name
        other = dict(pixpro.named_modules())[name].weight
        assert other.std().item() == pytest.approx(math.sqrt(2.0 / fan_out), rel=0.05), name


def test_pixpro_resnet_starts_each_residual_branch_at_zero_like_pixpros():
    """The last norm of every residual block scales by 0 (PixPro's zero gamma), every other norm by 1; the other methods keep 1."""
    torch.manual_seed(0)
    resnet = build_model(method_cfg("PixPro")).query_encoder.backbone.bottom_up
    blocks = [m for m in resnet.modules() if type(m).__name__ == "BasicBlock"]
    assert len(blocks) == 8  # ResNet-18
    for block in blocks:
        assert block.conv2.norm.weight.abs().max().item() == 0.0
        assert torch.equal(block.conv1.norm.weight, torch.ones_like(block.conv1.norm.weight))
    assert torch.equal(resnet.stem.conv1.norm.weight, torch.ones_like(resnet.stem.conv1.norm.weight))
    densecl_resnet = build_model(method_cfg("DenseCL")).query_encoder.backbone.bottom_up
    assert all(m.conv2.norm.weight.min().item() == 1.0 for m in densecl_resnet.modules() if type(m).__name__ == "BasicBlock")


@pytest.mark.parametrize("config", ["configs/moco_v2_pretrain.yaml", "configs/densecl_pretrain.yaml", "configs/pixpro_pretrain.yaml"])
def test_paper_configs_draw_their_crops_without_an_overlap_constraint(config):
    """MIN_SHARED_CELLS 0, as MoCo's, DenseCL's and PixPro's crops: the mapper keeps the first pair it draws, even
    one that shares nothing (crops of 1-2% of the photo, almost never overlapping, make sure there are some)."""
    cfg = build_config(config, ["MODEL.DEVICE", "cpu", "INPUT.VIEWS.CROP_SCALE", "(0.01, 0.02)"])
    check_vader_config(cfg, world_size=8)
    mapper = VADeRViewMapper(cfg, is_train=True)
    record = DatasetCatalog.get("vader_demo_photos_train")[0]
    image = read_source_image(record["file_name"], cfg.INPUT.VIEWS.MAX_SOURCE_SIZE)
    disjoint = 0
    for seed in range(5):
        np.random.seed(seed)
        pair = mapper.sample_geometry(image)
        np.random.seed(seed)
        first, second = mapper.view_geometry.get_transform(image), mapper.view_geometry.get_transform(image)
        assert np.array_equal(pair.view1_transform.matrix, first.matrix)
        assert np.array_equal(pair.view2_transform.matrix, second.matrix)
        disjoint += int(pair.valid.sum() == 0)
    assert disjoint > 0


def test_unconstrained_views_only_where_no_matched_pairs_are_drawn():
    cfg = method_cfg("DenseCL", "INPUT.VIEWS.MIN_SHARED_CELLS", "0")
    check_vader_config(cfg)
    check_vader_config(build_config("configs/moco_global_demo.yaml", ["INPUT.VIEWS.MIN_SHARED_CELLS", "0"]))
    with pytest.raises(UserError, match=r"^INPUT.VIEWS.MIN_SHARED_CELLS must be at least 1, got 0$"):
        check_vader_config(build_config("configs/vader_pretrain_demo.yaml", ["INPUT.VIEWS.MIN_SHARED_CELLS", "0"]))
    with pytest.raises(UserError, match=r"^INPUT.VIEWS.MIN_SHARED_CELLS=577 must lie between 0 and the 576 cells of a view$"):
        check_vader_config(method_cfg("PixPro", "INPUT.VIEWS.MIN_SHARED_CELLS", "577"))
