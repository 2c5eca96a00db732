"""The view mapper: one source image in, two augmented views and their dense correspondence out."""

import logging
from typing import List, NamedTuple, Optional

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data.transforms import AugInput, Augmentation, AugmentationList

from ..config import OUTPUT_STRIDE
from .decoding import UnreadableImageError, read_source_image
from .transforms import (
    FusedProjectiveAugmentation,
    ProjectiveResize,
    ProjectiveTransform,
    RandomAffine,
    RandomColorJitter,
    RandomFlip,
    RandomGaussianBlur,
    RandomGaussianNoise,
    RandomGrayscale,
    RandomHomography,
    RandomResizedCrop,
    RandomSolarize,
)

__all__ = [
    "INVALID_CORRESPONDENCE",
    "VADeRViewMapper",
    "ViewPairGeometry",
    "compute_correspondence",
    "render_view",
    "build_geometric_augmentations",
    "build_photometric_augmentations",
]

logger = logging.getLogger(__name__)

# Grid coordinates stored for cells without a match: outside the grid, never a real location.
INVALID_CORRESPONDENCE = -1.0


class _RateLimitedWarning:
    """Logs the first ``first_n`` occurrences, then every ``every_n``-th, so that a bad data shard or
    a systematic fallback cannot flood the log of a long run. Counts are per process (per worker)."""

    def __init__(self, first_n, every_n):
        self.first_n = first_n
        self.every_n = every_n
        self.count = 0

    def __call__(self, message):
        self.count += 1
        if self.count <= self.first_n or self.count % self.every_n == 0:
            logger.warning(f"{message} [occurrence {self.count} in this process]")


def compute_correspondence(tfm1, tfm2, view_size, stride=OUTPUT_STRIDE):
    """Dense correspondence from view 1's output grid to view 2, given by the view transforms.

    The centre of each output cell (r, c) of view 1, at continuous point (stride * (c + 0.5),
    stride * (r + 0.5)), is mapped back to the source by ``tfm1.inverse()`` and into view 2 by ``tfm2``.

    Args:
        tfm1, tfm2 (ProjectiveTransform): source -> view transforms of the two views.
        view_size (int): side of the (square) views, a multiple of ``stride``.
        stride (int): output stride of the dense feature map.

    Returns:
        coords: (n, n, 2) float32, n = view_size // stride: for each view-1 cell, the (x, y) grid
            coordinates in view 2 of the same scene point (continuous point / stride - 0.5, so view 2's
            cell (r, c) centre is (c, r)); INVALID_CORRESPONDENCE where not valid.
        valid: (n, n) bool: the cell centre shows source content in view 1 (not padding) and its scene
            point lies inside view 2.

    Coordinates are not rounded to view 2's cells: reading the key there by nearest cell or bilinearly
    is the model's choice. Valid x, y lie in [-0.5, n - 0.5), view 2's continuous extent, which is
    [-1, 1) after ``grid_sample``'s ``align_corners=False`` normalisation (x + 0.5) * 2 / n - 1.
    """
    if tfm1.input_size != tfm2.input_size:
        raise ValueError(f"Views of different sources: {tfm1.input_size} vs {tfm2.input_size}")
    for tfm in (tfm1, tfm2):
        if tfm.output_size != (view_size, view_size):
            raise ValueError(f"View of size {tfm.output_size}, expected {view_size}x{view_size}")
    if view_size % stride != 0:
        raise ValueError(f"View size {view_size} is not a multiple of the stride {stride}")
    n = view_size // stride
    centres = (np.arange(n) + 0.5) * stride
    xs, ys = np.meshgrid(centres, centres)
    cells = np.stack([xs.ravel(), ys.ravel()], axis=1)

    in_view2, view2_in_front = tfm2.map_points(tfm1.inverse().apply_coords(cells))
    lands_in_view2 = (in_view2 >= 0).all(axis=1) & (in_view2 < view_size).all(axis=1)
    valid = tfm1.is_content(cells) & view2_in_front & lands_in_view2

    coords = np.full((n * n, 2), INVALID_CORRESPONDENCE, dtype=np.float32)
    coords[valid] = in_view2[valid] / stride - 0.5
    return coords.reshape(n, n, 2), valid.reshape(n, n)


def render_view(image, geometry, photometric, image_format="RGB"):
    """The view ``geometry`` (a ProjectiveTransform) cuts from an HxWx3 uint8 RGB ``image``, changed by
    ``photometric`` (an AugmentationList), as a uint8 (3, S, S) tensor in ``image_format`` channel order."""
    aug_input = AugInput(geometry.apply_image(image))
    photometric(aug_input)
    view = aug_input.image
    if image_format == "BGR":
        view = view[:, :, ::-1]
    return torch.from_numpy(np.ascontiguousarray(view.transpose(2, 0, 1)))


