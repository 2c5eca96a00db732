"""Evaluation of frozen dense features: correspondence benchmark, linear probe, video label propagation
(DAVIS measures), pictures.

``tools/evaluate_dense.py``, ``tools/propagate_labels.py`` and ``tools/visualize.py`` are thin command
lines over this package.
"""

from .correspondence import CorrespondenceProtocol, evaluate_correspondence, make_view_pair, make_view_pairs, match_nearest
from .features import FEATURE_SOURCES, DenseFeatureExtractor, build_feature_extractor
from .linear_probe import LinearProbeProtocol, evaluate_linear_probe
from .report import format_propagation_table, format_results_table, read_results_files

__all__ = [
    "read_results_files",
    "CorrespondenceProtocol",
    "evaluate_correspondence",
    "make_view_pair",
    "make_view_pairs",
    "match_nearest",
    "FEATURE_SOURCES",
    "DenseFeatureExtractor",
    "build_feature_extractor",
    "LinearProbeProtocol",
    "evaluate_linear_probe",
    "format_results_table",
    "format_propagation_table",
]
