"""The runtime's servers, behind two small contracts (`base`): a job store and a stream source.

    base.py       the contracts: `JobStore`, `StreamSource` (with `Consumer` and `Message`), and
                  `Running`, the claimed job the store hands a worker
    clock.py      `Clock`: the time the runtime reads and sleeps on (real, or a test's)
    redis.py      `RedisStore`: queues as Redis streams, every change one Lua script call
    jetstream.py  `JetStreamSource`: subjects as NATS JetStream streams, durable pull consumers
    memory.py     `MemoryStore` and `MemorySource`: the same contracts in one process, no
                  servers (what `flowline.testing` runs on)

The runtime (`flowline.runtime`) talks to its servers only through these contracts, the way
httpx's client talks to `BaseTransport`: the real and the in-memory implementations sit side by
side and one contract suite (``tests/test_backends.py``) runs on both.
"""
