"""
Everything a study can get wrong, checked before its first training: configs that do not build, datasets
that are not there, a budget larger than its labelled set, test images that are also training or
pretraining images, weights that do not load into a task's model. Each is one line.

``check_study(study, out)`` returns the :class:`StudyFacts` the runner needs (image counts, each run's
command-line overrides) and writes the label budgets' image lists into ``out/budgets/``.
"""

import logging
import os
from collections import defaultdict

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..checkpoint.atomic_io import short_error
from ..cli import build_config
from ..config import check_solver_config, check_vader_config
from ..data.datasets import SUBSET_DATASET_PREFIX, register_named_datasets, resolve_subset_file, subset_file_names
from ..errors import UserError, read_json_file
from ..engine.solver import iterations_for_epochs, rescale_schedule
from ..engine.trainer import VADeRTrainer, check_datasets_registered, is_pretraining, load_model_weights
from ..modeling.momentum import pretraining_method
from ..checkpoint.atomic_io import atomic_write_json
from .results import LOSS_KEYS, file_sha256, pretraining_record_path
from .runner import budget_images, is_fpn_tensor, read_model_zoo_pkl

__all__ = ["StudyFacts", "check_study"]


class StudyFacts:
    """What the checks found, and the overrides of each run built from it."""

    def __init__(self, study, out):
        self.study = study
        self.out = out
        self.unlabeled_images = 0
        self.task_configs = {}
        self.pretraining_configs = {}

    # ---- pretraining -------------------------------------------------------------------------------------

    def pretraining_base_opts(self, init):
        declared = self.study.initialisations[init]
        return [*self.study.pretraining_overrides, *declared.overrides, "DATASETS.TRAIN", repr(tuple(self.study.unlabeled))]

    def pretraining_batch(self, init):
        return self.pretraining_configs[init].SOLVER.IMS_PER_BATCH

    def iterations_for_epochs(self, init, epochs):
        return iterations_for_epochs(epochs, self.unlabeled_images, self.pretraining_batch(init))

    def pretraining_schedule(self, init, iterations):
        """``SOLVER.MAX_ITER / WARMUP_ITERS / STEPS`` overrides stretching the schedule of ``init``'s
        pretraining config to ``iterations``."""
        schedule = rescale_schedule(self.pretraining_configs[init].SOLVER, iterations)
        return ["SOLVER.MAX_ITER", str(schedule["MAX_ITER"]), "SOLVER.WARMUP_ITERS", str(schedule["WARMUP_ITERS"]),
                "SOLVER.STEPS", repr(schedule["STEPS"])]

    # ---- downstream --------------------------------------------------------------------------------------

    def budget_file(self, task, budget):
        return os.path.abspath(os.path.join(self.out, "budgets", f"{task}_{budget}.json"))

    def downstream_iterations(self, task, budget):
        schedule = self.study.tasks[task].schedule.for_budget(budget)
        solver = self.task_configs[task].SOLVER
        if schedule.iterations:
            return schedule.iterations
        if schedule.epochs:
            return max(schedule.min_iterations, iterations_for_epochs(schedule.epochs, budget, solver.IMS_PER_BATCH))
        return solver.MAX_ITER

    def downstream_opts(self, task, budget, weights, seed):
        declared = self.study.tasks[task]
        opts = [*self.study.downstream_overrides, *declared.overrides]
        if declared.frozen is not None:
            opts += ["MODEL.FROZEN_BACKBONE", str(declared.frozen)]
        opts += [
            "MODEL.WEIGHTS", weights,
            "DATASETS.TRAIN", repr((SUBSET_DATASET_PREFIX + self.budget_file(task, budget),)),
            "DATASETS.TEST", repr((declared.test,)),
            "SEED", str(seed),
        ]
        iterations = self.downstream_iterations(task, budget)
        solver = self.task_configs[task].SOLVER
        if iterations != solver.MAX_ITER:
            schedule = rescale_schedule(solver, iterations)
            opts += ["SOLVER.MAX_ITER", str(iterations), "SOLVER.WARMUP_ITERS", str(schedule["WARMUP_ITERS"]),
                     "SOLVER.STEPS", repr(schedule["STEPS"])]
        return opts


