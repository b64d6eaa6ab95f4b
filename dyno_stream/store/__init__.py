"""Storage on LevelDB: ``DynoStore`` (items as replayed histories; its write batch in
``write_batch``, the state cache and its crash journal in ``states``, the values it reads back
in ``items``) and ``PartitionStore`` (one ops-topic partition's store, with the offsets and
pending publications kept in the same write batch as the ops). Imports only ``core`` and
``config``; knows nothing of Kafka clients.
"""

from dyno_stream.store.dynostore import DynoStore
from dyno_stream.store.items import Changeset, HistoryChangeset, Item

__all__ = ["Changeset", "DynoStore", "HistoryChangeset", "Item"]
