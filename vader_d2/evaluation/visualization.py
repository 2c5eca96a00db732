"""
Pictures of dense features on one view pair of the correspondence benchmark (matplotlib, no display):

- ``plot_matches``: the two views side by side with a sample of ground-truth correspondences drawn as
  lines, green where the model's nearest neighbour lands within ``threshold`` pixels of the truth, red
  where it does not (a red dot marks where it went);
- ``plot_pca``: the first three principal components of the embeddings of both views, fitted jointly and
  shown as RGB beside each view: a view-invariant embedding paints the same scene point the same colour;
- ``plot_similarity``: the cosine similarity of one view-1 cell to every view-2 cell, over view 2;
- ``plot_training_curves``: loss, top-1 accuracy and positive / negative similarity of a pretraining run
  from its ``metrics.json``.
"""

import matplotlib

matplotlib.use("Agg")  # files only: no display needed or wanted

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from ..config import OUTPUT_STRIDE  # noqa: E402
from ..modeling.momentum import NEGATIVE_SIMILARITY, POSITIVE_SIMILARITY, TOP1_ACCURACY  # noqa: E402
from .correspondence import ViewPair, match_nearest, pixel_errors  # noqa: E402

__all__ = ["plot_matches", "plot_pca", "plot_similarity", "central_valid_cell", "plot_training_curves"]

_CORRECT = "#2ca02c"
_WRONG = "#d62728"


def _image(view: torch.Tensor) -> np.ndarray:
    return view.permute(1, 2, 0).numpy()


def _pixel(grid_xy):
    """Grid coordinates (cell (r, c) centre at (c, r)) -> view pixel coordinates."""
    return (np.asarray(grid_xy, dtype=np.float64) + 0.5) * OUTPUT_STRIDE


def _sample_cells(valid: np.ndarray, count: int, rng: np.random.RandomState) -> np.ndarray:
    """Up to ``count`` valid (row, col) cells, spread out: drawn from a coarse lattice of the grid."""
    step = max(1, int(np.sqrt(valid.sum() / (2 * count))))
    rows, cols = np.nonzero(valid[::step, ::step])
    cells = np.stack([rows, cols], axis=1) * step
    return cells[rng.permutation(len(cells))[:count]]


def plot_matches(pair: ViewPair, features1, features2, title="", count=24, threshold=4.0, seed=0):
    predicted = match_nearest(features1, features2).numpy()
    cells = _sample_cells(pair.valid, count, np.random.RandomState(seed))
    size = pair.view1.shape[-1]
    gap = size // 16
    canvas = np.full((size, 2 * size + gap, 3), 255, dtype=np.uint8)
    canvas[:, :size] = _image(pair.view1)
    canvas[:, size + gap :] = _image(pair.view2)

    cell_errors = pixel_errors(predicted, pair.correspondence)  # (h, w); meaningful where pair.valid
    errors = cell_errors[pair.valid]
    fig, ax = plt.subplots(figsize=(8.4, 4.4), dpi=110)
    ax.imshow(canvas)
    offset = np.array([size + gap, 0.0])
    for r, c in cells:
        start = _pixel([c, r])
        truth = _pixel(pair.correspondence[r, c]) + offset
        correct = cell_errors[r, c] <= threshold
        colour = _CORRECT if correct else _WRONG
        ax.plot([start[0], truth[0]], [start[1], truth[1]], color=colour, lw=1.1, alpha=0.9)
        ax.plot(*start, "o", color=colour, ms=3)
        if not correct:
            ax.plot(*(_pixel(predicted[r, c]) + offset), "o", color=_WRONG, ms=3, mfc="none")
    ax.set_axis_off()
    ax.set_title(
        f"{title}\nlines: true correspondences; green: nearest neighbour within {threshold:g} px "
        f"(PCK@{threshold:g} of this pair {100 * (errors <= threshold).mean():.0f}%), red: missed (circle: where it went)",
        fontsize=8,
    )
    fig.tight_layout()
    return fig


def _pca_rgb(features_list):
    """Project (C, h, w) maps onto the top-3 principal components of all their cells, scaled to [0, 1]."""
    flat = torch.cat([f.flatten(1).t() for f in features_list])
    mean = flat.mean(dim=0)
    _, _, v = torch.linalg.svd(flat - mean, full_matrices=False)
    projected = [((f.flatten(1).t() - mean) @ v[:3].t()) for f in features_list]
    everything = torch.cat(projected)
    # Robust range: a few extreme cells (borders, padding) would otherwise wash out the rest.
    low, high = torch.quantile(everything, 0.01, dim=0), torch.quantile(everything, 0.99, dim=0)
    return [
        ((p - low) / (high - low).clamp(min=1e-6)).clamp(0, 1).reshape(*f.shape[1:], 3).numpy()
        for p, f in zip(projected, features_list)
    ]


