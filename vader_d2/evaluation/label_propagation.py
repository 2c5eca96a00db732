"""
Semi-supervised video object segmentation by label propagation: the protocol that judges frozen dense
features on DAVIS without training anything (Jabri et al., "Space-Time Correspondence as a Contrastive
Random Walk", NeurIPS 2020, and the self-supervised papers after it).

The first frame's masks are given. Every later frame t gets, for each cell of its feature grid, a
distribution over the objects (and background), read off a context of earlier frames:

1. context = the first frame (its true masks) and the ``context_frames`` frames before t (their
   propagated distributions, kept soft);
2. affinity of a cell of frame t to a context cell = cosine similarity of their (unit) features, only for
   context cells within ``radius`` cells of the query's position (in both directions: a square window);
3. the ``topk`` most similar context cells vote with weights softmax(similarity / ``temperature``);
4. the distributions are upsampled bilinearly to the image and each pixel takes the most likely label.

Defaults are those of CRW's published DAVIS command (``--topk 10 --videoLen 20 --radius 12
--temperature 0.05``), the setting later papers reuse so that numbers are comparable. CRW's grid has
stride 8; ours (VADeR's head and p2) stride 4, so 12 cells cover half CRW's neighbourhood in pixels: pass
``radius=24`` for the same pixel extent on fast-moving videos.
"""

import os
from collections import deque
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Iterator, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UserError
from .davis import DavisVideo, davis_palette, score_video, summarise_scores, write_palette_annotation

__all__ = [
    "PropagationProtocol",
    "LabelPropagator",
    "labels_to_grid",
    "grid_to_labels",
    "propagate_labels",
    "oracle_features",
    "evaluate_label_propagation",
]


@dataclass(frozen=True)
class PropagationProtocol:
    context_frames: int = 20  # frames before the current one kept as context, besides the first
    topk: int = 10
    temperature: float = 0.05
    radius: int = 12  # in feature cells

    def check(self):
        if self.context_frames < 0:
            raise UserError(f"--context-frames must be at least 0, got {self.context_frames}")
        if self.topk < 1:
            raise UserError(f"--topk must be at least 1, got {self.topk}")
        if not self.temperature > 0:
            raise UserError(f"--temperature must be positive, got {self.temperature}")
        if self.radius < 0:
            raise UserError(f"--radius must be at least 0 cells, got {self.radius}")
        return self


def labels_to_grid(labels: np.ndarray, num_objects: int, stride: int) -> torch.Tensor:
    """
    (num_objects + 1, ceil(H / stride), ceil(W / stride)) share of each label (0 = background) among
    the pixels of each cell of an (H, W) label map. Labels above ``num_objects`` count as background.
    """
    ids = torch.from_numpy(np.where(labels <= num_objects, labels, 0).astype(np.int64))
    one_hot = F.one_hot(ids, num_objects + 1).permute(2, 0, 1).float()
    height, width = labels.shape
    pad_bottom, pad_right = -height % stride, -width % stride
    if pad_bottom or pad_right:
        # Edge cells that stick out of the image take the labels of the image's last row / column.
        one_hot = F.pad(one_hot[None], (0, pad_right, 0, pad_bottom), mode="replicate")[0]
    return F.avg_pool2d(one_hot[None], stride)[0]


def grid_to_labels(grid: torch.Tensor, shape, stride: int) -> np.ndarray:
    """
    The (H, W) label map of a (num_objects + 1, h, w) grid of label distributions: upsampled bilinearly
    (a cell's centre sits at pixel ``stride * i + (stride - 1) / 2``, which ``align_corners=False`` keeps),
    then the most likely label of each pixel.
    """
    height, width = shape
    if stride > 1:
        grid = F.interpolate(grid[None], scale_factor=stride, mode="bilinear", align_corners=False)[0]
    return grid[:, :height, :width].argmax(0).cpu().numpy().astype(np.uint8)


