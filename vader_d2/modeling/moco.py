"""
MoCo v2 (Chen, Fan, Girshick, He, "Improved Baselines with Momentum Contrastive Learning", 2020), the
global baseline, on Detectron2's ResNet, in the same views, trainer and export as VADeR.

One training step, for a batch of images each given as two views:

1. the query encoder pools view 1's last backbone stage (``MODEL.MOCO.IN_FEATURE``, res5) into one vector
   and projects it with a 2-layer MLP (``MODEL.MOCO.HIDDEN_DIM``) to an L2-normalised embedding;
2. the key encoder (momentum average, no gradient, shuffle-BN) does the same on view 2;
3. InfoNCE of each image's query against its key, with temperature ``MODEL.MOCO.TEMPERATURE``; negatives
   are the queued keys of *other* images;
4. the keys of every process's images enter the queue before the loss (``MODEL.MOMENTUM_CONTRAST.ENQUEUE
   before_loss``) or, as MoCo's code, after it (``after_loss``).

With ``MODEL.MOCO.SYMMETRIC`` view 2 is a query too, against view 1's key. The FPN is not part of the
computation: it stays frozen and is not exported (MoCo transfers the ResNet).

Configs written before MoCo had a meta-architecture of its own (``MODEL.META_ARCHITECTURE VADeR`` with
``MODEL.VADER.LOSS global``) load as this one: ``MoCo.resolve_old_spellings``, which ``vader_d2.config.resolve_old_spellings`` calls.
"""

from typing import Dict, List

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import CfgNode as CN
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage

from ..config import config_value, set_config_value
from ..config.checks import at_least, require
from ..errors import UserError
from .losses import info_nce_loss
from .momentum import QUEUE_STATS, SKIPPED_IMAGES, MomentumContrast, ResNetStageEncoder, check_stage_name
from .shuffle_bn import concat_all_gather

__all__ = ["MoCo", "GlobalEncoder", "add_moco_config"]


def add_moco_config(cfg):
    """MODEL.MOCO: the MoCo baseline's own keys. The momentum keys it shares with the other methods are in
    MODEL.MOMENTUM_CONTRAST (EMBED_DIM, QUEUE_SIZE of image keys, ENQUEUE, MOMENTUM, KEY_BN, BN_GROUP_SIZE, ...)."""
    cfg.MODEL.MOCO = CN()
    # The backbone stage pooled into one vector per view, and the hidden width of the MLP after it.
    cfg.MODEL.MOCO.IN_FEATURE = "res5"
    cfg.MODEL.MOCO.HIDDEN_DIM = 2048
    # MoCo v2's (v1's: 0.07).
    cfg.MODEL.MOCO.TEMPERATURE = 0.2
    # Also use view 2 as query and view 1 as key (not MoCo's recipe).
    cfg.MODEL.MOCO.SYMMETRIC = False


class GlobalEncoder(ResNetStageEncoder):
    """MoCo v2's encoder: pooled ``in_feature`` -> Linear - ReLU - Linear -> (B, D), L2-normalised."""

    def __init__(self, backbone: Backbone, in_feature: str, hidden_dim: int, embed_dim: int):
        super().__init__(backbone, in_feature)
        self.head = nn.Sequential(nn.Linear(self.channels, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, embed_dim))

    def forward(self, images):
        return F.normalize(self.head(self.stage_features(images).mean(dim=(2, 3))), dim=1)


# MoCo's keys, and the MODEL.VADER keys that gave them in configs of the old spelling (MODEL.VADER.LOSS global).
MOCO_KEYS_OF_OLD_SPELLING = {
    "MODEL.MOCO.IN_FEATURE": "MODEL.VADER.GLOBAL_HEAD.IN_FEATURE",
    "MODEL.MOCO.HIDDEN_DIM": "MODEL.VADER.GLOBAL_HEAD.HIDDEN_DIM",
    "MODEL.MOCO.TEMPERATURE": "MODEL.VADER.TEMPERATURE",
    "MODEL.MOCO.SYMMETRIC": "MODEL.VADER.SYMMETRIC",
}


