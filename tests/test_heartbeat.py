"""The heartbeat process and the status block it reads.

A "dummy server" below is a small Python process that writes a status block the way a
server does (touching it every 20 ms) and ends when the test tells it to on stdin —
with an exit status, with a status it recorded first — or when it is SIGKILLed. Every
process is started on 127.0.0.1 with a random port and stopped in a ``finally``; every
receive has a timeout.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import random
import select
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Iterator

import psutil
import pytest
import zmq

from serpytor.runtime import status as status_module
from serpytor.runtime.heartbeat import (MAX_REQUEST_BYTES, READY_PREFIX, CpuSampler,
                                        HeartbeatClient, ServerWatch, gpu_figures,
                                        poll_heartbeat, spawn_heartbeat, stop_heartbeat)
from serpytor.runtime.status import StatusBlock, status_path

ROOT = Path(__file__).resolve().parent.parent
ENTRY = "import sys; from serpytor.runtime.heartbeat import main; sys.exit(main(sys.argv[1:]))"
START_S = 20.0
REPLY_S = 5.0
LINGER_S = 1.0
BEAT_KEYS = {"type", "id", "identity", "host", "pid", "time", "cpu", "memory", "disk", "gpu",
             "load", "server", "rejected"}
SERVER_KEYS = {"pid", "alive", "incarnation", "running", "done", "queued", "held",
               "status_age", "exit"}

DUMMY_SERVER = r"""
import os, select, sys
from serpytor.runtime.status import StatusBlock
path, mode = sys.argv[1], sys.argv[2]
block = StatusBlock.create(path, incarnation="00112233aabbccdd")
block.counts(done=7, queued=2, held=3)
block.running("job-42", 5, 2)
if mode == "spawn":
    from serpytor.runtime.heartbeat import spawn_heartbeat
    beat, address = spawn_heartbeat("127.0.0.1", os.getpid(), path, "dummy-heartbeat",
                                    linger_s=float(sys.argv[3]))
    print("heartbeat", beat.pid, address, flush=True)
print("ready", flush=True)
while True:
    block.touch()
    if select.select([sys.stdin], [], [], 0.02)[0]:
        command = sys.stdin.readline().split()
        if not command:
            os._exit(0)  # the test is gone
        if command[0] == "record":
            block.exited(int(command[1]))
        os._exit(int(command[1]))
"""

STATUS_WRITER = r"""
import sys, time
from serpytor.runtime.status import StatusBlock
block = StatusBlock.create(sys.argv[1], incarnation="feedfacefeedface")
print("ready", flush=True)
deadline, i = time.monotonic() + float(sys.argv[2]), 0
while time.monotonic() < deadline:
    i += 1
    block.running(f"job-{i}", i, i)
    block.counts(done=i, queued=i, held=i)
