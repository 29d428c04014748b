"""A Stream's server-side settings follow the code on redeploy: real `flowline worker`
processes bring the durable consumer in line at start, say what they changed or could not, and
readiness names any difference while processes disagree (a rolling deploy)."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from flowline.backends.jetstream import ensure_stream
from flowline.servers import free_port

from .conftest import eventually

APP = "tests.apps.recorder:pipeline"
DURABLE = "recorder-recorder"


def ack_wait(seconds: float) -> dict[str, str]:
    return {"FLOWLINE_TEST_ACK_WAIT": str(seconds)}


def readyz(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as reply:
        return json.loads(reply.read())


def said(proc: Any, event: str) -> list[dict[str, Any]]:
    return [x for x in proc.lines() if x.get("event") == event]


async def test_a_changed_ack_wait_is_applied_at_start_and_said(worker: Any, js: Any) -> None:
    first = worker(APP, env=ack_wait(5))
    await first.ready()
    assert (await js.consumer_info("recorder", DURABLE)).config.ack_wait == 5
    first.signal(15)
    await first.wait()
    second = worker(APP, env=ack_wait(9))
    await second.ready()
    assert (await js.consumer_info("recorder", DURABLE)).config.ack_wait == 9
    [line] = said(second, "consumer setting updated to the Stream's")
    assert (line["option"], line["was"], line["now"]) == ("ack_wait", "5s", "9s")
    assert line["level"] == "info"
    assert said(first, "consumer setting updated to the Stream's") == []  # it created it


async def test_during_a_rolling_deploy_readiness_names_the_difference(worker: Any, js: Any) -> None:
    old_port, new_port = free_port(), free_port()
    old = worker(APP, "--http-port", str(old_port), env=ack_wait(5))
    await old.ready()
    assert readyz(old_port)["settings"] == []
    new = worker(APP, "--http-port", str(new_port), env=ack_wait(9))
    await new.ready()
    body = await eventually(lambda: (b := readyz(old_port))["settings"] and b)
    assert body["settings"] == [
        f"consumer {DURABLE!r} of stream 'recorder': ack_wait is 9s on the server, 5s in this "
        "process's Stream"
    ]
    assert body["status"] == "ok"  # a difference is said, and does not stop the work
    assert readyz(new_port)["settings"] == []


async def test_what_jetstream_cannot_change_is_said_and_the_rest_is_changed(
    worker: Any, js: Any
) -> None:
    """A consumer made by hand with another deliver policy: that stays, ack_wait follows."""
    stream = await ensure_stream(js, "recorder")
    config = ConsumerConfig(
        durable_name=DURABLE,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.NEW,
        ack_wait=30,
        filter_subject="recorder",
    )
    await js.add_consumer(stream, config=config)
    port = free_port()
    proc = worker(APP, "--http-port", str(port), env=ack_wait(7))
    await proc.ready()
    info = await js.consumer_info(stream, DURABLE)
    assert (info.config.ack_wait, info.config.deliver_policy) == (7, DeliverPolicy.NEW)
    [refused] = said(
        proc,
        "consumer setting differs from the Stream's; JetStream cannot change it on an existing "
        "consumer",
    )
    got = (refused["option"], refused["server"], refused["stage"])
    assert got == ("deliver_policy", "new", "all")
    assert refused["level"] == "warning"
    assert readyz(port)["settings"] == [
        f"consumer {DURABLE!r} of stream 'recorder': deliver_policy is new on the server, all in "
        "this process's Stream"
    ]
