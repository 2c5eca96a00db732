#!/usr/bin/env python
"""Prepare ``vader_cutpaste``: real-photo object cut-outs pasted onto real photos, with exact labels.

Objects are the real-photo stamps of Debian's ``tuxpaint-stamps-default`` (GPL-2+, fetched with
``apt-get download``): their alpha channel is an exact object mask. One class per stamp folder
(``CUTPASTE_CLASSES`` in ``vader_d2/data/datasets.py``); drawings, toys and greyscale stamps are left
out. Backgrounds are the photos of ``prepare_demo_photos.py``: cut-paste train images are pasted on the
demo train photos and val images on the demo val photos, so no background is shared between splits.

Each image (longest side 320 px) gets 1-4 objects at random scale, position and horizontal flip, pasted
in turn; later objects occlude earlier ones. A paste that would hide an earlier object below a quarter
of its area (or below MIN_INSTANCE_AREA pixels) is placed elsewhere, so every visible object pixel is
labeled. An object's mask is its resized alpha > 127 minus what later objects cover; the same alpha
blends it in.

Output, under ROOT (``--root``, default ``$DETECTRON2_DATASETS``, else ``./datasets``)::

    ROOT/vader_cutpaste/{train,val}/*.jpg
    ROOT/vader_cutpaste/annotations/instances_{train,val}.json  COCO: RLE masks, boxes, and keypoints
                                                                 top/bottom/left/right = extreme points
    ROOT/vader_cutpaste/sem_seg/{train,val}/*.png                8-bit greyscale: 0 background, k class k
    ROOT/vader_cutpaste/manifest.json                            sources, recipe, sha256 of every file
"""

import json
import os
import shutil
import subprocess
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pycocotools.mask as mask_util
from PIL import Image

from common import (
    PrepareError,
    cached_download,
    folder_size_mb,
    fresh_build_dir,
    manifest_is_current,
    publish,
    run_cli,
    write_jpeg,
)
from prepare_demo_photos import (
    ARCHIVES,
    SPLITS,
    archive_record,
    fetch_source_photos,
    read_source_photo,
    recipe as demo_photos_recipe,
)

# The class list lives with the dataset registration.
with warnings.catch_warnings():
    # Importing Detectron2 with a recent torch emits deprecation warnings that concern nothing here.
    warnings.simplefilter("ignore", FutureWarning)
    from vader_d2.data.datasets import CUTPASTE_CLASSES, CUTPASTE_KEYPOINT_NAMES

DATASET_NAME = "vader_cutpaste"
# Bump when the way outputs are produced changes, so that existing outputs are rebuilt.
RECIPE_VERSION = 1
SEED = 20201206


@dataclass(frozen=True)
class DebianPackage:
    name: str
    version: str
    filename: str
    sha256: str
    licence: str


STAMPS_PACKAGE = DebianPackage(
    name="tuxpaint-stamps-default",
    version="2022.06.04-1",
    filename="tuxpaint-stamps-default_2022.06.04-1_all.deb",
    sha256="6db6c1bfc870a47f1499d6203b083522eacb57c5f9c87d468f2e92eb6d9d5f34",
    licence="GPL-2+ (debian/copyright)",
)
STAMPS_IN_PACKAGE = "usr/share/tuxpaint/stamps"
# Stamp folder of each class; its sub-folders are included except those holding drawings or toys.
CLASS_FOLDERS = {
    "bird": "animals/birds",
    "mammal": "animals/mammals",
    "fish": "animals/fish",
    "insect": "animals/insects",
    "fruit": "food/fruit",
    "vegetable": "food/vegetables",
    "flower": "plants/flowers",
}
SKIPPED_SUBFOLDERS = {"cartoon", "toys", "plastic"}
assert tuple(CLASS_FOLDERS) == CUTPASTE_CLASSES, "CLASS_FOLDERS must follow CUTPASTE_CLASSES"

# A stamp must show some background (else its alpha is no mask) and enough of an object.
STAMP_OPAQUE_FRACTION = (0.02, 0.97)
STAMP_MIN_SIDE = 40
# Drawings are painted in flat colours: most neighbouring pixels are equal. In photos few are.
STAMP_MAX_FLAT_FRACTION = 0.6
# Greyscale stamps (mean channel spread below this, in 0-255 levels) would be the only grey objects.
STAMP_MIN_COLOUR_SPREAD = 4.0