class ViewPairGeometry(NamedTuple):
    view1_transform: ProjectiveTransform
    view2_transform: ProjectiveTransform
    correspondence: np.ndarray  # (n, n, 2) float32, see compute_correspondence
    valid: np.ndarray  # (n, n) bool
    fallback: str  # "none", "same_geometry" or "resize": how the pair was obtained


def build_geometric_augmentations(cfg) -> List[Augmentation]:
    """Crop, flip, affine, homography, in this order, from ``cfg.INPUT.VIEWS``."""
    views = cfg.INPUT.VIEWS
    return [
        RandomResizedCrop(views.CROP_SIZE, scale=tuple(views.CROP_SCALE), ratio=tuple(views.CROP_RATIO)),
        RandomFlip(prob=views.FLIP_PROB),
        RandomAffine(prob=views.AFFINE_PROB, rotation_deg=views.AFFINE_ROTATION, shear_deg=views.AFFINE_SHEAR),
        RandomHomography(prob=views.HOMOGRAPHY_PROB, strength=views.HOMOGRAPHY_STRENGTH),
    ]


def build_photometric_augmentations(cfg, view=1) -> List[Augmentation]:
    """
    Colour jitter, grayscale, blur, solarize, noise, in this order, from ``cfg.INPUT.VIEWS``, for view 1
    or 2: BLUR_PROB_PER_VIEW and SOLARIZE_PROB may differ between the views (BYOL's asymmetric views).
    Solarize is left out where its probability is 0, so that the views' random draws stay those of a
    recipe without it.
    """
    views = cfg.INPUT.VIEWS
    brightness, contrast, saturation, hue = views.COLOR_JITTER
    blur_prob = views.BLUR_PROB_PER_VIEW[view - 1] if len(views.BLUR_PROB_PER_VIEW) else views.BLUR_PROB
    solarize_prob = views.SOLARIZE_PROB[view - 1]
    return [
        RandomColorJitter(brightness, contrast, saturation, hue, prob=views.COLOR_JITTER_PROB),
        RandomGrayscale(prob=views.GRAYSCALE_PROB),
        RandomGaussianBlur(sigma_range=tuple(views.BLUR_SIGMA), prob=blur_prob),
        *([RandomSolarize(prob=solarize_prob)] if solarize_prob > 0 else []),
        RandomGaussianNoise(std=views.NOISE_STD, prob=views.NOISE_PROB),
    ]


