"""Round trips of arbitrary picklable values through every channel kind (Hypothesis),
and the fixed sample matrix (dtypes, layouts, bytes-likes, nested objects)."""

from __future__ import annotations

import itertools
import tempfile
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from serpytor.runtime.channels import close_pools, list_segments, open_reader, open_writer

from test_channels_helpers import assert_same, sample_values, unique_job

DTYPES = [np.float64, np.float32, np.int8, np.int64, np.uint16, np.complex128, np.bool_]

arrays = hnp.arrays(
    dtype=st.sampled_from(DTYPES),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=24))
layouts = st.one_of(
    arrays,
    arrays.map(lambda a: a.T),                                  # Fortran order
    arrays.map(lambda a: a[..., ::2] if a.ndim else a),         # non-contiguous
    st.integers(0, 3000).map(lambda n: np.arange(n, dtype=np.float64)),  # out of band
    st.integers(0, 50).map(
        lambda n: np.array([(i, i / 2) for i in range(n)], dtype=[("i", "<i4"), ("f", "<f8")])),
)
scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
           | st.text(max_size=20) | st.binary(max_size=6000))
values = st.recursive(
    scalars | layouts,
    lambda inner: (st.lists(inner, max_size=4) | st.tuples(inner, inner)
                   | st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=8)
streams = st.lists(values, max_size=4)
_versions = itertools.count()
SETTINGS = settings(max_examples=30, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _round_trip(kind: str, items: list, **options) -> list:
    version = next(_versions)
    if kind == "tcp":
        writer = open_writer(kind, vertex="h", version=version, timeout=10, **options)

        def produce():
            for item in items:
                writer.write(item)
            writer.close()
        thread = threading.Thread(target=produce)
        thread.start()
        try:
            with open_reader(writer.descriptor, timeout=10) as reader:
                return reader.read_all()
        finally:
            thread.join(10)
    with open_writer(kind, vertex="h", version=version, **options) as writer:
        for item in items:
            writer.write(item)
    with open_reader(writer.descriptor, timeout=5) as reader:
        return reader.read_all()


def _check(got: list, want: list) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert_same(a, b)


@SETTINGS
@given(streams)
def test_hypothesis_round_trip_shm(items):
    job = unique_job("h")
    try:
        _check(_round_trip("shm", items, job=job), items)
    finally:
        close_pools()
    assert list_segments(job) == []


@SETTINGS
@given(streams)
def test_hypothesis_round_trip_file(items):
    with tempfile.TemporaryDirectory() as directory:
        _check(_round_trip("file", items, directory=directory), items)


@SETTINGS
@given(streams)
def test_hypothesis_round_trip_tcp(items):
    _check(_round_trip("tcp", items), items)


@pytest.mark.parametrize("kind", ["shm", "file", "tcp"])
def test_sample_matrix_round_trip(kind, tmp_path):
    options = {"directory": tmp_path} if kind == "file" else {"job": unique_job("m")}
    try:
        _check(_round_trip(kind, sample_values(), **options), sample_values())
    finally:
        close_pools()


@pytest.mark.parametrize("kind", ["shm", "file", "tcp"])
def test_ndarray_and_json_serializers_through_every_kind(kind, tmp_path):
    options = {"directory": tmp_path} if kind == "file" else {"job": unique_job("n")}
    arrays_only = [a for a in sample_values() if isinstance(a, np.ndarray) and not a.dtype.hasobject]
    try:
        _check(_round_trip(kind, arrays_only, serializer="ndarray", **options), arrays_only)
        plain = [{"a": [1, 2.5, None, "x"]}, [], "s", 3]
        assert _round_trip(kind, plain, serializer="json", **options) == plain
    finally:
        close_pools()
