"""Servo-bus emulators on pseudo-terminals, for testing LeRobot arms without hardware.

`feetech`: STS3215 servos (SO-100 / SO-101), protocol 0. `dynamixel`: X-series servos (Koch),
protocol 2.0. Both are spoken to by the vendors' real SDKs through LeRobot's motor buses.
"""
