"""Jobs run beside the workers: compaction passes, online (flatten commands through the ops
topic) and offline (a store no worker holds); ``repartition``, the move to new topics with
another partition count; ``progress``, the progress bar or log lines they show. Built on
``kafka`` and ``store``.
"""
