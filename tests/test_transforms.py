import numpy as np
import pytest
from detectron2.data.transforms import HFlipTransform, NoOpTransform
from PIL import Image, ImageOps

from vader_d2.data.transforms import (
    ColorJitterTransform,
    FusedProjectiveAugmentation,
    GaussianBlurTransform,
    GaussianNoiseTransform,
    GrayscaleTransform,
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
    SolarizeTransform,
)

from .helpers import coordinate_image

# cv2's warps place samples on a 1/32-pixel grid (INTER_BITS = 5) and its INTER_AREA reduction of
# non-integer ratios is not exactly linear-preserving, so the warped coordinate image matches the
# analytic map to a few hundredths of a pixel of the image being sampled, not to float precision.
PIXEL_TOLERANCE = 0.06


def pixel_centres(h, w):
    ys, xs = np.mgrid[0:h, 0:w]
    return np.stack([xs.ravel() + 0.5, ys.ravel() + 0.5], axis=1)


def random_points(n, h, w, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(-0.2, 1.2, size=(n, 2)) * (w, h)


def geometric_kinds(size):
    crop = RandomResizedCrop(size, scale=(0.05, 1.0))
    return {
        "crop": [crop],
        "flip": [RandomFlip(prob=1.0)],
        "affine": [RandomAffine(prob=1.0, rotation_deg=30.0, shear_deg=10.0)],
        "homography": [RandomHomography(prob=1.0, strength=0.2)],
        "composed": [
            crop,
            RandomFlip(prob=0.5),
            RandomAffine(prob=1.0, rotation_deg=15.0, shear_deg=5.0),
            RandomHomography(prob=1.0, strength=0.1),
        ],
    }


@pytest.mark.parametrize("kind", ["crop", "flip", "affine", "homography", "composed"])
@pytest.mark.parametrize("source_size", [(37, 53), (900, 700)])  # views magnify, views minify
def test_apply_image_matches_apply_coords(kind, source_size):
    np.random.seed(0)
    source = coordinate_image(*source_size)
    augmentation = FusedProjectiveAugmentation(geometric_kinds(size=48)[kind])
    for _ in range(5):
        tfm = augmentation.get_transform(source)
        warped = tfm.apply_image(source)
        assert warped.shape == tfm.output_size + (3,) and warped.dtype == np.float32

        points = pixel_centres(*tfm.output_size)
        expected = tfm.inverse().apply_coords(points)
        values = warped.reshape(-1, 3)
        # Pixels whose bilinear footprint lies wholly inside the source carry an exact coordinate;
        # the others blend in the zero padding.
        interior = np.abs(values[:, 2] - 1.0) < 1e-5
        assert interior.mean() > 0.5
        tolerance = PIXEL_TOLERANCE * max(1.0, tfm.minification())
        np.testing.assert_allclose(values[interior, :2], expected[interior], rtol=0, atol=tolerance)
        # Padding is exactly where the analytic map leaves the source.
        padding = values[:, 2] < 1e-5
        assert not tfm.is_content(points[padding]).any()
        assert tfm.is_content(points[interior]).all()
        # No zero fill blends into pixels whose source point is well inside the source.
        reach = 1.0 + 2.0 * tfm.minification()
        h, w = source_size
        well_inside = (expected >= reach).all(axis=1) & (expected[:, 0] <= w - reach) & (expected[:, 1] <= h - reach)
        assert interior[well_inside].all()


def test_inverse_round_trips():
    np.random.seed(1)
    source = np.zeros((120, 90, 3), np.uint8)
    tfm = FusedProjectiveAugmentation(geometric_kinds(size=64)["composed"]).get_transform(source)
    inverse = tfm.inverse()
    assert inverse.input_size == (64, 64) and inverse.output_size == (120, 90)
    points = random_points(200, 120, 90)
    np.testing.assert_allclose(inverse.apply_coords(tfm.apply_coords(points)), points, atol=1e-9)
    np.testing.assert_allclose(inverse.inverse().matrix, tfm.matrix, atol=1e-12)


def test_then_equals_sequential_application():
    np.random.seed(2)
    source = coordinate_image(80, 100)
    crop = RandomResizedCrop(64, scale=(0.3, 1.0)).get_transform(source)
    view = np.zeros((64, 64, 3), np.float32)
    affine = RandomAffine(prob=1.0, rotation_deg=20.0, shear_deg=5.0).get_transform(view)
    homography = RandomHomography(prob=1.0, strength=0.15).get_transform(view)
    fused = crop.then(affine).then(homography)
    assert fused.input_size == (80, 100) and fused.output_size == (64, 64)

    points = random_points(100, 80, 100)
    sequential = homography.apply_coords(affine.apply_coords(crop.apply_coords(points)))
    np.testing.assert_allclose(fused.apply_coords(points), sequential, atol=1e-9)

    # Warping once or three times shows the same content (up to the padding each warp adds).
    once = fused.apply_image(source)
    thrice = homography.apply_image(affine.apply_image(crop.apply_image(source)))
    interior = (np.abs(once[:, :, 2] - 1.0) < 1e-5) & (np.abs(thrice[:, :, 2] - 1.0) < 1e-5)
    assert interior.mean() > 0.5
    np.testing.assert_allclose(once[interior], thrice[interior], atol=3 * PIXEL_TOLERANCE)

    with pytest.raises(ValueError, match="Cannot chain"):
        affine.then(crop)


def test_flip_matches_detectron2_hflip():
    tfm = RandomFlip(prob=1.0).get_transform(np.zeros((30, 50, 3), np.uint8))
    points = random_points(50, 30, 50)
    np.testing.assert_allclose(tfm.apply_coords(points), HFlipTransform(50).apply_coords(points.copy()))
    image = np.random.default_rng(0).integers(0, 255, (30, 50, 3), dtype=np.uint8)
    np.testing.assert_array_equal(tfm.apply_image(image), image[:, ::-1])


def test_no_op_when_probability_is_zero():
    image = np.zeros((30, 50, 3), np.uint8)
    for aug in (
        RandomFlip(prob=0.0),
        RandomAffine(prob=0.0),
        RandomHomography(prob=0.0),
    ):
        np.testing.assert_array_equal(aug.get_transform(image).matrix, np.eye(3))


def test_random_resized_crop_follows_torchvision_sampling():
    np.random.seed(3)
    h, w = 300, 400
    image = np.zeros((h, w, 3), np.uint8)
    aug = RandomResizedCrop(32, scale=(0.2, 0.6), ratio=(0.5, 2.0))
    areas, aspects = [], []
    for _ in range(300):
        tfm = aug.get_transform(image)
        (x0, y0), (x1, y1) = tfm.inverse().apply_coords(np.array([[0.0, 0.0], [32.0, 32.0]]))
        np.testing.assert_allclose([x0, y0, x1, y1], np.round([x0, y0, x1, y1]), atol=1e-9)  # whole pixels
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        areas.append((x1 - x0) * (y1 - y0) / (h * w))
        aspects.append((x1 - x0) / (y1 - y0))
    # Rounding the side lengths to whole pixels moves area and aspect ratio by a percent at most.
    assert 0.2 * 0.99 <= min(areas) and max(areas) <= 0.6 * 1.01
    assert 0.5 * 0.98 <= min(aspects) and max(aspects) <= 2.0 * 1.02
    log_aspects = np.log(aspects)
    assert abs(np.median(log_aspects)) < 0.15  # log-uniform: symmetric about aspect 1


def test_random_resized_crop_falls_back_to_a_central_crop():
    h, w = 10, 1000  # no crop with aspect ratio in [3/4, 4/3] and 20%+ of the area fits
    tfm = RandomResizedCrop(16, scale=(0.2, 1.0)).get_transform(np.zeros((h, w, 3), np.uint8))
    corners = tfm.inverse().apply_coords(np.array([[0.0, 0.0], [16.0, 16.0]]))
    np.testing.assert_allclose(corners, [[493.0, 0.0], [506.0, 10.0]])  # 13 x 10: ratio clamped to 4/3


def test_projective_resize_and_segmentation():
    labels = np.zeros((20, 10), np.uint8)
    labels[:, 5:] = 7
    tfm = ProjectiveResize(40).get_transform(labels)
    resized = tfm.apply_segmentation(labels)
    assert resized.shape == (40, 40) and set(np.unique(resized)) == {0, 7}
    assert (resized[:, :20] == 0).all() and (resized[:, 20:] == 7).all()


def test_is_content():
    tfm = RandomAffine(prob=1.0, rotation_deg=0.0, shear_deg=0.0).get_transform(np.zeros((10, 20)))
    points = np.array([[0.0, 0.0], [19.9, 9.9], [20.0, 5.0], [-0.1, 5.0], [5.0, 10.0]])
    np.testing.assert_array_equal(tfm.is_content(points), [True, True, False, False, False])
    # A point mapped through the line at infinity is never content, even if it lands in the image.
    beyond_infinity = ProjectiveTransform(np.diag([1.0, 1.0, -1.0]), (10, 20), (10, 20))
    assert not beyond_infinity.is_content(np.array([[5.0, 5.0]])).any()


def test_warp_keeps_uint8_and_single_channel():
    image = np.full((30, 30), 200, np.uint8)
    tfm = ProjectiveResize(12).get_transform(image)
    assert tfm.apply_image(image).dtype == np.uint8
    assert (tfm.apply_image(image) == 200).all()
    assert tfm.apply_image(image[:, :, None]).shape == (12, 12, 1)


def rgb_image(seed=0, h=24, w=32):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def photometric_transforms():
    return [
        ColorJitterTransform(1.3, 0.7, 1.4, 0.05, order=("hue", "saturation", "brightness", "contrast")),
        GrayscaleTransform(),
        GaussianBlurTransform(1.5),
        GaussianNoiseTransform(8.0, seed=3),
    ]


@pytest.mark.parametrize("tfm", photometric_transforms(), ids=lambda t: type(t).__name__)
def test_photometric_transform_contract(tfm):
    image = rgb_image()
    out = tfm.apply_image(image)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert not np.array_equal(out, image)
    np.testing.assert_array_equal(tfm.apply_image(image), out)  # replays deterministically
    np.testing.assert_array_equal(image, rgb_image())  # input untouched
    points = random_points(10, 24, 32)
    np.testing.assert_array_equal(tfm.apply_coords(points.copy()), points)
    assert isinstance(tfm.inverse(), NoOpTransform)


def test_color_jitter_of_zero_strength_is_identity():
    image = rgb_image()
    aug = RandomColorJitter(0.0, 0.0, 0.0, 0.0, prob=1.0)
    for _ in range(5):
        np.testing.assert_array_equal(aug.get_transform(image).apply_image(image), image)


def test_color_jitter_operations():
    gray = np.full((4, 4, 3), 100, np.uint8)

    def jitter(**factors):
        neutral = dict(brightness=1.0, contrast=1.0, saturation=1.0, hue=0.0)
        return ColorJitterTransform(order=("brightness", "contrast", "saturation", "hue"), **{**neutral, **factors})

    assert (jitter(brightness=2.0).apply_image(gray) == 200).all()
    assert (jitter(brightness=3.0).apply_image(gray) == 255).all()  # clamped
    image = rgb_image()
    flat = jitter(contrast=0.0).apply_image(image)
    assert np.ptp(flat) == 0  # a constant: the mean luma
    desaturated = jitter(saturation=0.0).apply_image(image).astype(int)
    assert np.abs(desaturated - desaturated[:, :, :1]).max() <= 1
    red = np.zeros((2, 2, 3), np.uint8)
    red[..., 0] = 255
    np.testing.assert_array_equal(jitter(hue=1 / 3).apply_image(red)[0, 0], [0, 255, 0])  # 0 -> 120 degrees
    np.testing.assert_array_equal(jitter(hue=-1 / 3).apply_image(red)[0, 0], [0, 0, 255])


def test_color_jitter_samples_factors_in_range():
    np.random.seed(4)
    aug = RandomColorJitter(0.4, 0.3, 0.2, 0.1, prob=1.0)
    tfms = [aug.get_transform(None) for _ in range(200)]
    assert all(0.6 <= t.brightness <= 1.4 and 0.7 <= t.contrast <= 1.3 for t in tfms)
    assert all(0.8 <= t.saturation <= 1.2 and -0.1 <= t.hue <= 0.1 for t in tfms)
    assert all(sorted(t.order) == ["brightness", "contrast", "hue", "saturation"] for t in tfms)
    assert len({t.order for t in tfms}) > 10


def test_grayscale_is_luma_on_three_equal_channels():
    image = rgb_image()
    out = GrayscaleTransform().apply_image(image)
    assert (out == out[:, :, :1]).all()
    luma = image.astype(np.float64) @ [0.299, 0.587, 0.114]
    assert np.abs(out[:, :, 0] - luma).max() <= 1


def test_blur_and_noise():
    constant = np.full((200, 200, 3), 128, np.uint8)
    np.testing.assert_array_equal(GaussianBlurTransform(2.0).apply_image(constant), constant)
    step = np.zeros((9, 40, 3), np.uint8)
    step[:, 20:] = 255

    def ramp_width(sigma):
        row = GaussianBlurTransform(sigma).apply_image(step)[4, :, 0]
        return np.count_nonzero((row > 0) & (row < 255))

    assert 0 < ramp_width(0.5) < ramp_width(2.0) <= 2 * 6 + 1  # within the 3-sigma kernel

    constant = np.full((200, 200, 3), 128, np.uint8)
    noisy = GaussianNoiseTransform(10.0, seed=0).apply_image(constant).astype(float)
    assert abs(noisy.mean() - 128) < 0.5 and abs(noisy.std() - 10) < 0.5
    other_seed = GaussianNoiseTransform(10.0, seed=1).apply_image(constant)
    assert not np.array_equal(noisy, other_seed)


def test_photometric_augmentations_respect_probability():
    image = rgb_image()
    np.random.seed(5)
    for aug_type, kwargs in (
        (RandomColorJitter, {}),
        (RandomGrayscale, {}),
        (RandomGaussianBlur, {}),
        (RandomGaussianNoise, {}),
    ):
        assert isinstance(aug_type(**kwargs, prob=0.0).get_transform(image), NoOpTransform)
        assert not isinstance(aug_type(**kwargs, prob=1.0).get_transform(image), NoOpTransform)
    blurs = [RandomGaussianBlur(sigma_range=(0.5, 1.0), prob=1.0).get_transform(image) for _ in range(50)]
    assert all(0.5 <= t.sigma <= 1.0 for t in blurs)
    noise = RandomGaussianNoise(std=0.1, prob=1.0).get_transform(image)
    assert noise.std == pytest.approx(25.5)


def test_solarize_is_pils_at_every_grey_level():
    levels = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2)  # 1 x 256 x 3
    expected = np.asarray(ImageOps.solarize(Image.fromarray(levels)))
    assert np.array_equal(SolarizeTransform().apply_image(levels), expected)
    assert isinstance(RandomSolarize(prob=0.0).get_transform(levels), NoOpTransform)
    assert isinstance(RandomSolarize(prob=1.0).get_transform(levels), SolarizeTransform)
