"""The pytest side of benchmarks/netns.py: topologies closed at teardown, skipped where namespaces
cannot be made (not root, no `ip`, no permission)."""

from __future__ import annotations

from collections.abc import Sequence

from benchmarks.netns import NetnsUnavailable, Topology


def topology_factory(request):
    """For a pytest fixture: make(leaves=2, hub="hub") -> Topology, closed at teardown (even on failure).

    Skips the test, with the actual error, where namespaces cannot be made. In a test module:

        @pytest.fixture
        def make_topology(request):
            return topology_factory(request)
    """
    import pytest

    def make(leaves: int | Sequence[str] = 2, hub: str = "hub") -> Topology:
        try:
            topo = Topology(leaves, hub)
        except NetnsUnavailable as e:
            pytest.skip(f"cannot make network namespaces: {e}")
        request.addfinalizer(topo.close)
        return topo

    return make