def check_study(study, out):
    facts = StudyFacts(study, out)
    _check_configs(study, facts)
    unlabeled = {name: _load(name, "unlabeled") for name in study.unlabeled}
    facts.unlabeled_images = sum(len(records) for records in unlabeled.values())
    _check_unlabeled_unchanged(study, out, facts.unlabeled_images)
    train = {task.train: _load(task.train, f"tasks.{name}.train") for name, task in study.tasks.items()}
    test = {task.test: _load(task.test, f"tasks.{name}.test") for name, task in study.tasks.items()}
    largest = max(study.label_budgets)
    for name, task in study.tasks.items():
        size = len(train[task.train])
        if largest > size:
            raise UserError(
                f"{study.path}: label_budgets asks for {largest} labelled images, but tasks.{name}.train "
                f"{task.train!r} holds {size}; lower the budget or label more images"
            )
    for name, task in study.tasks.items():
        _check_labels(facts.task_configs[name], task.train, train[task.train], f"tasks.{name}.train")
        _check_labels(facts.task_configs[name], task.test, test[task.test], f"tasks.{name}.test")
        evaluator = MetadataCatalog.get(task.test).get("evaluator_type", None)
        if evaluator not in ("coco", "sem_seg"):
            raise UserError(
                f"tasks.{name}.test: dataset {task.test!r} has no evaluator (metadata evaluator_type={evaluator!r}); "
                "a test set is a COCO-format (coco:) or semantic-segmentation dataset"
            )
    for name, task in study.tasks.items():
        _check_classes(facts.task_configs[name], task, f"tasks.{name}")
        _check_metrics(study, facts.task_configs[name], task)
    _check_schedules(study, facts)
    _check_no_shared_images(test, {**{n: ("the labelled train set", r) for n, r in train.items()},
                                   **{n: ("the unlabeled set", r) for n, r in unlabeled.items()}})
    _check_weights(study, facts)
    _check_resnet_of(study, facts)
    _write_budgets(study, facts, train)
    return facts


def _check_unlabeled_unchanged(study, out, images):
    """Pretraining lengths in epochs, and what each pretraining saw, depend on the unlabeled set: one that
    changed since the study's first pretraining would make the rest of its grid on other data."""
    made = {pretraining_record_path(study, out, init, seed) for init in study.pretrained for seed in study.seeds}
    for path in sorted(path for path in made if os.path.exists(path)):
        record = read_json_file(path, "pretraining record")
        then = record.get("unlabeled_images") if isinstance(record, dict) else None
        if isinstance(then, int) and then != images:
            raise UserError(
                f"the unlabeled set ({', '.join(study.unlabeled)}) holds {images} images, but {path} was pretrained on "
                f"{then}: it changed since the study began; restore it, or give the study another results folder"
            )


def _check_configs(study, facts):
    """Every config builds with its overrides and passes the checks train_net.py would make at its start."""
    for name, task in study.tasks.items():
        where = f"tasks.{name}.config"
        opts = [*study.downstream_overrides, *task.overrides, "DATASETS.TRAIN", repr((task.train,)), "DATASETS.TEST", repr((task.test,))]
        cfg = _config(task.config, opts, where)
        if is_pretraining(cfg):
            raise UserError(f"{study.path}: {where} {task.config} is a pretraining config; a task is a downstream config (configs/downstream/)")
        _as_where(where, check_datasets_registered, cfg)
        _as_where(where, check_solver_config, cfg)
        _no_epochs_key(cfg, where)
        facts.task_configs[name] = cfg
    for name, init in study.initialisations.items():
        if init.weights and "://" not in init.weights and not os.path.isfile(init.weights):
            raise UserError(f"{study.path}: initialisations.{name}.weights {init.weights!r} does not exist")
        if not init.pretrain:
            continue
        where = f"initialisations.{name}.pretrain"
        cfg = _config(init.pretrain, facts.pretraining_base_opts(name), where)
        if not is_pretraining(cfg):
            raise UserError(f"{study.path}: {where} {init.pretrain} is not a pretraining config (its META_ARCHITECTURE is {cfg.MODEL.META_ARCHITECTURE})")
        _as_where(where, check_datasets_registered, cfg)
        _as_where(where, check_solver_config, cfg)
        _as_where(where, check_vader_config, cfg, 1)
        _no_epochs_key(cfg, where)
        facts.pretraining_configs[name] = cfg


