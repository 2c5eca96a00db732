#!/usr/bin/env python
"""Prepare ``vader_lowlabel``: many unlabeled in-domain images and a few labelled ones, for low-label transfer.

The practitioner's setting: plenty of unlabeled images of one domain, few labelled ones, a fixed test
split. The images are drawn by ``prepare_cutpaste.py``'s generator (the same 7 classes, object sizes and
counts, 320 px longest side) with seeds of their own, so no image is one of ``vader_cutpaste``'s. Each
class's stamps (in ``load_stamps``' order) and the demo photos (``vader_demo_photos``, in file-name
order) are split by parity, so that pretraining sees none of the objects or background photos of the
labelled images:

    split      images (option, default)   objects                            backgrounds
    unlabeled  --num-unlabeled 2000       even-indexed stamps of each class  even-indexed demo train photos
    train      --num-train 150            odd-indexed stamps of each class   odd-indexed demo train photos
    test       --num-test 100             odd-indexed stamps of each class   the demo val photos

The demo train photos hold neighbouring frames of one campus walk, two stereo views of rocks and a
series of flower beds: the parity split gives the unlabeled and the labelled train images different
photos of the same places, as a practitioner's unlabeled images come from where the labelled ones do.
The test backgrounds are scenes of their own, seen by no other split.

The label budgets are the first 10 / 30 / 100 train images (``LOWLABEL_BUDGETS``, registered as
``vader_lowlabel_train_N`` and ``vader_lowlabel_sem_seg_train_N``), so each budget holds the smaller ones;
train images 51-100 are also the validation split of the 10 and 30 budgets (``vader_lowlabel_val``) and
101-150, in no budget, that of the 100 budget (``vader_lowlabel_holdout``). Image i does not depend on how
many images are made: the first 100 are those of the former default of 100.

Output, under ROOT (``--root``, default ``$DETECTRON2_DATASETS``, else ``./datasets``)::

    ROOT/vader_lowlabel/unlabeled/*.jpg                           images only, no labels
    ROOT/vader_lowlabel/{train,test}/*.jpg
    ROOT/vader_lowlabel/annotations/instances_{train,test}.json   COCO, as vader_cutpaste's
    ROOT/vader_lowlabel/sem_seg/{train,test}/*.png                8-bit greyscale: 0 background, k class k
    ROOT/vader_lowlabel/manifest.json   recipe, sources, the stamps each split draws from, the background
                                        and the stamps of every image, sha256 of every file

Not part of ``make data``: run it before the studies of ``experiments/studies/``. With the defaults it wrote 86 MB
(82 MB of them unlabeled) in 59 s of wall time, 48 s after the imports (its last line reports both size
and time), on the 2-core development machine while training runs shared it (load average 8-11); an up to
date check takes 14 s there, most of it the imports and the sha256 of every file.
"""

import json
import time
from pathlib import Path

from common import (
    PrepareError,
    folder_size_mb,
    fresh_build_dir,
    manifest_is_current,
    publish,
    run_cli,
    write_jpeg,
)
from prepare_cutpaste import (
    RECIPE_VERSION as CUTPASTE_RECIPE_VERSION,
    STAMPS_PACKAGE,
    extract_stamps,
    fetch_debian_package,
    generate_image,
    generate_split,
    generator_recipe,
    image_rng,
    load_stamps,
    source_records,
)
from prepare_demo_photos import fetch_source_photos, read_source_photo

from vader_d2.data.datasets import CUTPASTE_CLASSES, LOWLABEL_BUDGETS

DATASET_NAME = "vader_lowlabel"
# Bump when the way outputs are produced changes, so that existing outputs are rebuilt.
RECIPE_VERSION = 1
SEED = 20201207  # vader_cutpaste's is 20201206
SPLITS = ("unlabeled", "train", "test")
# Which stamps of each class, and which demo photos, each split draws from. "even" / "odd": the items at
# even / odd positions of the fixed order; "all": every one.
STAMP_PARITY = {"unlabeled": "even", "train": "odd", "test": "odd"}
BACKGROUNDS = {"unlabeled": ("train", "even"), "train": ("train", "odd"), "test": ("val", "all")}


def pick(items, parity):
    return {"even": items[0::2], "odd": items[1::2], "all": items}[parity]


def recipe(counts):
    """Everything the outputs depend on: a change to any of it rebuilds them."""
    return {
        "version": RECIPE_VERSION,
        "seed": SEED,
        "counts": counts,
        "stamp_parity": STAMP_PARITY,
        "backgrounds_of_split": {split: list(rule) for split, rule in BACKGROUNDS.items()},
        "cutpaste_version": CUTPASTE_RECIPE_VERSION,
        **generator_recipe(),
    }


