"""What every benchmark in bench/ shares, so that each script is parse, run, report.

- ``broker``: the broker-or-bootstrap set-up and a scratch directory, cleaned up at exit;
- ``settings``: bench settings with unique topics and group, their topics deleted at exit;
- ``workers``: ``dyno-stream worker`` processes, their /metrics, timing until applied;
- ``workload``: the ops the benchmarks produce, and producing them;
- ``latency``: produce-to-snapshot latency of a running worker;
- ``machine``: the load average and what else runs on the machine;
- ``runs``: a figure from several runs, and the check that two contenders did the same work;
- ``output``: the JSON results files.

Scripts run as ``python bench/SCRIPT.py``, which puts bench/ on the path: ``import harness``.
"""
