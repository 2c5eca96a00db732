"""What the dataset preparation scripts share: the download cache, the manifest, the command line.

Not a script: ``prepare_demo_photos.py`` and ``prepare_cutpaste.py`` import it as their sibling.
"""

import argparse
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from PIL import Image

JPEG_QUALITY = 95


class PrepareError(Exception):
    """A failure the user can fix (network, missing tool, bad cache): reported as every vader_d2 command
    reports a mistake, one line and no traceback."""


def default_root():
    return os.getenv("DETECTRON2_DATASETS", "datasets")


def default_cache():
    return os.getenv("VADER_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "vader_d2"))


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verified_cached_file(path, sha256, origin):
    """``path`` if it holds the pinned bytes, None if it is absent; a corrupt or changed file is an error."""
    if not path.exists():
        return None
    actual = sha256_file(path)
    if actual != sha256:
        raise PrepareError(
            f"{path} (from {origin}) has sha256 {actual}, expected {sha256}: "
            f"delete it and run again to download it afresh"
        )
    return path


def cached_download(cache_dir, filename, sha256, origin, download):
    """
    ``cache_dir / filename`` holding the pinned bytes: the cached file, else what ``download(folder)``
    leaves in ``folder``, an empty temporary folder in the cache, so that a download cut short never
    leaves a partial file under the final name.
    """
    cache_dir = Path(cache_dir)
    path = cache_dir / filename
    if verified_cached_file(path, sha256, origin):
        return path
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as download_dir:
        download(Path(download_dir))
        (Path(download_dir) / filename).replace(path)
    verified_cached_file(path, sha256, origin)
    return path


# ---------------------------------------------------------------------------------------------------
# Manifest: the outputs are up to date when the recipe is unchanged and every file matches its sha256.


def manifest_is_current(dataset_dir, recipe):
    manifest_path = Path(dataset_dir) / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        return False
    if manifest.get("recipe") != recipe:
        return False
    listed = manifest.get("files", {})
    present = {
        path.relative_to(dataset_dir).as_posix()
        for path in Path(dataset_dir).rglob("*")
        if path.is_file() and path != manifest_path
    }
    if present != set(listed):
        return False
    return all(sha256_file(Path(dataset_dir) / name) == sha for name, sha in listed.items())


def publish(build_dir, dataset_dir, manifest):
    """Write the manifest last and swap the finished build in place of the old outputs."""
    build_dir, dataset_dir = Path(build_dir), Path(dataset_dir)
    manifest["files"] = {
        path.relative_to(build_dir).as_posix(): sha256_file(path)
        for path in sorted(build_dir.rglob("*"))
        if path.is_file()
    }
    (build_dir / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    if dataset_dir.exists():
        shutil.rmtree(dataset_dir)
    build_dir.rename(dataset_dir)


def fresh_build_dir(dataset_dir):
    """An empty sibling folder to build into, so that an interrupted run never leaves half an output."""
    build_dir = Path(dataset_dir).with_name(f".{Path(dataset_dir).name}.partial")
    if build_dir.exists():
        shutil.rmtree(build_dir)
    build_dir.mkdir(parents=True)
    return build_dir


def folder_size_mb(folder):
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file()) / 2**20


def write_jpeg(path, image_rgb):
    Image.fromarray(image_rgb).save(path, quality=JPEG_QUALITY)


def add_common_arguments(parser):
    parser.add_argument(
        "--root", default=default_root(),
        help="datasets root, as in Detectron2 (default: $DETECTRON2_DATASETS, else ./datasets)",
    )
    parser.add_argument(
        "--cache", default=default_cache(),
        help="where downloaded archives are kept (default: $VADER_CACHE or ~/.cache/vader_d2)",
    )
    parser.add_argument("--force", action="store_true", help="rebuild even if the outputs are up to date")


def run_cli(prepare, description, add_arguments=None):
    """Parse the arguments and run ``prepare(args)`` through vader_d2's command-line path: a failure the
    user can fix ends with the one line ``vader_d2: ...`` on stderr and exit status 2."""
    parser = argparse.ArgumentParser(description=description)
    add_common_arguments(parser)
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args()
    try:
        prepare(args)
    # OSError: an unwritable root or a full disk; its message names the path.
    except (PrepareError, OSError) as e:
        # vader_d2's own reporting, imported only on a failure: it brings torch and Detectron2 (seconds),
        # which preparing data does not otherwise need.
        from vader_d2.cli import report_user_error

        report_user_error(e)

