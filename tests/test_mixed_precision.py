"""
SOLVER.AMP on the CPU: every method's step under bfloat16 autocast against its float32 step, the trainer
each device gets, and SOLVER.AMP.PRECISION's one-line errors.

The tolerance, derived. Under autocast the encoders run in bfloat16 (8 significant bits: each rounding
is off by at most 2^-9 relatively); the losses run in float32 (``info_nce_loss``, ``pixpro_loss``), so all
the difference between the two steps enters the loss through its inputs. Let delta_q, delta_k be the
largest L2 distances between a query (prediction), resp. a key, negative or target, of the two steps; the
float32 step's are unit vectors. A cosine then moves by at most
    |q.k - q'.k'| <= |(q - q').k| + |q'.(k - k')| <= delta_q + (1 + delta_q) delta_k =: c.
InfoNCE per query is log(sum_j exp(s_j)) - s_pos of logits s = cos / t; its gradient in s is softmax minus
the positive's indicator, of L1 norm at most 2, so a query's loss, and any weighted mean of them, moves by
at most 2 c / t. PixPro's loss is -2 x a weighted mean of cosines: it moves by at most 2 c. Both bounds are
checked with delta measured on the step's own loss inputs, plus float32's own rounding of the loss
(relative 1e-5). That the loss is computed in float32 at least is checked sharply: the autocast step's
loss equals the same function evaluated in float64 on its (bfloat16-made) inputs within float32 rounding.

delta_q itself, a priori: a convolution or linear layer under autocast rounds its input and its weights to
bfloat16 and its output again (accumulating in float32), 3 x 2^-9 of relative error; batch norm and the
final normalisation carry relative errors through, so through L such layers a unit output is off by at
most about 3 x 2^-9 x L. L is taken as every convolution and linear layer of the query side (an upper
count: the ResNet's shortcut convolutions and, for MoCo, DenseCL and PixPro, the unused FPN included).
The keys are not bounded so: DenseCL's feature matching may pick another positive cell under autocast.
Measured here (one run): delta_q 0.020-0.059 against a-priori bounds 0.18-0.20; loss differences 0.001-0.015
against the loss bounds 0.10-7.8 above: the worst case is loose, the float64 check above is the sharp one.
"""

import copy
import math

import pytest
import torch
from detectron2.engine import SimpleTrainer
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

import vader_d2.modeling.densecl as densecl_module
import vader_d2.modeling.losses as losses_module
import vader_d2.modeling.moco as moco_module
import vader_d2.modeling.pixpro as pixpro_module
import vader_d2.modeling.vader as vader_module
from vader_d2.cli import build_config
from vader_d2.config import check_solver_config
from vader_d2.errors import UserError
from vader_d2.engine.mixed_precision import CPUAutocastTrainer, build_step_trainer

from .helpers import FEW_PAIRS
from .test_methods import mapped_batches

pytestmark = pytest.mark.usefixtures("single_thread")

SMALL = [
    "MODEL.DEVICE", "cpu", *FEW_PAIRS,
    "INPUT.VIEWS.CROP_SIZE", "96",
    "SOLVER.IMS_PER_BATCH", "4",
    "MODEL.MOMENTUM_CONTRAST.BN_GROUP_SIZE", "2",
    "MODEL.MOMENTUM_CONTRAST.METRICS_PERIOD", "5",
    "MODEL.DENSECL.HIDDEN_DIM", "64",
    "MODEL.PIXPRO.HIDDEN_DIM", "64",
    "MODEL.PIXPRO.EMBED_DIM", "32",
    "DATALOADER.NUM_WORKERS", "0",
]
METHODS = {
    "VADeR": ("configs/vader_pretrain_demo.yaml", ["MODEL.MOMENTUM_CONTRAST.QUEUE_SIZE", "1024"]),
    "MoCo": ("configs/moco_global_demo.yaml", ["MODEL.MOMENTUM_CONTRAST.QUEUE_SIZE", "16"]),
    "DenseCL": ("configs/densecl_demo.yaml", ["MODEL.MOMENTUM_CONTRAST.QUEUE_SIZE", "16"]),
    "PixPro": ("configs/pixpro_demo.yaml", []),
}
# A step that is not a metrics step: the step training runs almost always.
ITERATION = 1


