"""
The VADeR meta-architecture: query and momentum key encoders, the negative queue and the pixel InfoNCE.

One training step, for a batch of images each given as two views plus the correspondence between them:

1. the query encoder embeds view 1 densely (one L2-normalised vector per stride-4 cell);
2. the key encoder (a momentum average of the query encoder, no gradient) embeds view 2;
3. per image, PAIRS_PER_IMAGE cells of view 1 that have a match in view 2 are drawn at random; a
   query is the cell's view-1 embedding, its positive key the view-2 embedding at the matched location;
4. negatives are the keys in the queue that come from *other images* (a key from the query's own image,
   whether from this batch or an earlier epoch, is masked out);
5. InfoNCE with temperature-scaled cosine similarity; the batch's keys (the keys of every process's
   images) are written to the queue, oldest first out.

By default (``MODEL.VADER.ENQUEUE before_loss``) the current batch's keys are enqueued *before* the loss
is computed, so the other images of the batch serve as negatives too (the freshest ones available), and
the first step already has negatives; ``after_loss`` is MoCo's order, negatives from earlier steps only.

Batch norm (``MODEL.VADER.KEY_BN``): ``shuffle`` (MoCo's shuffle-BN, ``shuffle_bn.py``) normalises the
query encoder over contiguous groups of ``BN_GROUP_SIZE`` images of each process and the key encoder over
groups of a random permutation of the global batch, so that a key never shares its query's statistics;
``sync`` runs each encoder on the whole per-process batch with the configured norm (synchronised BN
across processes), the behaviour kept for comparison.

``MODEL.VADER.LOSS = "global"`` runs the MoCo v2 baseline through the same code: the encoders pool the
backbone's last stage into one vector per view and each image contributes one query/key pair.
"""

from typing import Dict, List

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone
from detectron2.structures import ImageList
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage

from ..dense_grid import OUTPUT_STRIDE
from ..training_metrics import (
    NEGATIVE_SIMILARITY,
    POSITIVE_SIMILARITY,
    QUERIES_WITHOUT_NEGATIVE,
    QUEUE_FILL,
    SKIPPED_IMAGES,
    TOP1_ACCURACY,
    VALID_MATCHES,
)
from .dense_head import DenseHead
from .losses import info_nce_loss
from .momentum import (
    copy_weights_,
    count_skipped_images_,
    encode_in_bn_groups,
    enqueue_,
    key_batch_permutation,
    momentum_copy,
    momentum_update_,
    normalize_views,
    note_skipped_images,
    register_key_queue,
    register_skip_count,
    reset_key_queue_,
    stack_views,
)
from .shuffle_bn import concat_all_gather, encode_shuffled

__all__ = ["VADeR", "DenseEncoder", "GlobalEncoder", "build_encoder"]


class DenseEncoder(nn.Module):
    """Backbone (ResNet-FPN) + dense head: images (B, 3, H, W) -> embeddings (B, D, H/4, W/4)."""

    def __init__(self, backbone: Backbone, head: DenseHead):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, images):
        return self.head(self.backbone(images))


class GlobalEncoder(nn.Module):
    """MoCo v2 encoder on the same backbone: pooled ``in_feature`` -> 2-layer MLP -> (B, D), normalised."""

    def __init__(self, backbone: Backbone, in_feature: str, hidden_dim: int, embed_dim: int):
        super().__init__()
        self.backbone = backbone
        self.in_feature = in_feature
        channels = backbone.bottom_up.output_shape()[in_feature].channels
        self.head = nn.Sequential(nn.Linear(channels, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, embed_dim))
        # MoCo transfers only the ResNet; the FPN is not part of the baseline's computation.
        for name, p in backbone.named_parameters():
            if not name.startswith("bottom_up."):
                p.requires_grad_(False)

    def forward(self, images):
        features = self.backbone.bottom_up(images)[self.in_feature]
        return F.normalize(self.head(features.mean(dim=(2, 3))), dim=1)


def build_encoder(cfg):
    """The query encoder of ``cfg`` (the key encoder is its copy): dense or global, in the memory order asked for."""
    v = cfg.MODEL.VADER
    backbone = build_backbone(cfg)
    if v.LOSS == "dense":
        encoder = DenseEncoder(backbone, DenseHead(cfg, backbone.output_shape()))
    else:
        encoder = GlobalEncoder(backbone, v.GLOBAL_HEAD.IN_FEATURE, v.GLOBAL_HEAD.HIDDEN_DIM, v.EMBED_DIM)
    if v.CHANNELS_LAST:
        encoder.to(memory_format=torch.channels_last)
    return encoder


