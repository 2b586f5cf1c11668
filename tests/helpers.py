"""What every test of a refused command line checks: one ``error:`` line, no traceback."""

from __future__ import annotations


def one_error_line(stderr: str) -> str:
    """The single ``error: ...`` line of a refused command's stderr; fails on a traceback or on more or fewer lines."""
    assert "Traceback" not in stderr, stderr[-2000:]
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, stderr[-2000:]
    return lines[0]
