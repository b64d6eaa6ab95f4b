"""Jobs run beside the workers: compaction passes, online (flatten commands through the ops
topic) and offline (a store no worker holds). Built on ``kafka`` and ``store``.
"""
