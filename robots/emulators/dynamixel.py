"""An emulated Dynamixel X-series bus (protocol 2.0) on a pseudo-terminal: the Koch arms.

Spoken to by the real dynamixel-sdk through LeRobot's `DynamixelMotorsBus`: PING (also broadcast),
READ, WRITE, REG_WRITE / ACTION, SYNC_READ and SYNC_WRITE, with the protocol 2.0 framing
(`FF FF FD 00 id len_l len_h instruction params crc_l crc_h`, byte stuffing, CRC-16), little-endian
two's-complement registers and Present_Position = actual position + Homing_Offset. As on a real X
servo, a write to the EEPROM area (addresses below 64) while torque is on is refused with an
access error, and the position limits hold only in position mode (3), not in extended position
(4) or current-based position (5) mode.

Not emulated: baud rates, FAST_SYNC_READ / BULK_READ, reboot and factory reset (acknowledged
only), currents, loads and any dynamics beyond a bounded joint speed; the current-based gripper
is a position servo here.

`emulated_koch(...)` gives a whole Koch follower or leader with a matching LeRobot calibration.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

from robots.emulators.base import BusEmulator, Registers, Servo

# The X-series control table, as LeRobot's lerobot/motors/dynamixel/tables.py names it.
MODEL_NUMBER = (0, 2)
FIRMWARE_VERSION = (6, 1)
ID = (7, 1)
BAUD_RATE = (8, 1)
RETURN_DELAY_TIME = (9, 1)
DRIVE_MODE = (10, 1)
OPERATING_MODE = (11, 1)
PROTOCOL_TYPE = (13, 1)
HOMING_OFFSET = (20, 4)
VELOCITY_LIMIT = (44, 4)
MAX_POSITION_LIMIT = (48, 4)
MIN_POSITION_LIMIT = (52, 4)
TORQUE_ENABLE = (64, 1)
STATUS_RETURN_LEVEL = (68, 1)
POSITION_D_GAIN = (80, 2)
POSITION_I_GAIN = (82, 2)
POSITION_P_GAIN = (84, 2)
GOAL_POSITION = (116, 4)
MOVING = (122, 1)
PRESENT_POSITION = (132, 4)
PRESENT_INPUT_VOLTAGE = (144, 2)
PRESENT_TEMPERATURE = (146, 1)

EEPROM_END = 64
POSITION_MODE = 3

MODEL_NUMBERS = {"xl330-m077": 1190, "xl330-m288": 1200, "xl430-w250": 1060}
KOCH_FOLLOWER_MODELS = ("xl430-w250", "xl430-w250", "xl330-m288", "xl330-m288", "xl330-m288", "xl330-m288")
KOCH_LEADER_MODELS = ("xl330-m077",) * 6
KOCH_MOTORS = ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper")

BROADCAST_ID = 0xFE
HEADER = b"\xff\xff\xfd\x00"
INST_PING = 0x01
INST_READ = 0x02
INST_WRITE = 0x03
INST_REG_WRITE = 0x04
INST_ACTION = 0x05
INST_STATUS = 0x55
INST_SYNC_READ = 0x82
INST_SYNC_WRITE = 0x83
ERROR_ACCESS = 0x07


def _crc_table() -> list[int]:
    # CRC-16 with polynomial 0x8005, no reflection, initial value 0 (ROBOTIS' protocol 2.0 CRC).
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x8005) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return table


CRC_TABLE = _crc_table()


def crc16(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc = ((crc << 8) ^ CRC_TABLE[((crc >> 8) ^ byte) & 0xFF]) & 0xFFFF
    return crc


def add_stuffing(payload: bytes, before: bytes) -> bytes:
    """Insert 0xFD after every FF FF FD inside `payload` (`before`: the two bytes preceding it)."""
    out = bytearray()
    window = bytearray(before[-2:])
    for byte in payload:
        out.append(byte)
        if byte == 0xFD and window[-2:] == b"\xff\xff":
            out.append(0xFD)
        window.append(byte)
    return bytes(out)


def remove_stuffing(payload: bytes, before: bytes) -> bytes:
    """Drop the 0xFD that stuffing added after every FF FF FD."""
    out = bytearray()
    data = bytes(before[-2:]) + payload
    i = 2
    while i < len(data):
        out.append(data[i])
        if data[i] == 0xFD and data[i - 2 : i] == b"\xff\xff" and i + 1 < len(data) and data[i + 1] == 0xFD:
            i += 1
        i += 1
    return bytes(out)


def status_packet(servo_id: int, params: bytes = b"", error: int = 0) -> bytes:
    length_field = (len(params) + 4).to_bytes(2, "little")  # instruction, error, params, CRC
    raw_payload = bytes([INST_STATUS, error]) + params
    payload = add_stuffing(raw_payload, length_field)
    head = HEADER + bytes([servo_id]) + (len(payload) + 2).to_bytes(2, "little")
    body = head + payload
    return body + crc16(body).to_bytes(2, "little")


def twos_complement_decode(raw: int, size: int) -> int:
    bits = 8 * size
    return raw - (1 << bits) if raw & (1 << (bits - 1)) else raw


class DynamixelBusEmulator(BusEmulator):
    """X-series servos on one emulated bus; `models` maps each id to a LeRobot model name."""

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
        self, models: dict[int, str], speed: float = 1500.0, tick_s: float = 0.002, process: bool = True
    ):
        unknown = set(models.values()) - set(MODEL_NUMBERS)
        if unknown:
            raise ValueError(f"no emulation of Dynamixel models {sorted(unknown)}")
        self.models = dict(models)
        super().__init__(list(models), speed=speed, tick_s=tick_s, process=process)

    # ---- control table --------------------------------------------------------------------------

    def _new_memory(self, servo_id: int) -> bytearray:
        memory = bytearray(self.memory_size)
        servo = Servo(id=servo_id, memory=memory, position=0.0)
        defaults = {  # an X-series servo as shipped (ROBOTIS e-manual), the ID already set
            MODEL_NUMBER: MODEL_NUMBERS[self.models[servo_id]],
            FIRMWARE_VERSION: 52,
            ID: servo_id,
            BAUD_RATE: 3,
            RETURN_DELAY_TIME: 250,
            OPERATING_MODE: POSITION_MODE,
            PROTOCOL_TYPE: 2,
            VELOCITY_LIMIT: 445,
            MAX_POSITION_LIMIT: 4095,
            MIN_POSITION_LIMIT: 0,
            STATUS_RETURN_LEVEL: 2,
            POSITION_P_GAIN: 800,
            GOAL_POSITION: 2048,
            PRESENT_POSITION: 2048,
            PRESENT_INPUT_VOLTAGE: 50,
            PRESENT_TEMPERATURE: 30,
        }
        for register, value in defaults.items():
            self._put(servo, register, value)
        return memory

    def _decode_position(self, raw: int) -> int:
        return twos_complement_decode(raw, 4)

    def _encode_position(self, position: int) -> int:
        return position & 0xFFFFFFFF

    def _limits_apply(self, servo: Servo) -> bool:
        return self._get(servo, OPERATING_MODE) == POSITION_MODE

    def _homing_offset(self, servo: Servo) -> int:
        return twos_complement_decode(self._get(servo, HOMING_OFFSET), 4)

    def _store(self, servo: Servo, address: int, data: bytes) -> None:
        old_offset = self._homing_offset(servo)
        super()._store(servo, address, data)
        # Present = actual + Homing_Offset: a new offset shifts what the joint reads.
        shift = self._homing_offset(servo) - old_offset
        if shift:
            servo.position += shift
            self._publish_position(servo)

    def _write_allowed(self, servo: Servo, address: int) -> bool:
        return address >= EEPROM_END or self._get(servo, TORQUE_ENABLE) == 0

    # ---- framing --------------------------------------------------------------------------------

    def _take_packet(self, buffer: bytearray) -> bytes | None:
        """The next instruction packet, stuffing removed, as `id instruction params` bytes."""
        while True:
            start = buffer.find(HEADER[:3])
            if start < 0:
                del buffer[:-2]  # a header may be split across reads
                return None
            del buffer[:start]
            if len(buffer) < 7:
                return None
            total = 7 + int.from_bytes(buffer[5:7], "little")
            if len(buffer) < total:
                return None
            packet = bytes(buffer[:total])
            if packet[3] != 0x00 or int.from_bytes(packet[-2:], "little") != crc16(packet[:-2]):
                del buffer[:3]  # not a packet after all: resynchronise
                continue
            del buffer[:total]
            return bytes([packet[4]]) + remove_stuffing(packet[7:-2], packet[5:7])

    # ---- instructions ---------------------------------------------------------------------------

    def _answer(self, packet: bytes) -> bytes:
        servo_id, instruction, params = packet[0], packet[1], packet[2:]
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
        if handler is None:  # reboot, factory reset, ...: acknowledged, nothing done
            return self._ack(servo_id)
        return handler(servo_id, params)

    def _targets(self, servo_id: int) -> list[Servo]:
        if servo_id == BROADCAST_ID:
            return [self.servos[i] for i in sorted(self.servos)]
        return [self.servos[servo_id]] if servo_id in self.servos else []

    def _ack(self, servo_id: int, error: int = 0) -> bytes:
        if servo_id == BROADCAST_ID or servo_id not in self.servos:
            return b""
        return status_packet(servo_id, error=error)

    def _ping(self, servo_id: int, params: bytes) -> bytes:
        return b"".join(
            status_packet(s.id, self._read(s, *MODEL_NUMBER) + self._read(s, *FIRMWARE_VERSION))
            for s in self._targets(servo_id)
        )

    def _read_instruction(self, servo_id: int, params: bytes) -> bytes:
        if servo_id not in self.servos:
            return b""
        address, size = int.from_bytes(params[0:2], "little"), int.from_bytes(params[2:4], "little")
        return status_packet(servo_id, self._read(self.servos[servo_id], address, size))

    def _write_instruction(self, servo_id: int, params: bytes) -> bytes:
        address = int.from_bytes(params[0:2], "little")
        error = 0
        for servo in self._targets(servo_id):
            if self._write_allowed(servo, address):
                self._store_from_bus(servo, address, params[2:])
            else:
                error = ERROR_ACCESS
        return self._ack(servo_id, error)

    def _reg_write(self, servo_id: int, params: bytes) -> bytes:
        for servo in self._targets(servo_id):
            servo.pending = (int.from_bytes(params[0:2], "little"), bytes(params[2:]))
        return self._ack(servo_id)

    def _action(self, servo_id: int, params: bytes) -> bytes:
        for servo in self._targets(servo_id):
            if servo.pending is not None and self._write_allowed(servo, servo.pending[0]):
                self._store_from_bus(servo, *servo.pending)
            servo.pending = None
        return self._ack(servo_id)

    def _sync_read(self, servo_id: int, params: bytes) -> bytes:
        address, size = int.from_bytes(params[0:2], "little"), int.from_bytes(params[2:4], "little")
        return b"".join(
            status_packet(i, self._read(self.servos[i], address, size))
            for i in params[4:]
            if i in self.servos
        )

    def _sync_write(self, servo_id: int, params: bytes) -> bytes:
        address, size = int.from_bytes(params[0:2], "little"), int.from_bytes(params[2:4], "little")
        for offset in range(4, len(params) - size, size + 1):
            servo = self.servos.get(params[offset])
            if servo is not None and self._write_allowed(servo, address):
                self._store_from_bus(servo, address, params[offset + 1 : offset + 1 + size])
        return b""


# ---- a whole Koch arm -----------------------------------------------------------------------------


def koch_calibration(leader: bool = False) -> dict[str, dict[str, int]]:
    """A LeRobot calibration for a Koch follower or leader (the leader's elbow is inverted, as
    LeRobot's leader calibration sets it); the emulator's registers are set to match."""
    ranges = {motor: (1024, 3072) for motor in KOCH_MOTORS}
    ranges["shoulder_pan"] = ranges["wrist_roll"] = (0, 4095)  # full turns in LeRobot's calibration
    ranges["gripper"] = (2000, 3000)
    return {
        motor: {
            "id": i,
            "drive_mode": int(leader and motor == "elbow_flex"),
            "homing_offset": 0,
            "range_min": lo,
            "range_max": hi,
        }
        for i, (motor, (lo, hi)) in enumerate(ranges.items(), start=1)
    }


def apply_calibration(emulator: DynamixelBusEmulator, calibration: dict[str, dict[str, int]]) -> None:
    """Put a calibration's offsets, limits and drive modes into the servos' registers."""
    for fields in calibration.values():
        servo_id = fields["id"]
        emulator.write_register(servo_id, *HOMING_OFFSET, fields["homing_offset"] & 0xFFFFFFFF)
        emulator.write_register(servo_id, *MIN_POSITION_LIMIT, fields["range_min"])
        emulator.write_register(servo_id, *MAX_POSITION_LIMIT, fields["range_max"])
        emulator.write_register(servo_id, *DRIVE_MODE, fields["drive_mode"])
        emulator.set_position(servo_id, (fields["range_min"] + fields["range_max"]) // 2)


@contextlib.contextmanager
def emulated_koch(
    calibration_dir: Path,
    arm_id: str = "test_follower",
    leader: bool = False,
    speed: float = 1500.0,
) -> Iterator[tuple[str, DynamixelBusEmulator]]:
    """A Koch follower (or leader) on an emulated bus: yields `(port, emulator)`.

    Writes `<calibration_dir>/<arm_id>.json` in LeRobot's format; every joint starts at the middle
    of its range."""
    calibration = koch_calibration(leader)
    path = Path(calibration_dir) / f"{arm_id}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(calibration, indent=4))
    models = dict(enumerate(KOCH_LEADER_MODELS if leader else KOCH_FOLLOWER_MODELS, start=1))
    with DynamixelBusEmulator(models, speed=speed) as emulator:
        apply_calibration(emulator, calibration)
        yield emulator.port, emulator
