"""
bfloat16 autocast (SOLVER.AMP.ENABLED on the CPU) against float32: one VADeR training step of each, timed
in turns (float32, bfloat16, bfloat16, float32, ...) in one process, so that the machine's load hits both
alike; prints the median step times, their ratio and the load average.

    python -m benchmarks.amp_speed --depth 18 --size 96 --batch 8 --steps 6
"""

import argparse

import torch

from detectron2.data import get_detection_dataset_dicts

from vader_d2.cli import run_cli
from vader_d2.data import VADeRViewMapper

from .measure import load_average
from .steps import TimedPath, batches_with_fresh_image_ids, build_benchmark_config, build_step_model, load_batch


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--config-file", default="configs/vader_pretrain_demo.yaml")
    parser.add_argument("--depth", type=int, default=18)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--queue-size", type=int, default=16384)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfgs = {
        amp: build_benchmark_config(args.config_file, args.depth, args.size, args.batch, args.queue_size, "cpu", amp,
                                    False, "vader_demo_photos_train", 0)
        for amp in (False, True)
    }
    records = get_detection_dataset_dicts(cfgs[False].DATASETS.TRAIN, filter_empty=False)
    dataset = [dict(d, image_id=i) for i, d in enumerate(records)]
    batch = load_batch(VADeRViewMapper(cfgs[False], is_train=True), dataset, args.batch, torch.device("cpu"))
    paths = [TimedPath("bfloat16" if amp else "float32", cfg, build_step_model(cfg, bare=False), batches_with_fresh_image_ids(batch))
             for amp, cfg in cfgs.items()]
    load_start = load_average()
    for index in range(args.warmup + args.steps):
        order = paths if index % 2 == 0 else paths[::-1]
        for path in order:
            path.step(record=index >= args.warmup)
    medians = {path.name: path.summary(args.batch)["median_s"] for path in paths}
    print(f"ResNet-{args.depth}-FPN, {args.size} px, batch {args.batch}, queue {args.queue_size}, {args.threads} threads, "
          f"{args.steps} timed steps each; load average {load_start} -> {load_average()}")
    for name, seconds in medians.items():
        print(f"  {name}: median step {seconds:.3f} s")
    print(f"  bfloat16 / float32 step time: {medians['bfloat16'] / medians['float32']:.2f}")


if __name__ == "__main__":
    run_cli(main)