IMAGE_SIZE = 320  # longest side of the generated images
BACKGROUND_CROP_SCALE = (0.5, 1.0)  # side of the background crop / side of the photo
OBJECT_SIZE = (0.15, 0.60)  # longest side of an object / IMAGE_SIZE
MAX_UPSCALE = 3.0  # small stamps are not enlarged beyond this, where they would turn to mush
INSTANCES_PER_IMAGE = (1, 4)
MIN_INSTANCE_AREA = 64  # pixels
MIN_VISIBLE_FRACTION = 0.25  # of an object's own area, that later objects must leave visible
PLACEMENT_TRIES = 20


@dataclass(frozen=True)
class Stamp:
    name: str  # path below the stamps folder
    category_id: int  # 1-based, as in the COCO json
    premultiplied: np.ndarray  # float32 HxWx4: RGB * alpha and alpha in [0, 1], cropped to the object


def fetch_debian_package(package, cache_dir):
    """The .deb's path in ``cache_dir``, fetched with ``apt-get download`` on first use and checksummed."""
    request = f"{package.name}={package.version}"
    by_hand = f"put {package.filename} (e.g. from snapshot.debian.org) in {Path(cache_dir)}"

    def apt_get(*args, cwd=None):
        try:
            return subprocess.run(["apt-get", *args], cwd=cwd, capture_output=True, text=True)
        except FileNotFoundError:
            raise PrepareError(
                f"apt-get not found: {request} comes from Debian's archive; {by_hand}"
            ) from None

    def download(folder):
        print(f"downloading {request} from Debian's archive into {Path(cache_dir)} ...", flush=True)
        # apt's sandbox user cannot write to a private temporary folder; apt then downloads as the caller.
        os.chmod(folder, 0o755)
        result = apt_get("download", request, cwd=folder)
        if result.returncode != 0:
            # A fresh container has no package lists yet.
            print("updating apt's package lists (apt-get update) ...", flush=True)
            apt_get("update")
            result = apt_get("download", request, cwd=folder)
        if result.returncode != 0 or not (folder / package.filename).exists():
            reason = (result.stderr.strip().splitlines() or ["no file downloaded"])[-1]
            raise PrepareError(
                f"could not download {request} from Debian's archive ({reason}); "
                f"check the network and apt's sources, or {by_hand}"
            )

    return cached_download(cache_dir, package.filename, package.sha256, f"Debian {request}", download)


def extract_stamps(deb_path, cache_dir):
    """
    Unpack the .deb once into the cache; returns its stamps folder. `make data` runs this script and
    prepare_videos.py at once: each unpacks into its own temporary folder and renames it into place, so
    neither reads or deletes a half-unpacked folder; a rename that finds the other's folder keeps that one.
    """
    target = Path(cache_dir) / Path(deb_path).name.removesuffix(".deb")
    if (target / ".complete").exists():
        return target / STAMPS_IN_PACKAGE
    unpack_dir = Path(tempfile.mkdtemp(dir=cache_dir, prefix=".unpacking-"))
    try:
        try:
            result = subprocess.run(["dpkg-deb", "-x", str(deb_path), str(unpack_dir)], capture_output=True, text=True)
        except FileNotFoundError:
            raise PrepareError(f"dpkg-deb not found: it unpacks {deb_path} (install dpkg)") from None
        if result.returncode != 0:
            raise PrepareError(f"dpkg-deb could not unpack {deb_path}: {result.stderr.strip()}")
        (unpack_dir / ".complete").touch()
        try:
            unpack_dir.rename(target)
        except OSError:
            # The other script's folder is complete: keep it. Only an earlier version, which unpacked in
            # place, can have left an incomplete one (interrupted): replace that. Removing it only here,
            # not before unpacking, never deletes a folder the other script has just renamed into place.
            if not (target / ".complete").exists():
                shutil.rmtree(target)
                unpack_dir.rename(target)
    finally:
        shutil.rmtree(unpack_dir, ignore_errors=True)  # already gone when the rename succeeded
    return target / STAMPS_IN_PACKAGE


def is_photo_cutout(rgba):
    alpha = rgba[..., 3]
    opaque = alpha > 127
    if not STAMP_OPAQUE_FRACTION[0] < opaque.mean() < STAMP_OPAQUE_FRACTION[1]:
        return False
    rgb = rgba[..., :3].astype(np.float32)
    if (rgb.max(axis=-1) - rgb.min(axis=-1))[opaque].mean() < STAMP_MIN_COLOUR_SPREAD:
        return False
    grey = rgb.mean(axis=-1)
    both_opaque = opaque[:, 1:] & opaque[:, :-1]
    flat = np.abs(np.diff(grey, axis=1))[both_opaque] < 1
    return flat.mean() < STAMP_MAX_FLAT_FRACTION


