"""
The pretraining methods, one module each (its class, config section, checks and the metric names it
logs), registered with Detectron2's META_ARCH_REGISTRY by the imports below: ``vader.py`` (VADeR),
``moco.py`` (the MoCo v2 baseline), ``densecl.py``, ``pixpro.py``; the base classes they share
(``momentum.py``), their losses, dense head, cell geometry and shuffle-BN. A fifth method is one more
import line here.
"""

from .dense_head import DenseHead
from .densecl import DenseCL
from .moco import MoCo
from .pixpro import PixPro
from .vader import VADeR

__all__ = ["DenseHead", "DenseCL", "MoCo", "PixPro", "VADeR"]
