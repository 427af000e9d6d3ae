"""The DAG's topological order (Pearce-Kelly) and the reachability answers built on it.

The order lets :meth:`DAG.reachable_among` and :meth:`DAG.can_add_edge` skip or cut
short the descendant walk; every answer must still be the one a plain breadth-first
search gives, after any mix of edge adds (checked or not), edge and vertex removals and
vertex re-adds. The scheduler's cycle filter (``ParentSelector._acyclic``) must keep the
same candidates, in the same order, as filtering by the whole descendant set.
"""

from __future__ import annotations

from collections import deque
from itertools import pairwise
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from d7y.core.scheduling import DAG
from d7y.core.scheduling.candidates import ParentSelector


class SharingDAG(DAG):
    """A DAG whose every reorder takes the Pearce-Kelly way (both groups share their
    order values): random graphs rarely need it, since one group can usually go to an
    end of the order."""

    def _between(self, start, neighbours, low, high):
        region, _everything = super()._between(start, neighbours, low, high)
        return region, False


def dag_of(*vertices: str, kind: type[DAG] = DAG) -> DAG:
    dag = kind()
    for v in vertices:
        dag.add_vertex(v)
    return dag


def bfs_reachable(dag: DAG, source: str) -> set[str]:
    """What ``source`` reaches, found without the order or the child lists."""
    seen: set[str] = set()
    queue = deque(dag.children(source))
    while queue:
        v = queue.popleft()
        if v not in seen:
            seen.add(v)
            queue.extend(dag.children(v))
    return seen


def assert_ordered(dag: DAG) -> None:
    """Every parent ordered before its children, no two vertices on one value."""
    assert dag.is_consistent()
    orders = [dag.order(v) for v in dag._parents]
    assert len(set(orders)) == len(orders)
    for parent, child, _ in dag.edges():
        assert dag.order(parent) < dag.order(child), (parent, child)


# --- examples a wrong order would get wrong ------------------------------------------------


def test_an_edge_against_the_order_reorders_so_a_later_cycle_is_refused():
    # a, b, c are ordered as added. c -> a goes against that order; were the order left
    # as it was, b would stand before c and "can c be reached from b?" would be no
    # without a walk, letting b -> c close c -> a -> b -> c.
    dag = dag_of("a", "b", "c")
    assert dag.add_edge("c", "a")
    assert dag.order("c") < dag.order("a")
    assert dag.add_edge("a", "b")
    assert not dag.can_add_edge("b", "c")
    assert not dag.add_edge("b", "c")
    assert_ordered(dag)


def test_the_unchecked_add_keeps_the_order_too():
    # The scheduler adds its edges through _add_edge_unchecked (it has already filtered
    # cycles); the order must follow those edges as well.
    dag = dag_of("a", "b", "c")
    dag._add_edge_unchecked("c", "a", None)
    dag._add_edge_unchecked("a", "b", None)
    assert_ordered(dag)
    assert dag.reachable_among("c", ["b"]) == {"b"}
    assert not dag.can_add_edge("b", "c")


def test_a_child_that_reaches_nothing_past_the_parent_moves_to_the_end():
    # Two chains, p1 -> p2 -> p3 (added last) and c1 -> c2 -> c3 (added first), with
    # bystanders x (between them, unrelated) and y (after p3). p3 -> c1: all that c1
    # reaches comes before p3, so the c chain moves after every vertex, in its order.
    dag = dag_of("c1", "c2", "c3", "x", "p1", "p2", "p3", "y")
    for parent, child in [("c1", "c2"), ("c2", "c3"), ("p1", "p2"), ("p2", "p3")]:
        assert dag.add_edge(parent, child)
    before = {v: dag.order(v) for v in ("x", "y", "p1", "p2", "p3")}
    assert dag.add_edge("p3", "c1")
    assert_ordered(dag)
    assert {v: dag.order(v) for v in before} == before
    assert dag.order("y") < dag.order("c1") < dag.order("c2") < dag.order("c3")
    assert dag.reachable_among("p1", ["c3", "x", "y"]) == {"c3"}
    assert not dag.can_add_edge("c3", "p1")


def test_a_parent_reached_from_nothing_before_the_child_moves_to_the_start():
    # c reaches z, ordered after p: moving c to the end would put it after z, so it
    # stays. All that reaches p (q) comes after c: q and p move before every vertex.
    dag = dag_of("a", "c", "q", "p", "z")
    for parent, child in [("c", "z"), ("q", "p")]:
        assert dag.add_edge(parent, child)
    before = {v: dag.order(v) for v in ("a", "c", "z")}
    assert dag.add_edge("p", "c")
    assert_ordered(dag)
    assert {v: dag.order(v) for v in before} == before
    assert dag.order("q") < dag.order("p") < dag.order("a")
    assert dag.reachable_among("q", ["z", "a"]) == {"z"}


def test_otherwise_both_groups_share_their_order_values():
    # c reaches z (after p) and p is reached from a (before c): neither group can go to
    # an end, so c and p swap places and nothing else moves (Pearce-Kelly).
    dag = dag_of("a", "c", "x", "p", "z")
    for parent, child in [("c", "z"), ("a", "p")]:
        assert dag.add_edge(parent, child)
    before = {v: dag.order(v) for v in ("a", "c", "x", "p", "z")}
    assert dag.add_edge("p", "c")
    assert_ordered(dag)
    after = {v: dag.order(v) for v in before}
    assert after == {**before, "p": before["c"], "c": before["p"]}
    assert dag.reachable_among("a", ["z", "x"]) == {"z"}
    assert not dag.can_add_edge("z", "a")


