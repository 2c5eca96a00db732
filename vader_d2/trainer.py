"""One trainer for VADeR pretraining and for the stock Detectron2 downstream tasks."""

import os

from detectron2.data import MetadataCatalog, build_detection_train_loader, get_detection_dataset_dicts
from detectron2.engine import DefaultTrainer
from detectron2.evaluation import COCOEvaluator, DatasetEvaluators, SemSegEvaluator
from detectron2.utils import comm

from .config import check_vader_config
from .data import VADeRViewMapper
from .errors import UserError


def is_pretraining(cfg):
    return cfg.MODEL.META_ARCHITECTURE == "VADeR"


class VADeRTrainer(DefaultTrainer):
    """
    ``DefaultTrainer`` plus what pretraining needs: the two-view data loader, a key encoder that starts as
    a copy of the query encoder on a fresh run, and evaluators picked from dataset metadata downstream.
    """

    def __init__(self, cfg):
        if is_pretraining(cfg):
            check_vader_config(cfg, comm.get_world_size())
            if cfg.TEST.PRECISE_BN.ENABLED:
                raise UserError("TEST.PRECISE_BN.ENABLED must be False for VADeR pretraining: its forward passes would enqueue keys")
        super().__init__(cfg)

    @classmethod
    def build_train_loader(cls, cfg):
        if not is_pretraining(cfg):
            return super().build_train_loader(cfg)
        dataset = get_detection_dataset_dicts(cfg.DATASETS.TRAIN, filter_empty=False)
        # Image ids decide which queued keys count as negatives, so they must be unique across all the
        # training datasets, not only within each folder.
        dataset = [dict(d, image_id=i) for i, d in enumerate(dataset)]
        return build_detection_train_loader(
            cfg, dataset=dataset, mapper=VADeRViewMapper(cfg, is_train=True), aspect_ratio_grouping=False
        )

    def resume_or_load(self, resume=True):
        super().resume_or_load(resume=resume)
        if is_pretraining(self.cfg) and self.start_iter == 0:
            model = self.model.module if hasattr(self.model, "module") else self.model
            model.reset_key_encoder()

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
