"""
Dense correspondence benchmark: how well nearest-neighbour matching of dense embeddings finds the same
scene point in two views of a held-out photo.

Protocol (fixed, the same for every model; ``CorrespondenceProtocol``):

1. each photo is cropped to its central square and resized to ``view_size`` (view 1's geometry);
2. view 2's geometry is view 1's followed by a random homography (each corner moved by up to
   ``homography_strength`` of the side), as the pretraining views are made
   (``vader_d2.data.transforms``);
3. each view independently gets photometric changes (colour jitter always, blur and pixel noise each
   with probability one half), then the ground-truth correspondence of every stride-4 cell of view 1
   comes from the two transforms (``compute_correspondence``), exactly as in pretraining;
4. every view-1 cell with a match is matched to the view-2 cell of highest cosine similarity (all
   view-2 cells compete, padding included); the error is the distance in view-2 pixels between that
   cell's centre and the true location.

Reported over all matched cells of all pairs: PCK@t (fraction with error <= t pixels) and the mean and
median error. A prediction is a cell centre, so even a perfect matcher has an error of up to
2 * sqrt(2) pixels; ``quantisation_ceiling`` reports the PCK of always picking the cell nearest to the
truth, the best any cell-level matcher can score. ``within_view_similarity`` (mean cosine similarity of
all cell pairs of a view) tells a feature map that varies little across the image, a common reason for
poor matching, from one that varies but is not view-invariant.
"""

import contextlib
import logging
from dataclasses import dataclass
from typing import Callable, Dict, List, NamedTuple, Sequence, Tuple

import numpy as np
import torch

from detectron2.data.transforms import AugmentationList

from ..data.decoding import UnreadableImageError, read_source_image
from ..data.transforms import (
    FusedProjectiveAugmentation,
    ProjectiveResize,
    RandomColorJitter,
    RandomGaussianBlur,
    RandomGaussianNoise,
    RandomHomography,
)
from ..data.view_mapper import compute_correspondence, render_view
from ..config import OUTPUT_STRIDE

__all__ = [
    "CorrespondenceProtocol",
    "ViewPair",
    "make_view_pair",
    "make_view_pairs",
    "match_nearest",
    "pixel_errors",
    "correspondence_errors",
    "summarise_errors",
    "mean_pairwise_similarity",
    "evaluate_correspondence",
    "seeded_numpy",
]

logger = logging.getLogger(__name__)

# Sources are read at up to this size before the central crop is resized to the view size.
MAX_SOURCE_SIZE = 1024


@dataclass(frozen=True)
class CorrespondenceProtocol:
    view_size: int = 224  # the paper's input size: 56 x 56 cells
    pairs_per_image: int = 4
    homography_strength: float = 0.2
    color_jitter: Tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    blur_sigma: Tuple[float, float] = (0.1, 1.5)
    blur_prob: float = 0.5
    noise_std: float = 0.02
    noise_prob: float = 0.5
    thresholds: Tuple[float, ...] = (2.0, 4.0, 8.0)


class ViewPair(NamedTuple):
    view1: torch.Tensor  # uint8 (3, S, S) RGB
    view2: torch.Tensor
    correspondence: np.ndarray  # (S/4, S/4, 2) view-2 grid coordinates (x, y) of each view-1 cell
    valid: np.ndarray  # (S/4, S/4) bool
    file_name: str


