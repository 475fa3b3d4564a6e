"""``serpytor run --gateway ADDR``: submit a plan to a gateway service and wait for it.

The client sends the plan and its options, polls the job's progress (drawing the
progress bar), and when the job is done fetches the sink outputs straight from the
servers holding them (the gateway only says where they are), then tells the gateway
it may end the job and waits until the servers dropped it. A gateway that restarts
meanwhile resumes the job; the client keeps polling it for up to ``patience`` seconds
of silence.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Mapping

import zmq

from ..compiler.plan import Plan, encode_plan
from ..errors import SerpytorError, remote_task_error
from .gateway import ServerUnavailableError, collect_outputs, exception_type
from .protocol import ProtocolError, decode, encode
from .result import RunResult
from .security import SecurityConfig, load_security, secure_client

log = logging.getLogger("serpytor.client")

POLL_S = 0.2
ANSWER_TIMEOUT_S = 10.0
PATIENCE_S = 120.0


class GatewayError(SerpytorError):
    """The gateway refused the job or an option, or stopped answering."""


class GatewayClient:
    """A DEALER to a gateway service; every request waits for its answer, bounded."""

    def __init__(self, address: str, security: SecurityConfig | None = None,
                 ctx: zmq.Context | None = None) -> None:
        self.address = address
        self.ctx = ctx or zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        secure_client(self.sock, security)
        self.sock.connect(address)

    def ask(self, message: dict, *frames: bytes, timeout: float = ANSWER_TIMEOUT_S) -> dict:
        self.sock.send_multipart(encode(message, *frames))
        if not self.sock.poll(timeout * 1000):
            raise GatewayError(f"no gateway answered at {self.address} within {timeout:g} s")
        try:
            reply, _ = decode(self.sock.recv_multipart())
        except ProtocolError as error:
            raise GatewayError(f"the gateway at {self.address} sent garbage: {error}") from None
        if reply["type"] == "error":
            raise GatewayError(f"the gateway at {self.address}: {reply['message']}")
        return reply

    def close(self) -> None:
        self.sock.close(0)

    def __enter__(self) -> "GatewayClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_on_gateway(plan: Plan, address: str, options: Mapping[str, Any],
                   keys: str | None = None, progress: Any = None,
                   patience: float = PATIENCE_S) -> RunResult:
    """Submit ``plan``, wait for it, collect its outputs; the RunResult."""
    security = load_security(keys)
    started = time.perf_counter()
    with GatewayClient(address, security) as client:
        accepted = client.ask({"type": "submit", "options": dict(options)}, encode_plan(plan))
        job = str(accepted["job"])
        state = _wait(client, job, progress, patience)
        result = state["result"] or {}
        if state["state"] == "failed":
            raise _rebuilt(plan, result.get("error") or {})
        outputs = collect_outputs(client.ctx, str(result["server_job"]), result["sinks"],
                                  security)
        _confirm_collected(client, job)
    run_result = _run_result(plan, result, outputs)
    run_result.seconds = time.perf_counter() - started
    return run_result


def _confirm_collected(client: GatewayClient, job: str) -> None:
    """Tell the gateway the outputs are here and wait until it ended the job on its
    servers; the outputs are kept whatever it answers (a warning says what went wrong)."""
    try:
        client.ask({"type": "collected", "job": job})
    except GatewayError as error:
        log.warning("job %s: its end was not confirmed: %s", job, error)


def _wait(client: GatewayClient, job: str, progress: Any, patience: float) -> dict:
    """Poll until the job ends; a silent gateway (restarting) is waited for."""
    silent_since: float | None = None
    while True:
        try:
            state = client.ask({"type": "poll", "job": job}, timeout=2.0)
            silent_since = None
        except GatewayError as error:
            if "no gateway answered" not in str(error):
                raise
            silent_since = silent_since or time.monotonic()
            if time.monotonic() - silent_since > patience:
                raise GatewayError(f"the gateway at {client.address} has not answered for "
                                   f"{patience:g} s (job {job})") from None
            continue
        if progress is not None:
            progress.update(int(state.get("done", 0)))
        if state["state"] != "running":
            return state
        time.sleep(POLL_S)


def _run_result(plan: Plan, result: dict, outputs: dict[str, Any]) -> RunResult:
    run = RunResult.for_plan(plan)
    run.outputs = outputs
    table = run.vertices
    status = result.get("status") or []
    if len(status) == plan.n_vertices:
        table.status[:] = status
        table.seconds[:] = result.get("seconds") or [0.0] * plan.n_vertices
    run.failed_attempts = int((result.get("stats") or {}).get("failed_attempts", 0))
    run.lost_attempts = int(result.get("lost_attempts", 0))
    run.server_events = list(result.get("server_events") or [])
    run.channels = dict(result.get("channels") or {})
    if result.get("error"):
        run.error = _rebuilt(plan, result["error"])
    return run


def _rebuilt(plan: Plan, error: dict) -> BaseException:
    """The job's error raised again here, as the gateway saw it."""
    if not error.get("remote"):
        if "ServerUnavailable" in str(error.get("error_type")):
            return ServerUnavailableError(str(error.get("message")))
        return GatewayError(f"the job failed: {error.get('message')}")
    original = exception_type(str(error.get("error_type", "builtins.Exception")))
    return remote_task_error(original, str(error.get("message", "")), str(error.get("vertex")),
                             error.get("line"), str(error.get("traceback", "")),
                             str(error.get("error_type", "")).rsplit(".", 1)[-1])


__all__ = ["GatewayClient", "GatewayError", "run_on_gateway"]
