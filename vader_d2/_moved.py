"""
Module paths of the previous release that moved into vader_d2's subpackages: they still import, for one
release, as the module at the new path, with a DeprecationWarning that names it.

``import vader_d2.trainer`` gives the module ``vader_d2.engine.trainer`` itself (one module under two
names, so that a script that patches a name through the old path patches what the package uses). The
finder answers for the names of ``MOVED_MODULES`` only. Remove an entry, and docs/troubleshooting.md's
line for it, in the release after.
"""

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

# Old path: new path.
MOVED_MODULES = {
    "vader_d2.trainer": "vader_d2.engine.trainer",
    "vader_d2.hooks": "vader_d2.engine.hooks",
    "vader_d2.preemption": "vader_d2.engine.preemption",
    "vader_d2.launchers": "vader_d2.engine.launchers",
    "vader_d2.rendezvous": "vader_d2.engine.rendezvous",
    "vader_d2.output_dir": "vader_d2.engine.output_dir",
    "vader_d2.mixed_precision": "vader_d2.engine.mixed_precision",
    "vader_d2.frozen_backbone": "vader_d2.engine.frozen_backbone",
    "vader_d2.solver": "vader_d2.engine.solver",
    "vader_d2.export": "vader_d2.checkpoint.export",
    "vader_d2.checkpointer": "vader_d2.checkpoint.checkpointer",
    "vader_d2.load_checks": "vader_d2.checkpoint.load_checks",
    "vader_d2.atomic_io": "vader_d2.checkpoint.atomic_io",
    "vader_d2.config_checks": "vader_d2.config.checks",
    "vader_d2.dense_grid": "vader_d2.config",  # OUTPUT_STRIDE
}


class MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds the old paths of ``moved`` (old: new) and loads each as the module at its new path."""

    def __init__(self, moved):
        self.moved = moved
        self._spec_of = {}

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self.moved:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        new = self.moved[spec.name]
        # stacklevel 2: the import statement (Python skips importlib's own frames).
        warnings.warn(f"{spec.name} moved to {new}; import it from there ({spec.name} goes in the next release)", DeprecationWarning, stacklevel=2)
        module = importlib.import_module(new)
        self._spec_of[new] = module.__spec__
        return module

    def exec_module(self, module):
        # The module at the new path has run already; importlib has just given it the old path's spec:
        # give it its own back (its name, file and reloads stay the new path's).
        module.__spec__ = self._spec_of.pop(module.__name__)


def install():
    """Put the finder first on ``sys.meta_path``, once: before the finders that would find a file left at
    an old path (an editable install's, an upgrade over an old copy)."""
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, MovedModuleFinder(MOVED_MODULES))
