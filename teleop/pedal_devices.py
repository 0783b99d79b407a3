"""Real foot pedals, read without a focused window.

A USB foot pedal shows up either as a keyboard (e.g. a PCsensor FootSwitch sends a key such as
KEY_B) or as a joystick button. `EvdevPedal` reads a keyboard-type pedal straight from its Linux
input device (/dev/input/event*), so it works whatever window or terminal has focus;
`JoystickPedal` reads a joystick button through pygame (SDL), with background joystick events on.

Both run a reader thread and keep the state behind a lock: `pressed()` (hold-to-intervene by
default: down while the pedal is down; `mode="toggle"`: each press flips it) and press counters of
the episode keys (success / failure / rerecord / estop), as `keys()` or a `PedalReading` from
`read(view)`. Counters, not events, so a reader that keeps only the latest reading misses no press.

If the device goes away (unplugged) the pedal reads as up and `error` says why: the control loop's
watchdog and safety layer decide what happens next, not the pedal.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from flywheel.contracts.messages import Observation
from teleop.pedals import EPISODE_KEYS, Pedal, PedalConfig, PedalReading, pedal_for

log = logging.getLogger(__name__)

MODES = ("hold", "toggle")
TAKEOVER = "takeover"


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"pedal.mode: {mode!r} is not one of {MODES}")


class ButtonPedal(Pedal):
    """Pedal state fed by button edges (from any thread); what both device readers share."""

    def __init__(self, mode: str = "hold"):
        _check_mode(mode)
        self.mode = mode
        self.error: str | None = None
        self._lock = threading.Lock()
        self._pressed = False
        self._counts = dict.fromkeys(EPISODE_KEYS, 0)

    def on_button(self, role: str, down: bool) -> None:
        """A button of `role` ("takeover" or an episode key) went down or up."""
        with self._lock:
            if role == TAKEOVER:
                if self.mode == "hold":
                    self._pressed = down
                elif down:
                    self._pressed = not self._pressed
            elif role in self._counts and down:
                self._counts[role] += 1

    def on_lost(self, reason: str) -> None:
        """The device is gone: release (a held pedal can no longer be seen held) and say why."""
        log.error("pedal lost: %s", reason)
        with self._lock:
            self._pressed = False
            self.error = reason

    def pressed(self) -> bool:
        with self._lock:
            return self._pressed

    def keys(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def read(self, view: Observation | None) -> PedalReading:
        with self._lock:
            return PedalReading(pressed=self._pressed, keys=dict(self._counts))


# ---- evdev: keyboard-type pedals ------------------------------------------------------------------


@PedalConfig.register_subclass("evdev")
@dataclass
class EvdevPedalConfig(PedalConfig):
    """A keyboard-type USB foot pedal read from its Linux input device (no window focus needed).

    Find the device and its key with `python -m evdev.evtest`; the user needs read access to
    /dev/input/event* (the `input` group or a udev rule: see docs/hardware.md)."""

    # The input device: a path (/dev/input/by-id/...-event-kbd is stable across reboots) ...
    device: str = ""
    # ... or, when no path is given, the first device whose name contains this (case-insensitive).
    name: str = "FootSwitch"
    # The key the takeover pedal sends: an evdev name (KEY_B, BTN_0) or a single character (b).
    takeover_key: str = "KEY_B"
    # hold: intervene while the pedal is down; toggle: each press starts or ends an intervention.
    mode: str = "hold"
    # Keys of the episode events ("" for none), e.g. the other pedals of a three-pedal FootSwitch.
    success_key: str = ""
    failure_key: str = ""
    rerecord_key: str = ""
    estop_key: str = ""
    # Take the device for this process alone, so the pedal's keystrokes do not type into other windows.
    grab: bool = True

    def __post_init__(self) -> None:
        _check_mode(self.mode)
        if not self.device and not self.name:
            raise ValueError("pedal: give a device path (pedal.device) or a name substring (pedal.name)")
        # Unknown key names fail at start-up, not at the first press.
        codes = [key_code(key) for key in self.role_keys().values()]
        if len(set(codes)) != len(codes):
            raise ValueError(f"pedal: two roles share a key: {self.role_keys()}")

    def role_keys(self) -> dict[str, str]:
        """Role -> key name, for the keys that are set."""
        keys = {
            TAKEOVER: self.takeover_key,
            "success": self.success_key,
            "failure": self.failure_key,
            "rerecord": self.rerecord_key,
            "estop": self.estop_key,
        }
        return {role: key for role, key in keys.items() if key}


def key_code(key: str) -> int:
    """An evdev key code from a name (KEY_B, BTN_0), a character (b, 1) or a number."""
    from evdev import ecodes

    if key.isdigit() and len(key) > 1:
        return int(key)
    name = key.upper()
    if len(key) == 1:
        name = f"KEY_{name}"
    if name not in ecodes.ecodes:
        raise ValueError(f"pedal: unknown key {key!r} (evdev names look like KEY_B or BTN_0)")
    return ecodes.ecodes[name]


class InputDeviceLike(Protocol):
    """What the reader needs of an evdev InputDevice (tests give a stand-in)."""

    path: str
    name: str

    def fileno(self) -> int: ...
    def read(self) -> Iterable[Any]: ...
    def active_keys(self) -> list[int]: ...
    def grab(self) -> None: ...
    def close(self) -> None: ...


def find_input_device(config: EvdevPedalConfig) -> InputDeviceLike:
    """The pedal's input device: by path, else the first whose name matches and that has the key."""
    import evdev

    if config.device:
        return evdev.InputDevice(config.device)
    wanted = key_code(config.takeover_key)
    seen = []
    for path in evdev.list_devices():
        device = evdev.InputDevice(path)
        seen.append(f"{path}: {device.name}")
        has_key = wanted in device.capabilities().get(evdev.ecodes.EV_KEY, [])
        if config.name.lower() in device.name.lower() and has_key:
            return device
        device.close()
    listing = "\n  ".join(seen) or "(none readable: check permissions, docs/hardware.md)"
    raise RuntimeError(
        f"pedal: no input device named like {config.name!r} with {config.takeover_key}:\n  {listing}"
    )