def result_numbers(cfg, test):
    """The numbers a study's result of the model of ``cfg`` tested on ``test`` can hold (``finetune_result``:
    the set-level keys of Detectron2's evaluator, not its per-class ones, and the first and last loss)."""
    if MetadataCatalog.get(test).get("evaluator_type") == "sem_seg":
        evaluated = [f"sem_seg/{name}" for name in ("mIoU", "fwIoU", "mACC", "pACC")]
    else:
        kinds = ["bbox", *(["segm"] if cfg.MODEL.MASK_ON else []), *(["keypoints"] if cfg.MODEL.KEYPOINT_ON else [])]
        evaluated = [f"{kind}/{name}" for kind in kinds for name in ("AP", "AP50", "AP75", "APs", "APm", "APl") if (kind, name) != ("keypoints", "APs")]
    return [*evaluated, *LOSS_KEYS]


def _check_metrics(study, cfg, task):
    """A misspelt headline number would be found only in the table, after every run, and cannot be
    mended there: the declaration is fixed once results exist."""
    held = result_numbers(cfg, task.test)
    for metric in task.metrics:
        if metric not in held:
            raise UserError(f"{study.path}: tasks.{task.name}.metrics names {metric!r}, which no result of the task can hold "
                            f"(its results can hold {', '.join(held)})")


def _no_epochs_key(cfg, where):
    """A study sets every run's length itself (length:, schedule:): SOLVER.EPOCHS would override it."""
    if cfg.SOLVER.EPOCHS:
        raise UserError(
            f"{where}: SOLVER.EPOCHS {cfg.SOLVER.EPOCHS} is set, but a study gives lengths itself: write "
            "length: {epochs: N} (pretraining) or schedule: {epochs: N} (a task) and leave SOLVER.EPOCHS 0"
        )


def _config(path, opts, where):
    try:
        return build_config(path, opts)
    except UserError as e:
        raise UserError(f"{where}: {e}") from None


def _as_where(where, check, *args):
    try:
        return check(*args)
    except UserError as e:
        raise UserError(f"{where}: {e}") from None


def _load(name, where):
    register_named_datasets([name])
    if name not in DatasetCatalog.list():
        raise UserError(f"{where}: no dataset named {name!r} is registered; name a folder as folder:/path, a COCO json as coco:/path.json[:/images]")
    try:
        records = DatasetCatalog.get(name)
    except UserError as e:
        raise UserError(f"{where} {name!r}: {e}") from None
    except Exception as e:  # a registered loader may fail in any way: it is the user's dataset that does
        raise UserError(f"{where}: dataset {name!r} cannot be loaded ({short_error(e)})") from None
    if not records:
        raise UserError(f"{where}: dataset {name!r} holds no images")
    return records


# What each kind of Detectron2 model learns from: a semantic FPN from semantic masks, the R-CNNs from instances.
LABELS_OF_MODEL = {"SemanticSegmentor": ("sem_seg_file_name", "semantic masks"), "GeneralizedRCNN": ("annotations", "instance annotations"),
                   "ProposalNetwork": ("annotations", "instance annotations"), "RetinaNet": ("annotations", "instance annotations")}


def _check_labels(cfg, name, records, where):
    """The dataset has the labels the task's model learns from (or is scored on)."""
    needed = LABELS_OF_MODEL.get(cfg.MODEL.META_ARCHITECTURE)
    if needed and not any(needed[0] in record for record in records):
        raise UserError(
            f"{where}: dataset {name!r} has no {needed[1]}, which a {cfg.MODEL.META_ARCHITECTURE} learns from and is scored on"
        )


