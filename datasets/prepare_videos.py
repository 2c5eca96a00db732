#!/usr/bin/env python
"""Prepare ``vader_videos``: short videos with exact object masks, in the DAVIS 2017 layout.

DAVIS itself is not reachable offline; these videos let ``tools/propagate_labels.py`` (and its tests)
run the same reader and protocol. Each video pans and zooms over a held-out real photo (the val scenes
of ``prepare_demo_photos.py``, never seen in pretraining), while 2-3 real-photo cut-outs (the
tuxpaint stamps of ``prepare_cutpaste.py``, whose alpha channel is an exact mask) move across it and
deform (rotation, anisotropic scaling). Objects are pasted in a fixed order each frame, so where two
overlap the later one is on top: a pixel's id is the top-most object whose warped alpha exceeds 0.5
there, and the occluded part of an object belongs to its occluder. The first two objects start on
opposite sides and swap sides, and their paths are redrawn until one occludes the other in some frame. The same warp moves an
object's colours and its mask, so masks are exact by construction.

Output, under ROOT (``--root``, default ``$DETECTRON2_DATASETS``, else ``./datasets``)::

    ROOT/vader_videos/DAVIS/JPEGImages/480p/<video>/00000.jpg ...   160x120 frames (the folder keeps
                                                                     DAVIS's name; the size is ours)
    ROOT/vader_videos/DAVIS/Annotations/480p/<video>/00000.png ...  palette PNGs, index = object id
    ROOT/vader_videos/DAVIS/ImageSets/2017/val.txt                  the video names
    ROOT/vader_videos/manifest.json                                 sources, recipe, sha256 of every file

Evaluate with ``tools/propagate_labels.py --davis-root ROOT/vader_videos/DAVIS``.
"""

import time
from dataclasses import dataclass
from pathlib import Path
from typing import List

import cv2
import numpy as np

from common import fresh_build_dir, folder_size_mb, manifest_is_current, publish, run_cli, write_jpeg
from prepare_cutpaste import STAMPS_PACKAGE, extract_stamps, fetch_debian_package, load_stamps
from prepare_demo_photos import ARCHIVES, fetch_source_photos, read_source_photo
from prepare_demo_photos import recipe as demo_photos_recipe

from vader_d2.evaluation.davis import davis_palette, write_palette_annotation

DATASET_NAME = "vader_videos"
# Bump when the way outputs are produced changes, so that existing outputs are rebuilt.
RECIPE_VERSION = 1
SEED = 20201208
NUM_VIDEOS = 8
FRAMES_PER_VIDEO = 12
FRAME_SIZE = (160, 120)  # width, height
OBJECTS_PER_VIDEO = (2, 3)
OBJECT_SIZE = (0.30, 0.45)  # longest side of an object at the start / frame width
SCALE_CHANGE = (0.75, 1.3)  # each axis's scale at the end / at the start, drawn per axis
MAX_ROTATION = 25.0  # degrees over a video
BACKGROUND_CROP = (0.45, 0.8)  # side of the panning window / side of the photo
BACKGROUND_ZOOM = (0.8, 1.25)  # window side at the end / at the start
# Every object must show this many pixels in the first frame, whose masks the protocol is given.
MIN_FIRST_FRAME_AREA = 150
# The first two objects must overlap by at least this many pixels in some frame.
MIN_OCCLUSION_AREA = 100
PLACEMENT_TRIES = 50
ALPHA_THRESHOLD = 0.5


@dataclass
class Track:
    """One object's path: its stamp and, per frame, the 2x3 affine map from stamp pixels to frame pixels."""

    stamp_name: str
    class_name: str
    premultiplied: np.ndarray  # float32 (h, w, 4): RGB * alpha and alpha, in [0, 1]
    warps: List[np.ndarray]


def affine_to_frame(stamp_shape, centre, scale_xy, angle_deg):
    """The 2x3 map that scales a stamp per axis, rotates it and puts its centre at ``centre``."""
    height, width = stamp_shape
    angle = np.deg2rad(angle_deg)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    linear = rotation @ np.diag(scale_xy)
    stamp_centre = np.array([(width - 1) / 2, (height - 1) / 2])
    return np.hstack([linear, (np.asarray(centre) - linear @ stamp_centre)[:, None]])


