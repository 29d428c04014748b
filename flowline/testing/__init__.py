"""Testing pipelines without servers: `run` a pipeline in memory, with time in your hands.

    async with flowline.testing.run(pipeline) as app:
        await app.publish(FanbaseEvent(fan="f1", talent="t1", action="followed"))
        await app.settle()  # until nothing is left to do, timers included
        assert app.completed("notify-fan-following")[0].result["sent"]
        assert app.events("error") == []

The decode, route, job id, enqueue, retry and backoff, dead-letter, delay, priority, fan-in,
emit and event code is the runtime's own; only the servers are replaced, by
`flowline.backends.memory`, which the same contract tests hold to the Redis and JetStream
ones. What it does not model (process crashes, visibility timeouts, ``ack_wait``) is listed
in that module's docstring and in the README.

With pytest, the plugin (loaded when flowline is installed) gives the `flowline_app` fixture;
see `flowline.testing.pytest_plugin`.
"""

from ..backends.clock import ManualClock
from .harness import App, SettleTimeout, run

__all__ = ["App", "ManualClock", "SettleTimeout", "run"]
