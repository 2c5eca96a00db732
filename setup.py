from setuptools import find_packages, setup

setup(
    name="vader-d2",
    version="0.1.0",
    description="VADeR dense self-supervised pretraining (NeurIPS 2020) as a Detectron2 plugin",
    packages=find_packages(include=["vader_d2", "vader_d2.*"]),
    python_requires=">=3.10",
    # Detectron2 is not on PyPI and cannot be listed here: `make setup` installs it (see README).
    install_requires=[
        # The oldest supported: torch 2.11 with torchvision 0.26, what CUDA images commonly ship;
        # `make test-oldest` runs the fast tests with them.
        "torch>=2.11",
        "torchvision>=0.26",
        "fvcore",
        "pycocotools",
        # numpy<2: the Detectron2 commit we install predates its numpy-2 fix; opencv 4.11+ needs numpy 2.
        "numpy<2",
        "opencv-python-headless<4.11",
    ],
    extras_require={"dev": ["pytest", "pytest-xdist", "tensorboard", "matplotlib"]},
)
