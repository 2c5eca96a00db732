"""
Building blocks that every momentum method here (VADeR, the MoCo baseline, DenseCL, PixPro) shares.

* the momentum encoder: a frozen copy of the online (query) encoder, reset to it at the start of a run
  and moved towards it after every step, theta_k <- m theta_k + (1 - m) theta_q;
* the key queue: a ring buffer of keys, each with the id of the image it came from (-1: empty slot), so
  that a loss can mask out the query's own image and the slots not yet filled;
* the views of a batch: stacked as uint8 on the device, normalised there;
* batch-norm groups (``KEY_BN``): the query encoder on contiguous groups, the key encoder on a random
  permutation of the global batch (``shuffle_bn.py`` holds the mechanics);
* the count of unreadable files the loaders skipped, kept across a resume and logged.

They are functions on tensors and modules rather than a base class or sub-modules, so that each method
keeps its attributes (``query_encoder``, ``key_encoder``, ``queue``, ...) at the top level of its state
dict: checkpoints, the exporter and the resume checks read those names.
"""

import copy
from typing import Dict, List

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from detectron2.structures import ImageList
from detectron2.utils import comm

from ..mixed_precision import full_precision
from .shuffle_bn import draw_permutation, forward_in_groups

__all__ = [
    "momentum_copy",
    "copy_weights_",
    "momentum_update_",
    "register_key_queue",
    "reset_key_queue_",
    "enqueue_",
    "stack_views",
    "normalize_views",
    "encode_in_bn_groups",
    "key_batch_permutation",
    "register_skip_count",
    "note_skipped_images",
    "count_skipped_images_",
]


def momentum_copy(encoder: nn.Module) -> nn.Module:
    """A copy of ``encoder`` that gradients never reach: the momentum (key) encoder."""
    frozen = copy.deepcopy(encoder)
    frozen.requires_grad_(False)
    return frozen


@torch.no_grad()
def copy_weights_(target: nn.Module, source: nn.Module):
    """Make ``target`` a copy of ``source``, parameters and buffers (BN statistics) alike."""
    for t, s in zip(target.state_dict().values(), source.state_dict().values()):
        t.copy_(s)


@torch.no_grad()
def momentum_update_(target: nn.Module, source: nn.Module, momentum: float):
    """theta_t <- m theta_t + (1 - m) theta_s, as theta_t + (1 - m)(theta_s - theta_t): one pass, all at once."""
    torch._foreach_lerp_(list(target.parameters()), list(source.parameters()), 1.0 - momentum)


def register_key_queue(module: nn.Module, name: str, size: int, dim: int):
    """
    Buffers ``name`` (size, dim) keys, ``name + '_image_ids'`` (size,) and ``name + '_ptr'`` (the next
    slot to write) on ``module``: buffers, so that checkpoints carry the queue and a resumed run continues it.
    """
    module.register_buffer(name, torch.zeros(size, dim))
    # -1 marks a slot not yet filled: masked like a key of the query's own image.
    module.register_buffer(f"{name}_image_ids", torch.full((size,), -1, dtype=torch.long))
    module.register_buffer(f"{name}_ptr", torch.zeros((), dtype=torch.long))


@torch.no_grad()
def reset_key_queue_(module: nn.Module, name: str):
    """Empty the queue ``name`` of ``module``: what MODEL.WEIGHTS brings there belongs to another run."""
    getattr(module, name).zero_()
    getattr(module, f"{name}_image_ids").fill_(-1)
    getattr(module, f"{name}_ptr").zero_()


@torch.no_grad()
def enqueue_(module: nn.Module, name: str, keys, image_ids):
    """Write ``keys`` (of every process's images, in rank order) over the oldest entries of queue ``name``."""
    queue, queue_ids, ptr = getattr(module, name), getattr(module, f"{name}_image_ids"), getattr(module, f"{name}_ptr")
    slots = (ptr + torch.arange(keys.shape[0], device=keys.device)) % queue.shape[0]
    if keys.dtype != queue.dtype:
        # Keys of an autocast step are half-precision unit vectors, norms off by up to 2^-8: the float32
        # queue gets them re-normalised in float32.
        with full_precision(keys):
            keys = F.normalize(keys.to(queue.dtype), dim=1)
    queue.index_copy_(0, slots, keys)
    queue_ids.index_copy_(0, slots, image_ids)
    ptr.copy_((ptr + keys.shape[0]) % queue.shape[0])


def stack_views(images: List[torch.Tensor], device):
    """The views of a batch as one uint8 tensor on ``device``, copied without waiting for the device."""
    return torch.stack(images).to(device, non_blocking=True)


def normalize_views(images, pixel_mean, pixel_std, channels_last=False):
    """uint8 views -> the encoder's float input (per-channel mean and std), in the memory order asked for."""
    images = (images.float() - pixel_mean) / pixel_std
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


def encode_in_bn_groups(encoder, images, key_bn, group_size):
    """``encoder`` on normalised images: over the whole batch (``sync``) or in contiguous BN groups (``shuffle``)."""
    if key_bn == "sync":
        return encoder(images)
    return forward_in_groups(encoder, images, group_size)


def key_batch_permutation(key_bn, batch_size, group_size, device):
    """The order in which the key encoder sees the global batch; None where it cannot matter."""
    world_size = comm.get_world_size()
    if key_bn == "sync" or world_size * batch_size == group_size:
        return None  # one BN group over the whole batch: no order changes its statistics
    return draw_permutation(world_size * batch_size, device)


def register_skip_count(module: nn.Module):
    """
    Buffer ``skipped_images`` on ``module``: unreadable files skipped by every process's loader, as of the
    last logging step; a buffer, so that a resumed run goes on counting. Skips since then are this
    process's alone (``skipped_since_logged``), summed over the processes when logged.
    """
    module.register_buffer("skipped_images", torch.zeros((), dtype=torch.long))
    module.skipped_since_logged = 0


def note_skipped_images(module: nn.Module, batched_inputs: List[Dict]):
    """Add the files the mapper skipped before each of this batch's images (its ``num_skipped``)."""
    module.skipped_since_logged += sum(x.get("num_skipped", 0) for x in batched_inputs)


@torch.no_grad()
def count_skipped_images_(module: nn.Module):
    """Add every process's skips since the last logging step to the total (all processes call this)."""
    skipped = torch.tensor(module.skipped_since_logged, device=module.skipped_images.device)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(skipped)
    module.skipped_images += skipped
    module.skipped_since_logged = 0


def padded_images(batched_inputs: List[Dict], pixel_mean, pixel_std, size_divisibility) -> ImageList:
    """Images given the Detectron2 way ({"image": uint8 (3, H, W)}), normalised and padded into one batch."""
    images = [(x["image"].to(pixel_mean.device).float() - pixel_mean) / pixel_std for x in batched_inputs]
    return ImageList.from_tensors(images, size_divisibility)


def cells_of_each_image(maps, image_sizes, stride):
    """[{"embedding": (D, ceil(H / stride), ceil(W / stride))}]: each image's cells of a padded batch's (B, D, h, w) maps."""
    return [{"embedding": m[:, : -(-h // stride), : -(-w // stride)]} for m, (h, w) in zip(maps, image_sizes)]
