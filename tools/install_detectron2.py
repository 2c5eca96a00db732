#!/usr/bin/env python
"""
Install Detectron2 into the running Python by the first source that works, and say which:

1. already importable: keep it;
2. the official GitHub source at a pinned commit, when GitHub is reachable (compiles D2's C++/CUDA ops);
3. the PyPI republish sal-detectron2==0.7.2 (upstream D2 at commit a59f056, Python files only),
   installed as pure Python: its stray top-level `tools/` package and its CPython-3.10 `_C` library,
   which cannot load here, are removed; without `_C`, D2 takes nms/roi_align from torchvision.

The choice is written to <venv>/detectron2-source.txt for `python -m vader_d2.collect_env`.
"""

import glob
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import sysconfig

D2_COMMIT = "a59f05630a8f205756064244bf5beb8661f96180"
D2_GIT = f"git+https://github.com/facebookresearch/detectron2.git@{D2_COMMIT}"
D2_PYPI = "sal-detectron2==0.7.2"
# Detectron2's runtime dependencies, which the --no-deps wheel install below does not bring.
D2_RUNTIME = [
    "Pillow",
    "matplotlib",
    "pycocotools",
    "termcolor",
    "yacs",
    "tabulate",
    "cloudpickle",
    "tqdm",
    "tensorboard",
    "fvcore",
    "iopath",
    "omegaconf<2.4",
    "hydra-core",
    "packaging",
    "setuptools<81",  # detectron2.model_zoo imports pkg_resources
]
RECORD = os.path.join(sys.prefix, "detectron2-source.txt")


def pip(*args):
    # No byte-compiling here: `make setup` compiles the whole venv afterwards on every core at once.
    subprocess.check_call([sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--no-compile", *args])


def github_reachable(timeout=3.0):
    try:
        socket.create_connection(("github.com", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def install_from_pypi_republish():
    site = sysconfig.get_paths()["purelib"]
    # The wheel is tagged cp310 but its Python files run on 3.10+; --target skips the tag check.
    pip("--no-deps", "--only-binary=:all:", "--python-version", "3.10", "--implementation", "cp",
        "--target", site, "--upgrade", D2_PYPI)
    shutil.rmtree(os.path.join(site, "tools"), ignore_errors=True)
    for library in glob.glob(os.path.join(site, "detectron2", "_C*.so")):
        os.remove(library)
    pip(*D2_RUNTIME)


def main():
    if importlib.util.find_spec("detectron2") is not None:
        source = "kept the Detectron2 already installed"
        if os.path.exists(RECORD):
            with open(RECORD) as f:
                source = f.read().strip()
    elif github_reachable():
        pip("--no-build-isolation", D2_GIT)
        source = f"GitHub facebookresearch/detectron2@{D2_COMMIT[:7]} (built from source, compiled ops)"
    else:
        install_from_pypi_republish()
        source = f"PyPI {D2_PYPI} as pure Python (GitHub unreachable; no compiled ops)"
    with open(RECORD, "w") as f:
        f.write(source + "\n")
    print(f"Detectron2 source: {source}")


if __name__ == "__main__":
    main()