# Where each kind of model says how many classes it predicts, and which metadata lists the dataset's.
CLASSES_OF_MODEL = {
    "GeneralizedRCNN": ("ROI_HEADS", "thing_classes"),
    "RetinaNet": ("RETINANET", "thing_classes"),
    "SemanticSegmentor": ("SEM_SEG_HEAD", "stuff_classes"),
}


def _check_classes(cfg, task, where):
    """The model predicts as many classes as the train set has, and the test set has the same ones:
    Detectron2 trains either way and fails in its evaluation, after the whole run."""
    head, key = CLASSES_OF_MODEL.get(cfg.MODEL.META_ARCHITECTURE, (None, None))
    if head is None:
        return
    train_classes = MetadataCatalog.get(task.train).get(key, None)
    test_classes = MetadataCatalog.get(task.test).get(key, None)
    if train_classes is not None and len(train_classes) != cfg.MODEL[head].NUM_CLASSES:
        raise UserError(
            f"{where}: {task.train!r} has {len(train_classes)} class{'' if len(train_classes) == 1 else 'es'} but the model predicts "
            f"MODEL.{head}.NUM_CLASSES={cfg.MODEL[head].NUM_CLASSES}; add MODEL.{head}.NUM_CLASSES: "
            f"{len(train_classes)} to the task's overrides"
        )
    if train_classes is not None and test_classes is not None and list(train_classes) != list(test_classes):
        raise UserError(f"{where}: the test set's classes {list(test_classes)} are not the train set's {list(train_classes)}")


def _check_schedules(study, facts):
    """Each budget's downstream schedule, stretched from its config's, passes train_net.py's solver checks."""
    for name in study.tasks:
        for budget in study.label_budgets:
            iterations = facts.downstream_iterations(name, budget)
            cfg = facts.task_configs[name].clone()
            cfg.defrost()
            for key, value in rescale_schedule(cfg.SOLVER, iterations).items():
                cfg.SOLVER[key] = value
            _as_where(f"tasks.{name} with {budget} labels ({iterations} iterations)", check_solver_config, cfg)


def _check_no_shared_images(test_sets, other_sets):
    """No test image is a training or pretraining image: the same file (after links), the same bytes, or,
    within one COCO json, the same image id."""
    digests = {}

    def digest(path):
        if path not in digests:
            digests[path] = file_sha256(path)
        return digests[path]

    for test_name, test_records in test_sets.items():
        test_files = {os.path.realpath(r["file_name"]): r for r in test_records}
        test_by_size = defaultdict(list)
        for path in test_files:
            if os.path.isfile(path):
                test_by_size[os.path.getsize(path)].append(path)
        test_json = MetadataCatalog.get(test_name).get("json_file", None)
        test_ids = {r["image_id"]: r for r in test_records if "image_id" in r}
        for other_name, (what, records) in other_sets.items():
            def refuse(test_file, other_file, how):
                raise UserError(
                    f"test set {test_name!r} shares an image with {what} {other_name!r} ({how}: {test_file} and "
                    f"{other_file}); a test image must be neither trained nor pretrained on"
                )

            other_json = MetadataCatalog.get(other_name).get("json_file", None)
            same_id_space = test_json is not None and test_json == other_json
            for record in records:
                path = os.path.realpath(record["file_name"])
                if path in test_files:
                    refuse(path, record["file_name"], "the same file")
                if same_id_space and record.get("image_id") in test_ids:
                    refuse(test_ids[record["image_id"]]["file_name"], record["file_name"], f"image id {record['image_id']} of {test_json}")
                try:
                    size = os.path.getsize(path)
                except OSError:
                    continue
                for test_path in test_by_size.get(size, ()):
                    if digest(test_path) == digest(path):
                        refuse(test_path, record["file_name"], "the same bytes")