print(i, flush=True)
sys.stdin.readline()
block.close()
"""


# ---- helpers ------------------------------------------------------------------------
def child_env() -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


def read_line(process: subprocess.Popen, deadline: float) -> str:
    """The next line of the child's stdout before ``deadline``, or fail. Reads the raw
    descriptor and keeps the rest: a buffered readline could swallow a second line
    that a selector then never announces."""
    pending = _pending.setdefault(process.pid, bytearray())
    fd = process.stdout.fileno()
    while b"\n" not in pending:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            pytest.fail(f"child {process.pid} printed nothing in time")
        if select.select([fd], [], [], min(remaining, 0.1))[0]:
            chunk = os.read(fd, 4096)
            assert chunk, f"child {process.pid} closed its stdout (status {process.poll()})"
            pending += chunk
    line, _, rest = bytes(pending).partition(b"\n")
    pending[:] = rest
    return line.decode().strip()


_pending: dict[int, bytearray] = {}  # what read_line read past a line, per child


def finish(process: subprocess.Popen) -> None:
    """Kill (if still running), reap and close the streams of a child."""
    if process.poll() is None:
        process.kill()
    process.wait(10)
    _pending.pop(process.pid, None)
    for stream in (process.stdin, process.stdout):
        if stream is not None:
            stream.close()


@contextlib.contextmanager
def standalone_heartbeat(*args: str, stderr: Any = subprocess.DEVNULL
                         ) -> Iterator[tuple[subprocess.Popen, str]]:
    """A heartbeat watching no server; (process, address)."""
    process = subprocess.Popen([sys.executable, "-c", ENTRY, "--bind", "tcp://127.0.0.1:*",
                                *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=stderr, env=child_env())
    try:
        line = read_line(process, time.monotonic() + START_S)
        assert line.startswith(READY_PREFIX), line
        yield process, line.rsplit(" ", 1)[-1]
    finally:
        stop_heartbeat(process)
        finish(process)


@contextlib.contextmanager
def dummy_server(path: Path, *extra: str) -> Iterator[subprocess.Popen]:
    process = subprocess.Popen([sys.executable, "-c", DUMMY_SERVER, str(path), *extra],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, env=child_env())
    try:
        yield process
    finally:
        finish(process)


@contextlib.contextmanager
def watching(path: Path, watched: subprocess.Popen) -> Iterator[tuple[subprocess.Popen, str]]:
    process, address = spawn_heartbeat("127.0.0.1", watched.pid, str(path), "watcher",
                                       linger_s=LINGER_S)
    try:
        yield process, address
    finally:
        stop_heartbeat(process)


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


@pytest.fixture(scope="module")
def module_ctx() -> Iterator[zmq.Context]:
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


@pytest.fixture(scope="module")
def heartbeat(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """One standalone heartbeat shared by the request tests; its log in a file."""
    root = tmp_path_factory.mktemp("heartbeat")
    log_path = root / "stderr.log"
    channel_dir = root / "channels"
    with open(log_path, "w") as log, standalone_heartbeat(
            "--name", "hb-under-test", "--channel-dir", str(channel_dir),
            stderr=log) as (process, address):
        yield SimpleNamespace(process=process, address=address, log=log_path,
                              channel_dir=str(channel_dir))


def dealer(ctx: zmq.Context, address: str, routing_id: bytes | None = None) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if routing_id is not None:
        sock.setsockopt(zmq.ROUTING_ID, routing_id)
    sock.connect(address)
    return sock


def exchange(sock: zmq.Socket, frames: list[bytes]) -> dict[str, Any]:
    """Send raw frames, return the reply's JSON (its last frame)."""
    sock.send_multipart(frames)
    assert sock.poll(int(REPLY_S * 1000)), f"no reply to {frames!r:.80}"
    return json.loads(sock.recv_multipart()[-1])


