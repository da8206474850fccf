"""Parse ``WWW-Authenticate`` challenges (RFC 7235 section 4.1, RFC 9110 section 11.6.1).

A header value is a comma-separated list whose elements are either a new challenge
(``scheme``, ``scheme token68`` or ``scheme param=value``) or one more ``param=value`` of the
challenge before it, so ``Bearer realm="https://a/token",service="a", Basic realm="a"`` is two
challenges. Quoted strings may hold commas and backslash escapes, which is why this is a small
scanner rather than a ``split(",")``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import httpx

from .errors import ProtocolError

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TOKEN68 = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_OWS = " \t"
# qdtext and the character after a backslash: HTAB, SP, VCHAR, obs-text; never a control char.
_QUOTABLE = re.compile(r"[\t \x21-\x7e\x80-\xff]")


@dataclass(frozen=True, slots=True)
class Challenge:
    """One challenge: its scheme in lower case and its parameters (names in lower case)."""

    scheme: str
    params: dict[str, str] = field(default_factory=dict)


def parse_challenges(header_values: Iterable[str]) -> list[Challenge]:
    """Every challenge in the given ``WWW-Authenticate`` header values, in order."""
    challenges: list[Challenge] = []
    for value in header_values:
        challenges.extend(_Scanner(value).challenges())
    return challenges


def response_challenges(response: httpx.Response) -> list[Challenge]:
    """The challenges of a response; a malformed header names the request it answered."""
    try:
        return parse_challenges(response.headers.get_list("www-authenticate"))
    except ProtocolError as exc:
        request = response.request
        raise ProtocolError(exc.message, status=response.status_code, method=request.method,
                            url=request.url) from None


class _Scanner:
    """A cursor over one header value."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def fail(self, reason: str) -> ProtocolError:
        # The header's text is not echoed: it is the server's, and nothing says it is harmless.
        return ProtocolError(f"malformed WWW-Authenticate header: {reason} at character {self.pos}")

    def challenges(self) -> list[Challenge]:
        found: list[Challenge] = []
        current: Challenge | None = None
        while True:
            self.skip(_OWS + ",")  # empty list elements are allowed
            if self.pos >= len(self.text):
                return found
            name = self.token()
            if name is None:
                raise self.fail("expected an auth-scheme or a parameter")
            had_space = self.skip(_OWS)
            if self.peek() == "=":
                if current is None:
                    raise self.fail("parameter before any auth-scheme")
                self.pos += 1
                current.params.setdefault(name.lower(), self.param_value())
                self.end_of_element()
                continue
            current = Challenge(name.lower())
            found.append(current)
            if had_space and self.peek() not in ("", ","):
                self.first_param_or_token68(current)
            else:
                self.end_of_element()

    def first_param_or_token68(self, challenge: Challenge) -> None:
        start = self.pos
        name = self.token()
        if name is not None:
            self.skip(_OWS)
            if self.peek() == "=":
                self.pos += 1
                self.skip(_OWS)
                if self.peek() == '"' or _TOKEN.match(self.text, self.pos):
                    challenge.params.setdefault(name.lower(), self.param_value())
                    self.end_of_element()
                    return
        # Not ``name=value``: a token68 (kept by no registry scheme, so only checked, not stored).
        self.pos = start
        match = _TOKEN68.match(self.text, self.pos)
        if match is None:
            raise self.fail("expected a parameter or token68 after the auth-scheme")
        self.pos = match.end()
        self.end_of_element()

    def param_value(self) -> str:
        self.skip(_OWS)
        if self.peek() == '"':
            return self.quoted_string()
        value = self.token()
        if value is None:
            raise self.fail("expected a token or quoted string as parameter value")
        return value

    def quoted_string(self) -> str:
        self.pos += 1  # the opening quote
        out: list[str] = []
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char == '"':
                self.pos += 1
                return "".join(out)
            if char == "\\":
                self.pos += 1
                if self.pos >= len(self.text):
                    break
                char = self.text[self.pos]
            if not _QUOTABLE.fullmatch(char):
                raise self.fail("control character in quoted string")
            out.append(char)
            self.pos += 1
        raise self.fail("unterminated quoted string")

    def end_of_element(self) -> None:
        self.skip(_OWS)
        if self.peek() not in ("", ","):
            raise self.fail("expected ',' or the end of the header")

    def token(self) -> str | None:
        match = _TOKEN.match(self.text, self.pos)
        if match is None:
            return None
        self.pos = match.end()
        return match.group()

    def skip(self, chars: str) -> bool:
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] in chars:
            self.pos += 1
        return self.pos > start

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""


def pick_challenge(challenges: list[Challenge]) -> Challenge | None:
    """The challenge we can best answer: Bearer, then Basic; None when neither is offered."""
    for scheme in ("bearer", "basic"):
        for challenge in challenges:
            if challenge.scheme == scheme:
                return challenge
    return None


def realm_url(challenge: Challenge, registry: str, *, allow_http: bool) -> httpx.URL:
    """The challenge's realm, if it is a URL we are willing to send credentials to."""
    raw = challenge.params.get("realm")
    if not raw:
        raise ProtocolError(f"Bearer challenge from {registry} has no realm")
    try:
        realm = httpx.URL(raw)
    except httpx.InvalidURL:
        raise ProtocolError(
            f"Bearer challenge from {registry} has a malformed realm") from None
    scheme = realm.scheme
    if scheme not in ("https", "http") or (scheme == "http" and not allow_http):
        raise ProtocolError(
            f"token realm scheme {scheme!r} from {registry} is not allowed"
            + (" (https only for a TLS registry)" if scheme == "http" else ""))
    if not realm.host:
        raise ProtocolError(f"Bearer challenge from {registry} has a realm without host")
    try:
        address = ipaddress.ip_address(realm.host)
    except ValueError:
        return realm
    # Cloud metadata services live on link-local addresses: a hostile registry must not be
    # able to point our token requests (and a password) at them.
    if address.is_link_local or address.is_unspecified or address.is_multicast:
        raise ProtocolError(
            f"token realm host {realm.host} from {registry} is not allowed")
    return realm
