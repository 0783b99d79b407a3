"""What the Feetech and Dynamixel bus emulators share: a pseudo-terminal, a register table per
servo, a serving process (or thread), and joints that move toward their goals while torque is on.

The bus is served by a separate process by default: the vendors' SDKs busy-wait for a reply with
a timeout of a few tens of milliseconds, and a serving thread in the same process must win the GIL
from that loop in time, which fails on a loaded machine. A process, like real servos, answers
concurrently. Registers and joint positions live in shared memory, so the test-side methods
(`set_position`, `position`, `read_register`, ...) see the same state.

The protocol modules only say how packets are framed and answered (`_take_packet`, `_answer`) and
how a position is stored in the registers (`_decode_position`, `_encode_position`).
"""

from __future__ import annotations

import abc
import contextlib
import multiprocessing
import os
import pty
import select
import threading
import time
import tty
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any


@dataclass
class Registers:
    """Where the emulator finds the registers it gives meaning to (address, size in bytes)."""

    model_number: tuple[int, int]
    torque_enable: tuple[int, int]
    goal_position: tuple[int, int]
    present_position: tuple[int, int]
    min_position_limit: tuple[int, int]
    max_position_limit: tuple[int, int]
    moving: tuple[int, int]


class Servo:
    """One emulated servo: its raw control table and where its joint is.

    `memory` is a bytearray or a view of shared memory; `position` (register units, a float so
    that slow speeds still accumulate between ticks) lives in `slot[index]`, shared likewise."""

    def __init__(self, id: int, memory: Any, position: float = 0.0, slot: Any = None, index: int = 0):
        self.id = id
        self.memory = memory
        self._slot = slot if slot is not None else [position]
        self._index = index if slot is not None else 0
        self.position = position
        # A REG_WRITE waits here (address, data) until ACTION (only the serving side uses it).
        self.pending: tuple[int, bytes] | None = None

    @property
    def position(self) -> float:
        return self._slot[self._index]

    @position.setter
    def position(self, value: float) -> None:
        self._slot[self._index] = value


