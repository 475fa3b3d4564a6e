"""The placement scoring kernel (serpytor._core place), compiled and reference."""

from __future__ import annotations

import numpy as np
import pytest
from core_strategies import IMPLEMENTATIONS, both, implementation
from hypothesis import given, settings
from hypothesis import strategies as st

from serpytor._core import policy_weights


@pytest.fixture(params=IMPLEMENTATIONS)
def impl(request):
    return implementation(request.param)


# three servers: 0 and 1 on host 0, 2 on host 1
SERVERS = dict(load=[2.0, 1.0, 0.0], capacity=[4.0, 4.0, 4.0], server_host=[0, 0, 1])
NO_INPUTS = dict(input_vertex=[], input_host=[], input_bytes=[])


def test_least_loaded_spreads_a_batch(impl):
    # loads 2, 1, 0: the batch fills the idle server first and then evens out
    servers = impl.place(**SERVERS, **NO_INPUTS, n_vertices=4)
    assert servers.tolist() == [2, 1, 2, 0]
    assert servers.dtype == np.int32


def test_locality_first_prefers_the_host_with_most_input_bytes(impl):
    inputs = dict(input_vertex=[0, 0, 1, 1], input_host=[0, 1, 1, 1],
                  input_bytes=[100.0, 10.0, 5.0, 5.0])
    weights = policy_weights("locality")
    servers = impl.place(**SERVERS, **inputs, n_vertices=3,
                         locality_weight=weights[0], load_weight=weights[1])
    # vertex 0: host 0 holds most bytes, and server 1 is the less loaded there;
    # vertex 1: everything is on host 1; vertex 2 has no inputs: least loaded
    assert servers.tolist() == [1, 2, 2]


def test_a_mixed_policy_trades_locality_for_load(impl):
    inputs = dict(input_vertex=[0], input_host=[0], input_bytes=[1.0])
    local = impl.place(load=[3.0, 0.0], capacity=[4.0, 4.0], server_host=[0, 1], **inputs,
                       n_vertices=1, locality_weight=0.9, load_weight=0.1)
    balanced = impl.place(load=[3.0, 0.0], capacity=[4.0, 4.0], server_host=[0, 1],
                          **inputs, n_vertices=1, locality_weight=0.1, load_weight=0.9)
    assert local.tolist() == [0] and balanced.tolist() == [1]


def test_excluded_and_zero_capacity_servers_are_never_chosen(impl):
    servers = impl.place(load=[0.0, 0.0, 0.0], capacity=[1.0, 0.0, 1.0],
                         server_host=[0, 0, 0], **NO_INPUTS, n_vertices=3,
                         exclude_vertex=[0, 1, 1], exclude_server=[0, 0, 2])
    assert servers.tolist() == [2, -1, 0]


def test_cost_is_the_load_a_vertex_adds(impl):
    servers = impl.place(load=[0.0, 0.0], capacity=[10.0, 10.0], server_host=[0, 0],
                         **NO_INPUTS, n_vertices=3, cost=[5.0, 1.0, 1.0])
    assert servers.tolist() == [0, 1, 1]


def test_no_servers_and_no_vertices(impl):
    assert impl.place(load=[], capacity=[], server_host=[], **NO_INPUTS,
                      n_vertices=2).tolist() == [-1, -1]
    assert impl.place(**SERVERS, **NO_INPUTS, n_vertices=0).tolist() == []


@pytest.mark.parametrize("policy, share, weights", [
    ("least_loaded", 0.5, (0.0, 1.0)), ("locality", 0.5, (1.0, 0.0)),
    ("mixed", 0.25, (0.25, 0.75)),
])
def test_policy_weights(policy, share, weights):
    assert policy_weights(policy, share) == weights


@pytest.mark.parametrize("policy, share, message", [
    ("nearest", 0.5, "unknown placement policy 'nearest'"),
    ("mixed", 1.5, r"locality_share must be in \[0, 1\]"),
])
def test_bad_policies(policy, share, message):
    with pytest.raises(ValueError, match=message):
        policy_weights(policy, share)


