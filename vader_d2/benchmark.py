"""
What VADeR costs on top of its network, measured in one process (``tools/benchmark.py`` is the CLI).

* Bare network step: the query encoder's forward and backward on view 1 and the key encoder's forward on
  view 2, with a trivial loss (:class:`BareNetworkStep`: VADeR's own modules, VADeR's own work left out).
* Full step: VADeR's training step (momentum update, pair sampling, queue, InfoNCE, metrics), once per
  queue size, against a queue filled with keys of other images as a long run leaves it.

Both run through Detectron2's ``SimpleTrainer`` / ``AMPTrainer.run_step``, the step training runs:
forward, backward, per-step loss logging and the SGD step are in both. They take the same batch of
mapped views, already on the device, and are timed in turns (bare, full, full, bare, ...) so that a
change in the machine's load hits them alike. Each time is one whole step with the device synchronised
at both ends; the figures are medians of wall-clock time and of the process's CPU time. On a GPU wall
time is the measure. On a CPU shared with other jobs wall time mostly measures the other jobs, while CPU
time (with one thread, so that no thread waits for another) still measures the step's own work.

Also measured: the parts of the full step the bare step lacks, each timed alone; the view mapper alone
(one thread, as in a data loader worker) and the data loader with N workers; optionally the full step fed
by that loader; memory (each path's weights, gradients, buffers and optimizer state exactly; on a GPU the
peak of each step; the process's peak resident set).
"""

import itertools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import cv2
import torch
from fvcore.nn import FlopCountAnalysis

from detectron2.data import build_detection_train_loader, get_detection_dataset_dicts
from detectron2.engine import AMPTrainer, SimpleTrainer
from detectron2.modeling import build_model
from detectron2.solver import build_optimizer
from detectron2.utils.events import EventStorage

from .cli import build_config
from .config import check_vader_config
from .data import VADeRViewMapper
from .errors import UserError
from .modeling.vader import VADeR, info_nce_loss, sample_grid

__all__ = ["BareNetworkStep", "build_benchmark_config", "build_step_model", "run_benchmark", "format_report"]

# Targets of the performance issue, checked in the report (benchmarks, not tests).
TARGET_FULL_OVER_BARE = 1.10
TARGET_MAPPER_SHARE = 0.10
TARGET_QUEUE_GROWTH = 0.05

# Image ids of the keys the queue is pre-filled with: far from the ids of the benchmark's batches.
PREFILL_FIRST_IMAGE_ID = 10**12


