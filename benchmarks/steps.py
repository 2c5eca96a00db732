"""
The two training steps the benchmark compares, and the parts of the full step timed alone.

* Bare network step: the query encoder's forward and backward on view 1 and the key encoder's forward on
  view 2, with a trivial loss (:class:`BareNetworkStep`: VADeR's own modules, VADeR's own work left out).
* Full step: VADeR's training step (momentum update, pair sampling, queue, InfoNCE, metrics), once per
  queue size, against a queue filled with keys of other images as a long run leaves it.

Both run through the trainer's step (vader_d2.engine.mixed_precision.build_step_trainer), the step training runs:
forward, backward, per-step loss logging and the SGD step are in both. They take the same batch of
mapped views, already on the device.

This is the one module of the benchmarks that reaches into ``VADeR``'s internals: the components it
times alone are the model's own parts, called as the model's forward calls them.
"""

import itertools
import math
import os

import torch
from fvcore.nn import FlopCountAnalysis

from detectron2.modeling import build_model
from detectron2.solver import build_optimizer
from detectron2.utils.events import EventStorage

from vader_d2.cli import build_config, merge_opts
from vader_d2.config import check_vader_config
from vader_d2.errors import UserError
from vader_d2.modeling.shuffle_bn import forward_in_groups
from vader_d2.engine.mixed_precision import build_step_trainer
from vader_d2.modeling.losses import info_nce_loss
from vader_d2.modeling.vader import VADeR, sample_grid

from .measure import StepMemory, median_time, medians, state_bytes, timed

# Image ids of the keys the queue is pre-filled with: far from the ids of the benchmark's batches.
PREFILL_FIRST_IMAGE_ID = 10**12


class BareNetworkStep(VADeR):
    """
    VADeR's network without VADeR: the same modules, built by VADeR's own ``from_config``, but the step
    is only the query encoder on view 1 with gradients and the key encoder on view 2 without, joined by a
    trivial loss (minus the mean dense cosine of the two maps). No momentum update, pair sampling, queue,
    InfoNCE or metrics. Both encoders run in the batch-norm groups of the full step, without its
    permutation of the key batch.
    """

    def forward(self, batched_inputs):
        queries = self.encode_queries(self.stack([x["view1"] for x in batched_inputs], self.device))
        with torch.no_grad():
            view2 = self.normalize(self.stack([x["view2"] for x in batched_inputs], self.device))
            group_size = self.bn_group_size if self.key_bn == "shuffle" else len(view2)
            keys = forward_in_groups(self.key_encoder, view2, group_size)
        return {"loss_bare": -(queries * keys).sum(dim=1).mean()}


def build_benchmark_config(
    config_file, depth, crop_size, batch_size, queue_size, device, amp, channels_last, dataset, num_workers, opts=()
):
    """The config of ``config_file`` at the benchmark's sizes; ``opts`` (KEY VALUE ...) are applied last."""
    if not os.path.isfile(config_file):
        raise UserError(f"--config-file {config_file!r} does not exist; pass one like configs/vader_pretrain.yaml")
    if depth not in (18, 34, 50, 101, 152):
        raise UserError(f"--depth {depth}: Detectron2's ResNets have depth 18, 34, 50, 101 or 152")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device} but no CUDA GPU is visible; pass --device cpu")
    cfg = build_config(config_file)
    sizes = [
        "MODEL.RESNETS.DEPTH", depth,
        # ResNet-18/34's basic blocks need a 64-channel res2; deeper ResNets use Detectron2's 256.
        "MODEL.RESNETS.RES2_OUT_CHANNELS", 64 if depth < 50 else 256,
        "INPUT.VIEWS.CROP_SIZE", crop_size,
        "SOLVER.IMS_PER_BATCH", batch_size,
        "MODEL.MOMENTUM_CONTRAST.QUEUE_SIZE", queue_size,
        "MODEL.DEVICE", device,
        "SOLVER.AMP.ENABLED", amp,
        "MODEL.MOMENTUM_CONTRAST.CHANNELS_LAST", channels_last,
        "DATASETS.TRAIN", (dataset,),
        "DATALOADER.NUM_WORKERS", num_workers,
    ]
    # Shuffle-BN groups must divide the batch: the config's group size, or the largest that does.
    sizes += ["MODEL.MOMENTUM_CONTRAST.BN_GROUP_SIZE", math.gcd(batch_size, cfg.MODEL.MOMENTUM_CONTRAST.BN_GROUP_SIZE)]
    merge_opts(cfg, sizes + list(opts))
    if cfg.MODEL.META_ARCHITECTURE != "VADeR" or cfg.MODEL.VADER.LOSS != "dense":
        raise UserError("the benchmark measures VADeR's dense loss; use a VADeR config (MODEL.META_ARCHITECTURE VADeR)")
    check_vader_config(cfg)
    return cfg


def build_step_model(cfg, bare):
    """The model of one benchmark path, seeded so that every path starts from the same weights."""
    torch.manual_seed(cfg.SEED if cfg.SEED >= 0 else 0)
    if not bare:
        return build_model(cfg)
    return BareNetworkStep(cfg).to(torch.device(cfg.MODEL.DEVICE))


