"""Transforms and augmentations that make VADeR's views.

Geometry: every geometric augmentation returns a :class:`ProjectiveTransform` (a 3x3 matrix), and
:class:`FusedProjectiveAugmentation` multiplies a chain of them into one, so a view is warped from the
source straight to its final size with a single resampling, and the very same matrix gives the view's
correspondences analytically.

Coordinates follow Detectron2: continuous pixel coordinates, pixel index i spans [i, i + 1).

Photometric transforms change pixel values only (``apply_coords`` is the identity). Their randomness is
drawn by the augmentation and stored in the transform, so a transform replays deterministically.

All randomness comes from NumPy's global RNG, like Detectron2's own augmentations (its data loader seeds
each worker); seed it with ``np.random.seed`` for reproducible views.
"""

import math

import cv2
import numpy as np
from detectron2.data.transforms import Augmentation, NoOpTransform, Transform

__all__ = [
    "ProjectiveTransform",
    "FusedProjectiveAugmentation",
    "ProjectiveResize",
    "RandomResizedCrop",
    "RandomFlip",
    "RandomAffine",
    "RandomHomography",
    "ColorJitterTransform",
    "GrayscaleTransform",
    "GaussianBlurTransform",
    "GaussianNoiseTransform",
    "SolarizeTransform",
    "RandomColorJitter",
    "RandomGrayscale",
    "RandomGaussianBlur",
    "RandomGaussianNoise",
    "RandomSolarize",
]

# Bilinear sampling reads a 2x2 neighbourhood, so up to 2x minification every input pixel still
# contributes to the output; beyond that the warp would alias, and the input is box-filtered first.
_MAX_MINIFICATION_WITHOUT_PREFILTER = 2.0

# ITU-R BT.601 luma weights, the grayscale of torchvision and PIL.
_LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _translation(dx, dy):
    return np.array([[1.0, 0.0, dx], [0.0, 1.0, dy], [0.0, 0.0, 1.0]])


def _inside(coords, size):
    """Whether (x, y) points lie in the continuous extent [0, w) x [0, h) of an image of size (h, w)."""
    h, w = size
    x, y = coords[:, 0], coords[:, 1]
    return (x >= 0) & (x < w) & (y >= 0) & (y < h)


def _polygon_area(points):
    x, y = points[:, 0], points[:, 1]
    return 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def _image_corners(size):
    h, w = size
    return np.array([[0.0, 0.0], [w, 0.0], [w, h], [0.0, h]])