def wait_for(ask: Callable[[], dict | None], accept: Callable[[dict], bool],
             timeout_s: float) -> dict:
    """Ask until a reply is accepted; the reply."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = ask()
        if last is not None and accept(last):
            return last
        time.sleep(0.02)
    pytest.fail(f"no acceptable reply within {timeout_s} s; last: {last}")


def is_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    process = subprocess.Popen(["true"])
    process.wait(10)
    return process.pid


# ---- the reply ----------------------------------------------------------------------
def test_beat_has_every_field_with_its_type(heartbeat, module_ctx):
    beat = poll_heartbeat(module_ctx, heartbeat.address, REPLY_S)
    assert beat is not None and set(beat) == BEAT_KEYS
    assert beat["type"] == "beat" and beat["identity"] == "hb-under-test"
    assert beat["pid"] == heartbeat.process.pid and isinstance(beat["host"], str)
    assert isinstance(beat["time"], float)
    assert set(beat["cpu"]) == {"total", "per_core"}
    assert set(beat["memory"]) == {"total", "available", "percent"}
    assert set(beat["disk"]) == {"path", "total", "free", "percent"}
    assert isinstance(beat["load"], list) and len(beat["load"]) == 3
    assert beat["server"] is None and isinstance(beat["rejected"], int)


def test_machine_figures_are_plausible(heartbeat, module_ctx):
    with HeartbeatClient(module_ctx, heartbeat.address) as client:
        first = client.poll(REPLY_S)
        time.sleep(0.6)  # past one CPU sampling interval: a measured figure, not since-boot
        beat = client.poll(REPLY_S)
    assert first is not None and beat is not None
    assert abs(beat["time"] - time.time()) < 5
    cpu = beat["cpu"]
    assert 0 <= cpu["total"] <= 100 and len(cpu["per_core"]) == psutil.cpu_count()
    assert all(0 <= p <= 100 for p in cpu["per_core"])
    memory = beat["memory"]
    assert memory["total"] == psutil.virtual_memory().total
    assert 0 < memory["available"] <= memory["total"] and 0 <= memory["percent"] <= 100
    disk = beat["disk"]  # the channel directory does not exist: its nearest ancestor
    assert disk["path"] == heartbeat.channel_dir
    assert disk["total"] == psutil.disk_usage(tempfile.gettempdir()).total
    assert 0 <= disk["free"] <= disk["total"] and 0 <= disk["percent"] <= 100
    assert all(x >= 0 for x in beat["load"])


def test_gpu_is_null_without_nvml(heartbeat, module_ctx):
    if importlib.util.find_spec("pynvml") is not None:
        pytest.skip("pynvml is installed here")
    beat = poll_heartbeat(module_ctx, heartbeat.address, REPLY_S)
    assert beat is not None and "gpu" in beat and beat["gpu"] is None


class FakeNvml:
    """The part of pynvml the heartbeat uses: two devices, or a failing driver."""

    def __init__(self, devices: int, fail: bool = False) -> None:
        self.devices, self.fail = devices, fail

    def nvmlDeviceGetCount(self) -> int:
        if self.fail:
            raise RuntimeError("NVML driver gone")
        return self.devices

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetName(self, handle: int) -> bytes:
        return f"Fake GPU {handle}".encode()

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(total=1000, used=250 * (handle + 1))

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(gpu=10 * (handle + 1))


def test_gpu_figures_list_each_device_or_are_null():
    devices = gpu_figures(FakeNvml(2))
    assert [d["name"] for d in devices] == ["Fake GPU 0", "Fake GPU 1"]
    assert [d["utilization"] for d in devices] == [10, 20]
    assert devices[1]["memory"] == {"total": 1000, "used": 500, "percent": 50.0}
    assert gpu_figures(FakeNvml(0)) is None
    assert gpu_figures(FakeNvml(2, fail=True)) is None
    assert gpu_figures(None) is None


def test_cpu_is_resampled_on_the_loop_clock_only():
    now = [100.0]
    sampler = CpuSampler(interval_s=0.5, clock=lambda: now[0])
    since_boot = sampler.figures
    assert 0 <= since_boot["total"] <= 100
    sampler.tick(100.4)
    assert sampler.figures is since_boot
    sampler.tick(100.6)
    assert sampler.figures is not since_boot and 0 <= sampler.figures["total"] <= 100


# ---- rejected requests --------------------------------------------------------------
@pytest.mark.parametrize("frames, says", [
    ([b'{"type": "heartbeat"'], "not JSON"),  # truncated
    ([b"\xff\xfe garbage"], "not JSON"),
    ([b"[" * 60000], "not JSON"),  # nested too deep for the parser
    ([b"1" * 5000], "not JSON"),  # an integer too long to convert
    ([b'["heartbeat"]'], "not an object"),
    ([b'{"kind": "heartbeat"}'], "unknown request type"),
    ([b'{"type": "ping"}'], "unknown request type"),
    ([b'{"type": "heartbeat"}', b"extra"], "one JSON frame"),
    ([b'{"type": "heartbeat", "pad": "' + b"x" * MAX_REQUEST_BYTES + b'"}'], "exceeds"),
])
def test_bad_request_gets_an_error_and_the_heartbeat_serves_on(heartbeat, module_ctx,
                                                                frames, says):
    sock = dealer(module_ctx, heartbeat.address)
    try:
        before = exchange(sock, [b'{"type": "heartbeat"}'])["rejected"]
        error = exchange(sock, frames)
        assert error["type"] == "error" and says in error["message"]
        assert error["rejected"] == before + 1
        after = exchange(sock, [b'{"type": "heartbeat"}'])
        assert after["type"] == "beat" and after["rejected"] == before + 1
    finally:
        sock.close(0)


def test_error_echoes_the_request_id(heartbeat, module_ctx):
    sock = dealer(module_ctx, heartbeat.address)
    try:
        error = exchange(sock, [b'{"type": "nonsense", "id": 77}'])
        beat = exchange(sock, [b'{"type": "heartbeat", "id": "abc"}'])
    finally:
        sock.close(0)
    assert (error["type"], error["id"]) == ("error", 77)
    assert (beat["type"], beat["id"]) == ("beat", "abc")


def test_rejections_are_logged_once_per_peer(heartbeat, module_ctx):
    peers = {b"peer-once": 3, b"peer-other": 1}
    for routing_id, count in peers.items():
        sock = dealer(module_ctx, heartbeat.address, routing_id)
        try:
            for _ in range(count):
                assert exchange(sock, [b"not json"])["type"] == "error"
        finally:
            sock.close(0)
    log = heartbeat.log.read_text()
    assert log.count("peer-once") == 1 and log.count("peer-other") == 1


def test_a_req_socket_gets_its_envelope_back(heartbeat, module_ctx):
    sock = module_ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(heartbeat.address)
    try:
        sock.send(b'{"type": "heartbeat"}')
        assert sock.poll(int(REPLY_S * 1000))
        assert json.loads(sock.recv())["type"] == "beat"
    finally:
        sock.close(0)


def _mutated_request(rng: random.Random) -> list[bytes]:
    valid = b'{"type":"heartbeat","id":1}'
    kind = rng.randrange(6)
    if kind == 0:
        return [rng.randbytes(rng.randrange(300))]
    if kind == 1:
        data = bytearray(valid)
        for _ in range(rng.randrange(1, 5)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return [bytes(data)]
    if kind == 2:
        return [valid[:rng.randrange(len(valid))]]
    if kind == 3:
        value = rng.choice([[], 3.5, "heartbeat", None, {"type": rng.randrange(9)},
                            {"type": "heartbeat", "id": [1]}, {"type": "HEARTBEAT"}])
        return [json.dumps(value).encode()]
    if kind == 4:
        return [valid] + [rng.randbytes(rng.randrange(20)) for _ in range(rng.randrange(1, 3))]
    cut = rng.randrange(len(valid))
    return [valid[:cut] + rng.randbytes(rng.randrange(1, 8)) + valid[cut:]]


def _is_valid(frames: list[bytes]) -> bool:
    """The spec's oracle: one frame (after a REQ delimiter) of a JSON object of type
    heartbeat, within the size limit."""
    if len(frames) == 2 and frames[0] == b"":
        frames = frames[1:]
    if len(frames) != 1 or len(frames[0]) > MAX_REQUEST_BYTES:
        return False
    try:
        request = json.loads(frames[0])
    except (ValueError, RecursionError):
        return False
    return isinstance(request, dict) and request.get("type") == "heartbeat"


def test_fuzzed_requests_are_answered_counted_and_survived(heartbeat, module_ctx):
    rng = random.Random(20240617)
    cases = [_mutated_request(rng) for _ in range(300)]
    sock = dealer(module_ctx, heartbeat.address)
    try:
        before = exchange(sock, [b'{"type": "heartbeat"}'])["rejected"]
        errors = 0
        for frames in cases:
            reply = exchange(sock, frames)
            assert reply["type"] == ("beat" if _is_valid(frames) else "error"), frames
            errors += reply["type"] == "error"
        after = exchange(sock, [b'{"type": "heartbeat"}'])
    finally:
        sock.close(0)
    assert errors > 200  # most mutations break the request
    assert after["type"] == "beat" and after["rejected"] == before + errors
    assert heartbeat.process.poll() is None


# ---- the client ---------------------------------------------------------------------
def test_client_skips_garbage_and_late_replies(ctx):
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    client = HeartbeatClient(ctx, f"tcp://127.0.0.1:{port}")
    try:
        ident = client.request()
        assert router.poll(int(REPLY_S * 1000))
        peer, request = router.recv_multipart()
        assert json.loads(request) == {"type": "heartbeat", "id": ident}
        for frames in ([b"not json"], [b"[1]"], [b"{}", b"{}"],
                       [json.dumps({"type": "beat", "id": ident - 1}).encode()],
                       [json.dumps({"type": "beat", "id": ident, "n": 1}).encode()]):
            router.send_multipart([peer, *frames])
        found: list[dict] = []
        deadline = time.monotonic() + REPLY_S
        while not found and time.monotonic() < deadline:
            if client.sock.poll(100):
                found = client.replies()
        assert found == [{"type": "beat", "id": ident, "n": 1}]
    finally:
        client.close()
        router.close(0)


def test_client_poll_returns_none_on_silence(ctx):
    router = ctx.socket(zmq.ROUTER)  # bound, never answers
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    try:
        started = time.monotonic()
        assert poll_heartbeat(ctx, f"tcp://127.0.0.1:{port}", 0.2) is None
        assert 0.19 <= time.monotonic() - started < 2.0
    finally:
        router.close(0)


# ---- the status block ---------------------------------------------------------------
def test_status_block_round_trip(tmp_path):
    path = str(tmp_path / "status.bin")
    with StatusBlock.create(path, incarnation="0123456789abcdef", pid=4242) as block:
        first = StatusBlock.read(path)
        assert first["pid"] == 4242 and first["incarnation"] == "0123456789abcdef"
        assert first["running"] is None and first["exit"] is None
        block.running("x" * 31 + "é", 12, 3)  # 33 UTF-8 bytes: cut before the é
        block.counts(done=10, held=4)
        block.counts(queued=6)
        read = StatusBlock.read(path)
        assert read["running"]["job"] == "x" * 31
        assert (read["running"]["vertex"], read["running"]["attempt"]) == (12, 3)
        assert abs(read["running"]["started_at"] - time.time()) < 5
        assert (read["done"], read["queued"], read["held"]) == (10, 6, 4)
        assert read["sequence"] > first["sequence"] and read["sequence"] % 2 == 0
        block.idle()
        block.exited(75)
        last = StatusBlock.read(path)
        assert last["running"] is None and last["exit"] == 75
        assert last["updated_at"] >= read["updated_at"]
    assert not os.path.exists(path)


def test_status_block_close_spares_a_newer_block(tmp_path):
    path = str(tmp_path / "status.bin")
    old = StatusBlock.create(path, incarnation="aaaaaaaaaaaaaaaa")
    new = StatusBlock.create(path, incarnation="bbbbbbbbbbbbbbbb")  # a restart in place
    old.close()
    assert StatusBlock.read(path)["incarnation"] == "bbbbbbbbbbbbbbbb"
    new.close()
    assert not os.path.exists(path)


def test_status_path_is_per_pid_in_the_temp_directory():
    path = status_path(1234)
    assert os.path.dirname(path) == tempfile.gettempdir() and "1234" in os.path.basename(path)
    assert status_path() == status_path(os.getpid()) != path
    assert not path.startswith("/dev/shm")


def test_read_of_a_missing_or_foreign_file_is_none(tmp_path):
    assert StatusBlock.read(str(tmp_path / "missing.bin")) is None
    foreign = tmp_path / "foreign.bin"
    foreign.write_bytes(b"not a status block" * 20)
    assert StatusBlock.read(str(foreign)) is None
    short = tmp_path / "short.bin"
    with StatusBlock.create(str(tmp_path / "whole.bin")) as block:
        short.write_bytes(Path(block.path).read_bytes()[:40])
    assert StatusBlock.read(str(short)) is None


def test_torn_reads_are_detected(tmp_path):
    path = str(tmp_path / "status.bin")
    with StatusBlock.create(path) as block:
        block.running("job-a", 1, 1)
        block.counts(done=1, queued=1, held=1)
        first = Path(path).read_bytes()
        block.running("job-b", 2, 2)
        block.counts(done=2, queued=2, held=2)
        second = Path(path).read_bytes()
        sequence = StatusBlock.read(path)["sequence"]
        with open(path, "r+b") as raw:
            def overwrite(offset: int, data: bytes) -> None:
                raw.seek(offset)
                raw.write(data)
                raw.flush()

            overwrite(status_module.SEQUENCE_AT, struct.pack("<Q", sequence + 1))
            assert StatusBlock.read(path) is None  # a writer stopped halfway
            overwrite(status_module.SEQUENCE_AT, struct.pack("<Q", sequence))
            assert StatusBlock.read(path)["running"]["job"] == "job-b"
            middle = (status_module.BODY_AT + status_module.CRC_AT) // 2
            overwrite(0, first[:middle])  # a copy that met a write halfway: half old
            assert StatusBlock.read(path) is None
            overwrite(0, second)
            assert StatusBlock.read(path)["running"]["job"] == "job-b"


def test_status_writes_cost_microseconds(tmp_path):
    with StatusBlock.create(str(tmp_path / "status.bin")) as block:
        started = time.perf_counter()
        for i in range(20000):
            block.running("job-1", i, 1)
        per_write = (time.perf_counter() - started) / 20000
    assert per_write < 50e-6, f"{per_write * 1e6:.1f} us per write"


def test_concurrent_writer_and_reader_never_see_a_torn_block(tmp_path):
    path = str(tmp_path / "status.bin")
    writer = subprocess.Popen([sys.executable, "-c", STATUS_WRITER, path, "1.2"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, env=child_env())
    try:
        assert read_line(writer, time.monotonic() + START_S) == "ready"
        whole, missed, seen = 0, 0, set()
        deadline = time.monotonic() + 0.8
        while time.monotonic() < deadline:
            block = StatusBlock.read(path)
            if block is None:
                missed += 1
                continue
            whole += 1
            running = block["running"]
            if running is None:
                continue  # the first write, before the loop
            i = running["vertex"]
            assert running["job"] == f"job-{i}" and running["attempt"] == i, block
            assert block["done"] == block["queued"] == block["held"] in (i - 1, i), block
            seen.add(i)
        writes = int(read_line(writer, time.monotonic() + START_S))
    finally:
        finish(writer)
    assert writes > 1000 and len(seen) > 10 and whole > 10 * missed, \
        (writes, len(seen), whole, missed)


# ---- watching a server, in this process ---------------------------------------------
def test_watch_of_a_reaped_server_reports_what_it_recorded(tmp_path):
    path = str(tmp_path / "status.bin")
    pid = dead_pid()
    block = StatusBlock.create(path, incarnation="1111222233334444", pid=pid)
    try:
        block.running("job-7", 3, 1)
        block.exited(5)
        watch = ServerWatch(pid, path, linger_s=0.0)
        report = watch.report(time.time())
        assert set(report) == SERVER_KEYS
        assert not report["alive"] and report["exit"] == 5
        assert report["running"]["vertex"] == 3 and report["incarnation"] == "1111222233334444"
        assert watch.finished(time.monotonic())
        watch.cleanup()
        assert not os.path.exists(path)
    finally:
        block.close()


def test_watch_of_a_live_process_reports_its_block(tmp_path):
    path = str(tmp_path / "status.bin")
    with StatusBlock.create(path, incarnation="5555666677778888") as block:
        watch = ServerWatch(os.getpid(), path, linger_s=10.0)
        assert watch.report(time.time())["running"] is None
        block.running("job-9", 4, 2)
        watch.tick(time.monotonic() + 1.0)
        report = watch.report(time.time())
        assert report["alive"] and report["exit"] is None
        assert report["running"]["job"] == "job-9" and report["running"]["seconds"] < 5
        assert report["status_age"] < 5
        assert not watch.finished(time.monotonic() + 100)
        watch.cleanup()  # a live server's block is its own
        assert os.path.exists(path)


def test_watch_ignores_a_block_of_another_pid(tmp_path):
    path = str(tmp_path / "status.bin")
    with StatusBlock.create(path, pid=os.getpid() + 100000):
        report = ServerWatch(os.getpid(), path, linger_s=1.0).report(time.time())
    assert report["alive"] and report["incarnation"] is None and report["status_age"] is None


# ---- watching a server, across processes --------------------------------------------
@pytest.mark.parametrize("ending, status", [("exit 3", 3), ("kill", -9)])
def test_heartbeat_reports_a_dead_server_then_lingers_and_exits(tmp_path, ctx, ending, status):
    path = tmp_path / "status.bin"
    with dummy_server(path, "plain") as server:
        assert read_line(server, time.monotonic() + START_S) == "ready"
        with watching(path, server) as (beat, address), HeartbeatClient(ctx, address) as client:
            live = client.poll(REPLY_S)["server"]
            assert set(live) == SERVER_KEYS and live["alive"] and live["exit"] is None
            assert live["incarnation"] == "00112233aabbccdd" and live["pid"] == server.pid
            assert (live["done"], live["queued"], live["held"]) == (7, 2, 3)
            if ending == "kill":
                server.kill()
            else:
                server.stdin.write(ending.encode() + b"\n")
                server.stdin.flush()
            # not reaped yet: the heartbeat reads the exit status of the zombie
            dead = wait_for(lambda: client.poll(REPLY_S),
                            lambda reply: not reply["server"]["alive"], 5.0)["server"]
            seen_dead = time.monotonic()
            assert dead["exit"] == status
            assert {k: dead["running"][k] for k in ("job", "vertex", "attempt")} == \
                {"job": "job-42", "vertex": 5, "attempt": 2}
            later = client.poll(REPLY_S)["server"]
            assert later["running"]["seconds"] == dead["running"]["seconds"]  # frozen at death
            assert beat.wait(LINGER_S + 5) == 0
            assert time.monotonic() - seen_dead > LINGER_S / 2
            assert not path.exists()


def test_a_stopped_server_is_alive_but_its_status_ages(tmp_path, ctx):
    path = tmp_path / "status.bin"
    with dummy_server(path, "plain") as server:
        assert read_line(server, time.monotonic() + START_S) == "ready"
        with watching(path, server) as (beat, address), HeartbeatClient(ctx, address) as client:
            def ask() -> dict:
                return client.poll(REPLY_S)["server"]

            wait_for(ask, lambda s: s["status_age"] < 0.5, 5.0)
            os.kill(server.pid, signal.SIGSTOP)
            try:
                hung = wait_for(ask, lambda s: s["status_age"] > 1.0, 5.0)
            finally:
                os.kill(server.pid, signal.SIGCONT)
            assert hung["alive"] and hung["running"]["vertex"] == 5
            assert wait_for(ask, lambda s: s["status_age"] < 0.5, 5.0)["alive"]
            assert stop_heartbeat(beat) == 0
        assert path.exists()  # SIGTERM while the server lives: the block stays its own


def test_heartbeat_spawned_by_its_server_outlives_it(tmp_path, ctx):
    path = tmp_path / "status.bin"
    beat_pid = None
    with dummy_server(path, "spawn", str(LINGER_S)) as server:
        try:
            _, pid, address = read_line(server, time.monotonic() + START_S).split()
            beat_pid = int(pid)
            assert read_line(server, time.monotonic() + START_S) == "ready"
            assert psutil.Process(beat_pid).ppid() == server.pid
            with HeartbeatClient(ctx, address) as client:
                assert client.poll(REPLY_S)["server"]["alive"]
                server.kill()
                server.wait(10)  # reaped at once: the heartbeat sees its parent go
                dead = wait_for(lambda: client.poll(REPLY_S),
                                lambda reply: not reply["server"]["alive"], 5.0)
            assert dead["pid"] == beat_pid and dead["server"]["running"]["vertex"] == 5
            deadline = time.monotonic() + LINGER_S + 5
            while not is_gone(beat_pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert is_gone(beat_pid) and not path.exists()
        finally:
            if beat_pid is not None and not is_gone(beat_pid):
                os.kill(beat_pid, signal.SIGKILL)


# ---- the process --------------------------------------------------------------------
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_ends_the_heartbeat_cleanly(ctx, signum):
    with standalone_heartbeat() as (process, address):
        assert poll_heartbeat(ctx, address, REPLY_S)["server"] is None
        process.send_signal(signum)
        assert process.wait(5) == 0


def test_an_address_in_use_is_an_error(ctx):
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    try:
        done = subprocess.run([sys.executable, "-c", ENTRY, "--bind",
                               f"tcp://127.0.0.1:{port}"], capture_output=True, text=True,
                              env=child_env(), timeout=START_S, stdin=subprocess.DEVNULL)
    finally:
        router.close(0)
    assert done.returncode == 1 and "cannot bind" in done.stderr and not done.stdout
