"""The input fetcher (serpytor/runtime/transfer.py) facing holders that are gone: what
one holder cannot give is reported per vertex, and once a holder is found gone the
batches queued behind do not wait for it again."""

from __future__ import annotations

import socket
import time

import zmq

from serpytor.runtime.transfer import (GONE_MEMORY_S, HOLDER_GONE_S, FetchError,
                                       InputFetcher, TransferCounts)


def nowhere() -> str:
    """An address on 127.0.0.1 where nothing listens."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{probe.getsockname()[1]}"


def timed_fetch(fetcher: InputFetcher, wanted: dict) -> tuple[float, object]:
    started = time.monotonic()
    fetched = fetcher.fetch("job", wanted)
    return time.monotonic() - started, fetched


def test_a_gone_holder_fails_its_vertices_and_then_fails_at_once():
    ctx = zmq.Context()
    fetcher = InputFetcher(ctx, "here", TransferCounts(), timeout=10)
    try:
        address = nowhere()
        first_s, first = timed_fetch(fetcher, {address: [(3, 0), (4, 0)]})
        assert HOLDER_GONE_S <= first_s < HOLDER_GONE_S + 2
        assert sorted(first.failed) == [3, 4] and first.values == {}
        error = first.failed[3]
        assert isinstance(error, FetchError) and "is gone" in str(error)
        assert sorted(error.lost) == [3, 4]

        again_s, again = timed_fetch(fetcher, {address: [(5, 0)]})
        assert again_s < 0.2 < GONE_MEMORY_S, "a holder found gone was waited for again"
        assert list(again.failed) == [5] and again.failed[5].lost == [5]
    finally:
        fetcher.close()
        ctx.term()


def test_an_address_that_is_not_an_endpoint_fails_its_vertices():
    ctx = zmq.Context()
    fetcher = InputFetcher(ctx, "here", TransferCounts(), timeout=10)
    try:
        _, fetched = timed_fetch(fetcher, {"tcp://no-port": [(1, 0)]})
        assert list(fetched.failed) == [1] and "cannot reach" in str(fetched.failed[1])
    finally:
        fetcher.close()
        ctx.term()
