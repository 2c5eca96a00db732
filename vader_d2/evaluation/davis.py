"""
The DAVIS 2017 semi-supervised measures and a reader of the DAVIS 2017 folder layout.

Measures (Perazzi et al., CVPR 2016; Pont-Tuset et al., arXiv 1704.00675), per object and frame:

- **J, region similarity**: the IoU of the predicted and the true mask; 1 when both are empty.
- **F, boundary F-measure**: the harmonic mean of boundary precision and recall. A boundary pixel of one
  mask counts as matched when a boundary pixel of the other lies within ``ceil(0.008 x image diagonal)``
  pixels (Euclidean). Both boundaries empty: precision = recall = 1; only one empty: the empty side's
  precision (or recall) is 1 and the other 0, so F = 0.

A mask's boundary is DAVIS's boundary map: a pixel is on it when the mask differs between it and its
right, lower or lower-right neighbour — the contour lies half a pixel up and left of the mask's edge, so
pixels just outside the mask's top and left sides belong to it, as do the mask's own bottom and right
edge pixels. The image border is no boundary: along the last row only the right neighbour is compared,
along the last column only the lower one, and the bottom-right pixel never counts.

Over a video, the first frame (whose masks are given) and the last frame are not scored, as in the DAVIS
2017 evaluation; an object's J and F are the means over the scored frames, and the set's J, F and J&F are
means over every object of every video.

Layout read by :func:`read_davis_video` (``ROOT`` is ``$DETECTRON2_DATASETS/DAVIS`` or a folder you give)::

    ROOT/JPEGImages/480p/<video>/00000.jpg ...
    ROOT/Annotations/480p/<video>/00000.png ...   palette PNGs: a pixel's palette *index* is its object id
    ROOT/ImageSets/2017/val.txt                   one video name per line

Index 0 is background; the objects of a video are 1 .. the largest index of its first frame. Index 255
(drawn around objects in some annotation tools) counts as background, as the DAVIS evaluation does.
"""

import math
import os
from dataclasses import dataclass
from typing import Dict, List, Sequence

import cv2
import numpy as np
from PIL import Image

from ..errors import UserError

__all__ = [
    "BOUNDARY_TOLERANCE",
    "DavisVideo",
    "boundary_f_measure",
    "boundary_tolerance_px",
    "davis_palette",
    "davis_root",
    "davis_video_files",
    "list_davis_videos",
    "mask_boundary",
    "read_davis_video",
    "read_palette_annotation",
    "region_similarity",
    "score_video",
    "summarise_scores",
    "write_palette_annotation",
]

# DAVIS's tolerance for boundary matching, as a fraction of the image diagonal.
BOUNDARY_TOLERANCE = 0.008
# Palette index that annotation tools use for "void"; DAVIS 2017 reads it as background.
VOID_INDEX = 255


def region_similarity(predicted: np.ndarray, truth: np.ndarray) -> float:
    """J: intersection over union of two boolean masks; 1 when both are empty."""
    union = np.logical_or(predicted, truth).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(predicted, truth).sum() / union)


def mask_boundary(mask: np.ndarray) -> np.ndarray:
    """DAVIS's one-pixel boundary map of a mask (see the module docstring); boolean, the mask's shape."""
    mask = np.asarray(mask, dtype=bool)
    boundary = np.zeros_like(mask)
    differs_right = mask[:, :-1] != mask[:, 1:]
    differs_below = mask[:-1, :] != mask[1:, :]
    boundary[:, :-1] |= differs_right
    boundary[:-1, :] |= differs_below
    boundary[:-1, :-1] |= mask[:-1, :-1] != mask[1:, 1:]
    # Nothing is compared across the image border: the last column gets only its lower neighbour's
    # difference, the last row only its right neighbour's, the bottom-right pixel none.
    return boundary


def boundary_tolerance_px(shape, tolerance: float = BOUNDARY_TOLERANCE) -> int:
    """Matching distance in pixels: ``ceil(tolerance x diagonal)`` of an image of ``shape`` (H, W)."""
    return int(math.ceil(tolerance * math.hypot(shape[0], shape[1])))


