"""
The grid VADeR's dense embeddings live on: one cell per OUTPUT_STRIDE x OUTPUT_STRIDE pixels of the input.

The views' correspondences, the config checks, the dense evaluation and the model's dense head must all
mean the same grid. This module imports nothing of the package, so that each of them, the model
included, takes the stride from here.
"""

# The stride of p2, the finest level of Detectron2's FPN, where the dense head predicts.
OUTPUT_STRIDE = 4