def test_the_two_walks_meet_on_a_path_and_skip_what_lies_outside_the_span():
    # In order: x, s, a1..a4, t, y. s -> y leads past t and x -> t comes from before s:
    # neither walk may follow them (they cannot be on a path from s to t), and the
    # chain s -> a1 -> ... -> t is found wherever the walks meet on it.
    dag = dag_of("x", "s", "a1", "a2", "a3", "a4", "t", "y")
    chain = ["s", "a1", "a2", "a3", "a4", "t"]
    for parent, child in [("s", "y"), ("x", "t"), *pairwise(chain)]:
        assert dag.add_edge(parent, child)
    assert dag.reachable_among("s", ["t", "y", "x"]) == {"t", "y"}
    assert dag.reachable_among("a2", ["t", "a1"]) == {"t"}
    dag.delete_edge("a2", "a3")
    assert dag.reachable_among("s", ["t", "a4"]) == set()
    assert dag.reachable_among("a1", ["a1"]) == set()  # not its own descendant
    assert dag.reachable_among("t", ["s"]) == set()  # ordered before: no walk


def test_a_re_added_vertex_takes_a_fresh_place_and_edges_to_it_reorder():
    dag = dag_of("a", "b")
    dag.add_edge("a", "b")
    dag.delete_vertex("a")
    dag.add_vertex("a")  # after b now, with no edges
    assert dag.order("a") > dag.order("b")
    assert dag.add_edge("a", "b")  # against the order: b moves after a
    assert_ordered(dag)
    dag.add_vertex("c")
    assert dag.add_edge("b", "c")
    assert not dag.add_edge("c", "a")
    assert_ordered(dag)


def test_removals_keep_the_order():
    dag = dag_of("a", "b", "c", "d")
    for parent, child in [("d", "c"), ("c", "b"), ("b", "a")]:
        assert dag.add_edge(parent, child)
    dag.delete_edge("c", "b")
    dag.delete_out_edges("d")
    dag.delete_in_edges("a")
    assert_ordered(dag)
    dag.delete_vertex("b")
    assert_ordered(dag)
    assert dag.add_edge("a", "d") and dag.add_edge("d", "c")
    assert_ordered(dag)


# --- random operations against a plain search ----------------------------------------------

VERTICES = [str(i) for i in range(10)]

# Adds weigh more than removals: the reorders that need both groups (neither can go to
# an end) only come up in graphs with a few edges.
operations = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "add",
                "add",
                "add_unchecked",
                "add_unchecked",
                "delete_edge",
                "delete_vertex",
                "readd",
            ]
        ),
        st.sampled_from(VERTICES),
        st.sampled_from(VERTICES),
    ),
    max_size=80,
)


def acceptable(dag: DAG, parent: str, child: str) -> bool:
    """Whether parent -> child is new and closes no cycle, by a plain search."""
    return (
        parent != child
        and child not in dag.children(parent)
        and parent not in bfs_reachable(dag, child)
    )


def apply(dag: DAG, op: str, a: str, b: str) -> None:
    """One operation; those that do not apply to the current graph do nothing."""
    if op == "readd":
        dag.add_vertex(a)  # nothing if it is there
        return
    if a not in dag or b not in dag:
        return
    if op == "add":
        expected = acceptable(dag, a, b)
        assert dag.add_edge(a, b) == expected
    elif op == "add_unchecked":
        if acceptable(dag, a, b):
            dag._add_edge_unchecked(a, b, None)
    elif op == "delete_edge":
        if b in dag.children(a):
            dag.delete_edge(a, b)
    elif op == "delete_vertex":
        dag.delete_vertex(a)


def assert_answers_match_a_search(dag: DAG) -> None:
    vertices = list(dag._parents)
    for source in vertices:
        reached = bfs_reachable(dag, source)
        assert dag.descendants(source) == reached
        assert dag.reachable_among(source, vertices) == reached
        for target in vertices:
            assert dag.reachable_among(source, [target]) == ({target} & reached)
            assert dag.can_add_edge(source, target) == acceptable(dag, source, target)


@pytest.mark.parametrize("kind", [DAG, SharingDAG])
@settings(max_examples=300, deadline=None)
@given(ops=operations)
def test_random_operations_keep_the_order_and_every_answer(kind, ops):
    dag = dag_of(*VERTICES, kind=kind)
    for op, a, b in ops:
        apply(dag, op, a, b)
        assert_ordered(dag)
        assert dag.is_acyclic()
        assert_answers_match_a_search(dag)


# --- the scheduler's cycle filter ------------------------------------------------------------


def as_peers(dag: DAG) -> dict[str, SimpleNamespace]:
    """Stand-ins with what _acyclic reads: the peer's ID and its task's DAG."""
    task = SimpleNamespace(dag=dag)
    return {v: SimpleNamespace(id=v, task=task) for v in dag._parents}


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(VERTICES), st.sampled_from(VERTICES)), max_size=30),
    st.sampled_from(VERTICES),
    st.lists(st.sampled_from(VERTICES), max_size=10),
)
def test_the_cycle_filter_keeps_the_candidates_a_whole_walk_keeps_in_order(
    edges, peer_id, candidate_ids
):
    dag = dag_of(*VERTICES)
    for parent, child in edges:
        dag.add_edge(parent, child)
    peers = as_peers(dag)
    candidates = [peers[c] for c in candidate_ids]
    below = dag.descendants(peer_id)
    expected = [c for c in candidates if c.id not in below]
    assert ParentSelector._acyclic(peers[peer_id], candidates) == expected
