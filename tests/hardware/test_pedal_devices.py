"""The real pedal readers, without pedals: synthetic evdev events, a stand-in input device fed
through a pipe (the reader thread's own path), evdev's UInput where /dev/uinput exists, and pygame
headless (SDL's dummy video driver, events posted into SDL's queue)."""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator

import pytest
from evdev import InputEvent, ecodes

from teleop.pedal_devices import (
    EvdevPedal,
    EvdevPedalConfig,
    JoystickPedal,
    JoystickPedalConfig,
    find_input_device,
    key_code,
)
from teleop.pedals import Pedal, PedalConfig, PedalReading

pytestmark = pytest.mark.timeout(20)


def key(code: int, value: int, type_: int = ecodes.EV_KEY) -> InputEvent:
    return InputEvent(0, 0, type_, code, value)


def wait_until(condition: Callable[[], bool], timeout_s: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.005)
    return condition()


class PipeDevice:
    """An evdev InputDevice stand-in: events are queued and the pipe makes its fd readable."""

    def __init__(self, held: list[int] | None = None):
        self.path = "/dev/input/event-test"
        self.name = "PCsensor FootSwitch (test)"
        self._read_fd, self._write_fd = os.pipe()
        self._events: deque[InputEvent | Exception] = deque()
        self._held = held or []

    def push(self, *events: InputEvent | Exception) -> None:
        self._events.extend(events)
        os.write(self._write_fd, b"x")

    def fileno(self) -> int:
        return self._read_fd

    def read(self) -> Iterator[InputEvent]:
        os.read(self._read_fd, 4096)
        while self._events:
            item = self._events.popleft()
            if isinstance(item, Exception):
                raise item
            yield item

    def active_keys(self) -> list[int]:
        return list(self._held)

    def close(self) -> None:
        for fd in (self._read_fd, self._write_fd):
            os.close(fd)


# ---- configuration --------------------------------------------------------------------------------


def test_pedal_classes_fit_the_pedal_interface() -> None:
    assert issubclass(EvdevPedal, Pedal) and issubclass(JoystickPedal, Pedal)
    assert issubclass(EvdevPedalConfig, PedalConfig) and issubclass(JoystickPedalConfig, PedalConfig)


def test_key_names() -> None:
    assert key_code("KEY_B") == key_code("b") == key_code("B") == ecodes.KEY_B
    assert key_code("BTN_0") == ecodes.BTN_0
    assert key_code("1") == ecodes.KEY_1  # a character, not a key code
    assert key_code("48") == 48
    with pytest.raises(ValueError, match="unknown key"):
        key_code("KEY_NOPE")


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="mode"):
        EvdevPedalConfig(mode="sticky")
    with pytest.raises(ValueError, match="share a key"):
        EvdevPedalConfig(takeover_key="b", estop_key="KEY_B")
    with pytest.raises(ValueError, match="unknown key"):
        EvdevPedalConfig(success_key="KEY_NOPE")
    with pytest.raises(ValueError, match="share a button"):
        JoystickPedalConfig(takeover_button=1, estop_button=1)
    with pytest.raises(ValueError, match="mode"):
        JoystickPedalConfig(mode="latch")


# ---- evdev ----------------------------------------------------------------------------------------


def test_evdev_hold_semantics_and_auto_repeat() -> None:
    pedal = EvdevPedal(EvdevPedalConfig(takeover_key="KEY_B"), device=PipeDevice())
    pedal.handle_event(key(ecodes.KEY_B, 1))
    assert pedal.pressed()
    pedal.handle_event(key(ecodes.KEY_B, 2))  # auto-repeat while held: still down, no change
    assert pedal.pressed()
    pedal.handle_event(key(ecodes.KEY_A, 0))  # another key: ignored
    pedal.handle_event(key(ecodes.SYN_REPORT, 0, type_=ecodes.EV_SYN))
    assert pedal.pressed()
    pedal.handle_event(key(ecodes.KEY_B, 0))
    assert not pedal.pressed()


