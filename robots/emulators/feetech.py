"""An emulated Feetech STS3215 bus (SCS/STS protocol 0) on a pseudo-terminal.

Spoken to by the real feetech-servo-sdk through LeRobot's `FeetechMotorsBus`: PING (also broadcast),
READ, WRITE, REG_WRITE / ACTION, SYNC_READ and SYNC_WRITE are answered the way an STS3215 answers
them (packet `FF FF id len instruction params checksum`, little-endian words, sign-magnitude
positions with bit 15 as the sign, Present_Position = actual position - Homing_Offset).

Not emulated: baud rates (a pseudo-terminal has none), EPROM persistence and the Lock register's
effect on it, temperatures, loads, currents, and any dynamics beyond a bounded joint speed.

`emulated_so100(...)` gives a whole SO-100 arm (six servos, ids 1-6) with a LeRobot calibration
file that matches its registers, ready for `SO100Follower` / `SO100Leader`.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

from robots.emulators.base import BusEmulator, Registers, Servo

# The STS/SMS series control table, as LeRobot's lerobot/motors/feetech/tables.py names it.
FIRMWARE_MAJOR = (0, 1)
FIRMWARE_MINOR = (1, 1)
MODEL_NUMBER = (3, 2)
ID = (5, 1)
BAUD_RATE = (6, 1)
RETURN_DELAY_TIME = (7, 1)
RESPONSE_STATUS_LEVEL = (8, 1)
MIN_POSITION_LIMIT = (9, 2)
MAX_POSITION_LIMIT = (11, 2)
MAX_TORQUE_LIMIT = (16, 2)
P_COEFFICIENT = (21, 1)
D_COEFFICIENT = (22, 1)
I_COEFFICIENT = (23, 1)
PROTECTION_CURRENT = (28, 2)
HOMING_OFFSET = (31, 2)
OPERATING_MODE = (33, 1)
OVERLOAD_TORQUE = (36, 1)
TORQUE_ENABLE = (40, 1)
ACCELERATION = (41, 1)
GOAL_POSITION = (42, 2)
TORQUE_LIMIT = (48, 2)
LOCK = (55, 1)
PRESENT_POSITION = (56, 2)
PRESENT_VOLTAGE = (62, 1)
PRESENT_TEMPERATURE = (63, 1)
MOVING = (66, 1)
MAXIMUM_ACCELERATION = (85, 1)

STS3215_MODEL_NUMBER = 777
BROADCAST_ID = 0xFE

INST_PING = 0x01
INST_READ = 0x02
INST_WRITE = 0x03
INST_REG_WRITE = 0x04
INST_ACTION = 0x05
INST_SYNC_READ = 0x82
INST_SYNC_WRITE = 0x83

SO100_MOTORS = ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper")


def sign_magnitude_decode(raw: int, sign_bit: int) -> int:
    return -(raw & ~(1 << sign_bit)) if raw & (1 << sign_bit) else raw


def sign_magnitude_encode(value: int, sign_bit: int) -> int:
    return (-value) | (1 << sign_bit) if value < 0 else value


def checksum(body: bytes) -> int:
    """SCS checksum: the inverted low byte of the sum of everything after the two 0xFF."""
    return ~sum(body) & 0xFF


def status_packet(servo_id: int, params: bytes = b"", error: int = 0) -> bytes:
    body = bytes([servo_id, len(params) + 2, error]) + params
    return b"\xff\xff" + body + bytes([checksum(body)])


class FeetechBusEmulator(BusEmulator):
    """STS3215 servos with the given ids on one emulated bus."""

    registers = Registers(
        model_number=MODEL_NUMBER,
        torque_enable=TORQUE_ENABLE,
        goal_position=GOAL_POSITION,
        present_position=PRESENT_POSITION,
        min_position_limit=MIN_POSITION_LIMIT,
        max_position_limit=MAX_POSITION_LIMIT,
        moving=MOVING,
    )

    def __init__(
        self,
        ids: list[int],
        speed: float = 1500.0,
        firmware: tuple[int, int] = (3, 10),
        tick_s: float = 0.002,
        process: bool = True,
    ):
        self.firmware = firmware
        super().__init__(ids, speed=speed, tick_s=tick_s, process=process)

    # ---- control table --------------------------------------------------------------------------

    def _new_memory(self, servo_id: int) -> bytearray:
        memory = bytearray(self.memory_size)
        servo = Servo(id=servo_id, memory=memory, position=0.0)
        defaults = {  # an STS3215 as shipped (Feetech's manual), the ID already set
            FIRMWARE_MAJOR: self.firmware[0],
            FIRMWARE_MINOR: self.firmware[1],
            MODEL_NUMBER: STS3215_MODEL_NUMBER,
            ID: servo_id,
            RETURN_DELAY_TIME: 250,
            RESPONSE_STATUS_LEVEL: 1,
            MIN_POSITION_LIMIT: 0,
            MAX_POSITION_LIMIT: 4095,
            MAX_TORQUE_LIMIT: 1000,
            P_COEFFICIENT: 32,
            D_COEFFICIENT: 32,
            PROTECTION_CURRENT: 500,
            TORQUE_LIMIT: 1000,
            PRESENT_POSITION: 2048,
            PRESENT_VOLTAGE: 120,
            PRESENT_TEMPERATURE: 30,
            GOAL_POSITION: 2048,
            MAXIMUM_ACCELERATION: 0,
        }
        for register, value in defaults.items():
            self._put(servo, register, value)
        return memory

    def _decode_position(self, raw: int) -> int:
        return sign_magnitude_decode(raw, 15)

    def _encode_position(self, position: int) -> int:
        return sign_magnitude_encode(position, 15)

    def _store(self, servo: Servo, address: int, data: bytes) -> None:
        old_offset = self._homing_offset(servo)
        super()._store(servo, address, data)
        # Present = actual - Homing_Offset: a new offset shifts what the joint reads, not where it is.
        shift = old_offset - self._homing_offset(servo)
        if shift:
            servo.position += shift
            self._publish_position(servo)

    def _homing_offset(self, servo: Servo) -> int:
        return sign_magnitude_decode(self._get(servo, HOMING_OFFSET), 11)

    # ---- framing --------------------------------------------------------------------------------

    def _take_packet(self, buffer: bytearray) -> bytes | None:
        while True:
            start = buffer.find(b"\xff\xff")
            if start < 0:
                del buffer[:-1]  # keep a trailing 0xFF: it may start a header
                return None
            del buffer[:start]
            if len(buffer) >= 3 and buffer[2] == 0xFF:
                del buffer[0]  # three 0xFF in a row: the header starts one later
                continue
            if len(buffer) < 4:
                return None
            total = buffer[3] + 4
            if len(buffer) < total:
                return None
            packet = bytes(buffer[:total])
            if packet[-1] != checksum(packet[2:-1]):
                del buffer[:2]  # corrupt: resynchronise on the next header
                continue
            del buffer[:total]
            return packet

    # ---- instructions ---------------------------------------------------------------------------

    def _answer(self, packet: bytes) -> bytes:
        servo_id, instruction, params = packet[2], packet[4], packet[5:-1]
        handlers = {
            INST_PING: self._ping,
            INST_READ: self._read_instruction,
            INST_WRITE: self._write_instruction,
            INST_REG_WRITE: self._reg_write,
            INST_ACTION: self._action,
            INST_SYNC_READ: self._sync_read,
            INST_SYNC_WRITE: self._sync_write,
        }
        handler = handlers.get(instruction)
        if handler is None:  # unknown: acknowledge (a real servo would set the instruction error bit)
            return self._ack(servo_id)
        return handler(servo_id, params)

    def _targets(self, servo_id: int) -> list[Servo]:
        if servo_id == BROADCAST_ID:
            return [self.servos[i] for i in sorted(self.servos)]
        return [self.servos[servo_id]] if servo_id in self.servos else []

    def _ack(self, servo_id: int) -> bytes:
        # Nobody answers a broadcast write, and a missing id is silence (the SDK then times out).
        if servo_id == BROADCAST_ID or servo_id not in self.servos:
            return b""
        return status_packet(servo_id)

    def _ping(self, servo_id: int, params: bytes) -> bytes:
        return b"".join(status_packet(s.id) for s in self._targets(servo_id))

    def _read_instruction(self, servo_id: int, params: bytes) -> bytes:
        if servo_id not in self.servos:
            return b""
        address, size = params[0], params[1]
        return status_packet(servo_id, self._read(self.servos[servo_id], address, size))

    def _write_instruction(self, servo_id: int, params: bytes) -> bytes:
        for servo in self._targets(servo_id):
            self._store_from_bus(servo, params[0], params[1:])
        return self._ack(servo_id)

    def _reg_write(self, servo_id: int, params: bytes) -> bytes:
        for servo in self._targets(servo_id):
            servo.pending = (params[0], bytes(params[1:]))
        return self._ack(servo_id)

    def _action(self, servo_id: int, params: bytes) -> bytes:
        for servo in self._targets(servo_id):
            if servo.pending is not None:
                self._store_from_bus(servo, *servo.pending)
                servo.pending = None
        return self._ack(servo_id)

    def _sync_read(self, servo_id: int, params: bytes) -> bytes:
        address, size, ids = params[0], params[1], params[2:]
        # Each listed servo answers in the order asked, as on a real bus.
        return b"".join(
            status_packet(i, self._read(self.servos[i], address, size)) for i in ids if i in self.servos
        )

    def _sync_write(self, servo_id: int, params: bytes) -> bytes:
        address, size = params[0], params[1]
        for offset in range(2, len(params) - size, size + 1):
            target = params[offset]
            if target in self.servos:
                self._store_from_bus(self.servos[target], address, params[offset + 1 : offset + 1 + size])
        return b""


# ---- a whole SO-100 arm ---------------------------------------------------------------------------


def so100_calibration(ranges: dict[str, tuple[int, int]] | None = None) -> dict[str, dict[str, int]]:
    """A LeRobot calibration (motor -> MotorCalibration fields) for an SO-100 arm.

    Homing offsets are 0 and the ranges are plausible ones from a real calibration; the emulator's
    registers are set to match, so LeRobot's `is_calibrated` holds and nothing interactive runs."""
    default = {motor: (1024, 3072) for motor in SO100_MOTORS}
    default["wrist_roll"] = (0, 4095)  # LeRobot calibrates the wrist roll as a full turn
    default["gripper"] = (2000, 3000)
    default.update(ranges or {})
    return {
        motor: {"id": i, "drive_mode": 0, "homing_offset": 0, "range_min": lo, "range_max": hi}
        for i, (motor, (lo, hi)) in enumerate(default.items(), start=1)
    }


