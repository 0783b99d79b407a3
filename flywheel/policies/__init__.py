"""Policies shipped with flywheel (registered with LeRobot by the plugins/ shims)."""
