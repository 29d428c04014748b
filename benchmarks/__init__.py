"""flowline's benchmark: flowline next to hand-written baselines, measured in the same run.

Run it with ``nox -s bench`` or ``python -m benchmarks --help``; `benchmarks.__main__` says
what each figure means and how to read the table.
"""
