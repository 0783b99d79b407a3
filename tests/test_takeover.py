"""The takeover state machine: requests, the table of allowed transitions, reset."""

from __future__ import annotations

import threading

import pytest

from flywheel.rollout.takeover import ALLOWED_TRANSITIONS, ControlState, TakeoverMachine

AUTO, INTV, STOP = ControlState.AUTONOMOUS, ControlState.INTERVENING, ControlState.STOPPED


def test_starts_autonomous_and_nothing_pending():
    m = TakeoverMachine()
    assert m.state == AUTO
    assert m.apply() is None
    assert m.state == AUTO
    assert m.refused == 0


@pytest.mark.parametrize(
    ("start", "target"),
    [(AUTO, INTV), (INTV, AUTO), (AUTO, STOP), (INTV, STOP)],
)
def test_allowed_transitions_apply(start, target):
    m = TakeoverMachine(initial=start)
    m.request(target)
    assert m.apply() == (start, target)
    assert m.state == target
    assert m.refused == 0
    # The request is consumed: applying again changes nothing.
    assert m.apply() is None
    assert m.state == target


@pytest.mark.parametrize("target", [AUTO, INTV])
def test_stopped_is_terminal(target):
    m = TakeoverMachine(initial=STOP)
    m.request(target)
    assert m.apply() is None
    assert m.state == STOP
    assert m.refused == 1


def test_stopped_has_no_way_out_in_the_table():
    assert ALLOWED_TRANSITIONS[STOP] == frozenset()
    # Every state can reach STOPPED (the emergency stop works from anywhere else).
    assert all(STOP in ALLOWED_TRANSITIONS[s] for s in (AUTO, INTV))


def test_refused_transitions_are_counted_and_leave_the_state():
    m = TakeoverMachine()
    m.request(STOP)
    assert m.apply() == (AUTO, STOP)
    for target in (AUTO, INTV, AUTO):
        m.request(target)
        assert m.apply() is None
    assert m.state == STOP
    assert m.refused == 3


def test_requesting_the_current_state_is_not_a_refusal():
    m = TakeoverMachine()
    m.request(AUTO)
    assert m.apply() is None
    assert m.state == AUTO
    assert m.refused == 0


def test_newest_request_wins():
    m = TakeoverMachine()
    m.request(STOP)
    m.request(INTV)
    assert m.apply() == (AUTO, INTV)
    assert m.state == INTV
    assert m.refused == 0


def test_newest_request_wins_even_when_it_is_the_current_state():
    m = TakeoverMachine()
    m.request(INTV)
    m.request(AUTO)  # pedal pressed and released before the tick: no takeover
    assert m.apply() is None
    assert m.state == AUTO


def test_requests_from_another_thread_are_applied():
    m = TakeoverMachine()
    t = threading.Thread(target=m.request, args=(INTV,))
    t.start()
    t.join(timeout=5)
    assert m.apply() == (AUTO, INTV)


@pytest.mark.parametrize("start", [AUTO, INTV])
def test_reset_returns_to_autonomous_and_drops_pending_request(start):
    m = TakeoverMachine(initial=start)
    m.request(STOP if start == AUTO else INTV)
    m.reset()
    assert m.state == AUTO
    assert m.apply() is None  # the pending request was dropped
    assert m.state == AUTO


def test_reset_keeps_stopped():
    m = TakeoverMachine()
    m.request(STOP)
    m.apply()
    m.reset()
    assert m.state == STOP