def random_track(stamp, class_name, side, rng, frames=FRAMES_PER_VIDEO, frame_size=FRAME_SIZE):
    """A stamp crossing the frame: side -1 starts left and ends right, +1 the reverse, 0 anywhere."""
    width, height = frame_size
    h, w = stamp.premultiplied.shape[:2]
    start_scale = rng.uniform(*OBJECT_SIZE) * width / max(h, w)
    end_scale = start_scale * rng.uniform(*SCALE_CHANGE, size=2)
    end_angle = rng.uniform(-MAX_ROTATION, MAX_ROTATION)
    if side == 0:
        start_x, end_x = rng.uniform(0.2, 0.8, size=2) * width
    else:
        start_x = (0.5 + side * rng.uniform(0.2, 0.3)) * width
        end_x = (0.5 - side * rng.uniform(0.2, 0.3)) * width
    start_y, end_y = rng.uniform(0.35, 0.65, size=2) * height
    warps = []
    for t in range(frames):
        s = t / (frames - 1)
        centre = ((1 - s) * start_x + s * end_x, (1 - s) * start_y + s * end_y)
        scale = (1 - s) * np.array([start_scale, start_scale]) + s * end_scale
        warps.append(affine_to_frame((h, w), centre, scale, s * end_angle))
    return Track(stamp.name, class_name, stamp.premultiplied, warps)


def background_frames(photo, rng, frames=FRAMES_PER_VIDEO, frame_size=FRAME_SIZE):
    """A window panning and zooming over ``photo``, resampled to ``frame_size``: float32 RGB frames."""
    width, height = frame_size
    photo_h, photo_w = photo.shape[:2]
    # Window size at the start, with the frame's aspect ratio, and its size at the end.
    start_w = min(photo_w, photo_h * width / height) * rng.uniform(*BACKGROUND_CROP)
    end_w = min(start_w * rng.uniform(*BACKGROUND_ZOOM), photo_w, photo_h * width / height)
    corners = []
    for window_w in (start_w, end_w):
        window_h = window_w * height / width
        corners.append((rng.uniform(0, photo_w - window_w), rng.uniform(0, photo_h - window_h), window_w))
    out = []
    for t in range(frames):
        s = t / (frames - 1)
        x0, y0, window_w = [(1 - s) * a + s * b for a, b in zip(*corners)]
        zoom = width / window_w
        to_frame = np.array([[zoom, 0, -x0 * zoom], [0, zoom, -y0 * zoom]])
        interpolation = cv2.INTER_AREA if zoom < 1 else cv2.INTER_LINEAR
        out.append(cv2.warpAffine(photo, to_frame, (width, height), flags=interpolation, borderMode=cv2.BORDER_REFLECT).astype(np.float32))
    return out


def compose_frame(background, layers):
    """
    Paste warped premultiplied RGBA layers over ``background`` in order (later on top). Returns the
    uint8 frame, the uint8 object ids (layer i has id i + 1; the top-most layer whose alpha exceeds
    ALPHA_THRESHOLD wins) and each layer's whole mask, before occlusion.
    """
    image = background.copy()
    labels = np.zeros(background.shape[:2], np.uint8)
    masks = []
    for object_id, layer in enumerate(layers, start=1):
        alpha = layer[..., 3:]
        image = layer[..., :3] * 255 + image * (1 - alpha)
        mask = layer[..., 3] > ALPHA_THRESHOLD
        labels[mask] = object_id
        masks.append(mask)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), labels, masks


def warp_layer(track, t, frame_size=FRAME_SIZE):
    return np.clip(cv2.warpAffine(track.premultiplied, track.warps[t], frame_size, flags=cv2.INTER_LINEAR), 0, 1)


def render_video(tracks, backgrounds, frame_size=FRAME_SIZE):
    """Frames, object ids and whole masks (per frame, per object) of ``tracks`` over ``backgrounds``."""
    return [compose_frame(background, [warp_layer(track, t, frame_size) for track in tracks]) for t, background in enumerate(backgrounds)]