def _window_votes(query, context_features, context_labels, protocol: PropagationProtocol) -> torch.Tensor:
    """
    Propagated label distributions (K, h, w) of a query frame's features (C, h, w), given context
    features (N, C, h, w) and label distributions (N, K, h, w). Computed tile by tile: a tile of query
    cells only needs the context cells within ``radius`` of it, so the work grows with the window, not
    with the square of the frame.
    """
    channels, height, width = query.shape
    num_labels = context_labels.shape[1]
    radius = protocol.radius
    tile = max(1, 2 * radius)
    rows, cols = torch.arange(height, device=query.device), torch.arange(width, device=query.device)
    votes = torch.empty(num_labels, height, width, device=query.device)
    for y0 in range(0, height, tile):
        y1 = min(height, y0 + tile)
        cy0, cy1 = max(0, y0 - radius), min(height, y1 + radius)
        for x0 in range(0, width, tile):
            x1 = min(width, x0 + tile)
            cx0, cx1 = max(0, x0 - radius), min(width, x1 + radius)
            queries = query[:, y0:y1, x0:x1].reshape(channels, -1).T  # (Q, C)
            keys = context_features[:, :, cy0:cy1, cx0:cx1].transpose(0, 1).reshape(channels, -1)  # (C, N*hh*ww)
            similarity = queries @ keys  # (Q, N * hh * ww)
            query_rows = rows[y0:y1, None].expand(-1, x1 - x0).reshape(-1)
            query_cols = cols[None, x0:x1].expand(y1 - y0, -1).reshape(-1)
            near_rows = (query_rows[:, None] - rows[None, cy0:cy1]).abs() <= radius
            near_cols = (query_cols[:, None] - cols[None, cx0:cx1]).abs() <= radius
            near = (near_rows[:, :, None] & near_cols[:, None, :]).reshape(len(queries), 1, -1)
            num_queries = len(queries)
            similarity = similarity.view(num_queries, len(context_features), -1).masked_fill(~near, float("-inf"))
            similarity = similarity.view(num_queries, -1)
            # Each query's own position is in every context frame's window, so at least one vote is finite;
            # candidates outside the window that topk still returns get weight exp(-inf) = 0.
            values, indices = similarity.topk(min(protocol.topk, similarity.shape[1]), dim=1)
            weights = torch.softmax(values / protocol.temperature, dim=1)  # (Q, k)
            labels = context_labels[:, :, cy0:cy1, cx0:cx1].transpose(0, 1).reshape(num_labels, -1)
            votes[:, y0:y1, x0:x1] = (labels[:, indices] * weights).sum(-1).view(num_labels, y1 - y0, x1 - x0)
    return votes


class LabelPropagator:
    """
    Label propagation over one video for one kind of features: ``start`` with the first frame's features
    and label distributions, then ``step`` with each following frame's features, which returns that
    frame's propagated distributions and adds the frame to the context.
    """

    def __init__(self, protocol: PropagationProtocol):
        self.protocol = protocol.check()
        self.first: Optional[tuple] = None
        self.recent = deque(maxlen=protocol.context_frames) if protocol.context_frames else None

    def start(self, features: torch.Tensor, label_grid: torch.Tensor):
        if features.shape[-2:] != label_grid.shape[-2:]:
            raise ValueError(f"features {tuple(features.shape)} and labels {tuple(label_grid.shape)} are not on one grid")
        self.first = (features.float(), label_grid.float().to(features.device))
        if self.recent is not None:
            self.recent.clear()

    def step(self, features: torch.Tensor) -> torch.Tensor:
        if self.first is None:
            raise RuntimeError("LabelPropagator.step before start")
        if features.shape != self.first[0].shape:
            raise ValueError(f"features {tuple(features.shape)} differ in shape from the first frame's {tuple(self.first[0].shape)}")
        context = [self.first, *(self.recent or ())]
        context_features = torch.stack([f for f, _ in context])
        context_labels = torch.stack([labels for _, labels in context])
        votes = _window_votes(features.float(), context_features, context_labels, self.protocol)
        if self.recent is not None:
            self.recent.append((features.float(), votes))
        return votes