class VADeRViewMapper:
    """Maps a dataset dict ({"file_name", "image_id", ...}) to VADeR's training input: two views of the
    image and, for each output cell of view 1, where its scene point is in view 2.

    Output dict (the input's keys, plus):

    * "view1", "view2": uint8 tensors (3, S, S) in ``image_format`` channel order;
    * "correspondence": float32 (S/4, S/4, 2), view-2 grid coordinates (x, y) of each view-1 cell,
      see :func:`compute_correspondence`;
    * "valid": bool (S/4, S/4), at least ``min_shared_cells`` True;
    * "view1_matrix", "view2_matrix": float64 (3, 3), the projective map from source-image continuous
      coordinates to the view's (the matrix of its ProjectiveTransform): methods that compare cells on
      another grid than stride 4 (DenseCL's geometric positives, PixPro's source-image distances at
      stride 32) compute where any point of a view lies in the source from it, exactly;
    * "height", "width": of the source image the views were cut from (after EXIF orientation and the
      ``max_source_size`` downscale);
    * "num_skipped": unreadable files this mapper skipped since the previous sample it returned.

    Returns None for unreadable files; Detectron2's MapDataset then tries another image.
    """

    @configurable
    def __init__(
        self,
        *,
        geometric_augmentations: List[Augmentation],
        photometric_augmentations: List[Augmentation],
        crop_size: int,
        min_shared_cells: int,
        max_redraws: int,
        max_source_size: int,
        image_format: str = "RGB",
        view2_photometric_augmentations: Optional[List[Augmentation]] = None,
    ):
        """
        Args:
            geometric_augmentations: source -> view chain, each returning a ProjectiveTransform; the
                chain must end at crop_size x crop_size. Sampled independently for each view.
            photometric_augmentations: applied to each view after the warp (uint8 RGB in and out).
            crop_size: side S of the views, a multiple of the output stride.
            min_shared_cells: valid cells a view pair needs.
            max_redraws: view pairs drawn before falling back to identical geometry for both views.
            max_source_size: longest side of the source after decoding.
            image_format: "RGB" or "BGR", channel order of the views.
            view2_photometric_augmentations: view 2's, where they differ from view 1's
                ``photometric_augmentations`` (None: the same).
        """
        if crop_size % OUTPUT_STRIDE != 0:
            raise ValueError(f"crop_size={crop_size} must be a multiple of the output stride {OUTPUT_STRIDE}")
        num_cells = (crop_size // OUTPUT_STRIDE) ** 2
        if not 0 <= min_shared_cells <= num_cells:
            raise ValueError(f"min_shared_cells={min_shared_cells} must be in [0, {num_cells}]")
        if max_redraws < 1:
            raise ValueError(f"max_redraws={max_redraws} must be at least 1")
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
        self.view_geometry = FusedProjectiveAugmentation(geometric_augmentations)
        self.resize_geometry = ProjectiveResize(crop_size)
        self.photometric = AugmentationList(photometric_augmentations)
        self.view2_photometric = (
            self.photometric if view2_photometric_augmentations is None else AugmentationList(view2_photometric_augmentations)
        )
        self.crop_size = crop_size
        self.min_shared_cells = min_shared_cells
        self.max_redraws = max_redraws
        self.max_source_size = max_source_size
        self.image_format = image_format

        self._skipped_since_last_sample = 0
        self._warn_unreadable = _RateLimitedWarning(first_n=10, every_n=100)
        self._warn_same_geometry = _RateLimitedWarning(first_n=1, every_n=100)
        self._warn_resize = _RateLimitedWarning(first_n=1, every_n=100)

    @classmethod
    def from_config(cls, cfg, is_train=True):
        views = cfg.INPUT.VIEWS
        if is_train:
            geometric = build_geometric_augmentations(cfg)
            photometric = build_photometric_augmentations(cfg, view=1)
            view2_photometric = build_photometric_augmentations(cfg, view=2)
        else:
            # Deterministic: both views are the whole image resized, unaugmented.
            geometric = [ProjectiveResize(views.CROP_SIZE)]
            photometric = view2_photometric = []
        return {
            "geometric_augmentations": geometric,
            "photometric_augmentations": photometric,
            "view2_photometric_augmentations": view2_photometric,
            "crop_size": views.CROP_SIZE,
            "min_shared_cells": views.MIN_SHARED_CELLS,
            "max_redraws": views.MAX_REDRAWS,
            "max_source_size": views.MAX_SOURCE_SIZE,
            "image_format": cfg.INPUT.FORMAT,
        }

    def sample_geometry(self, image):
        """Draw the two views' geometry for a source ``image`` (only its shape is used) such that they
        share at least ``min_shared_cells`` cells: up to ``max_redraws`` independent pairs, then view 2
        takes view 1's geometry, and if even that shows too little content, both views are the whole
        image resized."""
        for _ in range(self.max_redraws):
            view1 = self._sample_view_transform(image)
            view2 = self._sample_view_transform(image)
            pair = self._pair(view1, view2, "none")
            if pair.valid.sum() >= self.min_shared_cells:
                return pair

        same = self._pair(view1, view1, "same_geometry")
        if same.valid.sum() >= self.min_shared_cells:
            self._warn_same_geometry(
                f"No view pair sharing {self.min_shared_cells} cells in {self.max_redraws} draws for an "
                f"image of size {image.shape[:2]}; using the same geometry for both views"
            )
            return same
        resize = self.resize_geometry.get_transform(image)
        self._warn_resize(
            f"No view pair sharing {self.min_shared_cells} cells in {self.max_redraws} draws for an image of "
            f"size {image.shape[:2]}, nor a single view with that much content; using the resized image"
        )
        return self._pair(resize, resize, "resize")

    def _sample_view_transform(self, image):
        tfm = self.view_geometry.get_transform(image)
        if tfm.output_size != (self.crop_size, self.crop_size):
            raise ValueError(
                f"Geometric augmentations produce views of size {tfm.output_size}, "
                f"expected {self.crop_size}x{self.crop_size}"
            )
        return tfm

    def _pair(self, tfm1, tfm2, fallback):
        coords, valid = compute_correspondence(tfm1, tfm2, self.crop_size, OUTPUT_STRIDE)
        return ViewPairGeometry(tfm1, tfm2, coords, valid, fallback)

    def __call__(self, dataset_dict):
        file_name = dataset_dict["file_name"]
        try:
            image = read_source_image(file_name, self.max_source_size)
        except UnreadableImageError as e:
            self._skipped_since_last_sample += 1
            self._warn_unreadable(f"Skipping unreadable image {file_name}: {e}")
            return None

        geometry = self.sample_geometry(image)
        sample = dict(dataset_dict)
        sample.update(
            view1=render_view(image, geometry.view1_transform, self.photometric, self.image_format),
            view2=render_view(image, geometry.view2_transform, self.view2_photometric, self.image_format),
            correspondence=torch.from_numpy(geometry.correspondence),
            valid=torch.from_numpy(geometry.valid),
            view1_matrix=torch.from_numpy(geometry.view1_transform.matrix.copy()),
            view2_matrix=torch.from_numpy(geometry.view2_transform.matrix.copy()),
            height=image.shape[0],
            width=image.shape[1],
            num_skipped=self._skipped_since_last_sample,
        )
        self._skipped_since_last_sample = 0
        return sample
