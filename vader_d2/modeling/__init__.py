from .dense_head import DenseHead
from .densecl import DenseCL
from .pixpro import PixPro
from .vader import VADeR

__all__ = ["DenseHead", "DenseCL", "PixPro", "VADeR"]
