"""The benchmark harness behind ``bench/run.py``: upstream, load generator, systems, report.

Pure parts (``wrk.parse_wrk_output``, everything in ``report``) are unit-tested in
``tests/unit/test_bench_parsing.py``; the rest starts processes and is run by hand, never in CI.
"""
