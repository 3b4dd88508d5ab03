"""Research benchmarks of the engine, and the baselines and data-set loaders they need.

Not part of the installed engine. Run each from the repository root as a module, e.g.
``python -m benchmarks.shape_completion --help``; the common options are in :mod:`benchmarks.harness`,
the data sets of the shared data folder in :mod:`benchmarks.datasets`, and the results go to
``benchmarks/results/``.
"""