class ProjectiveTransform(Transform):
    """A planar projective map (homography) from an input image of ``input_size`` to an output image
    of ``output_size``.

    ``matrix`` maps input continuous coordinates (x, y, 1) to output continuous coordinates, up to the
    projective scale w. Matrices built here keep w > 0 over the input image; a point with w <= 0 lies
    on or beyond the line at infinity and is never treated as content.
    """

    def __init__(self, matrix, input_size, output_size):
        """
        Args:
            matrix: 3x3 array, input continuous coords -> output continuous coords.
            input_size, output_size: (height, width) of the input and output images.
        """
        super().__init__()
        self.matrix = np.asarray(matrix, dtype=np.float64).reshape(3, 3)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.output_size = (int(output_size[0]), int(output_size[1]))

    @classmethod
    def identity(cls, height, width):
        return cls(np.eye(3), (height, width), (height, width))

    def map_points(self, coords):
        """
        Args:
            coords: (N, 2) array of (x, y) input points.

        Returns:
            (N, 2) float64 output points, and an (N,) bool array: the point maps with w > 0 (its
            output location is meaningful).
        """
        coords = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
        mapped = coords @ self.matrix[:, :2].T + self.matrix[:, 2]
        w = mapped[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            xy = mapped[:, :2] / w[:, None]
        return xy, w > 0

    def apply_coords(self, coords):
        return self.map_points(coords)[0]

    def is_content(self, coords):
        """For (N, 2) output points, whether each shows the input image (True) or padding (False)."""
        source, in_front = self.inverse().map_points(coords)
        return in_front & _inside(source, self.input_size)

    def inverse(self):
        return ProjectiveTransform(np.linalg.inv(self.matrix), self.output_size, self.input_size)

    def then(self, other):
        """The single transform equivalent to applying ``self`` and then ``other``."""
        if self.output_size != other.input_size:
            raise ValueError(
                f"Cannot chain a transform with output size {self.output_size} into one with input "
                f"size {other.input_size}"
            )
        return ProjectiveTransform(other.matrix @ self.matrix, self.input_size, other.output_size)

    def minification(self):
        """How many input pixels, along each axis on average, one output pixel spans."""
        footprint = self.inverse().apply_coords(_image_corners(self.output_size))
        h, w = self.output_size
        return math.sqrt(_polygon_area(footprint) / (h * w))

    def apply_image(self, img, interp=cv2.INTER_LINEAR):
        """Warp ``img`` (HxW or HxWxC, uint8 or float) with one ``cv2.warpPerspective``; outside the
        input image the output is 0. Under strong minification the input region the view needs is
        box-filtered (cv2.INTER_AREA) down to about the output's resolution first, against aliasing."""
        if img.shape[:2] != self.input_size:
            raise ValueError(f"Image of shape {img.shape} given to a transform of input size {self.input_size}")
        to_output = self
        if interp != cv2.INTER_NEAREST:
            img, to_output = self._prefilter(img)
        # cv2 puts pixel centres at integer coordinates, ours at i + 0.5.
        output_to_input_cv = _translation(-0.5, -0.5) @ to_output.inverse().matrix @ _translation(0.5, 0.5)
        h, w = self.output_size
        warped = cv2.warpPerspective(
            np.ascontiguousarray(img),
            output_to_input_cv,
            (w, h),
            flags=interp | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=0,
        )
        if img.ndim == 3 and warped.ndim == 2:
            warped = warped[:, :, None]
        return warped

    def _prefilter(self, img):
        """Returns (image, transform from it to the output): ``img`` itself and ``self`` unless the warp
        minifies by more than 2x, else the needed region of ``img`` reduced to about the output's
        resolution and the transform from that reduced region."""
        factor = self.minification()
        if factor <= _MAX_MINIFICATION_WITHOUT_PREFILTER:
            return img, self
        footprint = self.inverse().apply_coords(_image_corners(self.output_size))
        # The margin keeps the reduced region's own border (where bilinear sampling would blend in the
        # zero fill) outside the view wherever the view does not reach the real image border.
        margin = 2.0 * factor
        h, w = self.input_size
        x0 = max(0, math.floor(footprint[:, 0].min() - margin))
        y0 = max(0, math.floor(footprint[:, 1].min() - margin))
        x1 = min(w, math.ceil(footprint[:, 0].max() + margin))
        y1 = min(h, math.ceil(footprint[:, 1].max() + margin))
        if x1 <= x0 or y1 <= y0:
            return img, self  # the view shows no content at all
        reduced_w = max(1, round((x1 - x0) / factor))
        reduced_h = max(1, round((y1 - y0) / factor))
        reduced = cv2.resize(img[y0:y1, x0:x1], (reduced_w, reduced_h), interpolation=cv2.INTER_AREA)
        if img.ndim == 3 and reduced.ndim == 2:
            reduced = reduced[:, :, None]
        reduced_to_input = _translation(x0, y0) @ np.diag([(x1 - x0) / reduced_w, (y1 - y0) / reduced_h, 1.0])
        to_output = ProjectiveTransform(self.matrix @ reduced_to_input, (reduced_h, reduced_w), self.output_size)
        return reduced, to_output

    def apply_segmentation(self, segmentation):
        """Nearest-neighbour warp; padding is label 0."""
        return self.apply_image(segmentation, interp=cv2.INTER_NEAREST)


class FusedProjectiveAugmentation(Augmentation):
    """Samples a chain of projective augmentations and multiplies them into one ProjectiveTransform.

    Each augmentation in the chain sees an image of the size the previous ones produce. Only sizes are
    needed to sample geometry, so the later ones get a zero-cost stand-in of that size instead of a
    warped image.
    """

    def __init__(self, augmentations):
        """
        Args:
            augmentations (list[Augmentation]): each one's ``get_transform(image)`` returns a
                ProjectiveTransform and looks at ``image.shape`` only.
        """
        super().__init__()
        self.augmentations = list(augmentations)

    def get_transform(self, image):
        fused = ProjectiveTransform.identity(*image.shape[:2])
        for aug in self.augmentations:
            stand_in = np.broadcast_to(np.zeros((), dtype=np.uint8), fused.output_size + image.shape[2:])
            fused = fused.then(aug.get_transform(stand_in))
        return fused


class ProjectiveResize(Augmentation):
    """Deterministic resize to ``size`` x ``size`` of the whole image (aspect ratio not kept) or, with
    ``centre_square``, of its central square (side = its shorter side)."""

    def __init__(self, size, centre_square=False):
        super().__init__()
        self.size = int(size)
        self.centre_square = centre_square

    def get_transform(self, image):
        h, w = image.shape[:2]
        region_w, region_h = (min(h, w), min(h, w)) if self.centre_square else (w, h)
        scale = np.diag([self.size / region_w, self.size / region_h, 1.0])
        matrix = scale @ _translation(-(w - region_w) / 2, -(h - region_h) / 2)
        return ProjectiveTransform(matrix, (h, w), (self.size, self.size))


class RandomResizedCrop(Augmentation):
    """Crop a random region and resize it to ``size`` x ``size``, with torchvision's sampling: the
    region's area is a fraction in ``scale`` of the image's, its aspect ratio (w / h) is log-uniform in
    ``ratio``; after 10 draws that do not fit in the image, a central crop with the ratio clamped into
    ``ratio`` is used."""

    def __init__(self, size, scale=(0.08, 1.0), ratio=(3.0 / 4.0, 4.0 / 3.0)):
        super().__init__()
        if not 0 < scale[0] <= scale[1]:
            raise ValueError(f"RandomResizedCrop needs 0 < scale[0] <= scale[1], got {scale}")
        if not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"RandomResizedCrop needs 0 < ratio[0] <= ratio[1], got {ratio}")
        self._init(locals())

    def _sample_region(self, h, w):
        """Returns the crop region (x0, y0, crop_w, crop_h) in integer pixels."""
        log_ratio = np.log(self.ratio)
        for _ in range(10):
            area = h * w * np.random.uniform(*self.scale)
            aspect = math.exp(np.random.uniform(*log_ratio))
            crop_w = round(math.sqrt(area * aspect))
            crop_h = round(math.sqrt(area / aspect))
            if 0 < crop_w <= w and 0 < crop_h <= h:
                x0 = np.random.randint(0, w - crop_w + 1)
                y0 = np.random.randint(0, h - crop_h + 1)
                return x0, y0, crop_w, crop_h
        aspect = w / h
        if aspect < self.ratio[0]:
            crop_w, crop_h = w, min(h, max(1, round(w / self.ratio[0])))
        elif aspect > self.ratio[1]:
            crop_w, crop_h = min(w, max(1, round(h * self.ratio[1]))), h
        else:
            crop_w, crop_h = w, h
        return (w - crop_w) // 2, (h - crop_h) // 2, crop_w, crop_h

    def get_transform(self, image):
        h, w = image.shape[:2]
        x0, y0, crop_w, crop_h = self._sample_region(h, w)
        scale = np.diag([self.size / crop_w, self.size / crop_h, 1.0])
        return ProjectiveTransform(scale @ _translation(-x0, -y0), (h, w), (self.size, self.size))