class BareNetworkStep(VADeR):
    """
    VADeR's network without VADeR: the same modules, built by VADeR's own ``from_config``, but the step
    is only the query encoder on view 1 with gradients and the key encoder on view 2 without, joined by a
    trivial loss (minus the mean dense cosine of the two maps). No momentum update, pair sampling, queue,
    InfoNCE or metrics.
    """

    def forward(self, batched_inputs):
        queries = self.query_encoder(self.normalize([x["view1"] for x in batched_inputs]))
        with torch.no_grad():
            keys = self.key_encoder(self.normalize([x["view2"] for x in batched_inputs]))
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
    if amp and not device.startswith("cuda"):
        raise UserError("--amp needs a CUDA device (Detectron2's AMPTrainer); leave it out with --device cpu")
    sizes = [
        "MODEL.RESNETS.DEPTH", depth,
        # ResNet-18/34's basic blocks need a 64-channel res2; deeper ResNets use Detectron2's 256.
        "MODEL.RESNETS.RES2_OUT_CHANNELS", 64 if depth < 50 else 256,
        "INPUT.VIEWS.CROP_SIZE", crop_size,
        "SOLVER.IMS_PER_BATCH", batch_size,
        "MODEL.VADER.QUEUE_SIZE", queue_size,
        "MODEL.DEVICE", device,
        "SOLVER.AMP.ENABLED", amp,
        "MODEL.VADER.CHANNELS_LAST", channels_last,
        "DATASETS.TRAIN", (dataset,),
        "DATALOADER.NUM_WORKERS", num_workers,
    ]
    cfg = build_config(config_file, sizes + list(opts))
    if cfg.MODEL.VADER.LOSS != "dense":
        raise UserError("the benchmark measures the dense loss; leave MODEL.VADER.LOSS at 'dense'")
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


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(function, device):
    """Run ``function`` once; return its (wall-clock, process CPU) seconds, the device synchronised."""
    synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    function()
    synchronize(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def medians(times):
    """{"wall_s", "cpu_s"}: the medians of (wall, cpu) pairs."""
    return {"wall_s": statistics.median(t[0] for t in times), "cpu_s": statistics.median(t[1] for t in times)}


def median_time(function, repeats, device):
    return medians([timed(function, device) for _ in range(repeats)])


def peak_resident_mb():
    """Peak resident set size of this process so far (ru_maxrss is in KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (peak if sys.platform == "darwin" else peak * 1024) / 2**20


class StepMemory:
    """
    On a CUDA device, the peak memory of one step and its peak above what was allocated when it started.
    On a CPU there is no such figure: the allocator keeps freed memory, and a step that reuses it does not
    grow the resident set (None; the process-wide peak is reported instead).
    """

    def __init__(self, device):
        self.device = device

    def start(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)

    def stop(self):
        """(peak above the start, peak) in bytes, or None on a CPU."""
        if self.device.type != "cuda":
            return None
        peak = torch.cuda.max_memory_allocated(self.device)
        return peak - self._start, peak


def state_bytes(model, optimizer):
    """Bytes a path keeps between steps: weights, gradients, buffers (the queue), optimizer state."""
    tensors = list(model.parameters()) + list(model.buffers())
    tensors += [p.grad for p in model.parameters() if p.grad is not None]
    tensors += [t for state in optimizer.state.values() for t in state.values() if torch.is_tensor(t)]
    return sum(t.numel() * t.element_size() for t in tensors)


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
        trainer_class = AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer
        self.trainer = trainer_class(model, data_loader, self.optimizer)
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
        embeddings = model.key_encoder(model.normalize([x["view1"] for x in batch]))
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


def time_mapper(mapper, dataset, num_images, warmup=2):
    """Seconds per view pair of the mapper in this process with one thread, like a loader worker."""
    torch_threads, cv2_threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    try:
        records = itertools.cycle(dataset)
        for _ in range(warmup):
            mapper(next(records))
        median = median_time(lambda: mapper(next(records)), num_images, torch.device("cpu"))
    finally:
        torch.set_num_threads(torch_threads)
        cv2.setNumThreads(cv2_threads)
    return {
        "median_s_per_pair": median["wall_s"],
        "median_cpu_s_per_pair": median["cpu_s"],
        "pairs_per_s_per_worker": 1.0 / median["wall_s"],
        "images": num_images,
    }


def build_loader(cfg, dataset, num_workers):
    return build_detection_train_loader(
        cfg,
        dataset=dataset,
        mapper=VADeRViewMapper(cfg, is_train=True),
        total_batch_size=cfg.SOLVER.IMS_PER_BATCH,
        aspect_ratio_grouping=False,
        num_workers=num_workers,
    )


def time_loader(cfg, dataset, num_workers, num_batches):
    """
    Images per second the data loader delivers alone, in steady state: the clock starts after the first
    batch (worker start-up) and after the batches the workers may have prefetched meanwhile (PyTorch's
    default, 2 per worker), and runs over ``num_batches`` more.
    """
    loader = iter(build_loader(cfg, dataset, num_workers))
    start = time.perf_counter()
    next(loader)
    first_batch_s = time.perf_counter() - start
    for _ in range(2 * num_workers):
        next(loader)
    start = time.perf_counter()
    for _ in range(num_batches):
        next(loader)
    elapsed = time.perf_counter() - start
    del loader  # stops the workers
    return {
        "workers": num_workers,
        "timed_batches": num_batches,
        "first_batch_s": first_batch_s,
        "images_per_s": num_batches * cfg.SOLVER.IMS_PER_BATCH / elapsed,
    }


def _git(*command):
    return subprocess.run(["git", *command], capture_output=True, text=True, check=True).stdout.strip()


def environment():
    """The machine and the code the numbers come from."""
    try:
        commit, dirty = _git("rev-parse", "HEAD"), bool(_git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = None, None
    cpu_model = platform.processor() or None
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            cpu_model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu_model)
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": cpu_model,
        "cpu_count": os.cpu_count(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "git_commit": commit,
        "git_dirty": dirty,
    }


def load_average():
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def run_benchmark(args, log=print):
    """Run every phase for the options of ``tools/benchmark.py``; return the JSON-ready result."""
    torch.set_num_threads(args.threads)
    queue_sizes = list(args.queue_sizes)
    cfgs = {
        q: build_benchmark_config(
            args.config_file, args.depth, args.size, args.batch, q, args.device, args.amp, args.channels_last,
            args.dataset, args.workers, args.opts,
        )
        for q in queue_sizes
    }
    cfg = cfgs[queue_sizes[0]]
    device = torch.device(cfg.MODEL.DEVICE)
    # As Detectron2's default_setup does for training (CUDNN_BENCHMARK True tunes kernels for fixed sizes).
    torch.backends.cudnn.benchmark = cfg.CUDNN_BENCHMARK
    result = {
        "command": [os.path.basename(sys.argv[0]), *sys.argv[1:]],
        "settings": {
            "config_file": args.config_file,
            "depth": args.depth,
            "crop_size": args.size,
            "batch": args.batch,
            "queue_sizes": queue_sizes,
            "pairs_per_image": cfg.MODEL.VADER.PAIRS_PER_IMAGE,
            "embed_dim": cfg.MODEL.VADER.EMBED_DIM,
            "device": str(device),
            "amp": args.amp,
            "channels_last": args.channels_last,
            "threads": args.threads,
            "dataset": args.dataset,
            "workers": args.workers,
            "warmup_rounds": args.warmup,
            "timed_rounds": args.steps,
            "opts": list(args.opts),
            "optimizer_step": "in both steps: Detectron2's run_step (forward, backward, loss logging, SGD step)",
            "inputs": "one batch of mapped views, on the device, under new image ids every step",
        },
        "environment": environment(),
        "config": cfg.dump(),
        "load_average_start": load_average(),
    }
    started = time.perf_counter()
    records = get_detection_dataset_dicts(cfg.DATASETS.TRAIN, filter_empty=False)
    dataset = [dict(d, image_id=i) for i, d in enumerate(records)]
    mapper = VADeRViewMapper(cfg, is_train=True)
    batch = load_batch(mapper, dataset, args.batch, device)

    log(f"building the bare network step and {len(queue_sizes)} full step(s) ...")
    paths = [TimedPath("bare", cfg, build_step_model(cfg, bare=True), batches_with_fresh_image_ids(batch))]
    result["multiply_adds_per_image"] = multiply_adds(paths[0].model, args.size, queue_sizes)
    for q in queue_sizes:
        model = build_step_model(cfgs[q], bare=False)
        fill_queue(model)
        paths.append(TimedPath(f"full_q{q}", cfgs[q], model, batches_with_fresh_image_ids(batch)))
    rounds = args.warmup + args.steps
    for index in range(rounds):
        record = index >= args.warmup
        times = [path.step(record) for path in paths]
        log(f"round {index + 1}/{rounds}{'' if record else ' (warm-up)'}: "
            + ", ".join(f"{p.name} {wall:.3f}s (cpu {cpu:.3f}s)" for p, (wall, cpu) in zip(paths, times)))
    result["steps"] = {path.name: path.summary(args.batch) for path in paths}

    log("timing the full step's components ...")
    full_models = {path.name: path.model for path in paths[1:]}
    result["components"] = time_components(paths[1].model, batch, full_models, max(args.steps, 3))
    del paths, full_models

    log("timing the view mapper ...")
    result["mapper"] = time_mapper(mapper, dataset, args.mapper_images)
    if args.loader_batches > 0:
        log(f"timing the data loader with {args.workers} workers ...")
        result["loader"] = time_loader(cfg, dataset, args.workers, args.loader_batches)
    if args.pipeline_steps > 0:
        log(f"timing the full step fed by the data loader ({args.workers} workers) ...")
        path = TimedPath("pipeline", cfg, build_step_model(cfg, bare=False), build_loader(cfg, dataset, args.workers))
        for index in range(args.warmup + args.pipeline_steps):
            path.step(record=index >= args.warmup)
        result["pipeline"] = path.summary(args.batch)
        del path

    device_peaks = [step["device_peak_mb"] for step in result["steps"].values() if step["device_peak_mb"] is not None]
    result["memory"] = {
        "process_peak_rss_mb": peak_resident_mb(),
        "gpu_max_allocated_mb": max(device_peaks) if device_peaks else None,
        "about": "state_mb: a path's weights, gradients, buffers (the queue) and optimizer state; step_peak_mb "
        "(GPU only): a step's peak above the memory allocated when it started; every path lives in this "
        "process at once, so the process-wide peaks hold all of them",
    }
    result["ratios"] = ratios(result, queue_sizes, args.batch)
    result["wall_s"] = time.perf_counter() - started
    result["load_average_end"] = load_average()
    return result


def ratios(result, queue_sizes, batch_size):
    """The targets' ratios from wall-clock medians ("value", judged against the target) and from CPU-time
    medians ("value_cpu": the ratio of work, the one to read on a loaded CPU)."""
    steps, mapper = result["steps"], result["mapper"]
    first = steps[f"full_q{queue_sizes[0]}"]

    def entry(ratio, target):
        value, value_cpu = ratio("median_s", "median_s_per_pair"), ratio("median_cpu_s", "median_cpu_s_per_pair")
        return {"value": value, "value_cpu": value_cpu, "target": target, "met": value <= target}

    out = {
        "full_over_bare": entry(lambda step, _: first[step] / steps["bare"][step], TARGET_FULL_OVER_BARE),
        "mapper_per_image_over_step_per_image": entry(
            lambda step, pair: mapper[pair] / (first[step] / batch_size), TARGET_MAPPER_SHARE
        ),
    }
    for q in queue_sizes[1:]:
        out[f"queue_{queue_sizes[0]}_to_{q}_step_change"] = entry(
            lambda step, _: steps[f"full_q{q}"][step] / first[step] - 1.0, TARGET_QUEUE_GROWTH
        )
    return out


def format_report(result):
    """The human-readable table of a ``run_benchmark`` result."""
    s = result["settings"]
    lines = [
        f"VADeR benchmark: R{s['depth']}-FPN, {s['crop_size']} px, batch {s['batch']}, {s['device']}"
        f"{', AMP' if s['amp'] else ''}{', channels_last' if s['channels_last'] else ''}, {s['threads']} threads; "
        f"{s['timed_rounds']} timed rounds after {s['warmup_rounds']} warm-up; load average "
        f"{_format_load(result['load_average_start'])} -> {_format_load(result['load_average_end'])}",
        "",
        f"{'step (median)':<22}{'wall s':>9}{'cpu s':>9}{'images/s':>10}{'step peak MB':>14}{'state MB':>10}",
    ]
    rows = dict(result["steps"])
    if "pipeline" in result:
        rows["pipeline (loader)"] = result["pipeline"]
    for name, step in rows.items():
        peak = "n/a" if step["step_peak_mb"] is None else f"{step['step_peak_mb']:.0f}"
        lines.append(f"{name:<22}{step['median_s']:>9.3f}{step['median_cpu_s']:>9.3f}{step['images_per_s']:>10.1f}"
                     f"{peak:>14}{step['state_mb']:>10.0f}")
    lines += ["", f"{'components of the full step, timed alone':<52}{'wall s':>9}{'cpu s':>9}"]
    lines += [f"  {name:<50}{t['wall_s']:>9.4f}{t['cpu_s']:>9.4f}" for name, t in result["components"].items()]
    mapper = result["mapper"]
    lines += ["", f"view mapper: {mapper['median_s_per_pair'] * 1000:.1f} ms per pair (cpu "
              f"{mapper['median_cpu_s_per_pair'] * 1000:.1f} ms), {mapper['pairs_per_s_per_worker']:.1f} pairs/s "
              "per worker (one thread)"]
    if "loader" in result:
        loader = result["loader"]
        lines.append(f"data loader: {loader['images_per_s']:.1f} images/s with {loader['workers']} workers "
                     f"(first batch after {loader['first_batch_s']:.1f} s)")
    macs = result["multiply_adds_per_image"]
    shares = macs["loss_share_of_step"].items()
    lines.append(f"multiply-adds per image: network step {macs['network_step_gmac']:.2f} G (4 encoder forwards); "
                 + "loss " + ", ".join(f"{macs['loss_gmac'][q]:.2f} G = {share:.1%} at {q}" for q, share in shares))
    memory = result["memory"]
    gpu = memory["gpu_max_allocated_mb"]
    lines.append(f"process peak RSS {memory['process_peak_rss_mb']:.0f} MB"
                 + ("" if gpu is None else f", GPU max allocated {gpu:.0f} MB"))
    lines += ["", f"{'ratios':<46}{'wall':>9}{'cpu':>9}   target (judged on wall time)"]
    for name, r in result["ratios"].items():
        if "change" in name:
            values, target = f"{r['value']:>+9.1%}{r['value_cpu']:>+9.1%}", f"< {r['target']:.0%}"
        else:
            values, target = f"{r['value']:>9.3f}{r['value_cpu']:>9.3f}", f"<= {r['target']:.2f}"
        lines.append(f"  {name:<44}{values}   {target}: {'met' if r['met'] else 'NOT met'}")
    lines.append(f"\nwall time {result['wall_s']:.0f} s")
    return "\n".join(lines)


def _format_load(load):
    return "n/a" if load is None else "/".join(f"{x:.1f}" for x in load)


def write_json(result, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
