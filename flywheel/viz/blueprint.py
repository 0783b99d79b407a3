"""The layout the viewer opens with: cameras and events on the left, aligned plots on the right."""

from __future__ import annotations

import rerun.blueprint as rrb

from flywheel.viz import paths as p


def action_view(name: str) -> rrb.TimeSeriesView:
    """One action dimension, policy / operator / hold overlaid in their colours."""
    contents = [f"/{p.ACTION}/{source}/{name}" for source in p.SOURCES]
    return rrb.TimeSeriesView(name=f"action {name}", contents=contents)


def make_blueprint(action_names: list[str], camera_names: list[str], labels: bool = False) -> rrb.Blueprint:
    """The same layout for live runs and replays; `labels` adds a tab for the trainer's episodes.

    Cameras on the left, time-aligned plots on the right, the event log full width at the bottom
    (a text log needs the width: its time columns come first)."""
    plots = rrb.Vertical(
        rrb.TimeSeriesView(name="value V(s)", origin=f"/{p.VALUE}"),
        rrb.TimeSeriesView(name="advantage", origin=f"/{p.ADVANTAGE}"),
        rrb.Horizontal(
            rrb.TimeSeriesView(
                name="pedal · intervention",
                contents=[f"/{p.PEDAL}", f"/{p.INTERVENTION}"],
                # A 0/1 signal: margins so the 1 line is not drawn on the frame's edge.
                axis_y=rrb.ScalarAxis(range=(-0.1, 1.1)),
            ),
            rrb.TimeSeriesView(
                name="policy version",
                contents=[f"/{p.POLICY_VERSION}"],
                # The viewer fits the y range tightly, which hides a constant top line; a fixed
                # range keeps it visible for the first versions (double-click the plot to refit).
                axis_y=rrb.ScalarAxis(range=(-1.5, 10.5)),
            ),
        ),
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
    if camera_names:
        cameras = [rrb.Spatial2DView(name=cam, origin=f"/{p.CAMERA}/{cam}") for cam in camera_names]
        main = rrb.Horizontal(rrb.Vertical(*cameras), main, column_shares=[1, 3])
    events = rrb.TextLogView(name="episodes, takeovers, policy swaps", origin=f"/{p.EVENTS}")
    return rrb.Blueprint(
        rrb.Vertical(main, events, row_shares=[6, 1]),
        rrb.BlueprintPanel(state="collapsed"),
        rrb.SelectionPanel(state="collapsed"),
        rrb.TimePanel(state="collapsed", timeline=p.FRAME),
        auto_views=False,
    )
