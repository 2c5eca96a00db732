"""VADeR (View-Agnostic Dense Representations) as a Detectron2 plugin.

Importing the package registers the pretraining meta-architectures (VADeR, MoCo, DenseCL, PixPro) and the
datasets it knows about.
"""

try:
    import detectron2  # noqa: F401
except ImportError:  # pragma: no cover - exercised by a subprocess test
    raise SystemExit(
        "vader_d2 needs Detectron2, which is not installed in this Python; "
        "run `make setup` in the vader_d2 checkout (or see README.md) to install it."
    ) from None

from . import _moved
from .config import add_vader_config
from .data import VADeRViewMapper, register_unlabeled_folder
from .modeling import DenseCL, DenseHead, MoCo, PixPro, VADeR

__all__ = ["add_vader_config", "VADeRViewMapper", "register_unlabeled_folder", "VADeR", "DenseHead", "MoCo", "DenseCL", "PixPro"]

# The module paths of the previous release (vader_d2.trainer, vader_d2.export, ...) import, with a
# DeprecationWarning naming the new path, for one release.
_moved.install()