def load_stamps(stamps_dir):
    """The photo cut-outs of each class, in a fixed order."""
    stamps = {}
    for category_id, (class_name, folder) in enumerate(CLASS_FOLDERS.items(), start=1):
        paths = []
        for dirpath, dirnames, filenames in os.walk(stamps_dir / folder):
            dirnames[:] = [name for name in dirnames if name not in SKIPPED_SUBFOLDERS]
            paths += [Path(dirpath) / name for name in filenames if name.endswith(".png")]
        stamps[class_name] = []
        for path in sorted(paths):
            rgba = np.asarray(Image.open(path).convert("RGBA"))
            if not is_photo_cutout(rgba):
                continue
            ys, xs = np.nonzero(rgba[..., 3])
            cropped = rgba[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1].astype(np.float32) / 255
            if max(cropped.shape[:2]) < STAMP_MIN_SIDE:
                continue
            # Premultiplied colours resize without dragging the transparent pixels' colour into the edges.
            cropped[..., :3] *= cropped[..., 3:]
            name = path.relative_to(stamps_dir).as_posix()
            stamps[class_name].append(Stamp(name, category_id, cropped))
        if not stamps[class_name]:
            raise PrepareError(
                f"no photo stamps found in {stamps_dir / folder}: delete the unpacked package and run again"
            )
    return stamps


@dataclass
class Instance:
    category_id: int
    area: int  # pixels of the whole pasted object
    visible: np.ndarray  # bool HxW: what later objects left uncovered
    stamp_name: str


def random_background(photo, rng):
    """A random crop of ``photo`` with its aspect ratio, maybe mirrored, longest side IMAGE_SIZE."""
    height, width = photo.shape[:2]
    scale = rng.uniform(*BACKGROUND_CROP_SCALE)
    crop_h, crop_w = max(1, round(height * scale)), max(1, round(width * scale))
    y0, x0 = rng.integers(0, height - crop_h + 1), rng.integers(0, width - crop_w + 1)
    crop = photo[y0: y0 + crop_h, x0: x0 + crop_w]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    resize = IMAGE_SIZE / max(crop_h, crop_w)
    size = (round(crop_w * resize), round(crop_h * resize))
    interpolation = cv2.INTER_AREA if resize < 1 else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(crop), size, interpolation=interpolation).astype(np.float32)


def random_placement(stamp, image_shape, rng):
    """The stamp resized and mirrored at random, and the top-left corner where it goes."""
    height, width = image_shape
    stamp_h, stamp_w = stamp.premultiplied.shape[:2]
    longest = min(rng.uniform(*OBJECT_SIZE) * IMAGE_SIZE, MAX_UPSCALE * max(stamp_h, stamp_w))
    scale = min(longest / max(stamp_h, stamp_w), height / stamp_h, width / stamp_w)
    size = (max(1, min(width, round(stamp_w * scale))), max(1, min(height, round(stamp_h * scale))))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    pasted = cv2.resize(stamp.premultiplied, size, interpolation=interpolation)
    if rng.random() < 0.5:
        pasted = pasted[:, ::-1]
    y0 = rng.integers(0, height - size[1] + 1)
    x0 = rng.integers(0, width - size[0] + 1)
    return np.clip(pasted, 0, 1), (y0, x0)


def compose_image(background, stamps, rng):
    """Paste 1-4 random stamps on ``background``; returns the image and the instances still visible."""
    image = background
    height, width = image.shape[:2]
    classes = list(stamps)
    instances = []
    for _ in range(rng.integers(INSTANCES_PER_IMAGE[0], INSTANCES_PER_IMAGE[1] + 1)):
        class_stamps = stamps[classes[rng.integers(len(classes))]]
        stamp = class_stamps[rng.integers(len(class_stamps))]
        for _ in range(PLACEMENT_TRIES):
            pasted, (y0, x0) = random_placement(stamp, (height, width), rng)
            h, w = pasted.shape[:2]
            mask = np.zeros((height, width), bool)
            mask[y0: y0 + h, x0: x0 + w] = pasted[..., 3] * 255 > 127
            area = int(mask.sum())
            keeps_earlier_visible = all(
                (earlier.visible & ~mask).sum() >= max(MIN_INSTANCE_AREA, MIN_VISIBLE_FRACTION * earlier.area)
                for earlier in instances
            )
            if area >= MIN_INSTANCE_AREA and keeps_earlier_visible:
                break
        else:
            continue
        region = image[y0: y0 + h, x0: x0 + w]
        image[y0: y0 + h, x0: x0 + w] = pasted[..., :3] * 255 + region * (1 - pasted[..., 3:])
        for earlier in instances:
            earlier.visible &= ~mask
        instances.append(Instance(stamp.category_id, area, mask, stamp.name))
    assert instances, "the first paste always fits an empty image"
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), instances


