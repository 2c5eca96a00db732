"""
The config keys vader_d2 adds to Detectron2's and their checks.

- ``config.py``: ``add_vader_config`` (the views, the keys the momentum methods share, each registered
  method's own section, the solver's and the frozen backbone's keys); ``check_vader_config`` and
  ``check_solver_config``, one line naming the key on a value that cannot work; the translation of old
  key names (``MOVED_KEYS``, ``resolve_old_spellings``), which ``vader_d2.cli.build_config`` applies.
- ``checks.py``: the one-line range checks the config and every method's checks share.

It imports nothing of the package but its errors: the methods' sections and checks are found through
Detectron2's ``META_ARCH_REGISTRY``.
"""

from .checks import at_least, check_norm, ordered_pair, parse_signal_names, probability, require
from .config import (
    AMP_PRECISIONS,
    MOVED_KEYS,
    OUTPUT_STRIDE,
    SCHEDULERS,
    add_vader_config,
    check_amp_config,
    check_solver_config,
    check_vader_config,
    check_view_ranges,
    config_value,
    configurable_method,
    configurable_methods,
    moved_keys_of_a_file,
    resolve_old_spellings,
    set_config_value,
    with_moved_keys_renamed,
)

__all__ = [
    "add_vader_config",
    "OUTPUT_STRIDE",
    "check_vader_config",
    "check_solver_config",
    "check_view_ranges",
    "check_amp_config",
    "AMP_PRECISIONS",
    "SCHEDULERS",
    "MOVED_KEYS",
    "moved_keys_of_a_file",
    "with_moved_keys_renamed",
    "resolve_old_spellings",
    "configurable_methods",
    "configurable_method",
    "config_value",
    "set_config_value",
    "require",
    "at_least",
    "probability",
    "ordered_pair",
    "check_norm",
    "parse_signal_names",
]