def _matched_share(boundary: np.ndarray, other_boundary: np.ndarray, tolerance_px: int) -> float:
    """Share of ``boundary``'s pixels within ``tolerance_px`` of a pixel of ``other_boundary``."""
    # Distance of every pixel to the nearest pixel of other_boundary (exact Euclidean distances).
    distance = cv2.distanceTransform((~other_boundary).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return float((distance[boundary] <= tolerance_px).mean())


def boundary_f_measure(predicted: np.ndarray, truth: np.ndarray, tolerance: float = BOUNDARY_TOLERANCE) -> float:
    """F: boundary F-measure of two boolean masks of the same shape (see the module docstring)."""
    predicted_boundary, true_boundary = mask_boundary(predicted), mask_boundary(truth)
    has_predicted, has_true = predicted_boundary.any(), true_boundary.any()
    if not has_predicted and not has_true:
        return 1.0
    if not has_predicted or not has_true:
        return 0.0
    tolerance_px = boundary_tolerance_px(truth.shape, tolerance)
    precision = _matched_share(predicted_boundary, true_boundary, tolerance_px)
    recall = _matched_share(true_boundary, predicted_boundary, tolerance_px)
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def score_video(predicted: Sequence[np.ndarray], truth: Sequence[np.ndarray], num_objects: int) -> Dict[int, Dict]:
    """
    J and F of every object of one video: ``predicted`` and ``truth`` are its label maps (object ids,
    0 background), frame by frame. The first and last frames are left out, as DAVIS 2017 does.

    Returns ``{object_id: {"J": mean, "F": mean, "J_per_frame": [...], "F_per_frame": [...]}}``.
    """
    if len(predicted) != len(truth):
        raise ValueError(f"{len(predicted)} predicted frames for {len(truth)} annotated ones")
    if len(truth) < 3:
        raise UserError(f"a video needs at least 3 annotated frames to be scored (the first and last are not), got {len(truth)}")
    scores = {}
    for object_id in range(1, num_objects + 1):
        j_frames, f_frames = [], []
        for prediction, labels in zip(predicted[1:-1], truth[1:-1]):
            j_frames.append(region_similarity(prediction == object_id, labels == object_id))
            f_frames.append(boundary_f_measure(prediction == object_id, labels == object_id))
        scores[object_id] = {
            "J": float(np.mean(j_frames)),
            "F": float(np.mean(f_frames)),
            "J_per_frame": j_frames,
            "F_per_frame": f_frames,
        }
    return scores


def summarise_scores(per_video: Dict[str, Dict[int, Dict]]) -> Dict[str, float]:
    """The set's J, F and J&F: means over every object of every video (DAVIS's "Global" row)."""
    objects = [scores for video in per_video.values() for scores in video.values()]
    if not objects:
        raise UserError("no object was scored: the videos' first-frame annotations hold no object")
    j_mean = float(np.mean([o["J"] for o in objects]))
    f_mean = float(np.mean([o["F"] for o in objects]))
    return {"J&F": (j_mean + f_mean) / 2, "J": j_mean, "F": f_mean, "objects": len(objects), "videos": len(per_video)}


# ---------------------------------------------------------------------------------------------------
# Reader


@dataclass
class DavisVideo:
    name: str
    frame_files: List[str]
    annotations: List[np.ndarray]  # uint8 (H, W) object ids per frame, 255 already read as background
    num_objects: int

    @property
    def shape(self):
        return self.annotations[0].shape


def davis_root(root=None) -> str:
    """``root`` if given, else ``$DETECTRON2_DATASETS/DAVIS`` (``./datasets/DAVIS`` without the variable)."""
    return root or os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), "DAVIS")


def list_davis_videos(root: str, image_set: str = "val") -> List[str]:
    """The video names of ``ROOT/ImageSets/2017/<image_set>.txt``."""
    if not os.path.isdir(root):
        raise UserError(
            f"DAVIS folder {root!r} does not exist: download DAVIS 2017 (trainval, 480p) into $DETECTRON2_DATASETS/DAVIS, "
            "give --davis-root, or build the offline test videos with `python datasets/prepare_videos.py`"
        )
    list_file = os.path.join(root, "ImageSets", "2017", f"{image_set}.txt")
    if not os.path.isfile(list_file):
        raise UserError(f"{list_file} does not exist: a DAVIS 2017 folder lists its videos in ImageSets/2017/<set>.txt")
    with open(list_file) as f:
        names = [line.strip() for line in f if line.strip()]
    if not names:
        raise UserError(f"{list_file} lists no video")
    return names


