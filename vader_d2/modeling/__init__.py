from .dense_head import DenseHead
from .densecl import DenseCL
from .moco import MoCo
from .pixpro import PixPro
from .vader import VADeR

__all__ = ["DenseHead", "DenseCL", "MoCo", "PixPro", "VADeR"]
