"""Performance benchmarks for the goals of the project's issues.

Each benchmark prints the ratio of optbridge's time to its baseline's, both measured in the
same run with interleaved repetitions (absolute times on shared machines mean little).
Run ``python -m optbridge.perf --help``.
"""