@pedal_for(EvdevPedalConfig)
class EvdevPedal(ButtonPedal):
    def __init__(self, config: EvdevPedalConfig, device: InputDeviceLike | None = None):
        super().__init__(config.mode)
        self.config = config
        # key code -> role
        self.codes = {key_code(key): role for role, key in config.role_keys().items()}
        self._device = device
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def connect(self) -> None:
        if self._device is None:
            self._device = find_input_device(self.config)
            if self.config.grab:
                self._device.grab()
        log.info(
            "pedal: %s (%s), takeover %s", self._device.name, self._device.path, self.config.takeover_key
        )
        if self.mode == "hold":  # a pedal already down at start-up counts as down
            self.on_button(TAKEOVER, key_code(self.config.takeover_key) in self._device.active_keys())
        self._thread = threading.Thread(target=self._listen, name="evdev-pedal", daemon=True)
        self._thread.start()

    def handle_event(self, event: Any) -> None:
        """One evdev InputEvent: key down (1) and up (0) count; auto-repeat (2) is ignored."""
        from evdev import ecodes

        if event.type != ecodes.EV_KEY or event.code not in self.codes or event.value == 2:
            return
        self.on_button(self.codes[event.code], event.value == 1)

    def _listen(self) -> None:
        assert self._device is not None
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self._device.fileno()], [], [], 0.05)
                if not ready:
                    continue
                for event in self._device.read():
                    self.handle_event(event)
            except BlockingIOError:
                continue
            except (OSError, ValueError) as e:  # ENODEV when unplugged; a closed fd on disconnect
                if not self._stop.is_set():
                    self.on_lost(f"{self._device.path}: {e}")
                return

    def disconnect(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        if self._device is not None:
            with contextlib.suppress(OSError):
                self._device.close()


# ---- pygame: joystick-type pedals -----------------------------------------------------------------


@PedalConfig.register_subclass("joystick")
@dataclass
class JoystickPedalConfig(PedalConfig):
    """A joystick-type USB foot pedal (or any gamepad button) read through pygame.

    SDL's background joystick events are turned on and, without a display, SDL's dummy video driver
    is used: no window and no focus are needed. Find the button index with
    `python -m pygame.examples.joystick` or the snippet in docs/hardware.md."""

    # Which joystick: a name substring (case-insensitive) if given, else the index.
    name: str = ""
    index: int = 0
    # The takeover pedal's button index.
    takeover_button: int = 0
    # hold: intervene while the pedal is down; toggle: each press starts or ends an intervention.
    mode: str = "hold"
    # Buttons of the episode events (-1 for none).
    success_button: int = -1
    failure_button: int = -1
    rerecord_button: int = -1
    estop_button: int = -1
    # How often the reader thread drains SDL's event queue.
    poll_hz: float = 250.0

    def __post_init__(self) -> None:
        _check_mode(self.mode)
        if self.poll_hz <= 0:
            raise ValueError(f"pedal.poll_hz: {self.poll_hz} must be > 0")
        buttons = [b for b in self.role_buttons().values()]
        if len(set(buttons)) != len(buttons):
            raise ValueError(f"pedal: two roles share a button: {self.role_buttons()}")

    def role_buttons(self) -> dict[str, int]:
        buttons = {
            TAKEOVER: self.takeover_button,
            "success": self.success_button,
            "failure": self.failure_button,
            "rerecord": self.rerecord_button,
            "estop": self.estop_button,
        }
        return {role: button for role, button in buttons.items() if button >= 0}


def init_pygame_headless() -> Any:
    """pygame's joystick and event subsystems without a window, joystick events without focus."""
    os.environ.setdefault("SDL_JOYSTICK_ALLOW_BACKGROUND_EVENTS", "1")
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # events need the video subsystem, not a window
    os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    with warnings.catch_warnings():  # pygame 2.6 imports the deprecated pkg_resources
        warnings.simplefilter("ignore", UserWarning)
        import pygame

    pygame.display.init()
    pygame.joystick.init()
    return pygame


def find_joystick(pygame: Any, config: JoystickPedalConfig) -> Any:
    count = pygame.joystick.get_count()
    names = [pygame.joystick.Joystick(i).get_name() for i in range(count)]
    if config.name:
        matches = [i for i, n in enumerate(names) if config.name.lower() in n.lower()]
        if not matches:
            raise RuntimeError(f"pedal: no joystick named like {config.name!r}; found {names or 'none'}")
        index = matches[0]
    elif config.index < count:
        index = config.index
    else:
        raise RuntimeError(f"pedal: no joystick {config.index}; found {names or 'none'}")
    joystick = pygame.joystick.Joystick(index)
    joystick.init()
    if config.takeover_button >= joystick.get_numbuttons():
        raise RuntimeError(f"pedal: {names[index]!r} has {joystick.get_numbuttons()} buttons")
    return joystick


@pedal_for(JoystickPedalConfig)
class JoystickPedal(ButtonPedal):
    def __init__(self, config: JoystickPedalConfig):
        super().__init__(config.mode)
        self.config = config
        self.buttons = {button: role for role, button in config.role_buttons().items()}
        self.instance_id: int | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None

    def connect(self) -> None:
        # SDL's event functions belong to the thread that set SDL up: set up and poll in one thread.
        self._thread = threading.Thread(target=self._run, name="joystick-pedal", daemon=True)
        self._thread.start()
        self._ready.wait(timeout=10.0)
        if self.error is not None:
            raise RuntimeError(self.error)
        if self.instance_id is None:
            raise RuntimeError("pedal: pygame did not start within 10 s")

    def handle_event(self, event: Any) -> None:
        """One pygame event of our joystick: button down / up, or the device removed."""
        import pygame

        if getattr(event, "instance_id", None) != self.instance_id:
            return
        if event.type in (pygame.JOYBUTTONDOWN, pygame.JOYBUTTONUP) and event.button in self.buttons:
            self.on_button(self.buttons[event.button], event.type == pygame.JOYBUTTONDOWN)
        elif event.type == pygame.JOYDEVICEREMOVED:
            self.on_lost(f"joystick {self.instance_id} removed")

    def _run(self) -> None:
        try:
            pygame = init_pygame_headless()
            joystick = find_joystick(pygame, self.config)
            self.instance_id = joystick.get_instance_id()
            if self.mode == "hold":
                self.on_button(TAKEOVER, bool(joystick.get_button(self.config.takeover_button)))
        except Exception as e:  # reported by connect()
            self.error = str(e)
            self._ready.set()
            return
        self._ready.set()
        self.poll(pygame)

    def poll(self, pygame: Any) -> None:
        """Drain SDL's joystick events until disconnect (public so tests can drive it)."""
        types = [pygame.JOYBUTTONDOWN, pygame.JOYBUTTONUP, pygame.JOYDEVICEREMOVED]
        while not self._stop.wait(1.0 / self.config.poll_hz):
            for event in pygame.event.get(types):
                self.handle_event(event)

    def disconnect(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