class BusEmulator(abc.ABC):
    """A servo bus on a pseudo-terminal, served by a child process (or a thread: `process=False`).

    `port` is the path of the terminal's slave end: give it to LeRobot as the robot's port. Use as a
    context manager (or `start()` / `stop()`): the server stops at `stop()`.
    """

    registers: Registers
    # Bytes every register table starts with; the protocol module fills in the rest per servo.
    memory_size = 256
    # How many of the latest goal writes `goal_history()` keeps.
    goal_log_size = 100_000

    def __init__(self, ids: list[int], speed: float = 2000.0, tick_s: float = 0.002, process: bool = True):
        # speed: how far a joint moves per second toward its goal, in register units (ticks).
        self.speed = speed
        self.tick_s = tick_s
        self.process = process
        # fork: the child inherits the pseudo-terminal and the shared memory as they are.
        self._ctx = multiprocessing.get_context("fork")
        self._lock = self._ctx.RLock()
        self._memory = self._ctx.RawArray("B", self.memory_size * len(ids))
        self._positions = self._ctx.RawArray("d", len(ids))
        self._packets = self._ctx.RawValue("q", 0)
        # Every goal the bus received, (time.monotonic(), id, goal) in a ring: tests check each
        # commanded step, not only the goal that happens to be there when they look.
        self._goal_log = self._ctx.RawArray("d", 3 * self.goal_log_size)
        self._goal_count = self._ctx.RawValue("q", 0)
        self._errors_out, self._errors_in = self._ctx.Pipe(duplex=False)
        self._errors: list[str] = []
        view = memoryview(self._memory).cast("B")  # ctypes says "<B": plain bytes
        self.servos: dict[int, Servo] = {}
        for index, servo_id in enumerate(ids):
            memory = view[index * self.memory_size : (index + 1) * self.memory_size]
            self.servos[servo_id] = self._new_servo(servo_id, memory, index)
        self._master, self._slave = pty.openpty()
        # Raw mode before anyone opens the slave: no echo, no line editing of binary packets.
        tty.setraw(self._slave)
        tty.setraw(self._master)
        self.port = os.ttyname(self._slave)
        self._stop = self._ctx.Event()
        self._ready = self._ctx.Event()
        self._server: threading.Thread | multiprocessing.process.BaseProcess | None = None
        self._parent = os.getpid()

    # ---- protocol hooks -------------------------------------------------------------------------

    @abc.abstractmethod
    def _new_memory(self, servo_id: int) -> bytearray:
        """The servo's control table at power-on."""

    @abc.abstractmethod
    def _take_packet(self, buffer: bytearray) -> bytes | None:
        """Remove and return the next whole, valid instruction packet from `buffer`, or None."""

    @abc.abstractmethod
    def _answer(self, packet: bytes) -> bytes:
        """The status packets (concatenated) that answer `packet`; empty when none is due."""

    @abc.abstractmethod
    def _decode_position(self, raw: int) -> int:
        """A Goal/Present_Position register value as a signed position."""

    @abc.abstractmethod
    def _encode_position(self, position: int) -> int:
        """A signed position as a Goal/Present_Position register value."""

    # ---- life cycle -----------------------------------------------------------------------------

    def start(self) -> BusEmulator:
        name = type(self).__name__
        if self.process:
            self._server = self._ctx.Process(target=self._serve, name=name, daemon=True)
        else:
            self._server = threading.Thread(target=self._serve, name=name, daemon=True)
        self._server.start()
        # The SDKs wait a few tens of milliseconds for a reply: the first packet must not also wait
        # for the server to start.
        if not self._ready.wait(timeout=10.0):
            self.stop()
            raise RuntimeError(f"{name}: the bus server did not start")
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.join(timeout=2.0)
            if isinstance(self._server, multiprocessing.process.BaseProcess) and self._server.is_alive():
                self._server.kill()
                self._server.join(timeout=1.0)
        for fd in (self._master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> BusEmulator:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ---- what tests use -------------------------------------------------------------------------

    @property
    def packets_seen(self) -> int:
        return self._packets.value

    @property
    def errors(self) -> list[str]:
        """Packets the emulator could not handle (each with the exception), oldest first."""
        while self._errors_out.poll():
            self._errors.append(self._errors_out.recv())
        return list(self._errors)

    def read_register(self, servo_id: int, address: int, size: int) -> int:
        with self._lock:
            return int.from_bytes(self.servos[servo_id].memory[address : address + size], "little")

    def write_register(self, servo_id: int, address: int, size: int, value: int) -> None:
        with self._lock:
            self._store(self.servos[servo_id], address, value.to_bytes(size, "little"))

    def set_position(self, servo_id: int, position: int) -> None:
        """Put a joint somewhere, as a hand moving a limp leader arm would (register units)."""
        with self._lock:
            servo = self.servos[servo_id]
            servo.position = float(position)
            self._publish_position(servo)
            if not self.torque_on(servo_id):
                self._put(servo, self.registers.goal_position, self._encode_position(position))

    def position(self, servo_id: int) -> int:
        with self._lock:
            return round(self.servos[servo_id].position)

    def goal(self, servo_id: int) -> int:
        with self._lock:
            return self._decode_position(self._get(self.servos[servo_id], self.registers.goal_position))

    def goal_history(self, servo_id: int | None = None) -> list[tuple[float, int, int]]:
        """The goals written over the bus, oldest first, as (time.monotonic(), id, goal); the
        latest `goal_log_size` only. Writes made with `write_register` are not in it."""
        with self._lock:
            count = self._goal_count.value
            first = max(0, count - self.goal_log_size)
            rows = []
            for n in range(first, count):
                at = 3 * (n % self.goal_log_size)
                t, i, goal = self._goal_log[at : at + 3]
                rows.append((t, int(i), int(goal)))
        return [row for row in rows if servo_id is None or row[1] == servo_id]

    def torque_on(self, servo_id: int) -> bool:
        with self._lock:
            return self._get(self.servos[servo_id], self.registers.torque_enable) == 1

    # ---- registers ------------------------------------------------------------------------------

    def _new_servo(self, servo_id: int, memory: Any, index: int) -> Servo:
        memory[:] = self._new_memory(servo_id)
        servo = Servo(id=servo_id, memory=memory, slot=self._positions, index=index)
        servo.position = float(self._decode_position(self._get(servo, self.registers.present_position)))
        return servo

    @staticmethod
    def _get(servo: Servo, register: tuple[int, int]) -> int:
        address, size = register
        return int.from_bytes(servo.memory[address : address + size], "little")

    @staticmethod
    def _put(servo: Servo, register: tuple[int, int], value: int) -> None:
        address, size = register
        servo.memory[address : address + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")

    def _read(self, servo: Servo, address: int, size: int) -> bytes:
        return bytes(servo.memory[address : address + size])

    def _store(self, servo: Servo, address: int, data: bytes) -> None:
        """A write from the bus: what a real servo does with it that matters to LeRobot."""
        torque_address = self.registers.torque_enable[0]
        was_on = self._get(servo, self.registers.torque_enable) == 1
        if address + len(data) > self.memory_size:
            raise ValueError(f"write of {len(data)} bytes at {address} is outside the control table")
        servo.memory[address : address + len(data)] = data
        turned_on = address <= torque_address < address + len(data) and not was_on
        if turned_on and self._get(servo, self.registers.torque_enable) == 1:
            # Modelled: a servo holds where it is when torque comes on (the goal becomes the present
            # position), so enabling torque never makes a joint jump. Not checked on real servos,
            # so a control loop must not rely on it (write the present position as the goal first).
            self._put(servo, self.registers.goal_position, self._encode_position(round(servo.position)))

    def _store_from_bus(self, servo: Servo, address: int, data: bytes) -> None:
        """`_store` for a write that came over the bus: also logs a new goal."""
        self._store(servo, address, data)
        goal_address, size = self.registers.goal_position
        if address <= goal_address and goal_address + size <= address + len(data):
            at = 3 * (self._goal_count.value % self.goal_log_size)
            goal = self._decode_position(self._get(servo, self.registers.goal_position))
            self._goal_log[at : at + 3] = [time.monotonic(), float(servo.id), float(goal)]
            self._goal_count.value += 1

    def _publish_position(self, servo: Servo) -> None:
        self._put(servo, self.registers.present_position, self._encode_position(round(servo.position)))

    # ---- the server (process or thread) -----------------------------------------------------------------

    def _serve(self) -> None:
        buffer = bytearray()
        last = time.monotonic()
        self._ready.set()
        # A served process also stops when its parent is gone (killed without stop()).
        while not self._stop.is_set() and not self._orphaned():
            try:
                ready, _, _ = select.select([self._master], [], [], self.tick_s)
            except (OSError, ValueError):
                return
            if ready:
                try:
                    buffer += os.read(self._master, 4096)
                except OSError:
                    # EIO while no client has the slave open: wait for one.
                    time.sleep(self.tick_s)
                self._handle_buffer(buffer)
            now = time.monotonic()
            self._move(now - last)
            last = now

    def _orphaned(self) -> bool:
        return self.process and os.getppid() != self._parent

    def _handle_buffer(self, buffer: bytearray) -> None:
        while (packet := self._take_packet(buffer)) is not None:
            self._packets.value += 1
            with self._lock:
                try:
                    reply = self._answer(packet)
                except Exception as e:  # a malformed packet must not kill the bus
                    self._errors_in.send(f"{packet.hex()}: {e!r}")
                    reply = b""
            if reply:
                os.write(self._master, reply)

    def _move(self, dt: float) -> None:
        """Each joint with torque on goes toward its goal at `speed`, inside its position limits."""
        step = self.speed * dt
        with self._lock:
            for servo in self.servos.values():
                moving = False
                if self._get(servo, self.registers.torque_enable) == 1:
                    goal = self._clamp(
                        servo, self._decode_position(self._get(servo, self.registers.goal_position))
                    )
                    error = goal - servo.position
                    if abs(error) > 0.5:
                        servo.position += max(-step, min(step, error))
                        moving = True
                self._put(servo, self.registers.moving, int(moving))
                self._publish_position(servo)

    def _limits_apply(self, servo: Servo) -> bool:
        """Whether the servo's mode honours Min/Max_Position_Limit (multi-turn modes do not)."""
        return True

    def _clamp(self, servo: Servo, goal: int) -> int:
        if not self._limits_apply(servo):
            return goal
        low = self._get(servo, self.registers.min_position_limit)
        high = self._get(servo, self.registers.max_position_limit)
        # Limits of 0/0 mean "no limits" (multi-turn set-ups); out of order limits are ignored too.
        if high <= low:
            return goal
        return max(low, min(high, goal))


def _feetech_packet_timeout(reply_ms: float) -> Any:
    """A replacement for LeRobot's `patch_setPacketTimeout` with `reply_ms` instead of 50 ms."""

    def set_packet_timeout(self: Any, packet_length: int) -> None:
        self.packet_start_time = self.getCurrentTime()
        self.packet_timeout = self.tx_time_per_byte * (packet_length + 3.0) + reply_ms

    return set_packet_timeout


@contextlib.contextmanager
def relaxed_sdk_timeouts(reply_ms: float = 500.0) -> Iterator[None]:
    """Give emulated servos `reply_ms` to answer instead of the SDKs' tens of milliseconds.

    A real servo answers within microseconds, so the SDKs wait only ~34 ms (dynamixel-sdk) or
    ~50 ms (LeRobot's Feetech patch) for a status packet. An emulator on a loaded machine (a CPU
    quota, parallel test runs) can miss that, which says nothing about the protocol. Only buses
    created inside the block get the longer wait; a missing reply still fails, only later.
    For another process (an end-to-end `flywheel run`), see `relaxed_sdk_timeouts_env`."""
    import dynamixel_sdk.port_handler as dxl_port
    from lerobot.motors.feetech import feetech

    saved = dxl_port.LATENCY_TIMER, feetech.patch_setPacketTimeout
    dxl_port.LATENCY_TIMER = reply_ms / 2  # dynamixel-sdk waits 2 * LATENCY_TIMER + 2 ms
    feetech.patch_setPacketTimeout = _feetech_packet_timeout(reply_ms)
    try:
        yield
    finally:
        dxl_port.LATENCY_TIMER, feetech.patch_setPacketTimeout = saved


# Run at the start of a child interpreter (as its sitecustomize): patches the two SDK modules
# when they are first imported, so the child pays no import cost for it.
_SITECUSTOMIZE = """
import importlib.abc, importlib.machinery, sys

_REPLY_MS = {reply_ms!r}


def _patch_dynamixel(module):
    module.LATENCY_TIMER = _REPLY_MS / 2


def _feetech_packet_timeout(self, packet_length):  # as robots.emulators.base's (no import here)
    self.packet_start_time = self.getCurrentTime()
    self.packet_timeout = self.tx_time_per_byte * (packet_length + 3.0) + _REPLY_MS


def _patch_feetech(module):
    module.patch_setPacketTimeout = _feetech_packet_timeout


_PATCHES = {{
    "dynamixel_sdk.port_handler": _patch_dynamixel,
    "lerobot.motors.feetech.feetech": _patch_feetech,
}}


class _PatchAfterImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name not in _PATCHES:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return None
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            _PATCHES[name](module)

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _PatchAfterImport())
"""


def relaxed_sdk_timeouts_env(directory: Path, reply_ms: float = 500.0) -> dict[str, str]:
    """Environment variables under which a child Python process gets `relaxed_sdk_timeouts`.

    Writes `<directory>/sitecustomize.py` and returns a copy of os.environ with `directory` and
    this repository first on PYTHONPATH: pass it as `env=` to the `flywheel run` subprocess of an
    end-to-end test against an emulated bus."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "sitecustomize.py").write_text(_SITECUSTOMIZE.format(reply_ms=reply_ms))
    repository = Path(__file__).resolve().parents[2]
    paths = [str(directory), str(repository), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
