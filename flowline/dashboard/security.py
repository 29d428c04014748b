"""Who may use the dashboard, and proof that a state-changing request came from its own pages.

- `Auth`: HTTP Basic with ``user:password``, or a token (``Authorization: Bearer <token>``, or
  the token as the Basic password, so a browser's own login prompt works). With `Auth` set,
  every request needs it; without it the dashboard is read-only, and the CLI only binds a
  loopback address.
- `Csrf`: a signed double-submit token. Each browser gets a random value, signed with a secret
  of this process, in an HttpOnly cookie; every form repeats it in a hidden field. A POST whose
  field does not match its cookie, or whose signature is not ours, is refused with 403.
- `guard`: the middleware applying both, checking the Host header while unauthenticated (a
  DNS-rebinding page would otherwise be same-origin with a loopback dashboard) and adding
  security headers (a strict Content-Security-Policy: no inline script, nothing from elsewhere).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qs

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import ConfigurationError

TOKEN_ENV = "FLOWLINE_DASHBOARD_TOKEN"
MIN_TOKEN = 16
CSRF_COOKIE = "flowline_csrf"
CSRF_FIELD = "csrf"
FORM = "application/x-www-form-urlencoded"
REALM = 'Basic realm="flowline dashboard", charset="UTF-8"'
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = {
    "content-security-policy": CSP,
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cross-origin-opener-policy": "same-origin",
}


@dataclass(frozen=True)
class Auth:
    """The one credential the dashboard accepts: a user and password, or a token."""

    user: str | None  # None: a token
    secret: str = field(repr=False)

    @classmethod
    def parse(cls, value: str, environ: Mapping[str, str] | None = None) -> Auth:
        """``USER:PASSWORD``, or ``token`` to take the token from ``FLOWLINE_DASHBOARD_TOKEN``.

        Raises:
            ConfigurationError: the value has neither form, or the token is missing or short.
        """
        env = os.environ if environ is None else environ
        if value == "token":
            token = env.get(TOKEN_ENV, "").strip()
            if not token:
                raise ConfigurationError(f"--auth token needs the token in {TOKEN_ENV}")
            if len(token) < MIN_TOKEN:
                raise ConfigurationError(
                    f"{TOKEN_ENV} is too short ({len(token)} characters); use at least "
                    f"{MIN_TOKEN}, e.g. python -c 'import secrets; print(secrets.token_urlsafe())'"
                )
            return cls(None, token)
        user, colon, password = value.partition(":")
        if not colon or not user or not password:
            raise ConfigurationError(
                "--auth must be USER:PASSWORD, or 'token' to use the token in " + TOKEN_ENV
            )
        return cls(user, password)

    def accepts(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` header carries this credential (in constant time)."""
        scheme, _, value = (authorization or "").partition(" ")
        scheme, value = scheme.lower(), value.strip()
        if scheme == "bearer":
            return self.user is None and _same(value, self.secret)
        if scheme != "basic":
            return False
        try:
            decoded = base64.b64decode(value, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return False
        user, colon, password = decoded.partition(":")
        if not colon:
            return False
        # A token is the password of any user name: browsers only prompt for Basic credentials.
        user_ok = True if self.user is None else _same(user, self.user)
        return _same(password, self.secret) & user_ok

    @property
    def scheme(self) -> str:
        return "token" if self.user is None else "user and password"


class Csrf:
    """Signed double-submit tokens, keyed by a secret that lives as long as this process."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key or secrets.token_bytes(32)

    def new(self) -> str:
        nonce = secrets.token_urlsafe(18)
        return f"{nonce}.{self._sign(nonce)}"

    def valid(self, token: str | None) -> bool:
        nonce, dot, signature = (token or "").partition(".")
        return bool(nonce and dot) and _same(signature, self._sign(nonce))

    def matches(self, cookie: str | None, submitted: str | None) -> bool:
        """The submitted field equals the cookie, and the cookie is one we signed."""
        return self.valid(cookie) and _same(submitted or "", cookie or "")

    def _sign(self, nonce: str) -> str:
        return hmac.new(self._key, nonce.encode(), hashlib.sha256).hexdigest()


def token_for(request: Request) -> str:
    """The CSRF token forms on this page must carry (set by `guard`)."""
    return str(request.scope["flowline.csrf"])


def guard(app: ASGIApp, auth: Auth | None, csrf: Csrf) -> ASGIApp:
    """Wrap `app` with authentication, CSRF checks, the Host check and security headers."""

    async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        request = Request(scope, receive)
        refusal = _refusal(request, auth)
        if refusal is None and request.method not in SAFE_METHODS:
            fields = _form(request.headers.get("content-type", ""), await request.body())
            scope["flowline.form"] = fields
            refusal = _csrf_refusal(request, fields, csrf)
        if refusal is not None:
            await refusal(scope, receive, _add_headers(send, None))
            return
        cookie = request.cookies.get(CSRF_COOKIE)
        fresh = None if csrf.valid(cookie) else csrf.new()
        scope["flowline.csrf"] = fresh or cookie
        path = str(scope["path"]).removeprefix(str(scope.get("root_path", "")))
        await app(scope, receive, _add_headers(send, fresh, path))

    return asgi


def _refusal(request: Request, auth: Auth | None) -> Response | None:
    if auth is not None:
        if not auth.accepts(request.headers.get("authorization")):
            return PlainTextResponse(
                "authentication required", 401, headers={"www-authenticate": REALM}
            )
        return None
    host = _hostname(request.headers.get("host", ""))
    if host not in LOOPBACK_NAMES:
        # Unauthenticated means loopback only: a page that rebinds its own DNS name to
        # 127.0.0.1 reaches us as same-origin, and only the Host header gives it away.
        return PlainTextResponse(f"unexpected Host {host!r}", 421)
    if request.method not in SAFE_METHODS:
        return PlainTextResponse(
            "this dashboard is read-only: start it with --auth to replay or purge", 403
        )
    return None


def form(request: Request) -> dict[str, list[str]]:
    """The fields of a POST's form, as `guard` read them (it checked the CSRF token in them)."""
    fields: dict[str, list[str]] = request.scope["flowline.form"]
    return fields


def _form(content_type: str, body: bytes) -> dict[str, list[str]]:
    # The dashboard's own forms are urlencoded; anything else is no form of ours.
    if content_type.partition(";")[0].strip().lower() != FORM:
        return {}
    return parse_qs(body.decode(errors="replace"), keep_blank_values=True)


def _csrf_refusal(request: Request, fields: dict[str, list[str]], csrf: Csrf) -> Response | None:
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        return PlainTextResponse("cross-site request refused", 403)
    origin = request.headers.get("origin")
    if origin is not None and origin.partition("://")[2] != request.headers.get("host"):
        return PlainTextResponse("cross-origin request refused", 403)
    submitted = fields.get(CSRF_FIELD, [""])[0]
    if not csrf.matches(request.cookies.get(CSRF_COOKIE), submitted):
        return PlainTextResponse("missing or stale CSRF token: reload the page and try again", 403)
    return None


def _add_headers(send: Send, fresh_csrf: str | None, path: str = "") -> Send:
    # Pages hold live figures and CSRF tokens: never stored. Static files are revalidated
    # (their ETag), so an upgraded dashboard serves its new scripts at once.
    cache = "no-cache" if path.startswith("/static/") else "no-store"

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = MutableHeaders(scope=message)
            for name, value in HEADERS.items():
                headers.setdefault(name, value)
            headers.setdefault("cache-control", cache)
            if fresh_csrf is not None:
                headers.append(
                    "set-cookie",
                    f"{CSRF_COOKIE}={fresh_csrf}; Path=/; HttpOnly; SameSite=Strict",
                )
        await send(message)

    return sending


def _hostname(host: str) -> str:
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
