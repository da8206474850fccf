from __future__ import annotations

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from registry.challenge import Challenge, parse_challenges, response_challenges
from registry.errors import ProtocolError


def test_bearer_challenge_with_quoted_params() -> None:
    header = 'Bearer realm="https://auth.example/token",service="registry.example",scope="a b"'
    assert parse_challenges([header]) == [Challenge("bearer", {
        "realm": "https://auth.example/token", "service": "registry.example", "scope": "a b",
    })]


def test_scheme_and_param_names_are_case_insensitive() -> None:
    assert parse_challenges(['BASIC Realm="x"']) == [Challenge("basic", {"realm": "x"})]


def test_quoted_string_keeps_commas_and_unescapes() -> None:
    header = r'Bearer realm="https://a/t?x=1,2", error="say \"hi\" \\ ok", service=plain'
    [challenge] = parse_challenges([header])
    assert challenge.params == {
        "realm": "https://a/t?x=1,2", "error": 'say "hi" \\ ok', "service": "plain",
    }


def test_several_challenges_in_one_header_and_across_headers() -> None:
    headers = ['Negotiate, Bearer realm="r", service="s" , Basic realm="b"', "Custom abc=="]
    assert parse_challenges(headers) == [
        Challenge("negotiate"),
        Challenge("bearer", {"realm": "r", "service": "s"}),
        Challenge("basic", {"realm": "b"}),
        Challenge("custom"),
    ]


def test_whitespace_around_equals_and_empty_elements() -> None:
    assert parse_challenges([' , Bearer  realm = "r" ,, service =s,']) == [
        Challenge("bearer", {"realm": "r", "service": "s"}),
    ]


def test_token68_and_empty_quoted_value() -> None:
    assert parse_challenges(['Negotiate a/b+c==, Basic realm=""']) == [
        Challenge("negotiate"), Challenge("basic", {"realm": ""}),
    ]


def test_no_headers_means_no_challenges() -> None:
    assert parse_challenges([]) == []
    assert parse_challenges([""]) == []


@pytest.mark.parametrize("header", [
    'Bearer realm="https://a/token',          # unterminated quote
    'realm="x"',                               # parameter before any scheme
    'Bearer realm="x" junk',                   # trailing garbage in an element
    "=x",                                      # no scheme at all
    'Bearer realm="a\x01b"',                   # control character
    'Bearer realm="x", service=',              # a parameter needs a value
    'Bearer realm="x" service="y"',            # parameters are separated by commas
    "Bearer @",
])
def test_malformed_header_raises_protocol_error_naming_it(header: str) -> None:
    with pytest.raises(ProtocolError, match="WWW-Authenticate"):
        parse_challenges([header])


def test_response_challenges_names_the_request() -> None:
    request = httpx.Request("GET", "https://registry.example/v2/")
    response = httpx.Response(401, headers={"WWW-Authenticate": 'Bearer realm="x'},
                              request=request)
    with pytest.raises(ProtocolError) as caught:
        response_challenges(response)
    assert caught.value.url == "https://registry.example/v2/"
    assert caught.value.status == 401


_TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!#$",
                 min_size=1, max_size=8)
_QUOTABLE = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20)


@given(st.lists(st.tuples(_TOKEN, st.dictionaries(_TOKEN, _QUOTABLE, max_size=4)),
                min_size=1, max_size=4))
def test_rendered_challenges_parse_back(challenges: list[tuple[str, dict[str, str]]]) -> None:
    def quote(value: str) -> str:
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'

    rendered = ", ".join(
        scheme + (" " + ", ".join(f"{k}={quote(v)}" for k, v in params.items()) if params else "")
        for scheme, params in challenges
    )
    expected = []
    for scheme, params in challenges:
        lowered: dict[str, str] = {}
        for key, value in params.items():
            lowered.setdefault(key.lower(), value)
        expected.append(Challenge(scheme.lower(), lowered))
    assert parse_challenges([rendered]) == expected


@given(st.text(max_size=60))
def test_arbitrary_text_parses_or_raises_protocol_error(text: str) -> None:
    try:
        challenges = parse_challenges([text])
    except ProtocolError as exc:
        assert "WWW-Authenticate" in str(exc)
        return
    assert all(c.scheme and c.scheme == c.scheme.lower() for c in challenges)
