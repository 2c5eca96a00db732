"""One trainer for VADeR pretraining and for the stock Detectron2 downstream tasks."""

import logging
import os
import weakref

import torch
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_train_loader, get_detection_dataset_dicts
from detectron2.engine import DefaultTrainer, TrainerBase, create_ddp_model
from detectron2.engine.hooks import PeriodicCheckpointer
from detectron2.utils.events import JSONWriter, TensorboardXWriter
from detectron2.evaluation import COCOEvaluator, DatasetEvaluators, SemSegEvaluator
from detectron2.utils import comm

from ..checkpoint.atomic_io import checkpoint_problem, short_error
from ..checkpoint.checkpointer import EXPECTED_CHECKPOINT, VADeRCheckpointer
from ..config import check_solver_config, check_vader_config
from ..data import VADeRViewMapper
from ..data.datasets import FOLDER_DATASET_PREFIX, register_named_datasets
from ..data.decoding import UnreadableImageError, read_source_image
from ..errors import USER_ERROR_EXIT, UserError
from .frozen_backbone import freeze_backbone
from .hooks import NegativesWatch, RetainingPeriodicCheckpointer
from ..checkpoint.load_checks import check_backbone_loaded
from .mixed_precision import build_step_trainer
from ..modeling.momentum import SIMILARITY_STATS, pretraining_method
from .output_dir import select_resume_checkpoint
from .preemption import PreemptionCheckpointer, StopOnWriteFailure, TrainingStopped, stop_on_user_error
from .solver import build_lr_scheduler, build_optimizer, iterations_for_epochs, rescale_schedule



def is_pretraining(cfg):
    """Whether ``cfg`` builds one of the pretraining methods (vader_d2/modeling), not a stock Detectron2 model."""
    return pretraining_method(cfg) is not None


class TrainingDivergedError(UserError, FloatingPointError):
    """The loss became NaN or infinite. Still a FloatingPointError (what Detectron2 raises), reported as
    one line naming the iteration and what had become non-finite."""


def check_datasets_registered(cfg):
    """
    Unknown names in DATASETS.TRAIN / DATASETS.TEST fail before any process starts, in one line; the
    ``folder:``, ``coco:`` and ``subset:`` names (vader_d2/data/datasets.py) are registered on the way. One in DATASETS.TEST would fail only
    at the first evaluation, hours later: unlabeled images have nothing to evaluate.
    """
    for name in cfg.DATASETS.TEST:
        if name.startswith(FOLDER_DATASET_PREFIX):
            raise UserError(
                f"DATASETS.TEST: {name!r} is a folder of unlabeled images, which has nothing to evaluate; "
                "name a dataset with annotations there, or leave DATASETS.TEST empty"
            )
    register_named_datasets(cfg.DATASETS.TRAIN + cfg.DATASETS.TEST)
    registered = set(DatasetCatalog.list())
    for key in ("TRAIN", "TEST"):
        for name in cfg.DATASETS[key]:
            if name not in registered:
                raise UserError(
                    f"DATASETS.{key}: no dataset named {name!r} is registered; check the spelling, name your folder "
                    "of images as folder:/path/to/images and a COCO-format file as coco:/path/to/instances.json, "
                    "or register it first with vader_d2.register_unlabeled_folder(name, folder)"
                )


def count_training_images(cfg):
    """How many images one pass over DATASETS.TRAIN shows: every image for pretraining, the images the
    downstream loader keeps (Detectron2 leaves out images without annotations when told to)."""
    register_named_datasets(cfg.DATASETS.TRAIN)
    if is_pretraining(cfg):
        return len(get_detection_dataset_dicts(cfg.DATASETS.TRAIN, filter_empty=False))
    return len(get_detection_dataset_dicts(cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS))


