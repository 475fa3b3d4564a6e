"""The output store and the journal underneath durable execution: pack records (a
pickle, or a frame when the value has out-of-band buffers) that outlive their process
once the store commits; journal records committed by a writer thread and found by
lookups before and after their commit; journal keys in the form journals already
hold."""

from __future__ import annotations

import hashlib
import json
import pickle
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import serpytor
from serpytor.compiler.plan import SMALL_BATCH
from serpytor.runtime.api import load_pipeline
from serpytor.runtime.context import ContextTracker
from serpytor.runtime.identity import (NO_ARGUMENTS, KeyMaker, canonical, digest,
                                       function_identity, input_entry, inputs_text,
                                       vertex_key)
from serpytor.runtime import journal as journal_module
from serpytor.runtime.journal import Journal
from serpytor.runtime.packs import PACK_LIMIT, WRITE_AT, digest_of, split_name
from serpytor.runtime.store import OutputError, OutputStore

ROOT = Path(__file__).resolve().parent.parent


def record_of(store: OutputStore, path: str) -> bytes:
    """The bytes of one pack record, read straight from the file."""
    pack, offset, length = split_name(path)
    with open(store.root.parent / pack, "rb") as file:
        file.seek(offset)
        return file.read(length)


# ---- pack records ------------------------------------------------------------------------
@pytest.mark.parametrize("value", [7, "text", {"a": [1, 2.5, None]}, b"small bytes"])
def test_a_small_value_is_stored_as_its_pickle(tmp_path, value):
    with OutputStore(tmp_path) as store:
        stored = store.put("k", "v", value)
        store.commit()
        data = record_of(store, stored.path)
        assert data[:1] == b"\x80" and pickle.loads(data) == value
        assert stored.size == len(data)
        assert store.get(stored.path, stored.digest) == value


@pytest.mark.parametrize("value", [7, [1, 2, 3], np.ones(1000)], ids=["int", "list", "frame"])
def test_a_record_is_named_and_digested_as_the_pack_holds_it(tmp_path, value):
    """Whichever way a record is put, its path names its place in the pack and its
    digest is the digest of the bytes there (a child's key is made from that digest)."""
    with OutputStore(tmp_path) as store:
        store.put("k0", "v", "something before it")
        stored = store.put("k", "v", value)
        store.commit()
        data = record_of(store, stored.path)
        assert stored.digest == digest_of(data) and stored.size == len(data)
        assert split_name(stored.path)[0] == f"outputs/packs/{store.pack.name}"


def test_a_value_with_buffers_is_stored_as_a_frame(tmp_path):
    array = np.arange(2000, dtype=np.float64)  # 16 kB: out of band, under PACK_LIMIT
    with OutputStore(tmp_path) as store:
        stored = store.put("k", "v", array)
        store.commit()
        assert record_of(store, stored.path)[:4] == b"SPTF"
        np.testing.assert_array_equal(store.get(stored.path, stored.digest), array)


@pytest.mark.parametrize("value", [12345, np.ones(1000)], ids=["pickle", "frame"])
def test_a_damaged_record_is_an_output_error(tmp_path, value):
    with OutputStore(tmp_path) as store:
        stored = store.put("k", "v", value)
        store.commit()
        pack, offset, length = split_name(stored.path)
        with open(store.root.parent / pack, "r+b") as file:
            file.seek(offset + length - 1)
            last = file.read(1)
            file.seek(offset + length - 1)
            file.write(bytes([last[0] ^ 0xFF]))
        with pytest.raises(OutputError, match="damaged"):
            store.get(stored.path, stored.digest)


def test_equal_values_have_equal_digests_wherever_stored(tmp_path):
    """A digest names the value, not where it is: a child's key is the same when its
    parent re-runs and produces the same output."""
    with OutputStore(tmp_path / "a") as one, OutputStore(tmp_path / "b") as other:
        first, second = one.put("k1", "v", [1, 2, 3]), other.put("k2", "v", [1, 2, 3])
        one.commit()
        other.commit()
        assert first.digest == second.digest and first.path != second.path
        assert one.put("k3", "v", [1, 2, 4]).digest != first.digest


