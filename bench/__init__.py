"""funtask's speed benchmark, run by hand: ``python -m bench [CASE ...]`` (see bench/README.md).

``bench.harness`` starts the servers (``bench.processes``) and drives the load,
``bench.report`` writes the Markdown report, and ``bench/cases/`` holds one
module per case, its run function and its report function together.
"""