def schedule_in_epochs(cfg):
    """
    With ``SOLVER.EPOCHS`` > 0: ``cfg`` (not frozen) with MAX_ITER = EPOCHS x images / IMS_PER_BATCH
    (the global batch) and WARMUP_ITERS and STEPS stretched with it (``rescale_schedule``), and the line
    that says so; else ``cfg`` and None.
    """
    epochs = cfg.SOLVER.EPOCHS
    if not epochs:
        return cfg, None
    images = count_training_images(cfg)
    per_epoch = images / cfg.SOLVER.IMS_PER_BATCH
    before = cfg.SOLVER.MAX_ITER, cfg.SOLVER.WARMUP_ITERS
    schedule = rescale_schedule(cfg.SOLVER, iterations_for_epochs(epochs, images, cfg.SOLVER.IMS_PER_BATCH))
    cfg = cfg.clone()
    cfg.defrost()
    for key, value in schedule.items():
        cfg.SOLVER[key] = value
    steps = f", STEPS {schedule['STEPS']}" if schedule["STEPS"] else ""
    note = (
        f"SOLVER.EPOCHS {epochs} over the {images} images of DATASETS.TRAIN at a global batch of "
        f"{cfg.SOLVER.IMS_PER_BATCH} ({per_epoch:.4g} iterations an epoch): MAX_ITER {schedule['MAX_ITER']}, "
        f"WARMUP_ITERS {schedule['WARMUP_ITERS']}{steps} (the config's MAX_ITER {before[0]} and WARMUP_ITERS "
        f"{before[1]} stretched)"
    )
    return cfg, note


def check_checkpoint_matches_config(cfg, path, resuming):
    """
    A VADeR checkpoint whose queue disagrees with the config would be loaded partially (Detectron2 skips
    tensors of another shape with a warning): the head and the queue would silently start from scratch.
    """
    source = "the checkpoint to resume" if resuming else "MODEL.WEIGHTS"
    if "://" in path:
        return
    if not os.path.isfile(path):
        raise UserError(f"{source} {path!r} does not exist; give the path of a .pth/.pkl checkpoint")
    if not path.endswith(".pth"):
        return  # model-zoo .pkl files hold a backbone, never a VADeR queue
    try:
        checkpoint = torch.load(path, map_location="cpu", mmap=True)
    except Exception as e:
        raise UserError(f"{source} {path!r} cannot be read as a checkpoint ({short_error(e)}); {EXPECTED_CHECKPOINT}") from None
    if not isinstance(checkpoint, dict):
        raise UserError(f"{source} {path!r} holds no state dict of weights; {EXPECTED_CHECKPOINT}")
    model_state = checkpoint.get("model", checkpoint)
    queue = model_state.get("queue") if isinstance(model_state, dict) else None
    if queue is None:
        return
    size, dim = queue.shape
    m = cfg.MODEL.MOMENTUM_CONTRAST
    if dim != m.EMBED_DIM:
        raise UserError(
            f"MODEL.MOMENTUM_CONTRAST.EMBED_DIM={m.EMBED_DIM} does not match the {dim}-d embeddings of {source} ({path}); "
            f"set MODEL.MOMENTUM_CONTRAST.EMBED_DIM {dim}"
        )
    if resuming and size != m.QUEUE_SIZE:
        raise UserError(
            f"MODEL.MOMENTUM_CONTRAST.QUEUE_SIZE={m.QUEUE_SIZE} does not match the {size} keys queued in {source} ({path}); "
            f"resume with MODEL.MOMENTUM_CONTRAST.QUEUE_SIZE {size}"
        )


def check_some_image_readable(dataset, max_source_size):
    """
    Decode the images of ``dataset`` in order until two distinct files succeed (normally the first
    two). The mapper skips unreadable files one by one, but without a readable image the data loader
    would fail deep in a worker process, after retrying every file; and with a single one every negative
    of a query comes from its own image and is masked: the loss is 0 and nothing is learned.
    """
    first_failure = None
    readable = []
    for record in dataset:
        file_name = record["file_name"]
        if os.path.realpath(file_name) in readable:
            continue
        try:
            read_source_image(file_name, max_source_size)
        except UnreadableImageError as e:
            first_failure = first_failure or f"{file_name}: {e}"
            continue
        readable.append(os.path.realpath(file_name))
        if len(readable) == 2:
            return
    if not readable:
        raise UserError(
            f"none of the {len(dataset)} files of DATASETS.TRAIN can be read as an image (first: {first_failure}); "
            "point the dataset at a folder of images"
        )
    unreadable = f"; the other files cannot be read (first: {first_failure})" if first_failure else ""
    raise UserError(
        f"DATASETS.TRAIN has a single readable image ({readable[0]}) in its {len(dataset)} files{unreadable}: VADeR's "
        "negatives come from other images, so every query's would be masked and nothing would be learned; "
        "pretrain on a folder of at least two (in practice many) distinct images"
    )


