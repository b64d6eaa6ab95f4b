"""dyno-stream: level-dyno's timestamped item histories on LevelDB, fed from Kafka.

The package is in layers, each importing only those below it (import-linter, ``make lint``)::

    cli        the ``dyno-stream`` command and the demo          (may use devtools)
    jobs       compaction passes (online, offline), repartition
    stream     the worker runtime and its HTTP endpoint
    client     DynoClient, routed reads, MaterializedView, the HTTP GET helper
    kafka      topics, reading topics, members, security  |  store  DynoStore on LevelDB
    config     settings (pydantic-settings)
    core       flake ids, keys, op semantics, the wire contract, limits, errors (pure)

``devtools`` (the local Kafka broker from Maven Central jars) serves the demo, the tests and
the benchmarks; nothing at runtime imports it.
"""

from importlib.metadata import PackageNotFoundError, version

try:  # the installed package's version: pyproject.toml is its one source
    __version__ = version("dyno-stream")
except PackageNotFoundError:  # pragma: no cover - run from a source tree never installed
    __version__ = "0+unknown"
