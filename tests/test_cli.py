"""Every command answers --help with its options (draccus renders every field's comment)."""

from __future__ import annotations

import pytest

from flywheel.cli import COMMANDS, main


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_help(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: flywheel {name}")
    assert "(default:" in out
