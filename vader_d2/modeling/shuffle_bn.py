"""
Batch-norm groups for momentum contrast: shuffle-BN, across processes and inside one.

With batch norm, a network's output for one image depends on the other images normalised with it. A key
computed in the same BN group as its query shares that group's statistics with it, and keys queued at
earlier steps do not: the query can learn to pick its positive by "this step's statistics" instead of by
content (MoCo, He et al. 2020, section 3.3; MoCo's authors add that synchronised BN does not remove the
signature, since queued keys still come from other batches). MoCo's remedy, used here:

* every process normalises over groups of ``group_size`` images of its own (per-process BN, never
  synchronised); the query encoder's groups are contiguous slices of the process's batch;
* the key encoder sees the global batch in a random order: the images are gathered from every process,
  permuted, and each process encodes its slice of the permutation, again in groups of ``group_size``.
  A key is thus normalised with other images than its query. The keys are read at their image's
  locations (which travel with the image), gathered, and put back in the original order.

One process with G groups computes exactly what G processes with one group each compute, given the same
permutation: the same keys, queries, losses and gradients. Only BN's running statistics differ (they are
updated once per group in one process, once per step in each of G processes); training never reads them,
and a fine-tune starts from them only until PreciseBN re-estimates them. Images travel as uint8 (a quarter of their float size); key maps never travel, only the keys
read from them.
"""

import torch
import torch.distributed as dist

__all__ = ["concat_all_gather", "forward_in_groups", "draw_permutation", "encode_shuffled"]


def _world():
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


@torch.no_grad()
def concat_all_gather(tensor):
    """Concatenate ``tensor`` from every process along dim 0 (a no-op without a process group)."""
    world_size, _ = _world()
    if world_size == 1:
        return tensor
    gathered = [torch.empty_like(tensor) for _ in range(world_size)]
    dist.all_gather(gathered, tensor.contiguous())
    return torch.cat(gathered, dim=0)


def forward_in_groups(encoder, images, group_size):
    """
    ``encoder`` on consecutive groups of ``group_size`` images, so that batch norm sees one group at a time.
    An encoder that returns a tuple of tensors (DenseCL's) gets each of them concatenated.
    """
    if images.shape[0] == group_size:
        return encoder(images)
    outputs = [encoder(group) for group in images.split(group_size)]
    if isinstance(outputs[0], tuple):
        return tuple(torch.cat(parts) for parts in zip(*outputs))
    return torch.cat(outputs)


@torch.no_grad()
def draw_permutation(global_batch, device):
    """A random order of the global batch, drawn by rank 0 from its default generator and sent to all."""
    permutation = torch.randperm(global_batch, device=device)
    world_size, _ = _world()
    if world_size > 1:
        dist.broadcast(permutation, src=0)
    return permutation


@torch.no_grad()
def encode_shuffled(encoder, images, locations, read, permutation, group_size, normalize):
    """
    Keys of the global batch, in its original (rank, then batch) order, with batch norm over groups of
    images drawn by ``permutation`` from every process.

    ``images``: this process's uint8 (b, 3, H, W); ``locations``: per image, where its keys are read
    ((b, ...) tensor, or None); ``read(outputs, locations)`` turns the encoder's outputs for some images
    into their keys; ``normalize`` turns uint8 images into the encoder's input.
    Returns (B, ...) keys, B = b x processes.
    """
    world_size, rank = _world()
    all_images = concat_all_gather(images)
    mine = permutation.view(world_size, -1)[rank]
    outputs = forward_in_groups(encoder, normalize(all_images[mine]), group_size)
    keys = read(outputs, None if locations is None else concat_all_gather(locations)[mine])
    shuffled = concat_all_gather(keys)  # row j: the keys of image permutation[j]
    ordered = torch.empty_like(shuffled)
    ordered[permutation] = shuffled
    return ordered
