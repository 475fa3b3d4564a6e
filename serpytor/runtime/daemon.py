"""What every long-running SerPyTor process does the same way: log setup, a ready line
on stdout (the parent waits for it), and serving until SIGTERM or SIGINT."""

from __future__ import annotations

import logging
import signal
import subprocess
import threading
from typing import Callable


def configure_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")


def serve_until_signalled(ready_line: str, serve: Callable[[threading.Event], None]) -> int:
    """Print ``ready_line``, then ``serve(stop)`` until SIGTERM/SIGINT sets ``stop``; 0."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    print(ready_line, flush=True)
    serve(stop)
    return 0


def terminate(process: subprocess.Popen, timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL if the process has not exited within ``timeout``; reaped."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)
