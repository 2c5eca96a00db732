"""The data side of a training step, timed: the view mapper alone and the data loader with N workers."""

import itertools
import time

import cv2
import torch

from detectron2.data import build_detection_train_loader

from vader_d2.data import VADeRViewMapper

from .measure import median_time


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