class RandomFlip(Augmentation):
    """Horizontal flip with probability ``prob``, as a ProjectiveTransform (Detectron2's own RandomFlip
    returns an HFlipTransform, which cannot be fused into one matrix)."""

    def __init__(self, prob=0.5):
        super().__init__()
        self._init(locals())

    def get_transform(self, image):
        h, w = image.shape[:2]
        if np.random.rand() >= self.prob:
            return ProjectiveTransform.identity(h, w)
        mirror = np.array([[-1.0, 0.0, w], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
        return ProjectiveTransform(mirror, (h, w), (h, w))


class RandomAffine(Augmentation):
    """With probability ``prob``, rotate by an angle uniform in [-rotation_deg, rotation_deg] and shear
    along x by an angle uniform in [-shear_deg, shear_deg], about the image centre; same output size."""

    def __init__(self, prob=0.5, rotation_deg=15.0, shear_deg=5.0):
        super().__init__()
        self._init(locals())

    def get_transform(self, image):
        h, w = image.shape[:2]
        if np.random.rand() >= self.prob:
            return ProjectiveTransform.identity(h, w)
        angle = math.radians(np.random.uniform(-self.rotation_deg, self.rotation_deg))
        shear = math.radians(np.random.uniform(-self.shear_deg, self.shear_deg))
        cos, sin = math.cos(angle), math.sin(angle)
        rotation = np.array([[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]])
        shear_x = np.array([[1.0, math.tan(shear), 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
        about_centre = _translation(w / 2, h / 2) @ rotation @ shear_x @ _translation(-w / 2, -h / 2)
        return ProjectiveTransform(about_centre, (h, w), (h, w))


class RandomHomography(Augmentation):
    """With probability ``prob``, move each image corner by a uniform offset of up to
    ``strength`` x (image width, height) and warp by the homography taking the corners there."""

    def __init__(self, prob=0.5, strength=0.1):
        super().__init__()
        # Below a quarter of the size each corner stays in its own quadrant, so the target
        # quadrilateral is convex and the homography does not fold the image through infinity.
        if not 0 <= strength < 0.25:
            raise ValueError(f"RandomHomography strength must be in [0, 0.25), got {strength}")
        self._init(locals())

    def get_transform(self, image):
        h, w = image.shape[:2]
        if np.random.rand() >= self.prob:
            return ProjectiveTransform.identity(h, w)
        corners = _image_corners((h, w))
        offsets = np.random.uniform(-self.strength, self.strength, size=(4, 2)) * (w, h)
        matrix = cv2.getPerspectiveTransform(corners.astype(np.float32), (corners + offsets).astype(np.float32))
        return ProjectiveTransform(matrix, (h, w), (h, w))


class _PhotometricTransform(Transform):
    """A transform of pixel values only: coordinates and segmentations are unchanged."""

    def apply_coords(self, coords):
        return coords

    def apply_segmentation(self, segmentation):
        return segmentation

    def inverse(self):
        return NoOpTransform()


def _to_uint8(img):
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _grayscale(img):
    """Luma of an HxWx3 RGB float32 image, HxWx1."""
    return (img @ _LUMA_WEIGHTS)[:, :, None]


class ColorJitterTransform(_PhotometricTransform):
    """torchvision's colour jitter with fixed factors, on uint8 HxWx3 RGB images.

    brightness, contrast and saturation scale the image, its distance to the mean luma, and its distance
    to its own luma; hue shifts hue by this fraction of the hue circle. The operations run in ``order``
    (a permutation of "brightness", "contrast", "saturation", "hue"), clamped to [0, 255] after each.
    """

    def __init__(self, brightness, contrast, saturation, hue, order):
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img):
        out = img.astype(np.float32)
        for op in self.order:
            factor = getattr(self, op)
            if op == "hue":
                if factor != 0:
                    out = self._shift_hue(out, factor)
                continue
            if factor == 1:
                continue
            if op == "brightness":
                out = out * factor
            elif op == "contrast":
                out = factor * out + (1 - factor) * float(_grayscale(out).mean())
            else:
                out = factor * out + (1 - factor) * _grayscale(out)
            np.clip(out, 0, 255, out=out)
        return _to_uint8(out)

    @staticmethod
    def _shift_hue(img, shift):
        # cv2's float HSV is unquantised: hue in [0, 360), s and v in [0, 1].
        hsv = cv2.cvtColor(img / 255.0, cv2.COLOR_RGB2HSV)
        hsv[:, :, 0] = np.mod(hsv[:, :, 0] + 360.0 * shift, 360.0)
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB) * 255.0


class GrayscaleTransform(_PhotometricTransform):
    """BT.601 luma of an RGB uint8 image, replicated to 3 channels."""

    def apply_image(self, img):
        luma = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY)
        return np.repeat(luma[:, :, None], 3, axis=2)


class GaussianBlurTransform(_PhotometricTransform):
    """Gaussian blur of standard deviation ``sigma`` pixels, kernel truncated at 3 sigma."""

    def __init__(self, sigma):
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img):
        ksize = 2 * math.ceil(3 * self.sigma) + 1
        return cv2.GaussianBlur(img, (ksize, ksize), sigmaX=self.sigma, sigmaY=self.sigma)


class SolarizeTransform(_PhotometricTransform):
    """PIL's ``ImageOps.solarize`` at its default threshold: grey levels of 128 and above become 255 - v."""

    THRESHOLD = 128

    def apply_image(self, img):
        return np.where(img >= self.THRESHOLD, 255 - img, img).astype(np.uint8)


class GaussianNoiseTransform(_PhotometricTransform):
    """Additive Gaussian noise of standard deviation ``std`` grey levels, drawn from a generator
    seeded with ``seed`` so that the transform replays the same noise."""

    def __init__(self, std, seed):
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img):
        noise = np.random.default_rng(self.seed).standard_normal(img.shape, dtype=np.float32)
        return _to_uint8(img.astype(np.float32) + self.std * noise)


