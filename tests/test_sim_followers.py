"""A peer's children (``Followers``: two lists) keep the order and the bitmaps a dict
keyed by child would keep, under any mix of follows and unfollows: the order is that of
the announcements and so of the pumps, and any other order would move a run's events.
Both the compiled driver and its source."""

from __future__ import annotations

import importlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import import_built


@pytest.fixture(params=["compiled", "source"])
def swarm_module(request):
    if request.param == "compiled":
        return import_built("d7y.sim._swarm")
    return importlib.import_module("d7y.sim._swarm_py")


class Child:
    """Stands for a Peer: compared by identity, as peers are."""

    def __eq__(self, other):  # equal to every Child: Followers must not use ==
        return isinstance(other, Child)

    __hash__ = object.__hash__


ops = st.lists(
    st.tuples(st.sampled_from(["add", "discard", "clear"]), st.integers(0, 7), st.integers()),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(ops=ops)
def test_followers_behave_as_a_dict_of_children(ops):
    for module in (import_built("d7y.sim._swarm"), importlib.import_module("d7y.sim._swarm_py")):
        children = [Child() for _ in range(8)]
        followers = module.Followers()
        model: dict = {}
        for op, k, held in ops:
            child = children[k]
            if op == "add":
                followers.add(child, held)
                model[child] = held
            elif op == "discard":
                followers.discard(child)
                model.pop(child, None)
            else:
                followers.clear()
                model.clear()
            assert [id(c) for c in followers] == [id(c) for c in model]
            assert followers.held == list(model.values())
            assert len(followers) == len(model) and bool(followers) == bool(model)


def test_discarding_an_absent_child_changes_nothing(swarm_module):
    a, b = Child(), Child()
    followers = swarm_module.Followers()
    followers.add(a, "bits")
    followers.discard(b)  # equal to a by ==, but another child
    assert list(followers) == [a] and followers.held == ["bits"]
