"""
Benchmarks of vader_d2: what its training step costs, measured rather than tested (docs/benchmarks.md).

Not part of the installed package: run them from the repository root, e.g.
``python -m benchmarks.vader_overhead --help``.
"""