class RandomColorJitter(Augmentation):
    """With probability ``prob``, torchvision-style colour jitter: brightness, contrast and saturation
    factors uniform in [max(0, 1 - v), 1 + v], hue shift uniform in [-hue, hue] (fraction of the hue
    circle, at most 0.5), applied in a random order."""

    def __init__(self, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, prob=0.8):
        super().__init__()
        if not 0 <= hue <= 0.5:
            raise ValueError(f"Hue jitter must be in [0, 0.5], got {hue}")
        self._init(locals())

    def get_transform(self, image):
        if np.random.rand() >= self.prob:
            return NoOpTransform()
        factors = {
            op: np.random.uniform(max(0.0, 1.0 - v), 1.0 + v)
            for op, v in (("brightness", self.brightness), ("contrast", self.contrast), ("saturation", self.saturation))
        }
        hue = np.random.uniform(-self.hue, self.hue)
        order = tuple(np.random.permutation(["brightness", "contrast", "saturation", "hue"]).tolist())
        return ColorJitterTransform(hue=hue, order=order, **factors)


class RandomGrayscale(Augmentation):
    def __init__(self, prob=0.2):
        super().__init__()
        self._init(locals())

    def get_transform(self, image):
        return GrayscaleTransform() if np.random.rand() < self.prob else NoOpTransform()


class RandomGaussianBlur(Augmentation):
    """With probability ``prob``, Gaussian blur with sigma uniform in ``sigma_range`` (pixels)."""

    def __init__(self, sigma_range=(0.1, 2.0), prob=0.5):
        super().__init__()
        self._init(locals())

    def get_transform(self, image):
        if np.random.rand() >= self.prob:
            return NoOpTransform()
        return GaussianBlurTransform(np.random.uniform(*self.sigma_range))


class RandomGaussianNoise(Augmentation):
    """With probability ``prob``, additive Gaussian noise with std ``std`` as a fraction of 255."""

    def __init__(self, std=0.03, prob=0.2):
        super().__init__()
        self._init(locals())

    def get_transform(self, image):
        if np.random.rand() >= self.prob:
            return NoOpTransform()
        return GaussianNoiseTransform(self.std * 255.0, seed=np.random.randint(2**31))


class RandomSolarize(Augmentation):
    """With probability ``prob``, solarize (BYOL's second view; PixPro's ``--aug BYOL``)."""

    def __init__(self, prob=0.2):
        super().__init__()
        self._init(locals())

    def get_transform(self, image):
        return SolarizeTransform() if np.random.rand() < self.prob else NoOpTransform()
