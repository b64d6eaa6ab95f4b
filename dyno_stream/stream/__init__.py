"""The stream runtime: the ``Worker`` that consumes ops, validates, applies them to partition
stores, publishes snapshots and commits; its metrics and HTTP endpoint; the supervisor of a worker
of several processes (``supervisor``) and the log set-up. Built on ``client``, ``kafka`` and
``store``; imported only by the layers above it.
"""