def small_cfg(method, *opts):
    config, method_opts = METHODS[method]
    return build_config(config, [*SMALL, *method_opts, *opts])


def snapshot(*arguments):
    """Copies of the tensors a loss was given: a queue is written in place after the loss."""
    return tuple(a.detach().clone() if torch.is_tensor(a) else a for a in arguments)


class LossRecorder:
    """Records the inputs and value of every call of the methods' loss functions."""

    def __init__(self, monkeypatch):
        self.calls = []
        info_nce, pixpro = losses_module.info_nce_loss, pixpro_module.pixpro_loss

        def recorded_info_nce(queries, keys, negatives, *rest, **kwargs):
            result = info_nce(queries, keys, negatives, *rest, **kwargs)
            self.calls.append(("info_nce", snapshot(queries, keys, negatives, *rest), kwargs, result[0]))
            return result

        def recorded_pixpro(predictions, targets, positive):
            result = pixpro(predictions, targets, positive)
            self.calls.append(("pixpro", snapshot(predictions, targets, positive), {}, result))
            return result

        for module in (vader_module, moco_module, densecl_module):
            monkeypatch.setattr(module, "info_nce_loss", recorded_info_nce)
        monkeypatch.setattr(pixpro_module, "pixpro_loss", recorded_pixpro)
        self.functions = {"info_nce": lambda *a, **k: info_nce(*a, **k)[0], "pixpro": pixpro}

    def take(self):
        calls, self.calls = self.calls, []
        return calls


def rounding_layers(model):
    """Convolutions and linear layers on the query side: where autocast rounds to bfloat16."""
    query_side = [model.query_encoder] + ([model.propagation] if hasattr(model, "propagation") else [])
    return sum(isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) for part in query_side for m in part.modules())


def step(model, batch, autocast):
    torch.manual_seed(7)
    with EventStorage(ITERATION), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        losses = model(batch)
    sum(losses.values()).backward()
    return losses


def distance(a, b, dim):
    return (a.detach().double() - b.detach().double()).norm(dim=dim).max().item()


