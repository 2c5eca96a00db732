"""Small builders shared by the tests."""

import torch

from vader_d2.cli import build_config


# The paper's 32 pairs per image: the demo recipe's 256 need views of at least 64 px, the fast tests use
# smaller ones.
FEW_PAIRS = ["MODEL.VADER.PAIRS_PER_IMAGE", "32", "INPUT.VIEWS.MIN_SHARED_CELLS", "32"]


def demo_cfg(*opts):
    """The CPU demo pretraining config, on the CPU, with optional overrides."""
    return build_config("configs/vader_pretrain_demo.yaml", ["MODEL.DEVICE", "cpu", *opts])


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
