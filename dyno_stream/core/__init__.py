"""The pure core: flake ids, row keys, op semantics and the history hash, the wire contract
(pydantic models of ops, flatten commands, snapshots, dead letters), limits on one event, and
every error. No I/O: nothing here opens a file, a socket or a database, so all of it is tested
without Kafka or LevelDB. It imports nothing else of dyno_stream.
"""
