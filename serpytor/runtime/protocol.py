"""The control plane: JSON messages between gateway and servers (never pickle).

A message is a ZeroMQ multipart: frame 0 is a UTF-8 JSON object with a ``type``;
further frames are opaque payload bytes (a plan file, or vertex data on the data plane).
Headers are encoded and decoded with orjson: the control plane carries a JSON message
per task each way, and the standard library's encoder costs a server more CPU than the
trivial task it reports on.
:func:`decode` checks size limits, JSON, the type and the fields that type needs, and
raises :class:`ProtocolError` naming what is wrong; receivers count and log those and
keep serving.

======================  =================================================================
type                    fields
======================  =================================================================
``job``                 job, plan (frame 1: the .spgc bytes)
``tasks``               job, tasks: [{v, attempt, context, inputs, key}]
``done``                job, results: [{v, attempt, seconds, published, digest, size}]
``failed``              job, v, attempt, error_type, message, traceback
``refused``             job, v, attempt, reason
``release``             job, vertices: [v, ...]  (outputs no longer needed)
``cancel``              job, vertices, attempts  (drop these attempts if not yet started)
``end``                 job
``get``                 job, vertices: [v, ...]  (data plane: fetch outputs)
``data``                job, items: [{v, buffers}] (frames follow)
``ping`` / ``pong``     (liveness of the application port; a pong says what runs)
``error``               message (a reply to a message that could not be decoded)
``submit`` ...          between a client and the gateway service: see service.py
======================  =================================================================
"""

from __future__ import annotations

import json

import orjson
from typing import Any

from ..errors import SerpytorError

MAX_HEADER_BYTES = 16 * 1024 * 1024  # a header is metadata; larger means garbage or abuse
MAX_JOB_ID = 200

REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    "job": ("job",),
    "tasks": ("job", "tasks"),
    "done": ("job", "results"),
    "failed": ("job", "v", "attempt", "error_type", "message"),
    "refused": ("job", "v", "attempt", "reason"),
    "release": ("job", "vertices"),
    "cancel": ("job", "vertices", "attempts"),
    "end": ("job",),
    "ended": ("job",),
    "get": ("job", "vertices"),
    "data": ("job", "items"),
    # a client and the gateway service (serpytor.runtime.service)
    "submit": ("options",),
    "accepted": ("job", "vertices"),
    "poll": ("job",),
    "job-state": ("job", "state"),
    "collected": ("job",),
    "ok": (),
    "status": (),
    "status-report": ("servers", "jobs"),
    "ping": (),
    "pong": (),
    "error": ("message",),
}


class ProtocolError(SerpytorError):
    """A message that is not valid SerPyTor protocol (malformed, truncated, oversized,
    or of an unknown type). The receiver rejects it and keeps serving."""


def json_data_problem(value: Any) -> str | None:
    """Why value cannot travel in a message unchanged (None when it can): JSON has no
    NaN or infinity, and integers travel in 64 bits."""
    try:
        json.dumps(value, allow_nan=False)
        orjson.dumps(value)
    except (TypeError, ValueError) as error:  # orjson's errors are TypeErrors
        return str(error)
    return None


def encode(message: dict[str, Any], *payload: bytes | memoryview) -> list[bytes | memoryview]:
    return [orjson.dumps(message, option=orjson.OPT_NON_STR_KEYS), *payload]


def decode(frames: list[bytes] | list[Any]) -> tuple[dict[str, Any], list[Any]]:
    """The header (validated) and the payload frames."""
    if not frames:
        raise ProtocolError("empty message")
    header = frames[0]
    raw = header.bytes if hasattr(header, "bytes") else header
    if len(raw) > MAX_HEADER_BYTES:
        raise ProtocolError(f"header of {len(raw)} bytes exceeds the {MAX_HEADER_BYTES} limit")
    try:
        message = orjson.loads(raw)
    except (UnicodeDecodeError, ValueError) as error:
        raise ProtocolError(f"header is not JSON: {error}") from None
    except RecursionError:
        raise ProtocolError("header is JSON nested too deeply") from None
    if not isinstance(message, dict):
        raise ProtocolError("header is not a JSON object")
    kind = message.get("type")
    if not isinstance(kind, str) or kind not in REQUIRED_FIELDS:
        raise ProtocolError(f"unknown message type {_shown(kind)}")
    missing = [f for f in REQUIRED_FIELDS[kind] if f not in message]
    if missing:
        raise ProtocolError(f"{kind} message lacks {', '.join(missing)}")
    if "job" in message:
        _check_job_id(kind, message["job"])
    return message, list(frames[1:])


def _check_job_id(kind: str, job: Any) -> None:
    """A job id names directories, segments and journal rows: a short, encodable str."""
    if not isinstance(job, str) or not 0 < len(job) <= MAX_JOB_ID:
        raise ProtocolError(f"{kind} message: job must be a string of 1 to {MAX_JOB_ID} "
                            f"characters, not {_shown(job)}")
    try:
        job.encode()
    except UnicodeEncodeError:
        raise ProtocolError(f"{kind} message: job {job!r} is not valid Unicode") from None


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
