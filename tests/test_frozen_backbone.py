"""The frozen-backbone protocol (MODEL.FROZEN_BACKBONE): only the task head trains, whatever the weights."""

import os

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from vader_d2.checkpoint.export import export_to_detectron2
from vader_d2.errors import UserError
from vader_d2.engine.trainer import VADeRTrainer, load_model_weights

from .helpers import demo_cfg, run_train_net
from .test_transfer import load_cfg

FROZEN_CONFIG = "configs/downstream/cutpaste_semantic_R_18_FPN_frozen.yaml"
STEPS = 3
# Small images and batches: the property checked is which tensors move, not what they learn.
TINY = [
    "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0", "SOLVER.BASE_LR", "0.05", "SOLVER.WARMUP_ITERS", "0",
    "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "144",
]


def export_initialised_model(cfg, folder, seed):
    """A VADeR model at its seeded initialisation, saved as training saves it and exported to a .pkl.
    Initialised rather than random weights: the downstream losses stay finite."""
    torch.manual_seed(seed)
    model = build_model(cfg)
    DetectionCheckpointer(model, save_dir=str(folder)).save("model_final", iteration=1)
    exported = str(folder / "exported.pkl")
    export_to_detectron2(str(folder / "model_final.pth"), exported)
    return exported


@pytest.fixture(scope="module")
def initialisations(tmp_path_factory):
    """What a user fine-tunes from: a VADeR export (ResNet + FPN), a global MoCo export (ResNet only, its
    FPN is never trained) and the random initialisation."""
    moco_cfg = demo_cfg("MODEL.VADER.LOSS", "global", "MODEL.MOMENTUM_CONTRAST.QUEUE_SIZE", "64")
    return {
        "vader": export_initialised_model(demo_cfg("MODEL.MOMENTUM_CONTRAST.QUEUE_SIZE", "256"), tmp_path_factory.mktemp("vader"), seed=11),
        "moco": export_initialised_model(moco_cfg, tmp_path_factory.mktemp("moco"), seed=12),
        "random": "",
    }


@pytest.mark.parametrize("init", ["vader", "moco", "random"])
def test_frozen_backbone_trains_only_the_head(init, initialisations, tmp_path):
    cfg = load_cfg(FROZEN_CONFIG, *TINY, "OUTPUT_DIR", str(tmp_path))
    model = VADeRTrainer.build_model(cfg)
    load_model_weights(cfg, model, initialisations[init])
    backbone_before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    head_before = {k: v.clone() for k, v in model.sem_seg_head.state_dict().items()}

    norms = [m for m in model.backbone.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert not norms, f"{len(norms)} batch norms of the backbone would update their statistics"
    assert any(isinstance(m, FrozenBatchNorm2d) for m in model.backbone.bottom_up.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in model.backbone.fpn_lateral2.modules())  # the FPN too
    optimizer = VADeRTrainer.build_optimizer(cfg, model)
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in model.sem_seg_head.parameters()}

    loader = iter(VADeRTrainer.build_train_loader(cfg))
    model.train()
    with EventStorage():
        for _ in range(STEPS):
            losses = model(next(loader))
            assert all(torch.isfinite(v) for v in losses.values()), losses
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()

    # Every ResNet and FPN tensor (weights and batch-norm statistics) is bit-identical; the head moved.
    changed = [k for k, v in model.backbone.state_dict().items() if not torch.equal(v, backbone_before[k])]
    assert not changed, changed[:5]
    assert len(backbone_before) > 100
    moved = [k for k, v in model.sem_seg_head.state_dict().items() if not torch.equal(v, head_before[k])]
    assert len(moved) >= len(head_before) // 2, moved


def test_frozen_backbone_loads_the_same_tensors_as_fine_tuning(initialisations):
    """Freezing happens before loading, and frozen batch norms take the same checkpoint names."""
    fine_tuned = load_cfg("configs/downstream/cutpaste_semantic_R_18_FPN.yaml")
    frozen = load_cfg(FROZEN_CONFIG)
    models = {}
    for name, cfg in (("fine_tuned", fine_tuned), ("frozen", frozen)):
        models[name] = VADeRTrainer.build_model(cfg)
        load_model_weights(cfg, models[name], initialisations["vader"])
    fine_state = models["fine_tuned"].backbone.state_dict()
    frozen_state = models["frozen"].backbone.state_dict()
    assert set(fine_state) == set(frozen_state)
    assert all(torch.equal(fine_state[k], frozen_state[k]) for k in fine_state)


def test_frozen_backbone_is_refused_for_pretraining():
    with pytest.raises(UserError, match="MODEL.FROZEN_BACKBONE is a downstream protocol"):
        VADeRTrainer.build_model(demo_cfg("MODEL.FROZEN_BACKBONE", "True"))


def test_train_net_keeps_the_loaded_backbone(initialisations, tmp_path):
    """Through tools/train_net.py as a user runs it: the final checkpoint holds the exported ResNet and
    FPN tensors unchanged."""
    import pickle

    output_dir = str(tmp_path / "run")
    result = run_train_net(
        "--config-file", FROZEN_CONFIG, *TINY, "MODEL.DEVICE", "cpu", "SOLVER.MAX_ITER", "2", "DATASETS.TEST", "()",
        "MODEL.WEIGHTS", initialisations["vader"], "OUTPUT_DIR", output_dir,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "MODEL.FROZEN_BACKBONE: the backbone's" in result.stdout + result.stderr
    with open(initialisations["vader"], "rb") as f:
        exported = pickle.load(f)["model"]
    final = torch.load(os.path.join(output_dir, "model_final.pth"), map_location="cpu")["model"]
    backbone = {k: v for k, v in final.items() if k.startswith("backbone.")}
    assert len(backbone) > 100
    for key, value in backbone.items():
        name = key[len("backbone."):].replace("bottom_up.", "")
        assert name in exported, key
        assert torch.equal(value, torch.as_tensor(exported[name]).to(value.dtype)), key
