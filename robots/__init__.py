"""Robot adapters behind LeRobot's Robot interface: the simulated arm, and LeRobot's own arms."""

from lerobot.robots import koch_follower, so_follower  # noqa: F401  (registers so100_follower, koch_follower)

from robots import sim  # noqa: F401  (registers robot.type=sim)