def load_model_weights(cfg, model, path, checkpointer=None, what="MODEL.WEIGHTS"):
    """
    Load the weights of ``path`` into ``model`` (not the optimizer or iteration), as training does with
    MODEL.WEIGHTS, and stop with one line if the file is missing, damaged or not a checkpoint, or if its
    backbone does not fit ``cfg`` (another depth or width): ``check_backbone_loaded``. For pretraining,
    a ``.pkl`` (bare Detectron2 names) goes into the query encoder: Detectron2 would match each name to
    both encoders and fail.
    """
    model = model.module if hasattr(model, "module") else model
    checkpointer = checkpointer or VADeRCheckpointer(model)
    if not path:
        checkpointer.load("")
        return
    if "://" not in path:
        problem = checkpoint_problem(path)
        if problem:
            raise UserError(f"{what} {path!r} {problem}; {EXPECTED_CHECKPOINT}")
    if is_pretraining(cfg):
        check_checkpoint_matches_config(cfg, path, resuming=False)
        if path.endswith(".pkl"):
            checkpointer = VADeRCheckpointer(model.query_encoder)
    checkpointer.load(path, checkpointables=[], what=what)
    # Pretraining has no new task head: any tensor of another shape is a mistake. Downstream, a head of
    # another size (other classes) is expected; the backbone must fit.
    check_backbone_loaded(checkpointer.last_load, cfg, path, any_shape=is_pretraining(cfg), what=what)


def divergence_report(model, storage):
    """What to look at when the loss stops being finite: the last similarity statistics, and which
    tensors (query/key encoder weights, gradients, queue) hold NaN or infinity."""
    model = getattr(model, "module", model)
    latest = storage.latest()
    logged = [name for name in SIMILARITY_STATS if name in latest]
    report = []
    if logged:
        stats = " ".join(f"{name[len('vader_'):]}={latest[name][0]:.4g}" for name in logged)
        report.append(f"last similarity stats (iteration {max(latest[name][1] for name in logged)}): {stats}")
    tensors = {
        "weights": dict(model.named_parameters()),
        "gradients": {name: p.grad for name, p in model.named_parameters() if p.grad is not None},
        "buffers": dict(model.named_buffers()),
    }
    non_finite = []
    for kind, named in tensors.items():
        bad = [name for name, t in named.items() if t.is_floating_point() and not torch.isfinite(t).all()]
        if bad:
            non_finite.append(f"non-finite {kind}: {len(bad)}, first {bad[0]}")
    report += non_finite or ["weights, gradients and buffers all finite"]
    return "; ".join(report)