def test_evdev_toggle_semantics() -> None:
    pedal = EvdevPedal(EvdevPedalConfig(mode="toggle"), device=PipeDevice())
    presses = [(1, True), (2, True), (0, True), (1, False), (0, False), (1, True)]
    for value, expected in presses:
        pedal.handle_event(key(ecodes.KEY_B, value))
        assert pedal.pressed() is expected


def test_evdev_episode_key_counters() -> None:
    config = EvdevPedalConfig(success_key="KEY_A", failure_key="KEY_C", rerecord_key="r", estop_key="KEY_ESC")
    pedal = EvdevPedal(config, device=PipeDevice())
    for code in (ecodes.KEY_A, ecodes.KEY_A, ecodes.KEY_C, ecodes.KEY_R, ecodes.KEY_ESC):
        pedal.handle_event(key(code, 1))
        pedal.handle_event(key(code, 2))  # repeats do not count
        pedal.handle_event(key(code, 0))  # releases do not count
    assert pedal.keys() == {"success": 2, "failure": 1, "rerecord": 1, "estop": 1}
    reading = pedal.read(None)
    assert reading == PedalReading(pressed=False, keys=pedal.keys())
    reading.keys["success"] = 99  # a reading is a copy
    assert pedal.keys()["success"] == 2


def test_evdev_reader_thread_reads_the_device_not_the_focused_window() -> None:
    device = PipeDevice()
    pedal = EvdevPedal(EvdevPedalConfig(estop_key="KEY_C"), device=device)
    pedal.connect()
    try:
        device.push(key(ecodes.KEY_B, 1), key(ecodes.SYN_REPORT, 0, type_=ecodes.EV_SYN))
        assert wait_until(pedal.pressed)
        device.push(key(ecodes.KEY_C, 1), key(ecodes.KEY_C, 0), key(ecodes.KEY_B, 0))
        assert wait_until(lambda: not pedal.pressed() and pedal.keys()["estop"] == 1)
    finally:
        pedal.disconnect()
    assert pedal._thread is not None and not pedal._thread.is_alive()


def test_evdev_pedal_held_at_start_reads_down() -> None:
    pedal = EvdevPedal(EvdevPedalConfig(), device=PipeDevice(held=[ecodes.KEY_B]))
    pedal.connect()
    try:
        assert pedal.pressed()
    finally:
        pedal.disconnect()


def test_evdev_unplugged_pedal_reads_up_and_says_why() -> None:
    device = PipeDevice()
    pedal = EvdevPedal(EvdevPedalConfig(), device=device)
    pedal.connect()
    try:
        device.push(key(ecodes.KEY_B, 1))
        assert wait_until(pedal.pressed)
        device.push(OSError(19, "No such device"))
        assert wait_until(lambda: pedal.error is not None)
        assert not pedal.pressed()
        assert "No such device" in (pedal.error or "")
    finally:
        pedal.disconnect()


def test_evdev_no_matching_device_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import evdev

    monkeypatch.setattr(evdev, "list_devices", lambda: [])
    with pytest.raises(RuntimeError, match=r"FootSwitch(.|\n)*permissions"):
        find_input_device(EvdevPedalConfig())


