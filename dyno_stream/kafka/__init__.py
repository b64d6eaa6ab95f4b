"""Talking to Kafka: ``DynoClient`` for producing ops, topic administration, reading a topic
from a chosen offset, Java's partitioner (where a key lands), the clock-skew watch, and
login/TLS failure detection. Imports only
``core`` and ``config``; never a store.
"""
