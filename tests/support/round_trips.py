"""Redis clients that count their round trips: what a read or a delivery costs, measured.

A round trip is one exchange with the server: a command sent on its own, a pipeline executed
(MULTI/EXEC or not), a command a WATCHing pipeline sends at once, and the UNWATCH a pipeline
sends when it is put away still watching. Connection set-up (HELLO, CLIENT SETINFO) is not
counted: a long-lived client pays it once.
"""

from __future__ import annotations

from typing import Any

import fakeredis
import redis
from redis.client import Pipeline


class Tally:
    """Round trips so far; ``commands`` names what each one sent (a pipeline as ``PIPELINE``)."""

    def __init__(self) -> None:
        self.commands: list[str] = []

    @property
    def count(self) -> int:
        return len(self.commands)

    def reset(self) -> None:
        self.commands.clear()

    def add(self, name: object) -> None:
        self.commands.append(name.decode() if isinstance(name, bytes) else str(name))


class CountingPipeline(Pipeline):  # type: ignore[type-arg]
    tally: Tally

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        if self.command_stack or self.watching:  # redis-py sends nothing otherwise
            self.tally.add("MULTI/EXEC" if self.transaction or self.explicit_transaction
                           else "PIPELINE")
        return super().execute(raise_on_error)

    def immediate_execute_command(self, *args: Any, **options: Any) -> Any:
        self.tally.add(args[0])
        return super().immediate_execute_command(*args, **options)

    def reset(self) -> None:
        if self.watching and self.connection is not None and self.connection.is_connected:
            self.tally.add("UNWATCH")
        super().reset()


class _Counting:
    """Mixed into a client class: counts its own commands and hands out counting pipelines."""

    tally: Tally
    connection_pool: Any
    response_callbacks: Any

    def execute_command(self, *args: Any, **options: Any) -> Any:
        self.tally.add(args[0])
        return super().execute_command(*args, **options)  # type: ignore[misc]

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Pipeline:  # type: ignore[type-arg]
        pipe = CountingPipeline(self.connection_pool, self.response_callbacks, transaction,
                                shard_hint)
        pipe.tally = self.tally
        return pipe


class CountingFakeRedis(_Counting, fakeredis.FakeRedis):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.tally = Tally()
        super().__init__(*args, **kwargs)


class CountingRedis(_Counting, redis.Redis):  # type: ignore[type-arg]
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.tally = Tally()
        super().__init__(*args, **kwargs)