def propagate_labels(
    frame_features: Iterable[Dict[str, torch.Tensor]],
    first_labels: np.ndarray,
    num_objects: int,
    stride: int,
    protocol: PropagationProtocol,
) -> Iterator[Dict[str, np.ndarray]]:
    """
    Label maps of every frame of a video, for each kind of features: ``frame_features`` yields, frame by
    frame, ``{source: (C, ceil(H / stride), ceil(W / stride)) unit features}``. The first frame's map is
    ``first_labels`` itself (it is given, and not scored); then one propagated map per further frame.
    Features are consumed one frame at a time, so only the context is ever held in memory; the affinities
    are computed on the features' device.
    """
    frames = iter(frame_features)
    first = next(frames)
    first_grid = labels_to_grid(first_labels, num_objects, stride)
    propagators: Dict[str, LabelPropagator] = {}
    for source, features in first.items():
        if features.shape[-2:] != first_grid.shape[-2:]:
            raise ValueError(
                f"{source} features are on a {tuple(features.shape[-2:])} grid, the labels at stride {stride} on "
                f"{tuple(first_grid.shape[-2:])}"
            )
        propagators[source] = LabelPropagator(protocol)
        propagators[source].start(features, first_grid)
    yield {source: first_labels for source in first}
    for features in frames:
        yield {
            source: grid_to_labels(propagator.step(features[source]), first_labels.shape, stride)
            for source, propagator in propagators.items()
        }


def oracle_features(labels: np.ndarray, num_objects: int, stride: int) -> torch.Tensor:
    """
    The unit-normalised label distributions of a frame's true masks, as "features": what perfect
    features would match. Propagating them measures the protocol's ceiling at ``stride`` (cells that
    straddle a boundary, and the upsampling, lose the finest detail): the reference row of
    tools/propagate_labels.py.
    """
    return F.normalize(labels_to_grid(labels, num_objects, stride), dim=0)


def evaluate_label_propagation(
    videos: Iterable[DavisVideo],
    frame_features: Callable[[DavisVideo, int], Dict[str, torch.Tensor]],
    stride: int,
    protocol: PropagationProtocol,
    save_masks: Optional[str] = None,
) -> Dict[str, Dict]:
    """
    Propagate every video's first-frame masks with each kind of features ``frame_features(video, i)``
    returns for its frame i, and score them with DAVIS's J and F. Returns, per source, the set's summary
    (``summarise_scores``) with ``per_video`` ``{video: {object id: {"J", "F"}}}``. With ``save_masks``,
    the predicted masks are written as palette PNGs to ``save_masks/<source>/<video>/<frame>.png``,
    the layout DAVIS's official evaluation code reads.
    """
    per_video: Dict[str, Dict[str, Dict]] = {}
    palette = davis_palette()
    for video in videos:
        predictions: Dict[str, List[np.ndarray]] = {}
        features = (frame_features(video, index) for index in range(len(video.frame_files)))
        for frame_file, maps in zip(video.frame_files, propagate_labels(features, video.annotations[0], video.num_objects, stride, protocol)):
            for source, labels in maps.items():
                predictions.setdefault(source, []).append(labels)
                if save_masks:
                    folder = os.path.join(save_masks, source, video.name)
                    os.makedirs(folder, exist_ok=True)
                    stem = os.path.splitext(os.path.basename(frame_file))[0]
                    write_palette_annotation(os.path.join(folder, f"{stem}.png"), labels, palette)
        for source, maps in predictions.items():
            scores = score_video(maps, video.annotations, video.num_objects)
            per_video.setdefault(source, {})[video.name] = scores
    results = {}
    for source, videos_scores in per_video.items():
        results[source] = summarise_scores(videos_scores)
        results[source]["per_video"] = {
            name: {str(object_id): {"J": s["J"], "F": s["F"]} for object_id, s in scores.items()}
            for name, scores in videos_scores.items()
        }
    return results
