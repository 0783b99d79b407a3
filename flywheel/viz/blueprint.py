"""The layout the viewer opens with: cameras and events on the left, aligned plots on the right."""

from __future__ import annotations

import rerun.blueprint as rrb

from flywheel.viz import paths as p


def action_view(name: str) -> rrb.TimeSeriesView:
    """One action dimension, policy / operator / hold overlaid in their colours."""
    contents = [f"/{p.ACTION}/{source}/{name}" for source in p.SOURCES]
    return rrb.TimeSeriesView(name=f"action {name}", contents=contents)


def make_blueprint(action_names: list[str], camera_names: list[str], labels: bool = False) -> rrb.Blueprint:
    """The same layout for live runs and replays; `labels` adds a tab for the trainer's episodes."""
    left = [rrb.Spatial2DView(name=cam, origin=f"/{p.CAMERA}/{cam}") for cam in camera_names]
    left.append(rrb.TextLogView(name="episodes and takeovers", origin=f"/{p.EVENTS}"))
    plots = rrb.Vertical(
        rrb.TimeSeriesView(name="value V(s)", origin=f"/{p.VALUE}"),
        rrb.TimeSeriesView(name="advantage", origin=f"/{p.ADVANTAGE}"),
        rrb.TimeSeriesView(name="pedal · intervention · policy version", origin=f"/{p.CONTROL}"),
        rrb.Grid(*[action_view(name) for name in action_names]),
        rrb.TimeSeriesView(name="state", origin=f"/{p.STATE}"),
        row_shares=[2, 2, 1.5, 2.5, 1.5],
        name="rollout",
    )
    main: rrb.Container = plots
    if labels:
        labeled = rrb.Vertical(
            rrb.TimeSeriesView(name="labeled value", origin=f"/{p.LABELS}/{p.VALUE}"),
            rrb.TimeSeriesView(name="labeled advantage", origin=f"/{p.LABELS}/{p.ADVANTAGE}"),
            name="labels",
        )
        main = rrb.Tabs(plots, labeled)
    return rrb.Blueprint(
        rrb.Horizontal(rrb.Vertical(*left), main, column_shares=[1, 3]),
        rrb.BlueprintPanel(state="collapsed"),
        rrb.SelectionPanel(state="collapsed"),
        rrb.TimePanel(state="collapsed"),
        auto_views=False,
    )