class VADeRTrainer(DefaultTrainer):
    """
    ``DefaultTrainer`` plus what pretraining needs: the two-view data loader, a key encoder that starts as
    a copy of the query encoder on a fresh run, evaluators picked from dataset metadata downstream, and
    one-line errors for data, checkpoints and diverging losses.
    """

    def __init__(self, cfg):
        # What DefaultTrainer.__init__ does, except for the DDP wrapper: Detectron2 always passes
        # device_ids=[local rank], which DistributedDataParallel refuses for a model on the CPU, so
        # `--num-gpus N` could not train on CPUs (gloo) otherwise.
        TrainerBase.__init__(self)
        cfg = self.auto_scale_workers(cfg, comm.get_world_size())
        check_solver_config(cfg)
        if is_pretraining(cfg):
            check_vader_config(cfg, comm.get_world_size())
            if cfg.TEST.PRECISE_BN.ENABLED:
                raise UserError("TEST.PRECISE_BN.ENABLED must be False for VADeR pretraining: its forward passes would enqueue keys")
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        device_ids = [comm.get_local_rank()] if cfg.MODEL.DEVICE.startswith("cuda") else None
        model = create_ddp_model(model, broadcast_buffers=False, device_ids=device_ids)
        # float32, or SOLVER.AMP on CUDA (Detectron2's AMPTrainer) or the CPU (bfloat16 autocast).
        self._trainer = build_step_trainer(cfg, model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        # Atomic saves; missing, damaged or foreign files reported as one line (vader_d2/checkpoint/checkpointer.py).
        self.checkpointer = VADeRCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_model(cls, cfg):
        """Detectron2's model; with MODEL.FROZEN_BACKBONE, its ResNet and FPN frozen before weights load."""
        if cfg.MODEL.FROZEN_BACKBONE and is_pretraining(cfg):
            raise UserError("MODEL.FROZEN_BACKBONE is a downstream protocol; pretraining trains the backbone, set it False")
        model = super().build_model(cfg)
        if cfg.MODEL.FROZEN_BACKBONE:
            freeze_backbone(model)
        return model

    @classmethod
    def build_train_loader(cls, cfg):
        # Here, not only before the launch: each launched process starts with the builtin datasets only.
        register_named_datasets(cfg.DATASETS.TRAIN)
        if not is_pretraining(cfg):
            return super().build_train_loader(cfg)
        dataset = get_detection_dataset_dicts(cfg.DATASETS.TRAIN, filter_empty=False)
        check_some_image_readable(dataset, cfg.INPUT.VIEWS.MAX_SOURCE_SIZE)
        # Image ids decide which queued keys count as negatives, so they must be unique across all the
        # training datasets, not only within each folder.
        dataset = [dict(d, image_id=i) for i, d in enumerate(dataset)]
        return build_detection_train_loader(
            cfg, dataset=dataset, mapper=VADeRViewMapper(cfg, is_train=True), aspect_ratio_grouping=False
        )

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        register_named_datasets([dataset_name])
        return super().build_test_loader(cfg, dataset_name)

    @classmethod
    def build_optimizer(cls, cfg, model):
        """Detectron2's SGD, or LARS with SOLVER.OPTIMIZER LARS (vader_d2/engine/solver.py), for every model."""
        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        """Detectron2's schedulers, or WarmupThenCosineLR (vader_d2/engine/solver.py), for every model."""
        return build_lr_scheduler(cfg, optimizer)

    def build_hooks(self):
        # Before DefaultTrainer's hooks: its build_hooks calls build_writers, whose writers report to it.
        self.preemption = PreemptionCheckpointer()
        # DefaultTrainer's checkpointer hook (rank 0 only), with SOLVER.CHECKPOINT_KEEP's retention.
        hooks = [
            RetainingPeriodicCheckpointer(hook.checkpointer, hook.period, self.cfg.SOLVER.CHECKPOINT_KEEP)
            if isinstance(hook, PeriodicCheckpointer) else hook
            for hook in super().build_hooks()
        ]
        # Methods that log how many queries find no usable negative in their queue get that watched.
        if is_pretraining(self.cfg) and NegativesWatch.SCALAR in pretraining_method(self.cfg).metric_names:
            hooks.append(NegativesWatch.from_config(self.cfg))
        # Last: a pre-emption checkpoint holds what a periodic one of the same iteration holds.
        hooks.append(self.preemption)
        return hooks

    def build_writers(self):
        """Detectron2's writers; one that cannot write (a full disk) stops training cleanly at the end of
        the iteration (vader_d2/engine/preemption.py) instead of raising inside Detectron2's hooks."""
        def what(writer):
            if isinstance(writer, JSONWriter):
                return os.path.join(self.cfg.OUTPUT_DIR, "metrics.json")
            if isinstance(writer, TensorboardXWriter):
                return f"the TensorBoard events in {self.cfg.OUTPUT_DIR}"
            return type(writer).__name__

        return [StopOnWriteFailure(writer, self.preemption, what(writer)) for writer in super().build_writers()]

    def train(self):
        """DefaultTrainer's; a stop requested by a signal or a failed metrics write (vader_d2/engine/preemption.py)
        ends with its one line and exit status, and so does a UserError of a hook or a step."""
        try:
            return super().train()
        except TrainingStopped as stop:
            if stop.error is not None:
                raise stop.error from None
            if stop.status == USER_ERROR_EXIT and stop.message:
                raise UserError(stop.message) from None
            if stop.message:
                logging.getLogger("vader_d2").warning(stop.message)
            raise SystemExit(stop.status) from None

    def resume_or_load(self, resume=True):
        """
        As DefaultTrainer's: with ``resume``, continue from the checkpoint in OUTPUT_DIR (all state),
        else load MODEL.WEIGHTS (weights only) and start at iteration 0. What differs:

        - the checkpoint to resume is ``select_resume_checkpoint``'s: the one ``last_checkpoint`` names,
          else the newest complete ``model_*.pth`` (damaged ones skipped with a warning); rank 0 picks it
          and tells the other processes;
        - MODEL.WEIGHTS that is missing, damaged or not a checkpoint, or whose backbone does not fit the
          config (another depth or width), stops here with one line instead of loading partly;
        - for pretraining, a ``.pkl`` (bare Detectron2 names, e.g. exported by convert_vader_to_d2.py)
          is loaded into the query encoder (Detectron2 would match each name to both encoders and fail),
          and a fresh run copies the query encoder into the key encoder and empties the queue.
        """
        path = self._checkpoint_to_resume() if resume else None
        if path:
            if is_pretraining(self.cfg):
                check_checkpoint_matches_config(self.cfg, path, resuming=True)
            self.checkpointer.load(path, what="the checkpoint to resume")
            # The checkpoint stores the iteration that had finished.
            self.start_iter = self.iter + 1
        else:
            self.load_weights(self.cfg.MODEL.WEIGHTS)
            self.start_iter = 0
        if is_pretraining(self.cfg) and self.start_iter == 0:
            model = self.model.module if hasattr(self.model, "module") else self.model
            model.reset_key_encoder()
            # What MODEL.WEIGHTS brings beside the weights belongs to another run: the queues and the skip count.
            model.reset_run_state()

    def _checkpoint_to_resume(self):
        choice = (None, None)
        if comm.is_main_process():
            try:
                choice = (select_resume_checkpoint(self.cfg.OUTPUT_DIR), None)
            except UserError as e:
                choice = (None, str(e))
        if comm.get_world_size() > 1:
            choice = comm.all_gather(choice)[0]
        path, error = choice
        if error:
            raise UserError(error)
        return path

    def load_weights(self, path):
        """Load MODEL.WEIGHTS (weights only) and check that the backbone arrived whole."""
        load_model_weights(self.cfg, self.model, path, self.checkpointer)

    # Detectron2's loop logs every Exception of a hook or a step with its traceback before it reaches
    # train(); a UserError there (a checkpoint that cannot be written, a diverging loss) is the user's
    # problem, so it passes as a stop instead and train() raises it again, to be reported as one line.
    def before_train(self):
        with stop_on_user_error():
            super().before_train()

    def after_train(self):
        with stop_on_user_error():
            super().after_train()

    def before_step(self):
        with stop_on_user_error():
            super().before_step()

    def after_step(self):
        with stop_on_user_error():
            super().after_step()

    def run_step(self):
        with stop_on_user_error():
            self._run_step()

    def _run_step(self):
        try:
            super().run_step()
        except FloatingPointError as e:
            # Detectron2's message ends with the loss terms: "... loss_dict = {'loss_vader': nan}".
            losses = str(e).partition("loss_dict = ")[2] or "loss"
            raise TrainingDivergedError(
                f"the loss is not finite at iteration {self.iter} ({losses}); "
                f"{divergence_report(self.model, self.storage)}; "
                f"lower SOLVER.BASE_LR (now {self.cfg.SOLVER.BASE_LR}) or resume from an earlier checkpoint"
            ) from e

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
        evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
        evaluators = []
        if evaluator_type == "coco":
            evaluators.append(COCOEvaluator(dataset_name, output_dir=output_folder))
        elif evaluator_type == "sem_seg":
            evaluators.append(SemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder))
        if not evaluators:
            raise UserError(
                f"no evaluator for dataset {dataset_name!r} (metadata evaluator_type={evaluator_type!r}); "
                "register it with evaluator_type 'coco' or 'sem_seg', or leave it out of DATASETS.TEST"
            )
        return DatasetEvaluators(evaluators)