BAD = [
    (dict(load=[1.0, 2.0]), r"load: expected a 1-D float64 array of shape \(3,\)"),
    (dict(load=[1.0, float("nan"), 0.0]), "load: value nan at index 1 is not finite"),
    (dict(capacity=[1.0, -1.0, 1.0]), "capacity: value -1.0 at index 1 is not finite and >= 0"),
    (dict(capacity=5.0), "capacity: expected a 1-D float64 array"),
    (dict(capacity=[["a"]]), "capacity: expected a 1-D float64 array"),
    (dict(server_host=[0, 0]), r"server_host: expected a 1-D integer array of shape \(3,\)"),
    (dict(server_host=[0, -1, 0]), "server_host: value -1 at index 1"),
    (dict(server_host=[0.0, 1.0, 0.0]), "server_host: expected a 1-D integer array"),
    (dict(input_vertex=[2], input_host=[0], input_bytes=[1.0]),
     r"input_vertex: value 2 .*outside \[0, 1\]"),
    (dict(input_vertex=[0], input_host=[0, 1], input_bytes=[1.0]), r"input_host: .*shape \(1,\)"),
    (dict(input_vertex=[0], input_host=[-3], input_bytes=[1.0]), "input_host: value -3"),
    (dict(input_vertex=[0], input_host=[0], input_bytes=[-1.0]), "input_bytes: value -1.0"),
    (dict(input_vertex=[0], input_host=[0], input_bytes=[float("inf")]), "input_bytes: value inf"),
    (dict(n_vertices=-1), "n_vertices: expected an integer >= 0"),
    (dict(n_vertices=1.5), "n_vertices: expected an integer"),
    (dict(cost=[1.0]), r"cost: expected a 1-D float64 array of shape \(2,\)"),
    (dict(exclude_vertex=[0], exclude_server=[3]), r"exclude_server: value 3 .*outside \[0, 2\]"),
    (dict(exclude_vertex=[0, 1], exclude_server=[0]), r"exclude_server: .*shape \(2,\)"),
    (dict(exclude_vertex=[5], exclude_server=[0]), "exclude_vertex: value 5"),
    (dict(locality_weight=-1.0), "locality_weight: expected a finite number >= 0"),
    (dict(load_weight=float("nan")), "load_weight: expected a finite number >= 0"),
    (dict(load_weight="heavy"), "load_weight: expected a finite number >= 0"),
]


@pytest.mark.parametrize("change, message", BAD)
def test_bad_input_is_a_value_error(impl, change, message):
    kwargs = dict(**SERVERS, **NO_INPUTS, n_vertices=2)
    kwargs.update(change)
    with pytest.raises(ValueError, match=message):
        impl.place(**kwargs)


# ---- compiled == reference ------------------------------------------------------------

@st.composite
def placement_problems(draw):
    n_servers = draw(st.integers(0, 8))
    n_hosts = draw(st.integers(1, 4))
    n_vertices = draw(st.integers(0, 10))
    small = st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.0, 1 / 3, 7.25])
    n_inputs = draw(st.integers(0, 20)) if n_vertices else 0
    n_excluded = draw(st.integers(0, 6)) if n_vertices and n_servers else 0
    return dict(
        load=draw(st.lists(small, min_size=n_servers, max_size=n_servers)),
        capacity=draw(st.lists(small, min_size=n_servers, max_size=n_servers)),
        server_host=draw(st.lists(st.integers(0, n_hosts - 1), min_size=n_servers,
                                  max_size=n_servers)),
        input_vertex=draw(st.lists(st.integers(0, max(n_vertices - 1, 0)),
                                   min_size=n_inputs, max_size=n_inputs)),
        input_host=draw(st.lists(st.integers(0, n_hosts), min_size=n_inputs,
                                 max_size=n_inputs)),
        input_bytes=draw(st.lists(small, min_size=n_inputs, max_size=n_inputs)),
        n_vertices=n_vertices,
        cost=draw(st.none() | st.lists(small, min_size=n_vertices, max_size=n_vertices)),
        exclude_vertex=draw(st.lists(st.integers(0, max(n_vertices - 1, 0)),
                                     min_size=n_excluded, max_size=n_excluded)),
        exclude_server=draw(st.lists(st.integers(0, max(n_servers - 1, 0)),
                                     min_size=n_excluded, max_size=n_excluded)),
        locality_weight=draw(small),
        load_weight=draw(small),
    )


@settings(max_examples=150, deadline=None)
@given(problem=placement_problems())
def test_compiled_matches_reference(problem):
    compiled, reference = both()
    expected = reference.place(**problem)
    assert compiled.place(**problem).tolist() == expected.tolist()
    for v, s in zip(problem["exclude_vertex"], problem["exclude_server"]):
        assert expected[v] != s
    capacity = np.array(problem["capacity"])
    assert all(s == -1 or capacity[s] > 0 for s in expected.tolist())


def test_large_random_batch_agrees():
    compiled, reference = both()
    rng = np.random.default_rng(7)
    servers, vertices, hosts, inputs = 60, 300, 15, 900
    problem = dict(load=rng.random(servers) * 4, capacity=rng.integers(0, 5, servers) * 1.0,
                   server_host=rng.integers(0, hosts, servers),
                   input_vertex=rng.integers(0, vertices, inputs),
                   input_host=rng.integers(0, hosts, inputs),
                   input_bytes=rng.random(inputs) * 1e6, n_vertices=vertices,
                   cost=rng.random(vertices), exclude_vertex=rng.integers(0, vertices, 50),
                   exclude_server=rng.integers(0, servers, 50), locality_weight=0.6,
                   load_weight=0.4)
    assert compiled.place(**problem).tolist() == reference.place(**problem).tolist()