def sample_grid(embeddings, positions, mode):
    """
    Read (B, D, H, W) embeddings at (B, P, 2) sub-cell grid positions (x, y; cell (r, c) is at (c, r)).
    Returns (B, P, D), re-normalised after bilinear interpolation.
    """
    height, width = embeddings.shape[-2:]
    if mode == "nearest":
        x = positions[..., 0].round().clamp_(0, width - 1).long()
        y = positions[..., 1].round().clamp_(0, height - 1).long()
        flat = embeddings.flatten(2)
        return torch.gather(flat, 2, (y * width + x)[:, None, :].expand(-1, flat.shape[1], -1)).transpose(1, 2)
    # grid_sample's align_corners=False puts cell c's centre at (2c + 1) / size - 1.
    size = positions.new_tensor([width, height])
    grid = (2 * positions + 1) / size - 1
    sampled = F.grid_sample(embeddings, grid[:, :, None, :], mode="bilinear", padding_mode="border", align_corners=False)
    return F.normalize(sampled[..., 0].transpose(1, 2), dim=2)


@META_ARCH_REGISTRY.register()
class VADeR(nn.Module):
    @configurable
    def __init__(
        self,
        *,
        encoder: nn.Module,
        loss_type: str,
        embed_dim: int,
        queue_size: int,
        momentum: float,
        temperature: float,
        pairs_per_image: int,
        symmetric: bool,
        key_sampling: str,
        key_bn: str = "shuffle",
        enqueue: str = "before_loss",
        bn_group_size: int,
        metrics_period: int,
        channels_last: bool = False,
        pixel_mean: List[float],
        pixel_std: List[float],
    ):
        super().__init__()
        self.query_encoder = encoder
        self.key_encoder = momentum_copy(encoder)
        self.loss_type = loss_type
        self.momentum = momentum
        self.temperature = temperature
        self.pairs_per_image = pairs_per_image
        self.symmetric = symmetric
        self.key_sampling = key_sampling
        self.key_bn = key_bn
        self.enqueue_after_loss = enqueue == "after_loss"
        self.bn_group_size = bn_group_size
        self.metrics_period = metrics_period
        self.channels_last = channels_last

        register_key_queue(self, "queue", queue_size, embed_dim)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        register_skip_count(self)

    @classmethod
    def from_config(cls, cfg):
        v = cfg.MODEL.VADER
        return {
            "encoder": build_encoder(cfg),
            "loss_type": v.LOSS,
            "embed_dim": v.EMBED_DIM,
            "queue_size": v.QUEUE_SIZE,
            "momentum": v.MOMENTUM,
            "temperature": v.TEMPERATURE,
            "pairs_per_image": v.PAIRS_PER_IMAGE,
            "symmetric": v.SYMMETRIC,
            "key_sampling": v.KEY_SAMPLING,
            "key_bn": v.KEY_BN,
            "enqueue": v.ENQUEUE,
            "bn_group_size": v.BN_GROUP_SIZE,
            "metrics_period": v.METRICS_PERIOD,
            "channels_last": v.CHANNELS_LAST,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
        }

    @property
    def device(self):
        return self.pixel_mean.device

    @property
    def backbone(self):
        return self.query_encoder.backbone

    @torch.no_grad()
    def reset_key_encoder(self):
        """Make the key encoder a copy of the query encoder (the start of a fresh run)."""
        copy_weights_(self.key_encoder, self.query_encoder)

    @torch.no_grad()
    def reset_queue(self):
        """Empty the queue and the skip count: what MODEL.WEIGHTS brings there belongs to another run."""
        reset_key_queue_(self, "queue")
        self.skipped_images.zero_()

    @torch.no_grad()
    def momentum_update_key_encoder(self):
        """theta_k <- m theta_k + (1 - m) theta_q."""
        momentum_update_(self.key_encoder, self.query_encoder, self.momentum)

    @torch.no_grad()
    def enqueue(self, keys, image_ids):
        """Write the keys of every process's images (in rank order) over the oldest queue entries."""
        enqueue_(self, "queue", keys, image_ids)

    @staticmethod
    def stack(images: List[torch.Tensor], device):
        """The views of a batch as one uint8 tensor on ``device``, copied without waiting for the device."""
        return stack_views(images, device)

    def normalize(self, images):
        return normalize_views(images, self.pixel_mean, self.pixel_std, self.channels_last)

    def encode_queries(self, images):
        """Query embeddings of this process's uint8 images, batch norm over the groups of ``KEY_BN``."""
        return encode_in_bn_groups(self.query_encoder, self.normalize(images), self.key_bn, self.bn_group_size)

    @torch.no_grad()
    def encode_keys(self, images, locations, read, permutation):
        """
        Keys of every process's images (rank order), no gradient: ``read(key encoder outputs, locations)``
        for this process's uint8 ``images`` and per-image ``locations`` (or None). With ``permutation``
        (shuffle-BN) the key encoder sees the global batch in that order; without, its own images.
        """
        if permutation is None:
            outputs = self.key_encoder(self.normalize(images))
            return concat_all_gather(read(outputs, locations))
        return encode_shuffled(self.key_encoder, images, locations, read, permutation, self.bn_group_size, self.normalize)

    def key_permutation(self, batch_size):
        """The order in which the key encoder sees the global batch; None where it cannot matter."""
        return key_batch_permutation(self.key_bn, batch_size, self.bn_group_size, self.device)

    def forward(self, batched_inputs: List[Dict]):
        if not self.training:
            return self.inference(batched_inputs)
        view1 = self.stack([x["view1"] for x in batched_inputs], self.device)
        view2 = self.stack([x["view2"] for x in batched_inputs], self.device)
        # Built on the host and copied without waiting: a device tensor from a list would wait for the device.
        image_ids = torch.tensor([x["image_id"] for x in batched_inputs]).to(self.device, non_blocking=True)
        note_skipped_images(self, batched_inputs)
        # Drawn before the pair sampling, on every rank (rank 0's draw is the one all use), so that the
        # draws after it follow the same sequence in every process of a run.
        permutation = self.key_permutation(len(batched_inputs))

        with torch.no_grad():
            self.momentum_update_key_encoder()
        if self.loss_type == "dense":
            queries, keys = self.dense_pairs(batched_inputs, view1, view2, permutation)
        else:
            queries, keys = self.global_pairs(view1, view2, permutation)

        # One query per key, in the same order: image i's rows of each direction of the pairs.
        per_image = 1 if self.loss_type == "global" else self.pairs_per_image
        directions = len(keys)
        all_image_ids = concat_all_gather(image_ids).repeat_interleave(per_image).repeat(directions)
        keys_of_all = torch.cat([k.reshape(-1, k.shape[-1]) for k in keys])
        if self.enqueue_after_loss:
            # A copy: the loss keeps its negatives for the backward pass, and the enqueue below writes in place.
            negatives = self.queue.clone()
        else:
            self.enqueue(keys_of_all, all_image_ids)
            negatives = self.queue
        rank, batch = comm.get_rank(), len(batched_inputs)
        mine = torch.cat([k[rank * batch : (rank + 1) * batch].reshape(-1, k.shape[-1]) for k in keys])
        queries = torch.cat([q.reshape(-1, q.shape[-1]) for q in queries])
        query_ids = image_ids.repeat_interleave(per_image).repeat(directions)
        loss, positive, hardest, excluded = info_nce_loss(
            queries, mine, negatives, query_ids, self.queue_image_ids, self.temperature
        )
        self.log_metrics(batched_inputs, queries, positive, hardest, excluded)
        if self.enqueue_after_loss:
            self.enqueue(keys_of_all, all_image_ids)
        return {"loss_vader" if self.loss_type == "dense" else "loss_moco": loss}

    def sample_cells(self, valid, matches):
        """
        PAIRS_PER_IMAGE cells per image drawn uniformly among the (B, C) ``valid`` view-1 cells, without
        replacement, and where they lie in view 2 according to the (B, C, 2) ``matches``.
        Returns (B, P) flat view-1 cell indices and (B, P, 2) view-2 grid positions.
        """
        # The top-P of random scores, invalid cells last: one kernel, no data-dependent shapes.
        scores = torch.rand(valid.shape, device=valid.device).masked_fill_(~valid, -1.0)
        cells = scores.topk(self.pairs_per_image, dim=1).indices
        return cells, torch.gather(matches, 1, cells[..., None].expand(-1, -1, 2))

    @staticmethod
    def at_cells(embeddings, cells):
        """(B, D, H, W) embeddings at (B, P) flat cell indices -> (B, P, D)."""
        flat = embeddings.flatten(2)
        return torch.gather(flat, 2, cells[:, None, :].expand(-1, flat.shape[1], -1)).transpose(1, 2)

    def sample_keys(self, embeddings, positions):
        return sample_grid(embeddings, positions, self.key_sampling)

    def dense_pairs(self, batched_inputs, view1, view2, permutation):
        """
        Queries (this process's images, (b, P, D) per direction) and positive keys (every process's images,
        (B, P, D) per direction) for PAIRS_PER_IMAGE matched cells per image; both directions if symmetric.
        """
        valid = torch.stack([x["valid"] for x in batched_inputs]).to(self.device, non_blocking=True).flatten(1)
        matches = torch.stack([x["correspondence"] for x in batched_inputs]).to(self.device, non_blocking=True)
        cells, positions = self.sample_cells(valid, matches.flatten(1, 2))

        queries = [self.at_cells(self.encode_queries(view1), cells)]
        keys = [self.encode_keys(view2, positions, self.sample_keys, permutation)]
        if self.symmetric:
            queries.append(self.sample_keys(self.encode_queries(view2), positions))
            keys.append(self.encode_keys(view1, cells, self.at_cells, permutation))
        return queries, keys

    def global_pairs(self, view1, view2, permutation):
        """As ``dense_pairs``, one pooled embedding per view: queries (b, D), keys (B, D) per direction."""
        def pooled(outputs, _):
            return outputs

        queries = [self.encode_queries(view1)]
        keys = [self.encode_keys(view2, None, pooled, permutation)]
        if self.symmetric:
            queries.append(self.encode_queries(view2))
            keys.append(self.encode_keys(view1, None, pooled, permutation))
        return queries, keys

    @torch.no_grad()
    def log_metrics(self, batched_inputs, queries, positive, hardest, excluded):
        storage = get_event_storage()
        # Reading these values forces a device sync: only on the logging period.
        if storage.iter % self.metrics_period != 0:
            return
        count_skipped_images_(self)
        usable = (~excluded).to(self.queue.dtype)
        # Sum over each query's usable negatives as one matrix product: the loss does not keep the logits.
        negative_cos = (queries.to(self.queue.dtype) * (usable @ self.queue)).sum() / usable.sum().clamp(min=1)
        storage.put_scalars(
            **{
                POSITIVE_SIMILARITY: (positive * self.temperature).mean().item(),
                NEGATIVE_SIMILARITY: negative_cos.item(),
                TOP1_ACCURACY: (positive > hardest).float().mean().item(),
                QUERIES_WITHOUT_NEGATIVE: excluded.all(dim=1).float().mean().item(),
                QUEUE_FILL: (self.queue_image_ids >= 0).float().mean().item(),
                SKIPPED_IMAGES: self.skipped_images.item(),
            },
            smoothing_hint=False,
        )
        if self.loss_type == "dense":
            matches = sum(int(x["valid"].sum()) for x in batched_inputs) / len(batched_inputs)
            storage.put_scalar(VALID_MATCHES, matches, smoothing_hint=False)

    @torch.no_grad()
    def inference(self, batched_inputs: List[Dict]):
        """
        Embed images given the Detectron2 way ({"image": uint8 (3, H, W) in INPUT.FORMAT}).
        Dense mode: [{"embedding": (D, ceil(H/4), ceil(W/4))}]; global mode: [{"embedding": (D,)}].
        """
        images = [((x["image"].to(self.device).float() - self.pixel_mean) / self.pixel_std) for x in batched_inputs]
        padded = ImageList.from_tensors(images, self.backbone.size_divisibility)
        embeddings = self.query_encoder(padded.tensor)
        if self.loss_type == "global":
            return [{"embedding": e} for e in embeddings]
        return [
            {"embedding": e[:, : -(-h // OUTPUT_STRIDE), : -(-w // OUTPUT_STRIDE)]}
            for e, (h, w) in zip(embeddings, padded.image_sizes)
        ]
