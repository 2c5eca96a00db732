import copy
import logging
import struct
import zlib

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from detectron2.data.transforms import Augmentation, AugmentationList
from PIL import Image, ImageFile
from PIL.JpegImagePlugin import JpegImageFile

from vader_d2.cli import build_config
from vader_d2.config import add_vader_config
from vader_d2.config import OUTPUT_STRIDE
from vader_d2.data.decoding import read_source_image
from vader_d2.data.transforms import (
    ProjectiveTransform,
    RandomAffine,
    RandomColorJitter,
    RandomFlip,
    RandomGaussianBlur,
    RandomGaussianNoise,
    RandomHomography,
    RandomResizedCrop,
    RandomSolarize,
    SolarizeTransform,
)
from vader_d2.data.view_mapper import (
    INVALID_CORRESPONDENCE,
    VADeRViewMapper,
    compute_correspondence,
    render_view,
)

from .helpers import coordinate_image

S = 64  # view size of most tests: 16 x 16 output cells
N = S // OUTPUT_STRIDE
MIN_SHARED = 32


def sample_bilinear(image, points):
    """Values of an (h, w, c) image at continuous (x, y) points, zero outside, in float64."""
    h, w = image.shape[:2]
    x, y = points[:, 0] - 0.5, points[:, 1] - 0.5
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]

    def at(yy, xx):
        inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        values = np.zeros((len(points), image.shape[2]))
        values[inside] = image[yy[inside], xx[inside]]
        return values

    return (
        at(y0, x0) * (1 - fx) * (1 - fy)
        + at(y0, x0 + 1) * fx * (1 - fy)
        + at(y0 + 1, x0) * (1 - fx) * fy
        + at(y0 + 1, x0 + 1) * fx * fy
    )


def cell_centres(n=N, stride=OUTPUT_STRIDE):
    centres = (np.arange(n) + 0.5) * stride
    xs, ys = np.meshgrid(centres, centres)
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


def make_mapper(geometric, *, photometric=(), crop_size=S, min_shared_cells=MIN_SHARED, **kwargs):
    kwargs = {"max_redraws": 20, "max_source_size": 1024, **kwargs}
    return VADeRViewMapper(
        geometric_augmentations=geometric,
        photometric_augmentations=list(photometric),
        crop_size=crop_size,
        min_shared_cells=min_shared_cells,
        **kwargs,
    )


def geometric_kinds(crop_scale=(0.1, 1.0)):
    crop = RandomResizedCrop(S, scale=crop_scale)
    flip = RandomFlip(prob=0.5)
    affine = RandomAffine(prob=1.0, rotation_deg=30.0, shear_deg=10.0)
    homography = RandomHomography(prob=1.0, strength=0.2)
    return {
        "crop": [crop],
        "crop+flip": [crop, flip],
        "crop+flip+affine": [crop, flip, affine],
        "crop+flip+affine+homography": [crop, flip, affine, homography],
    }


def save(image, path, **kwargs):
    image.save(path, **kwargs)
    return {"file_name": str(path), "image_id": path.stem}


