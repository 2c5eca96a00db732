"""
The InfoNCE loss of the queue-based methods (VADeR, MoCo v2, both of DenseCL's terms): a query against
its positive key and the queued keys of *other* images.

``full_precision``: autocast off for what every method keeps in float32 under SOLVER.AMP (the losses, the
queues; vader_d2/engine/mixed_precision.py).
"""

import contextlib

import torch

__all__ = ["info_nce_loss", "NegativeLogSumExp", "full_precision"]


def full_precision(tensor):
    """Autocast off on ``tensor``'s device, for what must stay float32; nothing to switch off on a device
    without autocast (the meta device of the device-audit test)."""
    device_type = tensor.device.type
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


# Floor of the exp-weights' exponents. Excluded entries sit near the float minimum after the max is
# subtracted: exp of those (zero, or denormal just above -88) takes a CPU slow path, and a weight near
# the denormal range makes the backward matrix product produce denormals, slower still. exp(-60) =
# 8.7e-27 is an ordinary float, and K of them weigh nothing beside a row's largest weight, 1.
EXP_FLOOR = -60.0


class NegativeLogSumExp(torch.autograd.Function):
    """
    For (N, D) queries, (K, D) negatives and an (N, K) exclusion mask: log sum_n exp(q . n) over each
    query's usable negatives, and the largest usable q . n (the hardest negative); the gradient flows to
    the queries only (the queue holds none).

    The same as ``torch.logsumexp`` of the masked matrix product, written out because that costs a
    handful of (N, K) temporaries and some twenty passes over them per step, which dominate the loss at
    MoCo's queue size. Here the logits become exp-weights in place and the backward pass reuses them:
    one matrix product each way, six passes over N x K in all.
    """

    @staticmethod
    def forward(ctx, queries, negatives, excluded):
        logits = queries @ negatives.t()
        # A finite floor instead of -inf keeps rows without a usable negative finite (their loss is 0).
        logits.masked_fill_(excluded, torch.finfo(logits.dtype).min)
        hardest = logits.amax(dim=1)
        weights = logits.sub_(hardest[:, None]).clamp_(min=EXP_FLOOR).exp_()
        total = weights.sum(dim=1)
        ctx.save_for_backward(weights, total, negatives)
        ctx.mark_non_differentiable(hardest)
        return hardest + total.log(), hardest

    @staticmethod
    def backward(ctx, grad, _):
        weights, total, negatives = ctx.saved_tensors
        # d/dq_i = sum_n softmax_in n_n: normalise the (N, D) product instead of the (N, K) weights.
        return (weights @ negatives) * (grad / total)[:, None], None, None


def info_nce_loss(queries, keys, negatives, query_image_ids, negative_image_ids, temperature, query_weights=None):
    """
    L = -log( exp(q.k/t) / (exp(q.k/t) + sum_n exp(q.n/t)) ), averaged over queries (weighted by the (N,)
    ``query_weights`` if given: 0 leaves a query out without indexing, which would wait for the device).

    Negatives whose image id equals the query's, or is negative (an empty queue slot), are excluded.
    Computed in float32 at least, also under autocast: logits up to 1/t need more than half precision.
    Returns the loss, the positive logits (N,), the hardest usable negative logit of each query (N,;
    the float minimum where none is usable) and the (N, K) exclusion mask, for diagnostics.
    """
    dtype = torch.promote_types(queries.dtype, torch.float32)
    with full_precision(queries):
        queries = queries.to(dtype) / temperature  # scales N x D values instead of N x K logits
        positive = (queries * keys.to(dtype)).sum(dim=1)
        excluded = (negative_image_ids[None, :] == query_image_ids[:, None]) | (negative_image_ids < 0)[None, :]
        negative, hardest = NegativeLogSumExp.apply(queries, negatives.to(dtype), excluded)
        terms = torch.logaddexp(positive, negative) - positive
        if query_weights is None:
            return terms.mean(), positive, hardest, excluded
        loss = (terms * query_weights).sum() / query_weights.sum().clamp(min=1)
        return loss, positive, hardest, excluded