def instance_counts(coco, first=None):
    """Instances of each class in the first ``first`` images (all of them when None)."""
    image_ids = {image["id"] for image in coco["images"][:first]}
    return {
        name: sum(a["category_id"] == k and a["image_id"] in image_ids for a in coco["annotations"])
        for k, name in enumerate(CUTPASTE_CLASSES, start=1)
    }


def prepare_lowlabel(args):
    start = time.perf_counter()
    counts = {"unlabeled": args.num_unlabeled, "train": args.num_train, "test": args.num_test}
    for split, count in counts.items():
        if count < 1:
            raise PrepareError(f"--num-{split} must be at least 1, not {count}")
    dataset_dir = Path(args.root) / DATASET_NAME
    current_recipe = recipe(counts)
    if not args.force and manifest_is_current(dataset_dir, current_recipe):
        print(f"{dataset_dir} is up to date (--force rebuilds it)")
        return
    all_stamps = load_stamps(extract_stamps(fetch_debian_package(STAMPS_PACKAGE, args.cache), args.cache))
    too_few = [name for name, class_stamps in all_stamps.items() if len(class_stamps) < 2]
    if too_few:
        raise PrepareError(
            f"classes {too_few} have fewer than 2 photo stamps, too few to split between unlabeled and "
            f"labelled images: delete the unpacked package in {args.cache} and run again"
        )
    archive_paths, photos = fetch_source_photos(args.cache)
    build_dir = fresh_build_dir(dataset_dir)
    (build_dir / "annotations").mkdir()
    stamps_of_split, background_of, stamps_of, instances = {}, {}, {}, {}
    for split, count in counts.items():
        stamps = {name: pick(class_stamps, STAMP_PARITY[split]) for name, class_stamps in all_stamps.items()}
        stamps_of_split[split] = {name: [stamp.name for stamp in class_stamps] for name, class_stamps in stamps.items()}
        photo_split, parity = BACKGROUNDS[split]
        backgrounds = [
            (photo.output_name, read_source_photo(archive_paths[photo.source], photo.member))
            for photo in pick([photo for photo in photos if photo.split == photo_split], parity)
        ]
        seed_key = (SEED, SPLITS.index(split))
        if split == "unlabeled":
            (build_dir / split).mkdir()
            for index in range(count):
                background_name, image, pasted = generate_image(image_rng(seed_key, index), backgrounds, stamps)
                file_name = f"{split}/{split}_{index:05d}.jpg"
                write_jpeg(build_dir / file_name, image)
                background_of[file_name] = background_name
                stamps_of[file_name] = [instance.stamp_name for instance in pasted]
            continue
        coco, split_backgrounds, split_stamps = generate_split(
            split, count, backgrounds, stamps, build_dir, seed_key=seed_key
        )
        (build_dir / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))
        background_of.update(split_backgrounds)
        stamps_of.update(split_stamps)
        instances[split] = instance_counts(coco)
        if split == "train":
            instances.update(
                {f"train_{budget}": instance_counts(coco, budget) for budget in LOWLABEL_BUDGETS if budget <= count}
            )
    manifest = {
        "dataset": DATASET_NAME,
        "recipe": current_recipe,
        "sources": source_records(),
        # The stamps each split draws its objects from.
        "stamps": stamps_of_split,
        "counts": {"images": counts, "instances": instances},
        # The vader_demo_photos file each image was pasted on, and the stamps pasted on it.
        "backgrounds": background_of,
        "image_stamps": stamps_of,
    }
    publish(build_dir, dataset_dir, manifest)
    print(
        f"wrote {dataset_dir}: {counts['unlabeled']} unlabeled + {counts['train']} train "
        f"({sum(instances['train'].values())} instances) + {counts['test']} test images "
        f"({sum(instances['test'].values())} instances), {folder_size_mb(dataset_dir):.1f} MB, "
        f"in {time.perf_counter() - start:.1f} s"
    )


def add_arguments(parser):
    parser.add_argument(
        "--num-unlabeled", type=int, default=2000, help="number of unlabeled images (default 2000)"
    )
    parser.add_argument(
        "--num-train", type=int, default=150,
        help=f"number of labelled train images (default 100; the budgets {LOWLABEL_BUDGETS} are the first ones)",
    )
    parser.add_argument("--num-test", type=int, default=100, help="number of test images (default 100)")


if __name__ == "__main__":
    run_cli(prepare_lowlabel, description=__doc__.splitlines()[0], add_arguments=add_arguments)