def test_a_pack_holds_more_than_one_write_of_records(tmp_path):
    """Records wait for the commit, or are written once WRITE_AT bytes wait; either
    way each is found at its own offset, and after close by another store."""
    store = OutputStore(tmp_path)
    values = [bytes([i]) * (PACK_LIMIT // 2) for i in range(3 * WRITE_AT // PACK_LIMIT)]
    stored = [store.put(f"k{i}", "v", value) for i, value in enumerate(values)]
    store.commit()
    assert [store.get(s.path, s.digest) for s in stored] == values
    store.close()
    assert store.pack.path.stat().st_size == sum(s.size for s in stored)
    with OutputStore(tmp_path) as reopened:
        assert reopened.get(stored[-1].path, stored[-1].digest) == values[-1]


WRITE_THEN_DIE = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {root!r})
    from serpytor.runtime.store import OutputStore
    store = OutputStore({directory!r})
    stored = store.put("k", "v", {{"written by": os.getpid()}})
    store.commit()  # what a server does before it reports the output
    print(stored.path, stored.digest, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # no close
""")


def test_a_committed_record_outlives_a_process_killed_right_after(tmp_path):
    """What a server reports as stored is in the file even if it dies at once."""
    child = subprocess.run(
        [sys.executable, "-c", WRITE_THEN_DIE.format(root=str(ROOT), directory=str(tmp_path))],
        capture_output=True, text=True, timeout=60)
    assert child.returncode == -signal.SIGKILL, child.stderr
    path, digest = child.stdout.split()
    with OutputStore(tmp_path) as reader:
        assert reader.exists(path)
        value = reader.get(path, digest)
    assert set(value) == {"written by"}


def test_outputs_that_cannot_be_written_fail_at_commit_naming_the_store(tmp_path):
    """Small outputs are appended to a pack when the store commits (before they are
    reported); a pack that cannot be written is an OutputError naming it, and what
    was committed before stays readable."""
    store = OutputStore(tmp_path)
    kept = store.put("k1", "a", [1, 2, 3])
    store.commit()
    assert store.get(kept.path, kept.digest) == [1, 2, 3]
    store.close()

    blocked = tmp_path / "blocked"
    (blocked / "outputs").mkdir(parents=True)
    (blocked / "outputs" / "packs").write_text("a file where the packs would go")
    store = OutputStore(blocked)
    store.put("k2", "b", "value")
    with pytest.raises(OutputError) as caught:
        store.commit()
    assert "packs" in str(caught.value)
    store.close()


# ---- the journal -------------------------------------------------------------------------
def record(journal: Journal, key: str, vertex: str = "v", output: str = "out") -> None:
    parts = json.dumps({"function": "f", "inputs": "i", "vertex": vertex})
    journal.record(key, "pipe", vertex, parts, output, "digest-" + key, {"fact": 1}, 0.5)


def query(directory: Path, sql: str, *args: object) -> list[tuple]:
    """Rows of ``sql`` on the journal's database, read on a connection of its own."""
    connection = sqlite3.connect(directory / "journal.sqlite3")
    try:
        return connection.execute(sql, args).fetchall()
    finally:
        connection.close()


def committed_keys(directory: Path) -> set[str]:
    return {key for (key,) in query(directory, "SELECT key FROM vertices")}


def test_records_of_a_batch_are_each_found_and_committed(tmp_path):
    journal = Journal(tmp_path)
    journal.record_many("pipe", [(f"k{i}", f"v{i}", "{}", f"out{i}", f"d{i}", {"n": i}, 0.25)
                                 for i in range(5)])
    journal.record_many("pipe", [])
    journal.flush()
    for i in range(5):
        found = journal.lookup(f"k{i}", "pipe")
        assert (found.vertex, found.output, found.output_digest, found.published) == (
            f"v{i}", f"out{i}", f"d{i}", {"n": i})
    journal.close()
    assert committed_keys(tmp_path) == {f"k{i}" for i in range(5)}
    finished = query(tmp_path, "SELECT DISTINCT finished FROM vertices")
    assert len(finished) == 1  # one batch, finished together


def test_a_record_is_found_before_and_after_its_commit(tmp_path):
    journal = Journal(tmp_path)
    journal.BATCH_SECONDS = 60.0  # nothing is committed until flush
    record(journal, "k1")
    found = journal.lookup("k1", "pipe")
    assert found is not None and found.output_digest == "digest-k1"
    assert found.published == {"fact": 1} and found.parts["vertex"] == "v"
    assert "k1" not in committed_keys(tmp_path)
    journal.flush()
    assert "k1" in committed_keys(tmp_path)
    assert journal.lookup("k1", "pipe") == found
    assert journal.lookup("k2", "pipe") is None
    journal.close()


def test_every_record_is_found_while_the_writer_commits_around_it(tmp_path):
    """Batches move from pending to being written to committed while records are
    made and looked up: no record is missed at any step, none is lost."""
    journal = Journal(tmp_path)
    journal.BATCH_SECONDS = 0.0005
    rng = random.Random(7)
    for i in range(6000):
        record(journal, f"k{i}")
        probe = f"k{rng.randrange(i + 1)}"
        assert journal.lookup(probe, "pipe") is not None, probe
    journal.close()
    assert committed_keys(tmp_path) == {f"k{i}" for i in range(6000)}


def test_close_commits_every_record(tmp_path):
    journal = Journal(tmp_path)
    keys = [f"k{i}" for i in range(2000)]
    for key in keys:
        record(journal, key)
    journal.close()
    assert committed_keys(tmp_path) == set(keys)
    with Journal(tmp_path) as reopened:
        assert reopened.lookup("k1999", "pipe").output == "out"


def test_a_key_recorded_again_keeps_its_latest_record(tmp_path):
    journal = Journal(tmp_path)
    record(journal, "k", output="first")
    journal.flush()
    record(journal, "k", output="second")
    assert journal.lookup("k", "pipe").output == "second"
    journal.close()
    with Journal(tmp_path) as reopened:
        assert reopened.lookup("k", "pipe").output == "second"


def rows_of(directory: Path, key: str) -> int:
    return query(directory, "SELECT count(*) FROM vertices WHERE key = ?", key)[0][0]


def test_a_key_recorded_again_without_reading_the_journal_is_compacted_later(tmp_path):
    """A --fresh run records without reading what the journal holds; the next run
    that reads the pipeline finds the latest record of each key, and its commit
    removes the older rows."""
    for output in ("first", "second"):  # two fresh runs
        with Journal(tmp_path) as journal:
            record(journal, "k", output=output)
            record(journal, f"only-{output}")
    assert rows_of(tmp_path, "k") == 2
    with Journal(tmp_path) as journal:
        assert journal.lookup("k", "pipe").output == "second"
        assert journal.lookup("only-first", "pipe").output == "out"
        record(journal, "another")
    assert rows_of(tmp_path, "k") == 1
    with Journal(tmp_path) as journal:
        assert journal.lookup("k", "pipe").output == "second"


OLD_SCHEMA = """
CREATE TABLE vertices (
    key TEXT PRIMARY KEY, pipeline TEXT NOT NULL, vertex TEXT NOT NULL,
    parts TEXT NOT NULL, output TEXT NOT NULL, output_digest TEXT NOT NULL,
    published TEXT NOT NULL, seconds REAL NOT NULL, finished REAL NOT NULL
);
CREATE INDEX vertices_by_name ON vertices (pipeline, vertex, finished);
"""


def test_a_batch_losing_records_is_rewritten_with_the_rest(tmp_path, monkeypatch):
    """Records are stored BATCH_RECORDS to a row; keys recorded again leave their old
    rows rewritten without them, and every key still finds its latest record, in this
    journal (whose places moved) and in the next."""
    monkeypatch.setattr(journal_module, "BATCH_RECORDS", 3)
    journal = Journal(tmp_path)
    for i in range(10):
        record(journal, f"k{i}", output=f"first{i}")
    journal.flush()
    assert query(tmp_path, "SELECT count(*) FROM batches")[0][0] == 4
    again = (1, 3, 4, 5)
    for i in again:
        record(journal, f"k{i}", output=f"second{i}")
    journal.flush()
    expected = {f"k{i}": f"second{i}" if i in again else f"first{i}" for i in range(10)}
    assert {k: journal.lookup(k, "pipe").output for k in expected} == expected
    journal.close()
    assert sorted(query(tmp_path, "SELECT key, output FROM vertices")) == sorted(expected.items())
    # k0-k2's row rewritten without k1, k3-k5's deleted, the new records in two rows
    assert [keys for (keys,) in query(tmp_path, "SELECT keys FROM batches ORDER BY id")] == [
        "k0\nk2", "k6\nk7\nk8", "k9", "k1\nk3\nk4", "k5"]
    with Journal(tmp_path) as reopened:
        assert {k: reopened.lookup(k, "pipe").output for k in expected} == expected


def test_a_journal_of_the_record_table_is_converted_and_kept(tmp_path):
    """Journals of the earlier schema (a row per record, some with a unique key) have
    their records moved into batches when opened; they keep working."""
    connection = sqlite3.connect(tmp_path / "journal.sqlite3")
    connection.executescript(OLD_SCHEMA)
    connection.executemany("INSERT INTO vertices VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", [
        ("k", "pipe", "v", '{"vertex": "v"}', "old", "d", "{}", 1.0, 1.0),
        ("k2", "pipe", "w", '{"vertex": "w"}', "old2", "d2", '{"fact": 2}', 2.0, 2.0)])
    connection.commit()
    connection.close()
    with Journal(tmp_path) as converted:
        found = converted.lookup("k2", "pipe")
        assert (found.vertex, found.output, found.parts, found.published) == (
            "w", "old2", {"vertex": "w"}, {"fact": 2})
    kinds = dict(query(tmp_path, "SELECT name, type FROM sqlite_master "
                                 "WHERE name IN ('vertices', 'batches')"))
    assert kinds == {"vertices": "view", "batches": "table"}
    with Journal(tmp_path) as fresh:  # recorded again without reading first
        record(fresh, "k", output="new")
    assert rows_of(tmp_path, "k") == 2  # until the pipeline is next read
    with Journal(tmp_path) as journal:
        assert journal.lookup("k", "pipe").output == "new"
        record(journal, "k", output="newer")
        journal.flush()
        assert journal.lookup("k", "pipe").output == "newer"
        assert journal.latest("pipe", "v").output == "newer"
        assert journal.lookup("k2", "pipe").output == "old2"
    assert rows_of(tmp_path, "k") == 1 and rows_of(tmp_path, "k2") == 1


def test_a_failed_commit_is_raised_where_records_are_made(tmp_path):
    """The writer thread's failure (here, the outputs' store) reaches the thread that
    records: the run fails with it instead of losing records silently."""
    journal = Journal(tmp_path)

    def failing_store() -> None:
        raise OutputError("cannot store outputs in /nowhere")

    journal.before_commit.append(failing_store)
    record(journal, "k1")
    with pytest.raises(OutputError, match="/nowhere"):
        journal.flush()
    assert "k1" not in committed_keys(tmp_path)
    assert journal.lookup("k1", "pipe") is None  # not recorded: the vertex runs again
    journal.before_commit.clear()
    record(journal, "k2")
    journal.close()
    assert committed_keys(tmp_path) == {"k2"}


# ---- keys --------------------------------------------------------------------------------
part = st.text(st.characters(blacklist_categories=["Cs"]), max_size=30)


@settings(max_examples=200, deadline=None)
@given(st.fixed_dictionaries({name: part for name in
                              ("function", "arguments", "inputs", "context", "vertex")}))
def test_keys_keep_the_form_recorded_journals_hold(parts):
    """``name=part`` for each part in name order, joined by ``|``, BLAKE2b-160: a
    journal written by an earlier version stays reusable."""
    text = "|".join(f"{name}={parts[name]}" for name in sorted(parts))
    assert vertex_key(parts) == hashlib.blake2b(text.encode(), digest_size=20).hexdigest()


def test_each_key_is_made_of_its_own_vertex_parts():
    """Parts shared by a template or a function give each vertex the parts it would get
    alone, and the recorded parts text is what its key digests."""
    plan = load_pipeline(Path(__file__).resolve().parent.parent / "examples" / "wordcount.spg")
    maker, tracker = KeyMaker(plan), ContextTracker(plan)
    for v in range(plan.n_vertices):
        name = plan.vertex_name(v)
        context = maker.context_digest(v, tracker.facts_for, tracker.static_key(v))
        key, text = maker.key(v, inputs_text([("p", str(v))]), context, name)
        parts = json.loads(text)
        assert key == vertex_key(parts) and parts["vertex"] == name
        assert parts["inputs"] == digest(f"p={v}")
        assert parts["function"] == function_identity(plan, v)
        assert parts["arguments"] == digest(canonical(plan.vertex_template(v)["arguments"]))
        facts = sorted([f.key, f.value, f.origin, f.nearest] for f in tracker.facts_for(v))
        assert parts["context"] == digest(canonical(facts))


@pytest.mark.parametrize("example", ["wordcount.spg", "average.spg", "average_accumulator.spg"])
def test_a_batch_of_keys_is_the_keys_of_its_vertices(example):
    """keys_of (one loop for a dispatched batch) gives each vertex the key and the parts
    text key() gives it alone, combiners and templates with arguments included."""
    plan = load_pipeline(ROOT / "examples" / example)
    tracker = ContextTracker(plan)
    parents = {v: [input_entry(f"p{v}", digest(str(v))), input_entry("q", "d")]
               for v in range(plan.n_vertices)}
    keys: dict[int, str] = {}
    parts: dict[int, str] = {}
    vertices = list(range(plan.n_vertices))[::-1]  # no order is assumed
    KeyMaker(plan).keys_of(vertices, plan.vertex_names(vertices),
                           [";".join(parents[v]) for v in vertices],
                           tracker.static_keys(vertices), tracker.facts_for, keys, parts)
    alone = KeyMaker(plan)
    assert sorted(keys) == sorted(parts) == sorted(vertices)
    for v in vertices:
        context = alone.context_digest(v, tracker.facts_for, tracker.static_key(v))
        expected = alone.key(v, ";".join(parents[v]), context, plan.vertex_name(v))
        assert (keys[v], parts[v]) == expected
    assert len(set(keys.values())) == plan.n_vertices


@pytest.mark.parametrize("example", ["wordcount.spg", "average.spg"])
def test_the_batch_names_and_static_keys_are_each_vertex_s(example):
    """Plan.vertex_names and ContextTracker.static_keys answer for a batch what
    vertex_name and static_key answer for each vertex, before and after a fact is
    published (replicas included: both examples have some)."""
    plan = load_pipeline(ROOT / "examples" / example)
    tracker = ContextTracker(plan)
    vertices = list(range(plan.n_vertices))[::-1]
    names = plan.vertex_names(vertices)
    assert names == [plan.vertex_name(v) for v in vertices]
    assert any("[" in name for name in names)
    assert len(vertices) > SMALL_BATCH  # both ways of answering are asked
    assert [plan.vertex_names([v])[0] for v in vertices] == names
    templates = plan.arrays["vertex_template"]
    assert plan.template_indices(vertices) == [int(templates[v]) for v in vertices]
    assert [plan.template_indices([v])[0] for v in vertices] == plan.template_indices(vertices)
    assert tracker.static_keys(vertices) == [tracker.static_key(v) for v in vertices]
    tracker.record_published(0, {"published": "yes"})
    keys = tracker.static_keys(vertices)
    assert keys == [tracker.static_key(v) for v in vertices] and None in keys


def test_templates_of_one_function_share_only_what_they_share(tmp_path):
    """Templates calling one function share its identity; their arguments parts differ
    when their arguments do, and every vertex keeps a key of its own."""
    text = ("pipeline shared\nuse examples.wordcount as wc\n"
            "node a = wc.read_lines\nnode b = wc.read_lines\n"
            "node c = wc.ensure_corpus(path = \"x\")\nnode d = wc.ensure_corpus(path = \"y\")\n"
            "node e = wc.ensure_corpus(path = \"x\")\nnode f = wc.read_lines\n")
    path = tmp_path / "shared.spg"
    path.write_text(text)
    plan = serpytor.compile(text, str(path))
    tracker = ContextTracker(plan)
    keys: dict[int, str] = {}
    parts: dict[int, str] = {}
    vertices = list(range(plan.n_vertices))
    KeyMaker(plan).keys_of(vertices, plan.vertex_names(vertices), [""] * len(vertices),
                           tracker.static_keys(vertices), tracker.facts_for, keys, parts)
    by_name = {plan.vertex_name(v): json.loads(parts[v]) for v in keys}
    for name, parts_of in by_name.items():
        v = plan.index_of(name)
        assert parts_of["function"] == function_identity(plan, v)
        assert parts_of["arguments"] == digest(canonical(plan.vertex_template(v)["arguments"]))
    assert {by_name[n]["function"] for n in "abf"} != {by_name[n]["function"] for n in "cde"}
    assert len({by_name[n]["function"] for n in "abf"}) == 1
    assert len({by_name[n]["function"] for n in "cde"}) == 1
    assert by_name["c"]["arguments"] == by_name["e"]["arguments"] != by_name["d"]["arguments"]
    assert {by_name[n]["arguments"] for n in "abf"} == {NO_ARGUMENTS}
    assert len(set(keys.values())) == plan.n_vertices


def test_a_batch_of_keys_sees_published_facts():
    """A vertex whose context holds a published fact gets its own context digest."""
    plan = load_pipeline(ROOT / "examples" / "wordcount.spg")
    tracker = ContextTracker(plan)
    vertices = list(range(plan.n_vertices))
    before: dict[int, str] = {}
    KeyMaker(plan).keys_of(vertices, plan.vertex_names(vertices), [""] * len(vertices),
                           tracker.static_keys(vertices), tracker.facts_for, before, {})
    tracker.record_published(0, {"published": "yes"})
    after: dict[int, str] = {}
    KeyMaker(plan).keys_of(vertices, plan.vertex_names(vertices), [""] * len(vertices),
                           tracker.static_keys(vertices), tracker.facts_for, after, {})
    reached = {v for v in vertices if tracker.published_reach(v)}
    assert reached and reached != set(vertices)
    assert {v for v in vertices if before[v] != after[v]} == reached


def test_the_inputs_part_follows_partition_order():
    assert inputs_text([("a[0]", "d0"), ("a[1]", "d1")]) == "a[0]=d0;a[1]=d1"
    assert inputs_text([("a[1]", "d1"), ("a[0]", "d0")]) != inputs_text(
        [("a[0]", "d0"), ("a[1]", "d1")])
