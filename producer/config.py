"""``fanout.toml`` for the producer: where a command's destinations come from.

The file itself is read and checked by :mod:`workers.config_file` (the scheduler reads it too,
and ``workers/`` may not import ``producer/``); its names are re-exported here so that callers
keep one place to import them from.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

from registry.envconfig import ConfigError, split_list
from workers.config_file import (
    DEFAULT_FILE,
    FanoutConfig,
    RegistryOptions,
    load_config,
    parse_config,
)

__all__ = ["DEFAULT_FILE", "ConfigError", "FanoutConfig", "Picked", "RegistryOptions",
           "load_config", "parse_config", "pick_destinations"]


class Picked(NamedTuple):
    """The destinations to copy to, where they came from, and which of them are optional."""

    destinations: list[str]
    origin: str
    optional: frozenset[str] = frozenset()


def pick_destinations(
    args: Sequence[str], env: Mapping[str, str], config: FanoutConfig, set_name: str | None,
) -> Picked:
    """Destinations and where they came from: ``--to`` set, arguments, ``FANOUT_DESTINATIONS``,
    the config's default set — first that has any. Empty when none has. A set's entries
    marked ``optional`` are in ``.optional``."""
    if set_name is not None:
        if args:
            raise ConfigError("give destinations as arguments or with --to, not both")
        return Picked(list(config.destination_set(set_name) or ()), f"set {set_name!r}",
                      config.optional_in(set_name))
    if args:
        return Picked(list(args), "arguments")
    from_env = split_list(env.get("FANOUT_DESTINATIONS", ""))
    if from_env:
        return Picked(from_env, "FANOUT_DESTINATIONS")
    default = config.destination_set(None)
    if default:
        return Picked(list(default), f"set {config.default_set!r} of {config.path}",
                      config.optional_in(None))
    return Picked([], "nowhere")
