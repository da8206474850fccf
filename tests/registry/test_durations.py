"""registry.envconfig.parse_duration: the one duration parser (replay, verify, fanout.toml)."""

from __future__ import annotations

import pytest

from registry.envconfig import ConfigError, parse_duration


@pytest.mark.parametrize(("text", "seconds"), [
    ("30s", 30.0), ("15m", 900.0), ("1h", 3600.0), ("6h", 21600.0), ("7d", 604800.0),
    ("1w", 604800.0), ("1h30m", 5400.0), (" 2H ", 7200.0), ("1.5h", 5400.0),
])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "7", "7 days", "7x", "h", "-1h", "0s", "0h0m"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ConfigError, match="bad duration"):
        parse_duration(text)
