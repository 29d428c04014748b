"""Dummy services standing in for the fan-club app's real ones: users, providers, analytics.

Everything is in memory, per process, and answers after a short sleep, as a network call would.
The providers (email, SMS, social) accept an idempotency key, as most real ones do: sending
twice with the same key returns the first confirmation instead of notifying someone twice.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class User:
    id: str
    name: str
    email: str
    phone: str = ""
    handle: str = ""
    is_talent: bool = False


USERS = {
    "fan-1": User("fan-1", "Ada", "ada@example.com", "+33600000001", "@ada"),
    "fan-2": User("fan-2", "Grace", "grace@example.com", "+33600000002", "@grace"),
    "fan-3": User("fan-3", "Linus", "linus@example.com", "+33600000003", "@linus"),
    "talent-1": User(
        "talent-1", "Nina Simone", "nina@example.com", "+33600000101", "@nina", is_talent=True
    ),
    "talent-2": User(
        "talent-2", "Miles Davis", "miles@example.com", "+33600000102", "@miles", is_talent=True
    ),
}


class Users:
    async def find_by_id(self, user_id: str) -> User:
        await asyncio.sleep(0.01)  # a database round trip
        try:
            return USERS[user_id]
        except KeyError:
            raise LookupError(f"no user {user_id!r}") from None

    async def talents(self) -> list[User]:
        await asyncio.sleep(0.01)
        return [u for u in USERS.values() if u.is_talent]


class Provider:
    """A messaging provider's API: `latency` seconds per call, idempotent per key."""

    def __init__(self, channel: str, latency: float) -> None:
        self.channel = channel
        self.latency = latency
        self._ids = itertools.count(1)
        self._sent: dict[str, dict[str, Any]] = {}

    async def _send(self, key: str | None, **message: object) -> dict[str, Any]:
        if key is not None and key in self._sent:
            return self._sent[key]
        await asyncio.sleep(self.latency)
        confirmation = {
            "id": f"{self.channel}-{next(self._ids)}",
            **message,
            "sent": True,
            "sent_at_ms": int(time.time() * 1000),
        }
        if key is not None:
            self._sent[key] = confirmation
        return confirmation


class Email(Provider):
    def __init__(self) -> None:
        super().__init__("email", 0.02)

    async def send(
        self, to: str, subject: str, message: str, *, key: str | None = None
    ) -> dict[str, Any]:
        return await self._send(key, to=to, subject=subject)


class Sms(Provider):
    def __init__(self) -> None:
        # SMS gateways are the slow ones; FANBASE_SMS_LATENCY lets a demo or a test make it worse.
        super().__init__("sms", float(os.environ.get("FANBASE_SMS_LATENCY", "0.05")))

    async def send(self, to: str, text: str, *, key: str | None = None) -> dict[str, Any]:
        return await self._send(key, to=to, subject=text)


class Social(Provider):
    """Posts to a user's in-app social inbox."""

    def __init__(self) -> None:
        super().__init__("social", 0.03)

    async def send(self, to: str, text: str, *, key: str | None = None) -> dict[str, Any]:
        return await self._send(key, to=to, subject=text)


class Analytics:
    """Counters fed by the audit pipeline and read by the daily digest."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, ...]] = Counter()
        self._seen: set[str] = set()

    async def record(self, event_id: str, keys: list[tuple[str, ...]]) -> bool:
        """Count `event_id` once under each key; False if it was already counted."""
        await asyncio.sleep(0.002)
        if event_id in self._seen:
            return False
        self._seen.add(event_id)
        self.counts.update(keys)
        return True

    async def get(self, *key: str) -> int:
        await asyncio.sleep(0.002)
        return self.counts[key]


users = Users()
email = Email()
sms = Sms()
social = Social()
analytics = Analytics()