def plot_pca(pair: ViewPair, features1, features2, title=""):
    rgb1, rgb2 = _pca_rgb([features1, features2])
    fig, axes = plt.subplots(2, 2, figsize=(6.4, 6.8), dpi=110)
    for row, (view, rgb, label) in enumerate(((pair.view1, rgb1, "view 1"), (pair.view2, rgb2, "view 2"))):
        axes[row, 0].imshow(_image(view))
        axes[row, 0].set_title(label, fontsize=9)
        axes[row, 1].imshow(rgb, interpolation="nearest")
        axes[row, 1].set_title(f"{label}: embedding PCA -> RGB", fontsize=9)
    for ax in axes.flat:
        ax.set_axis_off()
    fig.suptitle(f"{title}\n(components fitted on both views together)", fontsize=9)
    fig.tight_layout()
    return fig


def central_valid_cell(valid: np.ndarray):
    """The (row, col) of the valid cell nearest the centre of the grid."""
    rows, cols = np.nonzero(valid)
    centre = (np.array(valid.shape) - 1) / 2
    best = np.argmin((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2)
    return int(rows[best]), int(cols[best])


def plot_similarity(pair: ViewPair, features1, features2, query_cell, title=""):
    r, c = query_cell
    query = F.normalize(features1[:, r, c], dim=0)
    similarity = torch.einsum("c,chw->hw", query, F.normalize(features2, dim=0)).numpy()
    size = pair.view1.shape[-1]
    best = np.unravel_index(np.argmax(similarity), similarity.shape)

    fig, axes = plt.subplots(1, 2, figsize=(8.4, 4.4), dpi=110)
    axes[0].imshow(_image(pair.view1))
    axes[0].plot(*_pixel([c, r]), "o", ms=9, mfc="none", mec="white", mew=2)
    axes[0].plot(*_pixel([c, r]), "o", ms=3, color="white")
    axes[0].set_title("view 1 with the query cell", fontsize=9)
    axes[1].imshow(_image(pair.view2))
    # The colour range is this map's own: similarities of one query span far less than [-1, 1].
    heat = axes[1].imshow(similarity, cmap="inferno", alpha=0.7, extent=(0, size, size, 0), interpolation="bilinear")
    if pair.valid[r, c]:
        axes[1].plot(*_pixel(pair.correspondence[r, c]), "o", ms=9, mfc="none", mec="cyan", mew=2, label="true match")
    axes[1].plot(*_pixel([best[1], best[0]]), "x", ms=9, mew=2, color="lime", label="most similar cell")
    axes[1].legend(loc="lower right", fontsize=7, framealpha=0.7)
    axes[1].set_title("view 2: cosine similarity to the query", fontsize=9)
    for ax in axes:
        ax.set_axis_off()
    fig.colorbar(heat, ax=axes[1], fraction=0.046, pad=0.02, label="cosine similarity")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


_TRAINING_PANELS = (
    ("loss (median of the logging window)", (("total_loss", "InfoNCE loss"),)),
    ("top-1: the positive beats every negative", ((TOP1_ACCURACY, "top-1 accuracy"),)),
    ("cosine similarity", ((POSITIVE_SIMILARITY, "query - positive key"),
                           (NEGATIVE_SIMILARITY, "query - queued negatives"))),
)


def plot_training_curves(metrics, title=""):
    """
    ``metrics``: the records of a run's ``metrics.json`` (Detectron2's JSONWriter, one dict per logging
    step). Each panel plots the records that hold its keys against their "iteration".
    """
    fig, axes = plt.subplots(1, len(_TRAINING_PANELS), figsize=(12.0, 3.4), dpi=110)
    for ax, (panel_title, curves) in zip(axes, _TRAINING_PANELS):
        for key, label in curves:
            points = [(m["iteration"], m[key]) for m in metrics if key in m and "iteration" in m]
            if points:
                ax.plot(*zip(*points), label=label)
        ax.set_title(panel_title, fontsize=9)
        ax.set_xlabel("iteration", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if len(curves) > 1:
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
