from .dense_head import DenseHead
from .vader import VADeR

__all__ = ["DenseHead", "VADeR"]
