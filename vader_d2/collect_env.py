"""Print the versions vader_d2 runs with: ``python -m vader_d2.collect_env``."""

import importlib.util
import os
import platform
import sys


def detectron2_source(detectron2):
    """Where this Detectron2 came from: the PyPI republish, a source build, or another install."""
    # `make setup` records which of its sources it used inside the virtual environment.
    record = os.path.join(sys.prefix, "detectron2-source.txt")
    if os.path.exists(record):
        with open(record) as f:
            return f.read().strip()
    return "installed outside `make setup`"


def collect_env():
    import numpy
    import torch
    import torchvision

    rows = [
        ("Python", sys.version.split()[0]),
        ("platform", platform.platform()),
        ("numpy", numpy.__version__),
        ("torch", torch.__version__),
        ("torchvision", torchvision.__version__),
    ]
    try:
        import detectron2

        rows.append(("detectron2", f"{detectron2.__version__} at {os.path.dirname(detectron2.__file__)}"))
        rows.append(("detectron2 source", detectron2_source(detectron2)))
        compiled = importlib.util.find_spec("detectron2._C") is not None
        rows.append(("detectron2 compiled ops (_C)", "yes" if compiled else "no (nms/roi_align come from torchvision)"))
    except ImportError:
        rows.append(("detectron2", "NOT INSTALLED - run `make setup`"))
    try:
        import cv2

        rows.append(("opencv", cv2.__version__))
    except ImportError:
        rows.append(("opencv", "not installed"))
    rows.append(("CUDA available", str(torch.cuda.is_available())))
    if torch.cuda.is_available():
        rows.append(("GPU", torch.cuda.get_device_name(0)))
        rows.append(("CUDA (torch build)", torch.version.cuda))
    rows.append(("CPU threads", str(torch.get_num_threads())))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


if __name__ == "__main__":
    print(collect_env())