def generate_video(index, backgrounds, stamps):
    """Video ``index``: a background photo and 2-3 objects of different classes, redrawn until every
    object shows at least MIN_FIRST_FRAME_AREA pixels in the first frame and the first two overlap by
    MIN_OCCLUSION_AREA pixels in some frame."""
    # One generator per video: a video does not change when the number of videos does.
    rng = np.random.default_rng([SEED, index])
    background_name, photo = backgrounds[rng.integers(len(backgrounds))]
    frames = background_frames(photo, rng)
    classes = list(stamps)
    for _ in range(PLACEMENT_TRIES):
        count = rng.integers(OBJECTS_PER_VIDEO[0], OBJECTS_PER_VIDEO[1] + 1)
        chosen = rng.choice(len(classes), size=count, replace=False)
        first_side = rng.choice([-1, 1])
        tracks = []
        for order, class_index in enumerate(chosen):
            class_stamps = stamps[classes[class_index]]
            stamp = class_stamps[rng.integers(len(class_stamps))]
            side = (first_side, -first_side, 0)[order]
            tracks.append(random_track(stamp, classes[class_index], side, rng))
        _, first_labels, _ = compose_frame(frames[0], [warp_layer(track, 0) for track in tracks])
        if not all((first_labels == object_id).sum() >= MIN_FIRST_FRAME_AREA for object_id in range(1, len(tracks) + 1)):
            continue
        rendered = render_video(tracks, frames)
        # The first two objects cross; their paths must also meet, so that one occludes the other.
        if any((masks[0] & masks[1]).sum() >= MIN_OCCLUSION_AREA for _, _, masks in rendered):
            return background_name, tracks, rendered
    raise AssertionError(f"video {index}: no placement in {PLACEMENT_TRIES} tries shows every object first and has an occlusion")


def recipe():
    """Everything the outputs depend on: a change to any of it rebuilds them."""
    return {
        "version": RECIPE_VERSION,
        "seed": SEED,
        "videos": NUM_VIDEOS,
        "frames_per_video": FRAMES_PER_VIDEO,
        "frame_size": list(FRAME_SIZE),
        "objects_per_video": list(OBJECTS_PER_VIDEO),
        "object_size": list(OBJECT_SIZE),
        "scale_change": list(SCALE_CHANGE),
        "max_rotation": MAX_ROTATION,
        "background_crop": list(BACKGROUND_CROP),
        "background_zoom": list(BACKGROUND_ZOOM),
        "min_first_frame_area": MIN_FIRST_FRAME_AREA,
        "min_occlusion_area": MIN_OCCLUSION_AREA,
        "alpha_threshold": ALPHA_THRESHOLD,
        "archives": {STAMPS_PACKAGE.name: STAMPS_PACKAGE.sha256, **{key: a.sha256 for key, a in ARCHIVES.items()}},
        "backgrounds": demo_photos_recipe(),
    }


def prepare_videos(args):
    start = time.perf_counter()
    dataset_dir = Path(args.root) / DATASET_NAME
    if not args.force and manifest_is_current(dataset_dir, recipe()):
        print(f"{dataset_dir} is up to date (--force rebuilds it)")
        return
    stamps = load_stamps(extract_stamps(fetch_debian_package(STAMPS_PACKAGE, args.cache), args.cache))
    archive_paths, photos = fetch_source_photos(args.cache)
    backgrounds = [
        (photo.output_name, read_source_photo(archive_paths[photo.source], photo.member)) for photo in photos if photo.split == "val"
    ]
    build_dir = fresh_build_dir(dataset_dir)
    davis = build_dir / "DAVIS"
    palette = davis_palette()
    videos = {}
    for index in range(NUM_VIDEOS):
        background_name, tracks, rendered = generate_video(index, backgrounds, stamps)
        name = f"{index:02d}_" + "-".join(track.class_name for track in tracks)
        frames_dir = davis / "JPEGImages" / "480p" / name
        annotations_dir = davis / "Annotations" / "480p" / name
        frames_dir.mkdir(parents=True)
        annotations_dir.mkdir(parents=True)
        for t, (image, labels, _) in enumerate(rendered):
            write_jpeg(frames_dir / f"{t:05d}.jpg", image)
            write_palette_annotation(str(annotations_dir / f"{t:05d}.png"), labels, palette)
        videos[name] = {
            "background": background_name,
            "objects": {str(i): {"stamp": t.stamp_name, "class": t.class_name} for i, t in enumerate(tracks, start=1)},
        }
    (davis / "ImageSets" / "2017").mkdir(parents=True)
    (davis / "ImageSets" / "2017" / "val.txt").write_text("".join(f"{name}\n" for name in videos))
    manifest = {"dataset": DATASET_NAME, "recipe": recipe(), "videos": videos}
    publish(build_dir, dataset_dir, manifest)
    print(
        f"wrote {dataset_dir}: {NUM_VIDEOS} videos of {FRAMES_PER_VIDEO} frames ({FRAME_SIZE[0]}x{FRAME_SIZE[1]}), "
        f"{sum(len(v['objects']) for v in videos.values())} objects, {folder_size_mb(dataset_dir):.1f} MB, "
        f"in {time.perf_counter() - start:.1f} s"
    )


if __name__ == "__main__":
    run_cli(prepare_videos, description=__doc__.splitlines()[0])
