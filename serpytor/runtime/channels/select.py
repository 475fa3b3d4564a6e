"""Choosing a channel kind for an edge (Dryad's rule, made explicit).

* a hint from the ``.spg`` (``shm``, ``tcp``, ``file``) wins -- except that ``shm``
  between two hosts cannot work and is an error, not a silent downgrade;
* ``auto`` picks ``shm`` when producer and consumer run on one host (fastest: one
  memcpy in, views out), else ``tcp`` when both run at the same time (no disk), else
  ``file`` (the durable default: the consumer may start after the producer is gone).

The kind chosen, and the hint it came from, are recorded in the descriptor
(``kind``, ``requested``) and so in both ends' ``statistics()``.
"""

from __future__ import annotations

import socket

from ...compiler.kinds import ChannelKind
from .errors import ChannelError

_LOCAL_NAMES = frozenset({"", "localhost", "127.0.0.1", "::1", "localhost.localdomain"})


def same_host(a: str, b: str) -> bool:
    """True when two host names denote one machine (``localhost`` aliases included)."""
    a, b = a.strip().lower(), b.strip().lower()
    local = _LOCAL_NAMES | {socket.gethostname().lower()}
    return a == b or (a in local and b in local)


def select_channel(hint: ChannelKind, producer_host: str, consumer_host: str,
                   concurrent: bool) -> ChannelKind:
    """The kind of channel to use for one edge; see the module docstring."""
    hint = ChannelKind(hint)
    together = same_host(producer_host, consumer_host)
    if hint == ChannelKind.SHM and not together:
        raise ChannelError(f"an shm channel needs both ends on one host, but the producer "
                           f"runs on {producer_host!r} and the consumer on {consumer_host!r}; "
                           f"co-locate them or use tcp or file")
    if hint != ChannelKind.AUTO:
        return hint
    if together:
        return ChannelKind.SHM
    return ChannelKind.TCP if concurrent else ChannelKind.FILE
