"""The per-label request queue and reply routing, shared by every transport.

``base.Broker`` is the one interface; ``memory.MemoryBroker`` serves the embedded single-process
default, ``redis_broker.RedisBroker`` lets any number of gateway processes share one Redis.
``relay`` holds the transport-independent waiting rules (timeouts T1 and T2, withdrawal).
"""
