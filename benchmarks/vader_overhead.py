"""
Benchmark VADeR's training step against its bare network, the view mapper and the data loader.

    python -m benchmarks.vader_overhead                                   # CPU default: R50-FPN, 224 px, batch 8
    python -m benchmarks.vader_overhead --depth 18 --size 128 --batch 4   # a quick look
    python -m benchmarks.vader_overhead --device cuda --amp --channels-last --batch 128 --pipeline-steps 20

Prints a table and the ratios the performance targets are about, and writes everything (settings,
machine, load average, every step time) to the --output JSON. See docs/benchmarks.md.

The bare and full steps (``steps.py``) are timed in turns (bare, full, full, bare, ...) so that a change
in the machine's load hits them alike. Also measured: the parts of the full step the bare step lacks,
each timed alone; the view mapper alone (one thread, as in a data loader worker) and the data loader
with N workers; optionally the full step fed by that loader; memory (each path's weights, gradients,
buffers and optimizer state exactly; on a GPU the peak of each step; the process's peak resident set).
"""

import argparse
import os
import sys
import time

import torch

from detectron2.data import get_detection_dataset_dicts

from vader_d2.cli import check_output_file, run_cli
from vader_d2.data import VADeRViewMapper
from vader_d2.data.datasets import register_named_datasets

from .data_pipeline import build_loader, time_loader, time_mapper
from .measure import environment, load_average, peak_resident_mb
from .report import format_report, ratios, write_json
from .steps import (
    TimedPath,
    batches_with_fresh_image_ids,
    build_benchmark_config,
    build_step_model,
    fill_queue,
    load_batch,
    multiply_adds,
    time_components,
)


def build_parser():
    parser = argparse.ArgumentParser(
        description=__doc__.strip().splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--config-file", default="configs/vader_pretrain.yaml",
                        help="VADeR config the benchmark starts from (hyper-parameters: pairs per image, "
                             "temperature, momentum, head, optimizer); the options below override its sizes")
    parser.add_argument("--depth", type=int, default=50,
                        help="ResNet depth of the FPN backbone (18, 34, 50, 101, 152)")
    parser.add_argument("--size", type=int, default=224,
                        help="side of the square views in pixels (INPUT.VIEWS.CROP_SIZE)")
    parser.add_argument("--batch", type=int, default=8, help="images per step (SOLVER.IMS_PER_BATCH)")
    parser.add_argument("--queue-sizes", type=int, nargs="+", default=[65536, 262144],
                        help="one full step is timed per queue size (MODEL.MOMENTUM_CONTRAST.QUEUE_SIZE); ratios are "
                             "taken against the first")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="MODEL.DEVICE the steps run on")
    parser.add_argument("--amp", action="store_true",
                        help="mixed precision (SOLVER.AMP.ENABLED: Detectron2's AMPTrainer on CUDA, bfloat16 autocast on the CPU)")
    parser.add_argument("--channels-last", action="store_true",
                        help="encoders and inputs in channels_last memory order (MODEL.MOMENTUM_CONTRAST.CHANNELS_LAST)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="intra-op CPU threads of the steps (torch.set_num_threads); on a CPU shared with other "
                             "jobs use 1 and read the CPU-time columns")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first (one step of every path per round)")
    parser.add_argument("--steps", type=int, default=5, help="timed rounds; each path's median step time is reported")
    parser.add_argument("--dataset", default="vader_demo_photos_train",
                        help="registered dataset (or folder:/path/to/photos) the views are cut from (the batch, the "
                             "mapper and the loader)")
    parser.add_argument("--mapper-images", type=int, default=30, help="view pairs the mapper is timed on")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="data loader worker processes (DATALOADER.NUM_WORKERS)")
    parser.add_argument("--loader-batches", type=int, default=5,
                        help="batches the data loader is timed on after its first one (0: skip the loader)")
    parser.add_argument("--pipeline-steps", type=int, default=0,
                        help="timed full steps fed by the data loader instead of a device-resident batch "
                             "(0: skip; a GPU run should measure it)")
    parser.add_argument("--output", default="output/benchmark/benchmark.json", help="where the JSON result is written")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                        help="config overrides as KEY VALUE pairs, applied last, e.g. MODEL.VADER.PAIRS_PER_IMAGE 16")
    return parser


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("batch", "size", "steps", "mapper_images", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("warmup", "workers", "loader_batches", "pipeline_steps"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must not be negative")
    return args


def run_benchmark(args, log=print):
    """Run every phase for the options of :func:`parse_args`; return the JSON-ready result."""
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
            "embed_dim": cfg.MODEL.MOMENTUM_CONTRAST.EMBED_DIM,
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
    register_named_datasets(cfg.DATASETS.TRAIN)
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


def main(argv=None):
    args = parse_args(argv)
    check_output_file(args.output, "--output")  # before minutes of measurements
    result = run_benchmark(args, log=lambda message: print(message, flush=True))
    print()
    print(format_report(result))
    write_json(result, args.output)
    print(f"JSON: {args.output}")


if __name__ == "__main__":
    run_cli(main)
