"""
The data of pretraining: datasets by name (the builtin ones, ``folder:PATH``), images decoded once and
downscaled, and the two views of each image with their cell correspondences (``VADeRViewMapper``).
"""

from .datasets import register_all_builtin, register_unlabeled_folder
from .view_mapper import VADeRViewMapper

__all__ = ["VADeRViewMapper", "register_unlabeled_folder", "register_all_builtin"]
