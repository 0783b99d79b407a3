"""flywheel: a robot-side data flywheel for LeRobot arms, built around pi*0.6 RECAP."""

import os

# `datasets` draws a "Map" progress bar for every episode LeRobot saves; ours are enough.
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

import warnings

# ... and LeRobot's context manager that re-enables the bars then warns that the variable wins.
warnings.filterwarnings("ignore", message="Cannot enable progress bars", category=UserWarning)
