"""The word count of the design's example pipeline (examples/wordcount.spg).

Each function is a vertex; its parameters are filled by name: parents' outputs,
``context``, ``partition`` / ``partitions`` and the arguments written in the ``.spg``.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

WORDS = ("the quick brown fox jumps over lazy dog data flow graph vertex channel "
         "context origin union durable journal server gateway heartbeat stage").split()


def ensure_corpus(path: Path, lines: int = 20_000, seed: int = 7) -> Path:
    """Write a deterministic corpus at ``path`` unless one is there."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        rng = random.Random(seed)
        text = "\n".join(" ".join(rng.choices(WORDS, k=12)).capitalize() for _ in range(lines))
        tmp = path.with_name(path.name + f".{random.getrandbits(32):x}.tmp")
        tmp.write_text(text + "\n")
        tmp.replace(path)
    return path


def read_lines(context, partition: int, partitions: int) -> list[str]:
    """Every ``partitions``-th line of the corpus, starting at line ``partition``."""
    path = ensure_corpus(Path(context["corpus"]))
    with open(path, encoding="utf-8") as corpus:
        return [line for i, line in enumerate(corpus) if i % partitions == partition]


def count_words(read: list[str], context) -> Counter:
    lowercase = context["lowercase"]
    counts: Counter = Counter()
    for line in read:
        counts.update((line.lower() if lowercase else line).split())
    return counts


def combine(partials: list[Counter]) -> Counter:
    """Associative: combining partial counts in any grouping gives the same total."""
    total: Counter = Counter()
    for partial in partials:
        total.update(partial)
    return total


def merge_counts(count: list[Counter]) -> Counter:
    return combine(count)


def top_words(merge: Counter, n: int = 10) -> list[tuple[str, int]]:
    return sorted(merge.items(), key=lambda item: (-item[1], item[0]))[:n]


def audit(report: list[tuple[str, int]], context) -> dict:
    return {"owner": context["owner"], "words": len(report),
            "total": sum(count for _, count in report)}


def notify(report: list[tuple[str, int]], context) -> str:
    word, count = report[0]
    return f"{context['owner']}: most frequent word is {word!r} ({count} times)"


def archive(notify: str) -> str:
    return notify.upper()