def fill_queue(model):
    """Fill the queue as a long run leaves it: unit keys, PAIRS_PER_IMAGE per image, none from the batch."""
    size, dim = model.queue.shape
    generator = torch.Generator().manual_seed(0)
    model.queue.copy_(torch.nn.functional.normalize(torch.randn(size, dim, generator=generator), dim=1))
    model.queue_image_ids.copy_(PREFILL_FIRST_IMAGE_ID + torch.arange(size) // model.pairs_per_image)
    model.queue_ptr.zero_()


def multiply_adds(model, crop_size, queue_sizes):
    """
    Multiply-adds per image (fvcore's count, in G): the network step (query encoder forward and backward,
    key encoder forward: four encoder forwards, counting a backward as two) and the loss's two matrix
    products (N x K x D each way, N = PAIRS_PER_IMAGE queries per image) per queue size.
    """
    image = torch.zeros(1, 3, crop_size, crop_size, device=model.device)
    model.eval()  # traced once, without touching the batch-norm statistics
    try:
        analysis = FlopCountAnalysis(model.query_encoder, image)
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        encoder = analysis.total() / 1e9
    finally:
        model.train()
    loss = {str(q): 2 * model.pairs_per_image * q * model.queue.shape[1] / 1e9 for q in queue_sizes}
    return {
        "encoder_forward_gmac": encoder,
        "network_step_gmac": 4 * encoder,
        "loss_gmac": loss,
        "loss_share_of_step": {q: macs / (4 * encoder + macs) for q, macs in loss.items()},
    }



def batches_with_fresh_image_ids(batch):
    """The same views forever, under new image ids every step (as in an epoch of a large dataset)."""
    for step in itertools.count():
        yield [dict(x, image_id=step * len(batch) + i) for i, x in enumerate(batch)]


class TimedPath:
    """One benchmark path: a model, its optimizer and Detectron2's trainer for them, stepped and timed."""

    def __init__(self, name, cfg, model, data_loader):
        self.name = name
        self.model = model
        self.optimizer = build_optimizer(cfg, model)
        self.trainer = build_step_trainer(cfg, model, data_loader, self.optimizer)
        self.trainer.storage = EventStorage(0)
        self.memory = StepMemory(torch.device(cfg.MODEL.DEVICE))
        self.times = []
        self.peaks = []

    def run_step(self):
        with self.trainer.storage:
            self.trainer.before_step()
            self.trainer.run_step()
        self.trainer.iter += 1

    def step(self, record):
        """One training step; returns its (wall, cpu) seconds, kept if ``record``."""
        self.memory.start()
        times = timed(self.run_step, self.memory.device)
        peak = self.memory.stop()
        if record:
            self.times.append(times)
            self.peaks.append(peak)
        return times

    def summary(self, batch_size):
        median = medians(self.times)
        peaks = [p for p in self.peaks if p is not None]
        return {
            "median_s": median["wall_s"],
            "median_cpu_s": median["cpu_s"],
            "images_per_s": batch_size / median["wall_s"],
            "times_s": [wall for wall, _ in self.times],
            "cpu_times_s": [cpu for _, cpu in self.times],
            "step_peak_mb": max(above for above, _ in peaks) / 2**20 if peaks else None,
            "device_peak_mb": max(peak for _, peak in peaks) / 2**20 if peaks else None,
            "state_mb": state_bytes(self.model, self.optimizer) / 2**20,
        }


def load_batch(mapper, dataset, batch_size, device):
    """A batch of mapped samples, the dataset's readable images in order (repeated if it has too few),
    their tensors moved to ``device``."""
    samples = []
    for record in dataset:
        sample = mapper(record)
        if sample is not None:
            samples.append({k: v.to(device) if torch.is_tensor(v) else v for k, v in sample.items()})
        if len(samples) == batch_size:
            break
    if not samples:
        raise UserError("no image of --dataset could be read; point it at a dataset of images")
    return [samples[i % len(samples)] for i in range(batch_size)]


def time_components(model, batch, queue_models, repeats):
    """
    The parts of the full step that the bare step lacks, each timed alone (medians of wall and CPU
    seconds): momentum update, pair sampling (cell choice, gathering queries, sampling keys), the loss's
    forward and backward against each queue (and, as its floor, its two matrix products alone), enqueue.
    """
    device = model.device
    with torch.no_grad():
        embeddings = model.key_encoder(model.normalize(model.stack([x["view1"] for x in batch], device)))
    valid = torch.stack([x["valid"] for x in batch]).flatten(1)
    matches = torch.stack([x["correspondence"] for x in batch]).flatten(1, 2)

    def sample_pairs():
        cells, positions = model.sample_cells(valid, matches)
        return model.at_cells(embeddings, cells), sample_grid(embeddings, positions, model.key_sampling)

    queries, keys = (t.reshape(-1, t.shape[-1]) for t in sample_pairs())
    query_ids = torch.arange(len(batch), device=device).repeat_interleave(model.pairs_per_image)
    timings = {
        "momentum_update": median_time(model.momentum_update_key_encoder, repeats, device),
        "pair_sampling": median_time(sample_pairs, repeats, device),
    }
    for name, queue_model in queue_models.items():
        queue, queue_ids = queue_model.queue, queue_model.queue_image_ids

        def loss_forward_backward():
            q = queries.detach().requires_grad_()
            info_nce_loss(q, keys, queue, query_ids, queue_ids, model.temperature)[0].backward()

        def matrix_products_only():
            (queries @ queue.t()) @ queue

        timings[f"loss_forward_backward[{name}]"] = median_time(loss_forward_backward, repeats, device)
        timings[f"loss_matrix_products_only[{name}]"] = median_time(matrix_products_only, repeats, device)
    saved = [b.clone() for b in (model.queue, model.queue_image_ids, model.queue_ptr)]
    timings["enqueue"] = median_time(lambda: model.enqueue(keys, query_ids), repeats, device)
    for buffer, value in zip((model.queue, model.queue_image_ids, model.queue_ptr), saved):
        buffer.copy_(value)
    return timings