@pytest.mark.parametrize("method", list(METHODS))
def test_autocast_step_matches_the_float32_step_within_the_derived_bound(method, monkeypatch):
    cfg = small_cfg(method)
    torch.manual_seed(0)
    float32_model = build_model(cfg).train()
    autocast_model = copy.deepcopy(float32_model)
    batch = mapped_batches(cfg, 1)[0]
    recorder = LossRecorder(monkeypatch)

    step(float32_model, batch, autocast=False)
    float32_calls = recorder.take()
    step(autocast_model, batch, autocast=True)
    autocast_calls = recorder.take()

    assert len(autocast_calls) == len(float32_calls) >= 1
    for (kind, exact, _, exact_loss), (_, mixed, kwargs, mixed_loss) in zip(float32_calls, autocast_calls):
        assert mixed_loss.dtype == torch.float32
        # The loss itself is evaluated in float32: the float64 evaluation of the same inputs agrees.
        in_float64 = [t.double() if torch.is_tensor(t) and t.is_floating_point() else t for t in mixed]
        weights = {k: v.double() for k, v in kwargs.items()}
        reference = recorder.functions[kind](*in_float64, **weights).item()
        assert mixed_loss.item() == pytest.approx(reference, rel=1e-5, abs=1e-6)

        if kind == "info_nce":
            delta_q = distance(mixed[0], exact[0], dim=1)
            delta_k = max(distance(mixed[1], exact[1], dim=1), distance(mixed[2], exact[2], dim=1))
            temperature = exact[5]
            bound = 2 * (delta_q + (1 + delta_q) * delta_k) / temperature
        else:
            delta_q, delta_k = distance(mixed[0], exact[0], dim=1), distance(mixed[1], exact[1], dim=1)
            bound = 2 * (delta_q + (1 + delta_q) * delta_k)
        # Autocast did run the encoders in bfloat16 (else delta would be float32 rounding, ~1e-7)...
        assert delta_q > 2**-12 and delta_k > 2**-12, (delta_q, delta_k)
        assert delta_q <= 3 * 2**-9 * rounding_layers(autocast_model), delta_q
        # ...and the losses moved no more than the bound allows.
        difference = abs(mixed_loss.item() - exact_loss.item())
        assert difference <= bound + 1e-5 * abs(exact_loss.item()), (kind, difference, bound)

    for name, p in autocast_model.named_parameters():
        if p.grad is not None:
            assert p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all(), name
    # The momentum update ran in float32 on float32 weights: the same key encoder in both steps.
    for exact, mixed in zip(float32_model.key_encoder.parameters(), autocast_model.key_encoder.parameters()):
        assert torch.equal(exact, mixed)
    for queue in ("queue", "dense_queue"):
        if hasattr(autocast_model, queue):
            keys = getattr(autocast_model, queue)
            filled = getattr(autocast_model, f"{queue}_image_ids") >= 0
            assert keys.dtype == torch.float32 and filled.any()
            torch.testing.assert_close(keys[filled].norm(dim=1), torch.ones(int(filled.sum())), rtol=0, atol=1e-6)


def test_cpu_amp_trains_with_bfloat16_autocast_and_cuda_keeps_detectron2s_trainer():
    model, optimizer = torch.nn.Linear(2, 2), None
    plain = build_step_trainer(small_cfg("VADeR"), model, [], optimizer)
    assert type(plain) is SimpleTrainer
    mixed = build_step_trainer(small_cfg("VADeR", "SOLVER.AMP.ENABLED", "True"), model, [], optimizer)
    assert isinstance(mixed, CPUAutocastTrainer) and mixed.precision == torch.bfloat16
    explicit = build_step_trainer(small_cfg("VADeR", "SOLVER.AMP.ENABLED", "True", "SOLVER.AMP.PRECISION", "bfloat16"), model, [], optimizer)
    assert explicit.precision == torch.bfloat16


@pytest.mark.parametrize(
    "opts, message",
    [
        (["SOLVER.AMP.PRECISION", "half"], "SOLVER.AMP.PRECISION must be 'auto', 'float16' or 'bfloat16', got 'half'"),
        (["SOLVER.AMP.ENABLED", "True", "SOLVER.AMP.PRECISION", "float16"], "SOLVER.AMP.PRECISION float16 needs a CUDA device"),
    ],
)
def test_bad_amp_precision_is_one_line(opts, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(".", r"\.")) as error:
        check_solver_config(small_cfg("VADeR", *opts))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("method", list(METHODS))
def test_three_amp_iterations_through_the_trainer_end_normally(method, tmp_path):
    from .test_methods import trainer_for

    cfg = small_cfg(method, "SOLVER.AMP.ENABLED", "True", "SOLVER.MAX_ITER", "3", "SOLVER.WARMUP_ITERS", "1",
                    "MODEL.MOMENTUM_CONTRAST.METRICS_PERIOD", "1", "OUTPUT_DIR", str(tmp_path))
    trainer = trainer_for(cfg, mapped_batches(cfg, 1))
    assert isinstance(trainer._trainer, CPUAutocastTrainer)
    trainer.resume_or_load(resume=False)
    trainer.train()
    losses = [value for value, _ in trainer.storage.history("total_loss").values()]
    assert trainer.iter == 3 and len(losses) == 3 and all(map(math.isfinite, losses))
    assert (tmp_path / "model_final.pth").is_file()
