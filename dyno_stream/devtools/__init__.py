"""Tools for developing dyno-stream, not for running it: today the local Kafka broker.

What lives here serves the demo, the tests, the benchmarks and the ``dyno-stream broker``
commands. Nothing at runtime (the worker, the client, the store, the views) may import from
this package, so a deployment that talks to a real Kafka cluster never loads the launcher.
"""