def write_calibration(path: Path, calibration: dict[str, dict[str, int]]) -> Path:
    """Write a calibration where LeRobot looks for it (`<calibration_dir>/<id>.json`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(calibration, indent=4))
    return path


def apply_calibration(emulator: FeetechBusEmulator, calibration: dict[str, dict[str, int]]) -> None:
    """Put a calibration's offsets and limits into the servos' registers, as lerobot-calibrate does."""
    for fields in calibration.values():
        servo_id = fields["id"]
        emulator.write_register(servo_id, *HOMING_OFFSET, sign_magnitude_encode(fields["homing_offset"], 11))
        emulator.write_register(servo_id, *MIN_POSITION_LIMIT, fields["range_min"])
        emulator.write_register(servo_id, *MAX_POSITION_LIMIT, fields["range_max"])
        emulator.set_position(servo_id, (fields["range_min"] + fields["range_max"]) // 2)


@contextlib.contextmanager
def emulated_so100(
    calibration_dir: Path,
    arm_id: str = "test_follower",
    speed: float = 1500.0,
    ranges: dict[str, tuple[int, int]] | None = None,
) -> Iterator[tuple[str, FeetechBusEmulator]]:
    """An SO-100 arm on an emulated bus: yields `(port, emulator)` and stops the bus on exit.

    Writes `<calibration_dir>/<arm_id>.json`: pass `calibration_dir` and `id=arm_id` to the
    follower's or leader's LeRobot config (or point HF_LEROBOT_CALIBRATION at a root and pass
    `<root>/robots/so_follower` or `<root>/teleoperators/so_leader`). Every joint starts at the
    middle of its range."""
    calibration = so100_calibration(ranges)
    write_calibration(Path(calibration_dir) / f"{arm_id}.json", calibration)
    with FeetechBusEmulator(ids=list(range(1, 7)), speed=speed) as emulator:
        apply_calibration(emulator, calibration)
        yield emulator.port, emulator
