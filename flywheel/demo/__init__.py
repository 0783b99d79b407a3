"""`flywheel demo`: the whole flywheel improving a policy in simulation, with evidence (docs/demo.md)."""

from flywheel.demo.config import METHODS, DemoConfig
from flywheel.demo.run import demo_main

__all__ = ["METHODS", "DemoConfig", "demo_main"]
