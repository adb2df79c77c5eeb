"""``bench/cli_startup.py`` in quick mode: one JSON object with a figure per command (never compared to a target)."""

from __future__ import annotations

from tests.support.bench import run_quick


def test_cli_startup_quick():
    report = run_quick("cli_startup.py")
    assert report["benchmark"] == "cli_startup" and report["repeats"] == 1
    assert len(report["commands"]) == 3
    for name, figures in report["commands"].items():
        assert 0 < figures["min_s"] <= figures["median_s"] and figures["peak_rss_mb"] > 0, name