def test_pedal_state_is_thread_safe() -> None:
    pedal = EvdevPedal(EvdevPedalConfig(success_key="KEY_A"), device=PipeDevice())

    def press_many() -> None:
        for _ in range(2000):
            pedal.handle_event(key(ecodes.KEY_A, 1))
            pedal.read(None)

    threads = [threading.Thread(target=press_many) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert pedal.keys()["success"] == 8000


@pytest.mark.skipif(not os.access("/dev/uinput", os.W_OK), reason="no writable /dev/uinput on this machine")
def test_evdev_with_a_virtual_foot_switch() -> None:
    """A virtual keyboard named like a FootSwitch: found by name, read without any window."""
    from evdev import UInput

    with UInput({ecodes.EV_KEY: [ecodes.KEY_A, ecodes.KEY_B]}, name="Virtual FootSwitch test") as ui:
        time.sleep(0.2)  # udev creates the node
        pedal = EvdevPedal(EvdevPedalConfig(name="Virtual FootSwitch", success_key="KEY_A"))
        pedal.connect()
        try:
            ui.write(ecodes.EV_KEY, ecodes.KEY_B, 1)
            ui.syn()
            assert wait_until(pedal.pressed)
            ui.write(ecodes.EV_KEY, ecodes.KEY_B, 0)
            ui.write(ecodes.EV_KEY, ecodes.KEY_A, 1)
            ui.write(ecodes.EV_KEY, ecodes.KEY_A, 0)
            ui.syn()
            assert wait_until(lambda: not pedal.pressed() and pedal.keys()["success"] == 1)
        finally:
            pedal.disconnect()


# ---- pygame joystick ------------------------------------------------------------------------------


@pytest.fixture
def pygame_headless():
    from teleop.pedal_devices import init_pygame_headless

    return init_pygame_headless()


def joystick_event(pygame, type_: int, button: int = 0, instance_id: int = 7):
    return pygame.event.Event(type_, button=button, instance_id=instance_id, joy=0)


def test_joystick_missing_is_a_clear_error(pygame_headless) -> None:
    if pygame_headless.joystick.get_count() > 0:
        pytest.skip("a real joystick is attached")
    pedal = JoystickPedal(JoystickPedalConfig(name="FootSwitch"))
    with pytest.raises(RuntimeError, match="no joystick named like 'FootSwitch'"):
        pedal.connect()
    pedal.disconnect()


def test_joystick_hold_toggle_counters_and_other_joysticks(pygame_headless) -> None:
    pg = pygame_headless
    hold = JoystickPedal(JoystickPedalConfig(takeover_button=2, success_button=0, estop_button=5))
    hold.instance_id = 7
    hold.handle_event(joystick_event(pg, pg.JOYBUTTONDOWN, button=2))
    assert hold.pressed()
    hold.handle_event(joystick_event(pg, pg.JOYBUTTONUP, button=2, instance_id=8))  # another stick
    assert hold.pressed()
    hold.handle_event(joystick_event(pg, pg.JOYBUTTONUP, button=2))
    assert not hold.pressed()
    for button in (0, 0, 5, 3):
        hold.handle_event(joystick_event(pg, pg.JOYBUTTONDOWN, button=button))
        hold.handle_event(joystick_event(pg, pg.JOYBUTTONUP, button=button))
    assert hold.keys() == {"success": 2, "failure": 0, "rerecord": 0, "estop": 1}

    toggle = JoystickPedal(JoystickPedalConfig(mode="toggle"))
    toggle.instance_id = 7
    for expected in (True, False, True):
        toggle.handle_event(joystick_event(pg, pg.JOYBUTTONDOWN))
        toggle.handle_event(joystick_event(pg, pg.JOYBUTTONUP))
        assert toggle.pressed() is expected

    toggle.handle_event(pg.event.Event(pg.JOYDEVICEREMOVED, instance_id=7))
    assert not toggle.pressed() and toggle.error is not None


def test_joystick_reader_thread_drains_sdl_events(pygame_headless) -> None:
    """Events posted into SDL's queue from another thread reach the pedal through its poll loop."""
    pg = pygame_headless
    pedal = JoystickPedal(JoystickPedalConfig(estop_button=1))
    pedal.instance_id = 7
    thread = threading.Thread(target=pedal.poll, args=(pg,), daemon=True)
    thread.start()
    try:
        pg.event.post(joystick_event(pg, pg.JOYBUTTONDOWN))
        assert wait_until(pedal.pressed)
        pg.event.post(joystick_event(pg, pg.JOYBUTTONDOWN, button=1))
        pg.event.post(joystick_event(pg, pg.JOYBUTTONUP))
        assert wait_until(lambda: not pedal.pressed() and pedal.keys()["estop"] == 1)
    finally:
        pedal.disconnect()
        thread.join(timeout=1.0)
    assert not thread.is_alive()
