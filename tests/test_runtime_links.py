"""The end of a job as the gateway's links see it: ``end`` goes to every server and the
gateway waits (a bounded time) for each server's ``ended``, so that once a run returns
no server still holds the job's outputs or makes shared-memory segments for it.

Each test stands in for servers with ROUTER sockets on random ports of 127.0.0.1.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import pytest
import zmq

from serpytor.runtime.links import Link, await_ended, open_link

JOB = "job1"


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    context = zmq.Context()
    yield context
    context.destroy(0)


def fake_server(ctx: zmq.Context) -> tuple[zmq.Socket, str]:
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind("tcp://127.0.0.1:*")
    return sock, sock.getsockopt_string(zmq.LAST_ENDPOINT)


def linked(ctx: zmq.Context, count: int) -> tuple[list[zmq.Socket], list[Link]]:
    servers, links = [], []
    for index in range(count):
        sock, address = fake_server(ctx)
        servers.append(sock)
        links.append(open_link(ctx, index, address, f"gw-{index}".encode()))
    return servers, links


def answer_end(server: zmq.Socket, *replies: dict, delay: float = 0.0) -> threading.Thread:
    """A thread that takes the end off ``server`` and answers with ``replies``."""
    def serve() -> None:
        if not server.poll(5000):
            return
        identity, frame = server.recv_multipart()
        assert json.loads(frame) == {"type": "end", "job": JOB}
        time.sleep(delay)
        for reply in replies:
            server.send_multipart([identity, json.dumps(reply).encode()])

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def end_all(links: list[Link], seconds: float) -> tuple[list[Link], float]:
    started = time.monotonic()
    for link in links:
        link.send({"type": "end", "job": JOB})
    unanswered = await_ended(links, JOB, seconds)
    return unanswered, time.monotonic() - started


def close(servers: list[zmq.Socket], links: list[Link],
          threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.join(6)
    for link in links:
        link.close()
    for server in servers:
        server.close(0)


def test_the_end_waits_for_every_server_to_confirm(ctx):
    servers, links = linked(ctx, 2)
    threads = [answer_end(servers[0], {"type": "ended", "job": JOB}),
               answer_end(servers[1], {"type": "ended", "job": JOB}, delay=0.3)]
    unanswered, seconds = end_all(links, 5.0)
    close(servers, links, threads)
    assert unanswered == []
    assert 0.3 <= seconds < 5.0  # it waited for the slow one, not for the deadline


def test_a_server_that_never_confirms_is_named_after_the_deadline(ctx):
    servers, links = linked(ctx, 2)
    threads = [answer_end(servers[0], {"type": "ended", "job": JOB})]
    unanswered, seconds = end_all(links, 0.5)
    close(servers, links, threads)
    assert unanswered == [links[1]]
    assert 0.5 <= seconds < 3.0


def test_late_results_and_other_jobs_ends_are_not_taken_for_the_confirmation(ctx):
    servers, links = linked(ctx, 1)
    threads = [answer_end(servers[0], {"type": "done", "job": JOB, "results": []},
                          {"type": "ended", "job": "another"})]
    unanswered, _ = end_all(links, 0.6)
    assert unanswered == links
    threads = [answer_end(servers[0], {"type": "ended", "job": JOB})]
    unanswered, _ = end_all(links, 5.0)
    close(servers, links, threads)
    assert unanswered == []


def test_garbled_replies_are_skipped_until_the_confirmation(ctx):
    servers, links = linked(ctx, 1)

    def garble_then_confirm() -> None:
        if not servers[0].poll(5000):
            return
        identity, _ = servers[0].recv_multipart()
        servers[0].send_multipart([identity, b"\x00not json"])
        servers[0].send_multipart([identity, json.dumps({"type": "ended", "job": JOB}).encode()])

    thread = threading.Thread(target=garble_then_confirm, daemon=True)
    thread.start()
    unanswered, _ = end_all(links, 5.0)
    close(servers, links, [thread])
    assert unanswered == []
