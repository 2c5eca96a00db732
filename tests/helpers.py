"""Small builders shared by the tests."""

import torch

from detectron2.config import get_cfg

from vader_d2 import add_vader_config


# The paper's 32 pairs per image: the demo recipe's 256 need views of at least 64 px, the fast tests use
# smaller ones.
FEW_PAIRS = ["MODEL.VADER.PAIRS_PER_IMAGE", "32", "MODEL.VADER.MIN_SHARED_CELLS", "32"]


def demo_cfg(*opts):
    """The CPU demo pretraining config, on the CPU, with optional overrides."""
    cfg = get_cfg()
    add_vader_config(cfg)
    cfg.merge_from_file("configs/vader_pretrain_demo.yaml")
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", *opts])
    return cfg


def fake_batch(batch_size, crop, first_image_id=0):
    """Mapper-shaped inputs with random pixels and an identity correspondence (every cell valid)."""
    cells = crop // 4
    ys, xs = torch.meshgrid(torch.arange(cells).float(), torch.arange(cells).float(), indexing="ij")
    return [
        {
            "view1": torch.randint(0, 256, (3, crop, crop), dtype=torch.uint8),
            "view2": torch.randint(0, 256, (3, crop, crop), dtype=torch.uint8),
            "correspondence": torch.stack([xs, ys], dim=-1),
            "valid": torch.ones(cells, cells, dtype=torch.bool),
            "image_id": first_image_id + i,
        }
        for i in range(batch_size)
    ]
