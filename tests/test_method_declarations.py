"""
What each pretraining method declares (vader_d2/modeling/momentum.py: its queues, the metrics it logs,
the backbone parts it exports, how its checkpoints are recognised, its dense feature head) is what it
does: the trainer, the config checks, the exporter and the evaluation tools ask the class instead of
naming the method.
"""

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from vader_d2.checkpoint.export import detectron2_weights_from_vader
from vader_d2.evaluation import build_feature_extractor
from vader_d2.modeling.momentum import pretraining_method, pretraining_methods
from vader_d2.engine.trainer import is_pretraining

from .test_methods import mapped_batches
from .test_mixed_precision import METHODS, small_cfg
from .test_transfer import load_cfg

pytestmark = pytest.mark.usefixtures("single_thread")


def test_a_config_finds_its_method_and_a_downstream_config_none():
    assert set(METHODS) <= {method.__name__ for method in pretraining_methods()}
    for name in METHODS:
        assert pretraining_method(small_cfg(name)).__name__ == name
    downstream = load_cfg("configs/downstream/cutpaste_mask_rcnn_R_18_FPN.yaml")
    assert pretraining_method(downstream) is None and not is_pretraining(downstream)


@pytest.mark.parametrize("name", list(METHODS))
def test_a_method_does_what_it_declares(name):
    cfg = small_cfg(name)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    method = type(model)
    with EventStorage(0) as storage:  # a metrics step
        model(mapped_batches(cfg, 1)[0])
    assert set(storage.latest()) == set(method.metric_names)

    state = model.state_dict()
    assert {key for key in state if "." not in key} == {*method.queue_buffers(), "skipped_images"}
    _, recognised, written, _ = detectron2_weights_from_vader(state)
    assert recognised is method
    assert {"FPN" if name.startswith("fpn_") else "ResNet" for name in written} == set(method.exported_parts)

    extractor = build_feature_extractor(cfg)
    assert extractor.sources == (("head", "p2") if method.feature_head else ("p2",))
    if method.feature_head:
        assert type(extractor.head) is type(model.get_submodule(method.feature_head))
