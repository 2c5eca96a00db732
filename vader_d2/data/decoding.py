"""Image files decoded into the RGB source images views are cut from, whatever their mode or damage."""

import contextlib
import math
import warnings

import cv2
import numpy as np
from PIL import Image, ImageFile, ImageOps

__all__ = ["UnreadableImageError", "read_source_image"]

# PIL opens 16-bit grayscale PNGs and TIFFs as one of these ("I" in older Pillow versions).
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class UnreadableImageError(Exception):
    """A file that cannot be decoded into an image (empty, truncated, not an image, too large)."""


@contextlib.contextmanager
def _pil_refuses_truncated_images():
    # PIL reads this policy from a module global at load time and offers no per-image switch. A
    # truncated file must be skipped, never decoded half grey, whatever other code set, so the flag is
    # pinned for the duration of one decode and restored afterwards. Data loader workers are processes
    # decoding one image at a time, so no other decode observes the temporary value.
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def _check_pixel_budget(size):
    # PIL only warns between MAX_IMAGE_PIXELS and twice that; we refuse to decode that many pixels.
    # JPEGs reach this check after draft() shrank them, so large photos still pass.
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and size[0] * size[1] > limit:
        raise UnreadableImageError(
            f"decompression bomb: {size[0]}x{size[1]} pixels exceed PIL.Image.MAX_IMAGE_PIXELS={limit}"
        )


def _to_rgb_uint8(image):
    """HxWx3 uint8 RGB array of a decoded PIL image of any common mode."""
    if image.mode in _SIXTEEN_BIT_MODES:
        # PIL's own conversion to 8 bits clips at 255 instead of rescaling 0..65535.
        values = np.asarray(image).astype(np.float32)
        gray = np.rint(np.clip(values, 0, 65535) * (255.0 / 65535.0)).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.has_transparency_data:
        rgba = np.asarray(image.convert("RGBA"), dtype=np.uint16)
        # Composite over black: transparent regions often hide arbitrary colours.
        return ((rgba[:, :, :3] * rgba[:, :, 3:] + 127) // 255).astype(np.uint8)
    return np.asarray(image.convert("RGB"))


def read_source_image(file_name, max_size):
    """Decode an image file into the source image the views are cut from.

    The EXIF orientation is applied; any mode (grayscale, palette, CMYK, with alpha, 16-bit) becomes RGB;
    images whose longest side exceeds ``max_size`` are downscaled (JPEGs decode at reduced resolution
    directly, via ``Image.draft``).

    Returns:
        HxWx3 uint8 RGB array.

    Raises:
        UnreadableImageError: on any decoding failure, with the reason.
    """
    try:
        with _pil_refuses_truncated_images(), warnings.catch_warnings():
            # PIL warns about the pixel count of the full-resolution image; what we decode is checked by
            # _check_pixel_budget after draft().
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(file_name) as image:
                if image.format == "JPEG" and max(image.size) > max_size:
                    scale = max_size / max(image.size)
                    image.draft(None, (math.ceil(image.width * scale), math.ceil(image.height * scale)))
                _check_pixel_budget(image.size)
                image.load()
                ImageOps.exif_transpose(image, in_place=True)
                rgb = _to_rgb_uint8(image)
    except UnreadableImageError:
        raise
    except Exception as e:  # decoders of corrupt files raise all kinds of errors; none may end a run
        raise UnreadableImageError(f"{type(e).__name__}: {e}") from e
    h, w = rgb.shape[:2]
    if max(h, w) > max_size:
        scale = max_size / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    return rgb
