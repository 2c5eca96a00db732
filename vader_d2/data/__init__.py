from .datasets import register_all_builtin, register_unlabeled_folder
from .view_mapper import VADeRViewMapper

__all__ = ["VADeRViewMapper", "register_unlabeled_folder", "register_all_builtin"]