def read_palette_annotation(path: str) -> np.ndarray:
    """
    Object ids of a DAVIS annotation: the palette *indices* of a mode-"P" PNG. Colours are never read:
    DAVIS's palette gives object 1 the colour (128, 0, 0), but an RGB rendering of the same masks has
    no indices, and a colour-to-id table would silently mislabel any other palette.
    """
    try:
        with Image.open(path) as image:
            if image.mode != "P":
                raise UserError(
                    f"annotation {path} is a mode {image.mode!r} image, not a palette PNG: DAVIS annotations store "
                    "object ids as palette indices (PIL mode 'P'); save your masks with Image.fromarray(ids).convert('P') "
                    "and a palette, or as mode 'P' directly"
                )
            labels = np.array(image)
    except OSError as e:
        raise UserError(f"cannot read annotation {path}: {e}") from None
    labels[labels == VOID_INDEX] = 0
    return labels


def write_palette_annotation(path: str, labels: np.ndarray, palette: Sequence[int]):
    """Save object ids as a DAVIS-style palette PNG (mode "P": the pixel's index is its id)."""
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    image.putpalette(list(palette))
    image.save(path)


def davis_palette() -> List[int]:
    """DAVIS's colour map (the PASCAL VOC one): index i's colour spreads the bits of i over R, G and B."""
    palette = []
    for index in range(256):
        red = green = blue = 0
        bits = index
        for shift in range(7, -1, -1):
            red |= (bits & 1) << shift
            green |= ((bits >> 1) & 1) << shift
            blue |= ((bits >> 2) & 1) << shift
            bits >>= 3
        palette += [red, green, blue]
    return palette


def _sorted_files(folder, extension):
    return sorted(os.path.join(folder, name) for name in os.listdir(folder) if name.lower().endswith(extension))


def davis_video_files(root: str, name: str, resolution: str = "480p"):
    """
    A video's frame and annotation files, paired by name, from the folder listings alone: a cheap check
    of a whole set before minutes of work (the files themselves are checked by ``read_davis_video``).
    """
    frames_dir = os.path.join(root, "JPEGImages", resolution, name)
    annotations_dir = os.path.join(root, "Annotations", resolution, name)
    if not os.path.isdir(frames_dir):
        raise UserError(f"video {name!r}: frame folder {frames_dir} does not exist")
    if not os.path.isdir(annotations_dir):
        raise UserError(f"video {name!r} has no annotations: {annotations_dir} does not exist")
    frame_files = _sorted_files(frames_dir, ".jpg")
    annotation_files = _sorted_files(annotations_dir, ".png")
    if not frame_files:
        raise UserError(f"video {name!r}: no .jpg frames in {frames_dir}")
    if not annotation_files:
        raise UserError(f"video {name!r} has no annotations: no .png files in {annotations_dir}")
    frame_stems = [os.path.splitext(os.path.basename(p))[0] for p in frame_files]
    annotation_stems = [os.path.splitext(os.path.basename(p))[0] for p in annotation_files]
    if frame_stems != annotation_stems:
        missing = sorted(set(frame_stems) ^ set(annotation_stems))
        raise UserError(
            f"video {name!r}: frames and annotations do not pair up ({len(frame_files)} frames, {len(annotation_files)} "
            f"annotations; e.g. {missing[0] if missing else frame_stems[0]!r} has no partner): the semi-supervised "
            "protocol needs an annotation for every frame to score it"
        )
    return frame_files, annotation_files


def read_davis_video(root: str, name: str, resolution: str = "480p") -> DavisVideo:
    """One video's frames (paths) and annotations (object ids); every mismatch is a one-line UserError."""
    frame_files, annotation_files = davis_video_files(root, name, resolution)
    annotations = [read_palette_annotation(p) for p in annotation_files]
    shape = annotations[0].shape
    for frame_file, annotation_file, labels in zip(frame_files, annotation_files, annotations):
        if labels.shape != shape:
            raise UserError(f"video {name!r}: annotation {annotation_file} is {labels.shape[1]}x{labels.shape[0]}, the first is {shape[1]}x{shape[0]}")
        with Image.open(frame_file) as image:
            size = image.size
        if size != (shape[1], shape[0]):
            raise UserError(f"video {name!r}: frame {frame_file} is {size[0]}x{size[1]} but its annotation is {shape[1]}x{shape[0]}")
    num_objects = int(annotations[0].max())
    if num_objects == 0:
        raise UserError(f"video {name!r}: its first annotation {annotation_files[0]} holds no object (only index 0)")
    return DavisVideo(name, frame_files, annotations, num_objects)
