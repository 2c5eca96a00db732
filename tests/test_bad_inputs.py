"""
Bad data and bad numbers: every kind of broken or unusual file in a pretraining folder is converted or
skipped with a logged reason and counted, a folder without a readable image stops at start-up with one
line, and a loss that stops being finite stops training with the iteration and what went non-finite.
"""

import logging

import numpy as np
import pytest
import torch
from detectron2.engine import HookBase
from PIL import Image

from detectron2.utils.events import EventStorage

from vader_d2 import VADeRViewMapper, register_unlabeled_folder
from vader_d2.errors import UserError
from vader_d2.engine.hooks import NegativesWatch
from vader_d2.engine.trainer import TrainingDivergedError, VADeRTrainer, check_some_image_readable
from vader_d2.evaluation.report import read_metrics

from .helpers import DEMO_CONFIG, TINY_OPTS, demo_cfg, run_train_net, single_error_line
from .test_resume import FixedBatchTrainer, fixed_batch_cfg

pytestmark = pytest.mark.usefixtures("single_thread")

CROP = 64
CONVERTED, SKIPPED = "converted", "skipped"


def photo(height, width, seed):
    """Smooth colour gradients plus noise: enough structure for views to be told apart."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width] / max(height, width)
    channels = [np.sin(rng.uniform(2, 9) * xs + rng.uniform(2, 9) * ys + rng.uniform(0, 6)) for _ in range(3)]
    image = 127.5 * (1 + np.stack(channels, axis=2)) + rng.normal(0, 12, (height, width, 3))
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))


def write_every_kind(folder):
    """One file of each kind docs/troubleshooting.md's table of bad files lists, with its expected outcome."""
    folder.mkdir(parents=True, exist_ok=True)
    expected = {}

    def save(name, outcome, image=None, data=None, **kwargs):
        path = folder / name
        if data is not None:
            path.write_bytes(data)
        else:
            image.save(path, **kwargs)
        expected[name] = outcome

    for i in range(4):
        save(f"photo_{i}.jpg", CONVERTED, photo(180, 240, i), quality=90)
    save("zero_byte.jpg", SKIPPED, data=b"")
    whole = folder / "photo_0.jpg"
    save("truncated.jpg", SKIPPED, data=whole.read_bytes()[: whole.stat().st_size // 2])
    save("not_an_image.jpg", SKIPPED, data=b"<html><body>404 Not Found</body></html>\n")
    save("grayscale.jpg", CONVERTED, photo(150, 200, 10).convert("L"))
    save("cmyk.jpg", CONVERTED, photo(150, 200, 11).convert("CMYK"))
    rgba = photo(150, 200, 12).convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgba.size))
    save("rgba.png", CONVERTED, rgba)
    save("palette.png", CONVERTED, photo(150, 200, 13).convert("P", palette=Image.Palette.ADAPTIVE, colors=64))
    sixteen = (np.asarray(photo(150, 200, 14).convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    save("sixteen_bit.png", CONVERTED, Image.fromarray(sixteen))  # mode I;16
    save("smaller_than_crop.png", CONVERTED, photo(24, 40, 15))
    # 12000 x 12000: JPEGs are decoded at 1/8 scale (Image.draft) and never exist at full size in memory.
    save("huge.jpg", CONVERTED, Image.new("RGB", (12000, 12000), (90, 140, 200)), quality=50)
    # Other formats are decoded in full, so beyond PIL's decompression-bomb limit (89.5 MP) they are skipped.
    save("huge_bilevel.png", SKIPPED, Image.new("1", (12000, 12000), 1))
    return expected


@pytest.fixture(scope="module")
def every_kind(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    folder = root / "vader_demo_photos" / "train"
    return {"root": root, "folder": folder, "expected": write_every_kind(folder)}


def test_each_kind_is_converted_or_skipped_with_a_reason(every_kind, caplog):
    mapper = VADeRViewMapper(demo_cfg(*TINY_OPTS), is_train=True)
    skipped_before = 0
    for name, outcome in sorted(every_kind["expected"].items()):
        path = str(every_kind["folder"] / name)
        with caplog.at_level(logging.WARNING, logger="vader_d2"):
            caplog.clear()
            sample = mapper({"file_name": path, "image_id": 0})
        if outcome == SKIPPED:
            assert sample is None, name
            assert f"Skipping unreadable image {path}: " in caplog.text, name
            skipped_before += 1
        else:
            assert sample is not None, (name, caplog.text)
            for view in ("view1", "view2"):
                assert sample[view].shape == (3, CROP, CROP) and sample[view].dtype == torch.uint8, name
            assert max(sample["height"], sample["width"]) <= demo_cfg().INPUT.VIEWS.MAX_SOURCE_SIZE
            # Files skipped since the previous sample travel with this one to the skip counter.
            assert sample["num_skipped"] == skipped_before, name
            skipped_before = 0


@pytest.mark.slow
def test_pretraining_on_a_folder_of_every_kind_completes_and_counts_skips(every_kind, tmp_path):
    unreadable = [name for name, outcome in every_kind["expected"].items() if outcome == SKIPPED]
    images = len(every_kind["expected"])
    batch, steps = 4, 5  # 20 samples: the sampler's first pass over the 15 files is used up, so each is drawn
    result = run_train_net(
        "--config-file", DEMO_CONFIG, *TINY_OPTS, "DATALOADER.NUM_WORKERS", "2", "SOLVER.MAX_ITER", str(steps),
        "MODEL.MOMENTUM_CONTRAST.METRICS_PERIOD", "1", "OUTPUT_DIR", str(tmp_path),
        env={"DETECTRON2_DATASETS": str(every_kind["root"])},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert steps * batch > images
    skip_lines = [line for line in result.stdout.splitlines() if "Skipping unreadable image" in line]
    for name in unreadable:
        assert any(f"/{name}: " in line for line in skip_lines), name
    for name in set(every_kind["expected"]) - set(unreadable):
        assert not any(f"/{name}: " in line for line in skip_lines), name
    final = [m for m in read_metrics(tmp_path / "metrics.json") if "vader_skipped_images" in m][-1]
    assert final["iteration"] == steps - 1
    # The data loader workers' counts reach the model's metric: each unreadable file was drawn at least
    # once, and no more skips are counted than the workers logged (they also prefetch batches never used).
    assert len(unreadable) <= final["vader_skipped_images"] <= len(skip_lines)


def test_folder_without_a_readable_image_fails_at_start_up(tmp_path):
    folder = tmp_path / "vader_demo_photos" / "train"
    write_every_kind(folder)
    for path in folder.iterdir():
        if not path.name.startswith(("zero_byte", "truncated", "not_an_image")):
            path.unlink()
    result = run_train_net(
        "--config-file", DEMO_CONFIG, *TINY_OPTS, "OUTPUT_DIR", str(tmp_path / "out"), env={"DETECTRON2_DATASETS": str(tmp_path)}
    )
    line = single_error_line(result)
    assert "none of the 3 files of DATASETS.TRAIN can be read as an image" in line
    assert f"{folder}/not_an_image.jpg: " in line  # the first file, sorted by path


def test_folder_with_a_single_readable_image_fails_at_start_up(tmp_path):
    """One photo (and broken files) trains to the end with loss 0 and top-1 accuracy 1: every negative
    comes from the query's own image and is masked."""
    folder = tmp_path / "vader_demo_photos" / "train"
    write_every_kind(folder)
    for path in folder.iterdir():
        if not path.name.startswith(("photo_0", "zero_byte", "truncated", "not_an_image")):
            path.unlink()
    result = run_train_net(
        "--config-file", DEMO_CONFIG, *TINY_OPTS, "OUTPUT_DIR", str(tmp_path / "out"), env={"DETECTRON2_DATASETS": str(tmp_path)}
    )
    line = single_error_line(result)
    assert f"DATASETS.TRAIN has a single readable image ({folder}/photo_0.jpg) in its 4 files" in line
    assert f"(first: {folder}/not_an_image.jpg: " in line and "at least two" in line


def test_two_readable_images_must_be_two_files(every_kind):
    photo_0 = str(every_kind["folder"] / "photo_0.jpg")
    with pytest.raises(UserError, match="single readable image"):
        check_some_image_readable([{"file_name": photo_0}, {"file_name": photo_0}], 1024)  # one file listed twice
    check_some_image_readable([{"file_name": photo_0}, {"file_name": str(every_kind["folder"] / "photo_1.jpg")}], 1024)


class FakeTrainer:
    def __init__(self, storage):
        self.storage = storage


def test_queries_without_negatives_are_warned_about_when_the_share_stays_high(caplog):
    watch = NegativesWatch(fill_iterations=10, threshold=0.5, patience=3)
    with EventStorage() as storage:
        watch.trainer = FakeTrainer(storage)
        shares = {0: 1.0, 5: 1.0, 10: 0.9, 15: 0.2, 20: 0.8, 25: 0.7, 30: 0.6, 35: 0.9}
        with caplog.at_level(logging.WARNING, logger="vader_d2"):
            for iteration in range(40):
                storage.iter = iteration
                if iteration in shares:
                    storage.put_scalar(NegativesWatch.SCALAR, shares[iteration], smoothing_hint=False)
                watch.after_step()
                if iteration < 30:
                    # 0 and 5: the queue is still filling; 10 alone, then 15 breaks the run; 20, 25: two records.
                    assert watch.warnings == 0, iteration
    assert watch.warnings == 1  # at 30, the third record in a row above 0.5 (35 continues the same streak)
    assert "60% to 80% of the queries had no usable negative in the last 3 records (iterations 20..30" in caplog.text
    assert "MODEL.MOMENTUM_CONTRAST.QUEUE_SIZE" in caplog.text


def test_negatives_watch_ignores_a_model_without_the_scalar():
    watch = NegativesWatch(fill_iterations=0, patience=1)
    with EventStorage() as storage:
        watch.trainer = FakeTrainer(storage)
        storage.put_scalar("vader_top1_accuracy", 1.0)
        watch.after_step()
    assert watch.warnings == 0


def test_the_watch_waits_for_the_queue_to_fill():
    cfg = demo_cfg(*TINY_OPTS)  # 512 keys, 4 images x 32 pairs per step
    assert NegativesWatch.from_config(cfg).fill_iterations == 4


def test_empty_folder_fails_with_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    register_unlabeled_folder("bad_inputs_empty_folder", str(tmp_path / "empty"))
    cfg = demo_cfg(*TINY_OPTS, "DATASETS.TRAIN", "('bad_inputs_empty_folder',)")
    with pytest.raises(UserError, match=r"^no images \(.*\) found under .*empty: check the folder given to register_unlabeled_folder"):
        VADeRTrainer.build_train_loader(cfg)


class PoisonWeight(HookBase):
    """Turns one weight of the query encoder into NaN before the given iteration, as a diverging
    optimisation would."""

    def __init__(self, iteration):
        self.iteration = iteration

    def before_step(self):
        if self.trainer.iter == self.iteration:
            with torch.no_grad():
                self.trainer.model.query_encoder.head.projection.weight[0, 0] = float("nan")


def test_non_finite_loss_stops_with_the_iteration_and_diagnostics(tmp_path):
    cfg = fixed_batch_cfg(tmp_path)
    cfg.MODEL.MOMENTUM_CONTRAST.METRICS_PERIOD = 1
    trainer = FixedBatchTrainer(cfg)
    trainer.register_hooks([PoisonWeight(iteration=2)])
    trainer.resume_or_load(resume=False)
    with pytest.raises(TrainingDivergedError) as error:
        trainer.train()
    message = str(error.value)
    assert isinstance(error.value, FloatingPointError)  # what Detectron2 users catch keeps working
    assert "\n" not in message
    assert message.startswith("the loss is not finite at iteration 2 ({'loss_vader': nan})")
    assert "last similarity stats (iteration 2): positive_similarity=nan" in message
    # The poisoned weight, and its momentum copy in the key encoder, which then put NaN keys in the queue.
    assert "non-finite weights: 2, first query_encoder.head.projection.weight" in message
    assert "non-finite buffers: 1, first queue" in message
    assert "SOLVER.BASE_LR" in message
