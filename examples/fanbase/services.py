"""Dummy users and email services, standing in for the fan-club app's real ones."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass


@dataclass(frozen=True)
class User:
    id: str
    name: str
    email: str


USERS = {
    "fan-1": User("fan-1", "Ada", "ada@example.com"),
    "fan-2": User("fan-2", "Grace", "grace@example.com"),
    "fan-3": User("fan-3", "Linus", "linus@example.com"),
    "talent-1": User("talent-1", "Nina Simone", "nina@example.com"),
    "talent-2": User("talent-2", "Miles Davis", "miles@example.com"),
}


class Users:
    async def find_by_id(self, user_id: str) -> User:
        await asyncio.sleep(0.01)  # a database round trip
        try:
            return USERS[user_id]
        except KeyError:
            raise LookupError(f"no user {user_id!r}") from None


class Email:
    _ids = itertools.count(1)

    async def send(self, to: str, subject: str, message: str) -> dict[str, object]:
        await asyncio.sleep(0.02)  # an email provider's API call
        return {"id": f"email-{next(self._ids)}", "to": to, "subject": subject, "sent": True}


users = Users()
email = Email()