@contextlib.contextmanager
def seeded_numpy(seed):
    """NumPy's global RNG (which D2-style augmentations draw from) seeded inside, restored after."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _photometric(protocol: CorrespondenceProtocol):
    return AugmentationList(
        [
            RandomColorJitter(*protocol.color_jitter, prob=1.0),
            RandomGaussianBlur(sigma_range=protocol.blur_sigma, prob=protocol.blur_prob),
            RandomGaussianNoise(std=protocol.noise_std, prob=protocol.noise_prob),
        ]
    )


def make_view_pair(image, protocol: CorrespondenceProtocol, file_name="", identity=False) -> ViewPair:
    """
    Two views of ``image`` (HxWx3 uint8 RGB) by the protocol, drawing from NumPy's global RNG.
    ``identity``: view 2 is view 1 itself (same geometry, no photometric change), a sanity check.
    """
    centre_square = ProjectiveResize(protocol.view_size, centre_square=True)
    view1_geometry = centre_square.get_transform(image)
    if identity:
        view2_geometry, photometric = view1_geometry, AugmentationList([])
    else:
        view2_geometry = FusedProjectiveAugmentation(
            [centre_square, RandomHomography(prob=1.0, strength=protocol.homography_strength)]
        ).get_transform(image)
        photometric = _photometric(protocol)
    coords, valid = compute_correspondence(view1_geometry, view2_geometry, protocol.view_size, OUTPUT_STRIDE)
    view1 = render_view(image, view1_geometry, photometric)
    view2 = view1 if identity else render_view(image, view2_geometry, photometric)
    return ViewPair(view1, view2, coords, valid, file_name)


def make_view_pairs(file_names: Sequence[str], protocol: CorrespondenceProtocol, seed: int, identity=False) -> List[ViewPair]:
    """
    ``protocol.pairs_per_image`` pairs per file, the same for a given seed whatever ran before.
    Unreadable files are skipped with a warning (the pairs of the other files do not change).
    """
    pairs = []
    with seeded_numpy(seed):
        for file_name in file_names:
            try:
                image = read_source_image(file_name, MAX_SOURCE_SIZE)
            except UnreadableImageError as e:
                logger.warning(f"skipping unreadable image {file_name}: {e}")
                continue
            for _ in range(protocol.pairs_per_image):
                pairs.append(make_view_pair(image, protocol, file_name, identity=identity))
    return pairs


def match_nearest(features1: torch.Tensor, features2: torch.Tensor) -> torch.Tensor:
    """
    For every cell of ``features1`` (C, h, w), the (x, y) grid position of the ``features2`` (C, h2, w2)
    cell of highest cosine similarity. Returns (h, w, 2) float.
    """
    width2 = features2.shape[2]
    a = torch.nn.functional.normalize(features1.flatten(1), dim=0)
    b = torch.nn.functional.normalize(features2.flatten(1), dim=0)
    best = (a.t() @ b).argmax(dim=1)
    positions = torch.stack([best % width2, torch.div(best, width2, rounding_mode="floor")], dim=1).float()
    return positions.view(*features1.shape[1:], 2)


def pixel_errors(predicted: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Distances in view pixels between (..., 2) grid positions."""
    return OUTPUT_STRIDE * np.linalg.norm(predicted - truth, axis=-1)


def correspondence_errors(features1, features2, correspondence, valid) -> np.ndarray:
    """Pixel errors of nearest-neighbour matching at the valid cells of view 1."""
    predicted = match_nearest(features1, features2).numpy()
    return pixel_errors(predicted[valid], correspondence[valid])


def summarise_errors(errors: np.ndarray, thresholds: Sequence[float]) -> Dict[str, float]:
    summary = {f"pck@{t:g}": float((errors <= t).mean()) for t in thresholds}
    summary.update(mean_error_px=float(errors.mean()), median_error_px=float(np.median(errors)), num_points=int(errors.size))
    return summary


def evaluate_correspondence(
    feature_fn: Callable[[torch.Tensor], Dict[str, torch.Tensor]],
    pairs: Sequence[ViewPair],
    thresholds: Sequence[float] = CorrespondenceProtocol.thresholds,
) -> Dict[str, Dict[str, float]]:
    """
    PCK and errors per feature source. ``feature_fn`` maps a uint8 (3, S, S) view to
    ``{source: (C, S/4, S/4)}``. Adds ``"quantisation_ceiling"``: the scores of the nearest cell to the truth.
    """
    errors: Dict[str, List[np.ndarray]] = {}
    within_view: Dict[str, List[float]] = {}
    ceiling = []
    for pair in pairs:
        features1, features2 = feature_fn(pair.view1), feature_fn(pair.view2)
        for source in features1:
            errors.setdefault(source, []).append(
                correspondence_errors(features1[source], features2[source], pair.correspondence, pair.valid)
            )
            within_view.setdefault(source, []).append(mean_pairwise_similarity(features2[source]))
        truth = pair.correspondence[pair.valid]
        ceiling.append(pixel_errors(np.rint(truth), truth))
    results = {}
    for source, e in errors.items():
        results[source] = summarise_errors(np.concatenate(e), thresholds)
        results[source].update(num_pairs=len(pairs), within_view_similarity=float(np.mean(within_view[source])))
    results["quantisation_ceiling"] = summarise_errors(np.concatenate(ceiling), thresholds)
    results["quantisation_ceiling"]["num_pairs"] = len(pairs)
    return results


def mean_pairwise_similarity(features: torch.Tensor) -> float:
    """Mean cosine similarity over all pairs of cells of one (C, h, w) map: 1 when every cell has the same
    embedding (nothing to match with), about 0 for unrelated directions. It is |mean unit vector|^2."""
    unit = torch.nn.functional.normalize(features.flatten(1), dim=0)
    return float(unit.mean(dim=1).square().sum())
