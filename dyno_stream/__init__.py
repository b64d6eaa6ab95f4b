"""dyno-stream: level-dyno's timestamped item histories on LevelDB, fed from Kafka.

The package keeps pure logic (``flake``, ``keys``, ``ops``) apart from I/O (``store`` for
LevelDB, ``worker``/``client``/``broker`` for Kafka), so the op semantics can be tested
without either.
"""

__version__ = "0.1.0"
