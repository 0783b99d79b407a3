"""Operators and pedals: who takes over from the policy, and how they say so."""

from lerobot.teleoperators import koch_leader, so_leader  # noqa: F401  (registers so100_leader, koch_leader)

from teleop import pedal_devices, pedals, sim_operator  # noqa: F401  (registers teleoperator and pedal types)