@META_ARCH_REGISTRY.register()
class MoCo(MomentumContrast):
    checkpoint_prefix = "query_encoder.head.0."
    metric_names = (SKIPPED_IMAGES, *QUEUE_STATS)

    @configurable
    def __init__(
        self,
        *,
        temperature: float,
        symmetric: bool,
        **kwargs,  # MomentumContrast's
    ):
        super().__init__(**kwargs)
        self.temperature = temperature
        self.symmetric = symmetric

    @classmethod
    def from_config(cls, cfg):
        m = cfg.MODEL.MOCO
        return {
            **super().from_config(cfg),
            "encoder": GlobalEncoder(build_backbone(cfg), m.IN_FEATURE, m.HIDDEN_DIM, cfg.MODEL.MOMENTUM_CONTRAST.EMBED_DIM),
            "temperature": m.TEMPERATURE,
            "symmetric": m.SYMMETRIC,
        }

    @classmethod
    def add_config(cls, cfg):
        add_moco_config(cfg)

    @classmethod
    def resolve_old_spellings(cls, cfg, defaults):
        """
        Translate, in place, what configs written before MoCo was a meta-architecture of its own say:
        ``MODEL.META_ARCHITECTURE VADeR`` with ``MODEL.VADER.LOSS global`` is ``MODEL.META_ARCHITECTURE MoCo``,
        and its MODEL.VADER.GLOBAL_HEAD.*, TEMPERATURE and SYMMETRIC are MODEL.MOCO's. An old key that would
        now do nothing (MODEL.VADER.TEMPERATURE in a MoCo config, say, as a command line may still add it)
        is a one-line error naming the key to use.
        """
        if cfg.MODEL.META_ARCHITECTURE == "VADeR" and cfg.MODEL.VADER.LOSS == "global":
            # Keys of both spellings in one config would say two things; the old spelling's are the ones it reads.
            moved = [key for key in MOCO_KEYS_OF_OLD_SPELLING if config_value(cfg, key) != config_value(defaults, key)]
            if moved:
                raise UserError(
                    f"{moved[0]} is set in a config of the old spelling MODEL.VADER.LOSS global, which reads "
                    "MODEL.VADER's keys; write MODEL.META_ARCHITECTURE MoCo instead of MODEL.VADER.LOSS global"
                )
            cfg.MODEL.META_ARCHITECTURE = "MoCo"
            for new, old in MOCO_KEYS_OF_OLD_SPELLING.items():
                set_config_value(cfg, new, config_value(cfg, old))
                set_config_value(cfg, old, config_value(defaults, old))
            cfg.MODEL.VADER.LOSS = "dense"
        elif cfg.MODEL.META_ARCHITECTURE == "MoCo":
            for new, old in MOCO_KEYS_OF_OLD_SPELLING.items():
                if config_value(cfg, old) != config_value(defaults, old):
                    raise UserError(f"{old} does not apply to MODEL.META_ARCHITECTURE MoCo; set {new}")

    @classmethod
    def keys_enqueued_per_step(cls, cfg):
        if not cfg.MODEL.MOCO.SYMMETRIC:
            return super().keys_enqueued_per_step(cfg)
        return 2 * cfg.SOLVER.IMS_PER_BATCH, "SOLVER.IMS_PER_BATCH x 1 key per image x 2 (symmetric)"

    @classmethod
    def check_ranges(cls, cfg):
        super().check_ranges(cfg)
        m = cfg.MODEL.MOCO
        check_stage_name(m.IN_FEATURE, "MODEL.MOCO.IN_FEATURE")
        at_least(m, "MODEL.MOCO", "HIDDEN_DIM", 1)
        require(m.TEMPERATURE > 0, "MODEL.MOCO.TEMPERATURE", m.TEMPERATURE, "positive")

    def forward(self, batched_inputs: List[Dict]):
        if not self.training:
            return self.inference(batched_inputs)
        view1, view2, image_ids = self.read_batch(batched_inputs)
        # Drawn first, on every rank (rank 0's draw is the one all use).
        permutation = self.key_permutation(len(batched_inputs))
        self.momentum_update_key_encoder()

        def pooled(outputs, _):
            return outputs

        # View 1's queries against view 2's keys and, if symmetric, view 2's against view 1's.
        queries = [self.encode_queries(view1)]
        keys = [self.encode_keys(view2, None, pooled, permutation)]
        if self.symmetric:
            queries.append(self.encode_queries(view2))
            keys.append(self.encode_keys(view1, None, pooled, permutation))

        directions = len(keys)
        all_image_ids = concat_all_gather(image_ids).repeat(directions)
        new_keys = {"queue": torch.cat(keys)}
        (negatives,) = self.negatives(new_keys, all_image_ids)
        rank, batch = comm.get_rank(), len(batched_inputs)
        mine = torch.cat([k[rank * batch : (rank + 1) * batch] for k in keys])
        queries = torch.cat(queries)
        loss, positive, hardest, excluded = info_nce_loss(
            queries, mine, negatives, image_ids.repeat(directions), self.queue_image_ids, self.temperature
        )
        storage = get_event_storage()
        if storage.iter % self.metrics_period == 0:
            self.put_metrics(storage, **self.queue_metrics(queries, positive, hardest, excluded, self.temperature))
        self.enqueue_after_the_loss(new_keys, all_image_ids)
        return {"loss_moco": loss}

    @torch.no_grad()
    def inference(self, batched_inputs: List[Dict]):
        """The embedding of images given the Detectron2 way ({"image": uint8 (3, H, W)}): [{"embedding": (D,)}]."""
        return [{"embedding": e} for e in self.query_encoder(self.padded_images(batched_inputs).tensor)]
