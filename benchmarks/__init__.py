"""The benchmarks (import name `discodiff.benchmarks`): each script asks one question of the toolkit and
writes its answer to benchmarks/results/; they run as files (`python benchmarks/latency.py`) and import
each other absolutely through this package (no edits of the import path).

Shared plumbing lives in `common` (machine naming, measured children, targets, result files, CLI options)
and the shapes classifier in `classifier`; every row that samples calls the one `Pipeline`.
"""