def extreme_points(mask):
    """COCO keypoints [x, y, 2] of the top, bottom, left and right extreme pixels of ``mask``.

    Where several pixels are equally extreme (a flat side), the middle one is taken.
    """
    ys, xs = np.nonzero(mask)

    def middle(values):
        return int(np.sort(values)[(len(values) - 1) // 2])

    top, bottom, left, right = int(ys.min()), int(ys.max()), int(xs.min()), int(xs.max())
    points = (
        (middle(xs[ys == top]), top),
        (middle(xs[ys == bottom]), bottom),
        (left, middle(ys[xs == left])),
        (right, middle(ys[xs == right])),
    )
    return [value for x, y in points for value in (x, y, 2)]


def coco_annotation(instance, annotation_id, image_id):
    rle = mask_util.encode(np.asfortranarray(instance.visible.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return {
        "id": annotation_id,
        "image_id": image_id,
        "category_id": instance.category_id,
        "segmentation": rle,
        "area": float(mask_util.area(rle)),
        "bbox": [float(v) for v in mask_util.toBbox(rle)],
        "iscrowd": 0,
        "keypoints": extreme_points(instance.visible),
        "num_keypoints": len(CUTPASTE_KEYPOINT_NAMES),
    }


def coco_categories():
    return [
        {
            "id": category_id,
            "name": name,
            "supercategory": CLASS_FOLDERS[name].split("/")[0],
            "keypoints": list(CUTPASTE_KEYPOINT_NAMES),
            "skeleton": [],
        }
        for category_id, name in enumerate(CUTPASTE_CLASSES, start=1)
    ]


def generate_image(rng, backgrounds, stamps):
    """One image on a random one of ``backgrounds`` ((name, photo) pairs): its background's name, the
    image and its visible instances."""
    background_name, photo = backgrounds[rng.integers(len(backgrounds))]
    image, instances = compose_image(random_background(photo, rng), stamps, rng)
    return background_name, image, instances


def image_rng(seed_key, index):
    """One generator per image: an image does not change when the number of images does."""
    return np.random.default_rng([*seed_key, index])


def generate_split(split, count, backgrounds, stamps, build_dir, seed_key):
    """
    Write ``count`` images with their semantic PNGs; returns the COCO dict, each image's background and
    the stamps pasted on it. ``seed_key`` (integers) names the split's images: image i is drawn by
    ``image_rng(seed_key, i)``.
    """
    for folder in (build_dir / split, build_dir / "sem_seg" / split):
        folder.mkdir(parents=True)
    images, annotations, background_of, stamps_of = [], [], {}, {}
    for index in range(count):
        background_name, image, instances = generate_image(image_rng(seed_key, index), backgrounds, stamps)
        stem = f"{split}_{index:05d}"
        image_id = index + 1
        write_jpeg(build_dir / split / f"{stem}.jpg", image)
        labels = np.zeros(image.shape[:2], np.uint8)
        for instance in instances:
            labels[instance.visible] = instance.category_id
            annotations.append(coco_annotation(instance, len(annotations) + 1, image_id))
        Image.fromarray(labels).save(build_dir / "sem_seg" / split / f"{stem}.png")
        height, width = image.shape[:2]
        images.append({"id": image_id, "file_name": f"{stem}.jpg", "height": height, "width": width})
        background_of[f"{split}/{stem}.jpg"] = background_name
        stamps_of[f"{split}/{stem}.jpg"] = [instance.stamp_name for instance in instances]
    coco = {
        "info": {"description": f"VADeR cut-paste {split}: tuxpaint photo stamps pasted on real photos"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": coco_categories(),
    }
    return coco, background_of, stamps_of


def recipe(num_train, num_val):
    """Everything the outputs depend on: a change to any of it rebuilds them."""
    return {
        "version": RECIPE_VERSION,
        "seed": SEED,
        "counts": {"train": num_train, "val": num_val},
        **generator_recipe(),
    }


def generator_recipe():
    """How an image is drawn, whatever the seed and the number of images (prepare_lowlabel.py's too)."""
    return {
        "classes": list(CUTPASTE_CLASSES),
        "class_folders": CLASS_FOLDERS,
        "skipped_subfolders": sorted(SKIPPED_SUBFOLDERS),
        "stamp_filter": {
            "opaque_fraction": list(STAMP_OPAQUE_FRACTION),
            "min_side": STAMP_MIN_SIDE,
            "max_flat_fraction": STAMP_MAX_FLAT_FRACTION,
            "min_colour_spread": STAMP_MIN_COLOUR_SPREAD,
        },
        "image_size": IMAGE_SIZE,
        "background_crop_scale": list(BACKGROUND_CROP_SCALE),
        "object_size": list(OBJECT_SIZE),
        "max_upscale": MAX_UPSCALE,
        "instances_per_image": list(INSTANCES_PER_IMAGE),
        "min_instance_area": MIN_INSTANCE_AREA,
        "min_visible_fraction": MIN_VISIBLE_FRACTION,
        "placement_tries": PLACEMENT_TRIES,
        "archives": {
            STAMPS_PACKAGE.name: STAMPS_PACKAGE.sha256,
            **{key: archive.sha256 for key, archive in ARCHIVES.items()},
        },
        "backgrounds": demo_photos_recipe(),
    }


def source_records():
    """The manifest's record of every downloaded archive the images come from."""
    return {
        STAMPS_PACKAGE.name: {
            "registry": "Debian",
            "package": STAMPS_PACKAGE.name,
            "version": STAMPS_PACKAGE.version,
            "file": STAMPS_PACKAGE.filename,
            "sha256": STAMPS_PACKAGE.sha256,
            "licence": STAMPS_PACKAGE.licence,
        },
        **{key: archive_record(archive) for key, archive in ARCHIVES.items()},
    }


def prepare_cutpaste(args):
    start = time.perf_counter()
    if args.num_train < 1 or args.num_val < 1:
        raise PrepareError("--num-train and --num-val must be at least 1")
    dataset_dir = Path(args.root) / DATASET_NAME
    current_recipe = recipe(args.num_train, args.num_val)
    if not args.force and manifest_is_current(dataset_dir, current_recipe):
        print(f"{dataset_dir} is up to date (--force rebuilds it)")
        return
    stamps = load_stamps(extract_stamps(fetch_debian_package(STAMPS_PACKAGE, args.cache), args.cache))
    archive_paths, photos = fetch_source_photos(args.cache)
    build_dir = fresh_build_dir(dataset_dir)
    (build_dir / "annotations").mkdir()
    background_of = {}
    instance_counts = {}
    for split, count in (("train", args.num_train), ("val", args.num_val)):
        backgrounds = [
            (photo.output_name, read_source_photo(archive_paths[photo.source], photo.member))
            for photo in photos
            if photo.split == split
        ]
        coco, split_backgrounds, _ = generate_split(
            split, count, backgrounds, stamps, build_dir, seed_key=(SEED, SPLITS.index(split))
        )
        (build_dir / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))
        background_of.update(split_backgrounds)
        instance_counts[split] = {
            name: sum(a["category_id"] == k for a in coco["annotations"])
            for k, name in enumerate(CUTPASTE_CLASSES, start=1)
        }
    manifest = {
        "dataset": DATASET_NAME,
        "recipe": current_recipe,
        "sources": source_records(),
        "stamps": {name: [stamp.name for stamp in class_stamps] for name, class_stamps in stamps.items()},
        "counts": {"images": current_recipe["counts"], "instances": instance_counts},
        # The vader_demo_photos file each image was pasted on.
        "backgrounds": background_of,
    }
    publish(build_dir, dataset_dir, manifest)
    total = {split: sum(counts.values()) for split, counts in instance_counts.items()}
    print(
        f"wrote {dataset_dir}: {args.num_train} train images ({total['train']} instances) + "
        f"{args.num_val} val images ({total['val']} instances), "
        f"{sum(len(s) for s in stamps.values())} stamps in {len(stamps)} classes, "
        f"{folder_size_mb(dataset_dir):.1f} MB, in {time.perf_counter() - start:.1f} s"
    )


def add_arguments(parser):
    parser.add_argument("--num-train", type=int, default=240, help="number of train images (default 240)")
    parser.add_argument("--num-val", type=int, default=60, help="number of val images (default 60)")


if __name__ == "__main__":
    run_cli(prepare_cutpaste, description=__doc__.splitlines()[0], add_arguments=add_arguments)