def _check_resnet_of(study, facts):
    """resnet_of leaves the FPN out of an export: its source must bring one (VADeR's does; MoCo's, DenseCL's
    and PixPro's export their ResNet alone, already what resnet_of makes)."""
    for name, init in study.initialisations.items():
        if not init.resnet_of:
            continue
        where = f"initialisations.{name}.resnet_of"
        source = study.initialisations[init.resnet_of]
        if source.pretrain:
            method = pretraining_method(facts.pretraining_configs[init.resnet_of])
            if "FPN" not in method.exported_parts:
                raise UserError(
                    f"{study.path}: {where} names {init.resnet_of!r}, whose {method.__name__} export holds no FPN to "
                    f"leave out; use {init.resnet_of!r} itself"
                )
        else:
            _, model = _as_where(f"{study.path}: {where}", read_model_zoo_pkl, source.weights)
            if not any(map(is_fpn_tensor, model)):
                raise UserError(f"{study.path}: {where}: {source.weights!r} holds no FPN tensors (fpn_*) to leave out")


def _check_weights(study, facts):
    """Each existing checkpoint loads into every task's model (and into the pretraining that starts
    from it), with the backbone checks of a real run."""
    for name, init in study.initialisations.items():
        if not init.weights:
            continue
        where = f"initialisations.{name}.weights"
        for task, cfg in facts.task_configs.items():
            _as_where(f"{where} into tasks.{task}", _load_into, cfg, init.weights, where)
        for other, pretraining in study.initialisations.items():
            if pretraining.start_from == name:
                _as_where(f"{where} into initialisations.{other}", _load_into, facts.pretraining_configs[other], init.weights, where)
    # A pretraining that starts from a file of its own (its config's or overrides' MODEL.WEIGHTS).
    for name, init in study.initialisations.items():
        cfg = facts.pretraining_configs.get(name)
        if cfg is not None and cfg.MODEL.WEIGHTS and not init.start_from:
            _as_where(f"{study.path}: initialisations.{name}", _load_into, cfg, cfg.MODEL.WEIGHTS, "MODEL.WEIGHTS")


def _load_into(cfg, path, what):
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.DEVICE = "cpu"
    model = VADeRTrainer.build_model(cfg)
    # fvcore lists every tensor the file lacks, on stderr through logging's last resort in this
    # process; what matters of it is load_model_weights' one line.
    checkpoint_logger = logging.getLogger("fvcore.common.checkpoint")
    level = checkpoint_logger.level
    checkpoint_logger.setLevel(logging.ERROR)
    try:
        load_model_weights(cfg, model, path, what=what)
    finally:
        checkpoint_logger.setLevel(level)


def _write_budgets(study, facts, train):
    """OUT/budgets/<task>_<N>.json: each budget's images, as a ``subset:`` file. Until the study's first
    result they follow the declaration; after it, a labelled set whose budget would now hold other
    images (the data changed) is refused."""
    declared = os.path.exists(os.path.join(facts.out, "study.sha256"))
    for name, task in study.tasks.items():
        image_root = MetadataCatalog.get(task.train).get("image_root", None)
        chosen = budget_images(train[task.train], study.label_budgets, study.budget_order, study.budget_seed)
        for budget, records in chosen.items():
            where = f"tasks.{name} with {budget} labels"
            if not any(LABELS_OF_MODEL.get(facts.task_configs[name].MODEL.META_ARCHITECTURE, ("file_name",))[0] in r for r in records):
                raise UserError(f"{where}: none of the budget's images has labels; label more images or shuffle with another budget_seed")
            path = facts.budget_file(name, budget)
            names, relative = subset_file_names(records, image_root)
            images = [{"file_name": n, "image_id": r.get("image_id")} for n, r in zip(names, records)]
            content = {"dataset": task.train, "budget": budget, "order": study.budget_order, "budget_seed": study.budget_seed,
                       **({"relative_to": "image_root"} if relative else {}), "images": images}
            if os.path.exists(path) and declared:
                if resolve_subset_file(path)[1] == [os.path.realpath(r["file_name"]) for r in records]:
                    continue
                raise UserError(
                    f"{path} holds other images than {task.train!r} gives the {budget}-image budget now: the labelled "
                    "set changed since the study's first result; restore it, or give the study another results folder"
                )
            atomic_write_json(path, content, "a label budget")
