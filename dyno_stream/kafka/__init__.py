"""Talking to Kafka: topic administration, reading a topic from a chosen offset, the group's
members and their addresses, Java's partitioner (where a key lands), the clock-skew watch, and
login/TLS failure detection. Imports only ``core`` and ``config``; never a store.
"""
