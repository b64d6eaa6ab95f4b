"""The stream runtime: the ``Worker`` that consumes ops, validates, applies them to partition
stores, publishes snapshots and commits; its metrics and HTTP endpoint. Built on ``kafka`` and
``store``; imported only by the tools above it (``cli``).
"""
