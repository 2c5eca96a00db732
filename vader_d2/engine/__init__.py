"""
What runs a training: the trainer and everything around its loop.

- ``trainer.py``: ``VADeRTrainer``, Detectron2's ``DefaultTrainer`` for pretraining and downstream alike;
- ``launch.py``: ``launch_training``, the one entry point of every tool that trains: the checks before
  the launch, the processes (``--num-gpus``, torchrun, srun), OUTPUT_DIR held for the run;
- ``hooks.py``: checkpoint retention and the watch on queries without negatives;
- ``preemption.py``: a signal or a failed write stops every process at one iteration, with a checkpoint;
- ``launchers.py``, ``rendezvous.py``: processes started by ``--num-gpus``, torchrun or srun, and a
  bounded wait for them to meet;
- ``output_dir.py``: one run per OUTPUT_DIR (its lock), the checkpoint to resume, retention;
- ``mixed_precision.py``, ``solver.py``, ``frozen_backbone.py``: SOLVER.AMP, LARS and the schedule,
  MODEL.FROZEN_BACKBONE.
"""

from .frozen_backbone import freeze_backbone
from .hooks import NegativesWatch, RetainingPeriodicCheckpointer
from .launch import launch_argument_parser, launch_training
from .output_dir import claim_output_dir, select_resume_checkpoint
from .preemption import RECORDER, PreemptionCheckpointer, StopOnWriteFailure, TrainingStopped
from .solver import LARS, build_lr_scheduler, build_optimizer
from .trainer import TrainingDivergedError, VADeRTrainer, is_pretraining, load_model_weights, schedule_in_epochs

__all__ = [
    "VADeRTrainer",
    "launch_training",
    "launch_argument_parser",
    "TrainingDivergedError",
    "is_pretraining",
    "load_model_weights",
    "schedule_in_epochs",
    "NegativesWatch",
    "RetainingPeriodicCheckpointer",
    "PreemptionCheckpointer",
    "StopOnWriteFailure",
    "TrainingStopped",
    "RECORDER",
    "claim_output_dir",
    "select_resume_checkpoint",
    "build_optimizer",
    "build_lr_scheduler",
    "LARS",
    "freeze_backbone",
]