def noise_rgb(h, w, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_correspondence_of_known_view_pairs():
    mapper = make_mapper([RandomResizedCrop(S, scale=(1.0, 1.0), ratio=(1.0, 1.0))])
    source = np.zeros((S, 2 * S, 3), np.uint8)
    np.random.seed(0)
    view1 = mapper.sample_geometry(source).view1_transform
    grid = np.stack(np.meshgrid(np.arange(N), np.arange(N)), axis=-1).astype(np.float32)  # (x=c, y=r)

    coords, valid = compute_correspondence(view1, view1, S)
    np.testing.assert_array_equal(coords, grid)
    assert valid.all()

    flip = RandomFlip(prob=1.0).get_transform(np.zeros((S, S)))
    coords, valid = compute_correspondence(view1, view1.then(flip), S)
    np.testing.assert_array_equal(coords[..., 0], N - 1 - grid[..., 0])
    np.testing.assert_array_equal(coords[..., 1], grid[..., 1])

    # View 2 shows the scene 5 pixels (1.25 cells) further left than view 1: column 0 falls out.
    shift_left = ProjectiveTransform(np.array([[1.0, 0, -5], [0, 1, 0], [0, 0, 1]]), (S, S), (S, S))
    coords, valid = compute_correspondence(view1, view1.then(shift_left), S)
    assert not valid[:, 0].any() and valid[:, 1:].all()
    np.testing.assert_allclose(coords[:, 1:, 0], grid[:, 1:, 0] - 1.25)
    np.testing.assert_array_equal(coords[:, 1:, 1], grid[:, 1:, 1])
    assert (coords[~valid] == INVALID_CORRESPONDENCE).all()


@pytest.mark.parametrize("kind", list(geometric_kinds()))
@pytest.mark.parametrize("source_size", [(300, 400), (40, 50)])  # views minify, views magnify
def test_correspondence_matches_warped_pixels(kind, source_size):
    """The acceptance test: warp an image whose pixels hold their own source coordinates into both
    views with the transforms the mapper drew, and check every cell against it."""
    np.random.seed(1)
    mapper = make_mapper(geometric_kinds()[kind])
    source = coordinate_image(*source_size)
    centres = cell_centres()
    seen = {"valid": 0, "invalid": 0, "checked_match": 0}
    for _ in range(8):
        geometry = mapper.sample_geometry(source)
        assert geometry.valid.sum() >= MIN_SHARED
        view1 = geometry.view1_transform.apply_image(source)
        view2 = geometry.view2_transform.apply_image(source)
        valid = geometry.valid.ravel()
        coords = geometry.correspondence.reshape(-1, 2)

        # Valid cells: the same source point appears at the matched sub-cell location of view 2.
        in_view1 = sample_bilinear(view1, centres)
        in_view2 = sample_bilinear(view2, (coords + 0.5) * OUTPUT_STRIDE)
        unblended = (np.abs(in_view1[:, 2] - 1) < 1e-5) & (np.abs(in_view2[:, 2] - 1) < 1e-5)
        checked = valid & unblended
        assert checked.sum() >= 0.6 * valid.sum()
        scale = max(1.0, geometry.view1_transform.minification(), geometry.view2_transform.minification())
        np.testing.assert_allclose(in_view1[checked, :2], in_view2[checked, :2], atol=0.12 * scale)
        seen["checked_match"] += checked.sum()

        # Every cell: valid iff content in view 1 and inside view 2, decided from pixels alone.
        expected = brute_force_validity(in_view1, geometry.view2_transform, source_size)
        decided = expected != -1
        assert decided.mean() > 0.6
        np.testing.assert_array_equal(valid[decided], expected[decided] == 1)
        seen["valid"] += (expected == 1).sum()
        seen["invalid"] += (expected == 0).sum()
    assert min(seen.values()) > 0, seen


NEAR, WIDER = np.arange(2), np.arange(-1, 3)  # pixel offsets: the 2x2 and 4x4 blocks around a point


def brute_force_validity(in_view1, view2_transform, source_size):
    """1 (valid), 0 (invalid) or -1 (too close to a border to tell from pixels) for each cell, given
    the view-1 coordinate image sampled at the cell centres."""
    # Which source pixels view 2 shows: warp an all-ones view back onto the source.
    ones = np.ones((S, S, 1), np.float32)
    shown_in_view2 = view2_transform.inverse().apply_image(ones)[:, :, 0]
    h, w = source_size
    decision = np.full(len(in_view1), -1)
    for i, (x, y, content) in enumerate(in_view1):
        if content < 1e-5:
            decision[i] = 0  # padding in view 1
            continue
        if content < 1 - 1e-5:
            continue
        # View 2's footprint on the source is convex: if the four source pixel centres around the
        # point are shown, so is the point. Outside is only trusted a pixel further out.
        col, row = int(np.floor(x - 0.5)), int(np.floor(y - 0.5))
        near = shown_in_view2[np.ix_(np.clip(row + NEAR, 0, h - 1), np.clip(col + NEAR, 0, w - 1))]
        wider = shown_in_view2[np.ix_(np.clip(row + WIDER, 0, h - 1), np.clip(col + WIDER, 0, w - 1))]
        if (near > 1 - 1e-5).all():
            decision[i] = 1
        elif (wider < 1e-5).all():
            decision[i] = 0
    return decision


def test_call_warps_pixels_with_the_geometry_it_reports(tmp_path):
    """End to end through the file path: a ramp image (red = x, green = y) seen in both views agrees
    at matched cells, and the correspondence equals what sample_geometry draws from the same seed."""
    ys, xs = np.mgrid[0:256, 0:256]
    ramp = np.dstack([xs, ys, np.full_like(xs, 255)]).astype(np.uint8)
    dataset_dict = save(Image.fromarray(ramp), tmp_path / "ramp.png")
    mapper = make_mapper(geometric_kinds(crop_scale=(0.3, 1.0))["crop+flip+affine+homography"])
    source = read_source_image(dataset_dict["file_name"], 1024)
    for seed in range(5):
        np.random.seed(seed)
        sample = mapper(dataset_dict)
        np.random.seed(seed)
        geometry = mapper.sample_geometry(source)
        np.testing.assert_array_equal(sample["correspondence"].numpy(), geometry.correspondence)
        np.testing.assert_array_equal(sample["valid"].numpy(), geometry.valid)

        view1 = sample["view1"].permute(1, 2, 0).numpy()
        view2 = sample["view2"].permute(1, 2, 0).numpy()
        valid = geometry.valid.ravel()
        in_view1 = sample_bilinear(view1, cell_centres())
        in_view2 = sample_bilinear(view2, (geometry.correspondence.reshape(-1, 2) + 0.5) * OUTPUT_STRIDE)
        unblended = (in_view1[:, 2] > 254.5) & (in_view2[:, 2] > 254.5)
        checked = valid & unblended
        assert checked.sum() >= MIN_SHARED // 2
        np.testing.assert_allclose(in_view1[checked, :2], in_view2[checked, :2], atol=2.0)


@pytest.mark.parametrize(
    "source_shape",
    [(20, 20), (1, 1), (7, 900), (900, 7), (3, 50), (480, 640), (1024, 64)],
)
def test_every_sample_shares_enough_cells(source_shape):
    np.random.seed(2)
    harsh = [
        RandomResizedCrop(S, scale=(0.01, 1.0), ratio=(0.25, 4.0)),
        RandomFlip(prob=0.5),
        RandomAffine(prob=1.0, rotation_deg=45.0, shear_deg=20.0),
        RandomHomography(prob=1.0, strength=0.24),
    ]
    for min_shared_cells in (MIN_SHARED, 128):
        mapper = make_mapper(harsh, min_shared_cells=min_shared_cells, max_redraws=5)
        source = np.zeros(source_shape + (3,), np.uint8)
        for _ in range(60):
            geometry = mapper.sample_geometry(source)
            assert geometry.valid.sum() >= min_shared_cells


class ShrinkAboutCentre(Augmentation):
    """Shows the image at half size in the middle of the view, padding around it."""

    def get_transform(self, image):
        h, w = image.shape[:2]
        halve = np.array([[0.5, 0.0, w / 4], [0.0, 0.5, h / 4], [0.0, 0.0, 1.0]])
        return ProjectiveTransform(halve, (h, w), (h, w))


def test_fallbacks(caplog):
    np.random.seed(3)
    everything = N * N
    # Two independent crops practically never overlap completely: view 2 copies view 1's geometry.
    crops_only = make_mapper([RandomResizedCrop(S, scale=(0.1, 0.5))], min_shared_cells=everything, max_redraws=3)
    # Views showing only padding around their centre: both views become the resized image.
    shrunk = make_mapper([RandomResizedCrop(S), ShrinkAboutCentre()], min_shared_cells=everything, max_redraws=3)
    source = np.zeros((100, 120, 3), np.uint8)
    with caplog.at_level(logging.WARNING):
        for _ in range(5):
            same = crops_only.sample_geometry(source)
            assert same.fallback == "same_geometry" and same.valid.all()
            assert same.view1_transform is same.view2_transform
        for _ in range(5):
            resized = shrunk.sample_geometry(source)
            assert resized.fallback == "resize" and resized.valid.all()
            grid = np.stack(np.meshgrid(np.arange(N), np.arange(N)), axis=-1)
            np.testing.assert_array_equal(resized.correspondence, grid)
    # Rate-limited: one line per kind of fallback for the first occurrence, not one per image.
    assert len(caplog.records) == 2
    assert "same geometry" in caplog.records[0].getMessage()
    assert "resized image" in caplog.records[1].getMessage()


@pytest.mark.parametrize("image_format", ["RGB", "BGR"])
def test_output_format(tmp_path, image_format):
    red = Image.new("RGB", (100, 80), (255, 0, 0))
    dataset_dict = save(red, tmp_path / "red.png")
    original = copy.deepcopy(dataset_dict)
    mapper = make_mapper(
        [RandomResizedCrop(S)],
        photometric=[RandomColorJitter(0.2, 0.2, 0.2, 0.0, prob=1.0), RandomGaussianNoise(0.03, prob=1.0)],
        image_format=image_format,
    )
    sample = mapper(dataset_dict)
    assert dataset_dict == original
    assert set(sample) == {
        "file_name", "image_id", "view1", "view2", "correspondence", "valid", "height", "width", "num_skipped",
        "view1_matrix", "view2_matrix",
    }
    assert (sample["height"], sample["width"], sample["num_skipped"]) == (80, 100, 0)
    for key in ("view1", "view2"):
        view = sample[key]
        assert view.dtype == torch.uint8 and view.shape == (3, S, S) and view.is_contiguous()
        red_channel = 0 if image_format == "RGB" else 2
        assert view[red_channel].float().mean() > view[2 - red_channel].float().mean() + 100
    assert sample["correspondence"].dtype == torch.float32 and sample["correspondence"].shape == (N, N, 2)
    assert sample["valid"].dtype == torch.bool and sample["valid"].shape == (N, N)
    assert sample["valid"].sum() >= MIN_SHARED
    for key in ("view1_matrix", "view2_matrix"):
        assert sample[key].dtype == torch.float64 and sample[key].shape == (3, 3)


def test_from_config(tmp_path):
    cfg = get_cfg()
    add_vader_config(cfg)
    cfg.INPUT.FORMAT = "BGR"
    cfg.INPUT.VIEWS.CROP_SIZE = 96
    cfg.INPUT.VIEWS.MIN_SHARED_CELLS = 40
    dataset_dict = save(noise_rgb(120, 160), tmp_path / "noise.jpg")

    train = VADeRViewMapper(cfg, is_train=True)
    assert (train.crop_size, train.min_shared_cells, train.image_format) == (96, 40, "BGR")
    assert train.max_redraws == cfg.INPUT.VIEWS.MAX_REDRAWS
    sample = train(dataset_dict)
    assert sample["view1"].shape == (3, 96, 96) and sample["valid"].sum() >= 40

    # Not training: both views are the whole image, resized, unaugmented.
    sample = VADeRViewMapper(cfg, is_train=False)(dataset_dict)
    assert torch.equal(sample["view1"], sample["view2"]) and sample["valid"].all()


def truncated_jpeg(path):
    noise_rgb(128, 128).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def png_header_only(width, height):
    """A tiny PNG file claiming a huge size, as decompression bombs do."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_unreadable_files_are_skipped_and_counted(tmp_path, caplog, monkeypatch):
    (tmp_path / "empty.jpg").write_bytes(b"")
    truncated_jpeg(tmp_path / "truncated.jpg")
    (tmp_path / "text.jpg").write_text("this is not an image\n")
    (tmp_path / "bomb.png").write_bytes(png_header_only(100_000, 100_000))  # PIL refuses to open it
    (tmp_path / "large_png.png").write_bytes(png_header_only(10_000, 10_000))  # PIL would only warn
    bad = ["empty.jpg", "truncated.jpg", "text.jpg", "bomb.png", "large_png.png", "missing.jpg"]
    good = save(noise_rgb(50, 60), tmp_path / "good.jpg")
    # Other code may have told PIL to accept truncated files; the mapper must not.
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    mapper = make_mapper([RandomResizedCrop(S)])

    with caplog.at_level(logging.WARNING):
        for name in bad:
            assert mapper({"file_name": str(tmp_path / name), "image_id": name}) is None
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True
    for name, record in zip(bad, caplog.records):
        assert name in record.getMessage()
    assert "decompression bomb" in caplog.records[4].getMessage()
    assert mapper(good)["num_skipped"] == len(bad)
    assert mapper(good)["num_skipped"] == 0


def test_unreadable_file_warnings_are_rate_limited(tmp_path, caplog):
    (tmp_path / "empty.jpg").write_bytes(b"")
    mapper = make_mapper([RandomResizedCrop(S)])
    with caplog.at_level(logging.WARNING):
        for _ in range(150):
            assert mapper({"file_name": str(tmp_path / "empty.jpg"), "image_id": 0}) is None
    assert len(caplog.records) == 10 + 1  # the first ten, then the 100th


def solid(mode, size, colour):
    return Image.new(mode, size, colour)


def palette_image():
    image = Image.new("P", (40, 30), 0)
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 6))
    image.paste(1, (20, 0, 40, 30))  # right half: palette entry 1, blue
    return image


def rgba_image():
    rgba = np.zeros((30, 40, 4), np.uint8)
    rgba[:, :20] = (0, 255, 0, 0)  # transparent green: hidden
    rgba[:, 20:] = (200, 100, 50, 128)  # half-transparent
    return Image.fromarray(rgba, "RGBA")


@pytest.mark.parametrize(
    "name, image, save_kwargs, left, right",
    [
        ("gray.png", solid("L", (40, 30), 77), {}, (77, 77, 77), (77, 77, 77)),
        ("bilevel.png", solid("1", (40, 30), 1), {}, (255, 255, 255), (255, 255, 255)),
        ("cmyk.jpg", solid("CMYK", (40, 30), (0, 255, 255, 0)), {"quality": 95}, (255, 0, 0), (255, 0, 0)),
        ("rgba.png", rgba_image(), {}, (0, 0, 0), (100, 50, 25)),
        ("gray_alpha.png", solid("LA", (40, 30), (200, 128)), {}, (100, 100, 100), (100, 100, 100)),
        ("palette.png", palette_image(), {}, (255, 0, 0), (0, 0, 255)),
        ("palette_transparent.png", palette_image(), {"transparency": 1}, (255, 0, 0), (0, 0, 0)),
        ("white16.png", Image.fromarray(np.full((30, 40), 65535, np.uint16)), {}, (255, 255, 255), (255, 255, 255)),
        ("mid16.png", Image.fromarray(np.full((30, 40), 32768, np.uint16)), {}, (128, 128, 128), (128, 128, 128)),
        ("tiny.png", solid("RGB", (20, 20), (10, 20, 30)), {}, (10, 20, 30), (10, 20, 30)),
    ],
)
def test_image_modes_decode_to_rgb(tmp_path, name, image, save_kwargs, left, right):
    dataset_dict = save(image, tmp_path / name, **save_kwargs)
    source = read_source_image(dataset_dict["file_name"], 1024)
    assert source.dtype == np.uint8 and source.shape == (image.height, image.width, 3)
    tolerance = 3 if name.endswith(".jpg") else 0
    np.testing.assert_allclose(source[:, 0], np.broadcast_to(left, (image.height, 3)), atol=tolerance)
    np.testing.assert_allclose(source[:, -1], np.broadcast_to(right, (image.height, 3)), atol=tolerance)

    sample = make_mapper(geometric_kinds()["crop+flip+affine+homography"])(dataset_dict)
    assert sample is not None and sample["valid"].sum() >= MIN_SHARED
    assert (sample["height"], sample["width"]) == (image.height, image.width)


def test_large_jpeg_is_decoded_at_reduced_size(tmp_path, monkeypatch):
    halves = np.zeros((4000, 6000, 3), np.uint8)
    halves[:, :3000] = (255, 0, 0)
    halves[:, 3000:] = (0, 0, 255)
    dataset_dict = save(Image.fromarray(halves), tmp_path / "large.jpg", quality=90)
    drafts = []
    real_draft = JpegImageFile.draft
    monkeypatch.setattr(JpegImageFile, "draft", lambda self, *args: drafts.append(args) or real_draft(self, *args))

    source = read_source_image(dataset_dict["file_name"], 1024)
    assert source.shape == (683, 1024, 3)
    assert drafts, "large JPEGs must be decoded through Image.draft"
    np.testing.assert_allclose(source[:, 5], np.broadcast_to((255, 0, 0), (683, 3)), atol=3)
    np.testing.assert_allclose(source[:, -5], np.broadcast_to((0, 0, 255), (683, 3)), atol=3)

    sample = make_mapper(geometric_kinds()["crop+flip+affine+homography"])(dataset_dict)
    assert (sample["height"], sample["width"]) == (683, 1024)
    assert sample["valid"].sum() >= MIN_SHARED


def test_exif_orientation_is_applied(tmp_path):
    # Stored landscape, red on the left; orientation 6 says "rotate 90 degrees clockwise to display".
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :20] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    dataset_dict = save(Image.fromarray(stored), tmp_path / "rotated.jpg", exif=exif, quality=95)
    source = read_source_image(dataset_dict["file_name"], 1024)
    assert source.shape == (40, 20, 3)
    assert source[:15, :, 0].min() > 240 and source[25:, :, 0].max() < 15  # red on top


def test_correspondence_rejects_mismatched_views():
    source = np.zeros((50, 60, 3), np.uint8)
    view = RandomResizedCrop(S).get_transform(source)
    other_source = RandomResizedCrop(S).get_transform(np.zeros((50, 61, 3), np.uint8))
    with pytest.raises(ValueError, match="different sources"):
        compute_correspondence(view, other_source, S)
    with pytest.raises(ValueError, match="expected 32x32"):
        compute_correspondence(view, view, 32)
    with pytest.raises(ValueError, match="not a multiple"):
        compute_correspondence(view, view, S, stride=5)


def test_invalid_arguments():
    crop = [RandomResizedCrop(S)]
    with pytest.raises(ValueError, match="multiple of the output stride"):
        make_mapper(crop, crop_size=S + 2)
    with pytest.raises(ValueError, match="min_shared_cells"):
        make_mapper(crop, min_shared_cells=N * N + 1)
    with pytest.raises(ValueError, match="image_format"):
        make_mapper(crop, image_format="YUV")
    with pytest.raises(ValueError, match="expected 64x64"):
        make_mapper([RandomResizedCrop(S + 4)]).sample_geometry(np.zeros((50, 50, 3), np.uint8))


def test_views_get_their_own_blur_and_solarize_like_byols():
    """BLUR_PROB_PER_VIEW and SOLARIZE_PROB act on their view only: each view is exactly its geometry's
    plain warp, solarized or blurred as asked; without them both views share one recipe and no solarize."""
    plain_views = ["INPUT.VIEWS.CROP_SIZE", "64", "INPUT.VIEWS.COLOR_JITTER_PROB", "0.0", "INPUT.VIEWS.GRAYSCALE_PROB", "0.0"]
    record = DatasetCatalog.get("vader_demo_photos_train")[0]

    def views_and_plain_warps(*opts):
        cfg = build_config("configs/pixpro_pretrain.yaml", ["MODEL.DEVICE", "cpu", *plain_views, *opts])
        np.random.seed(0)
        sample = VADeRViewMapper(cfg, is_train=True)(dict(record, image_id=0))
        image = read_source_image(record["file_name"], cfg.INPUT.VIEWS.MAX_SOURCE_SIZE)
        plain = [
            render_view(image, ProjectiveTransform(sample[f"view{v}_matrix"].numpy(), image.shape[:2], (64, 64)), AugmentationList([]))
            for v in (1, 2)
        ]
        return [sample["view1"], sample["view2"]], plain

    views, plain = views_and_plain_warps("INPUT.VIEWS.BLUR_PROB_PER_VIEW", "(0.0, 0.0)", "INPUT.VIEWS.SOLARIZE_PROB", "(0.0, 1.0)")
    assert torch.equal(views[0], plain[0])
    solarized = SolarizeTransform().apply_image(plain[1].permute(1, 2, 0).numpy())
    assert torch.equal(views[1], torch.from_numpy(solarized).permute(2, 0, 1))
    views, plain = views_and_plain_warps("INPUT.VIEWS.BLUR_PROB_PER_VIEW", "(1.0, 0.0)", "INPUT.VIEWS.SOLARIZE_PROB", "(0.0, 0.0)")
    assert not torch.equal(views[0], plain[0])  # blurred
    assert torch.equal(views[1], plain[1])

    # The demo's recipe: one list for both views, blur at BLUR_PROB, no solarize draw at all.
    demo = VADeRViewMapper(build_config("configs/vader_pretrain_demo.yaml", ["MODEL.DEVICE", "cpu"]), is_train=True)
    for photometric in (demo.photometric, demo.view2_photometric):
        assert not any(isinstance(a, RandomSolarize) for a in photometric.augs)
        assert [a.prob for a in photometric.augs if isinstance(a, RandomGaussianBlur)] == [0.5]
