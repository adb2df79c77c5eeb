"""The sweep driver with a stand-in runner (the real commands are in test_sweep_e2e.py): failures are reported and
the sweep goes on, finished runs are skipped, progress lines and ETA."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import IO

from fedtalos.study.grid import parse_grid
from fedtalos.study.plan import plan
from fedtalos.study.progress import format_duration
from fedtalos.study.runners import RunOutcome
from fedtalos.study.sweep import Sweep
from tests.support.fakeruns import train_rows, write_run

GRID = {
    "sweep": {"family": "drv", "seeds": [0, 1]},
    "base": {"num-clients": 4, "fraction-train": 0.5, "num-server-rounds": 3, "lr-schedule": "constant"},
    "grid": {"local-steps": [1, 2]},
}


class StandIn:
    """Writes the run directory a finished run leaves; fails (or raises) for chosen run names."""

    def __init__(self, fail: set[str] = frozenset(), crash: set[str] = frozenset(), delay: float = 0.0) -> None:
        self.fail, self.crash, self.delay = fail, crash, delay
        self.calls: list[str] = []

    def command(self, run) -> list[str]:
        return ["stand-in", run.name]

    def __call__(self, run, log: IO[str]) -> RunOutcome:
        self.calls.append(run.name)
        if run.name in self.crash:
            raise RuntimeError("runner bug")
        if run.name in self.fail:
            return RunOutcome(False, "Flower run 7 ended as 'finished:failed'")
        rows = train_rows(3, 0.5)
        if self.delay:  # rows appear one by one, as a real run writes them
            write_run(run.overrides, rows[:1], finished=False)
            time.sleep(self.delay)
            write_run(run.overrides, rows[:2], finished=False)
            time.sleep(self.delay)
        write_run(run.overrides, rows)
        return RunOutcome(True, "ok")


def _runs(tmp_path: Path):
    return plan(parse_grid(GRID), output_root=tmp_path)


def test_a_failed_run_is_reported_and_the_sweep_goes_on(tmp_path: Path):
    runs = _runs(tmp_path)
    assert [r.name for r in runs] == ["drv-J1-seed0", "drv-J2-seed0", "drv-J1-seed1", "drv-J2-seed1"]
    runner = StandIn(fail={"drv-J2-seed0"}, crash={"drv-J1-seed1"})
    out = io.StringIO()
    report = Sweep(runs, {"federated": runner}, out=out, poll_s=0.05).run()
    text = out.getvalue()
    assert runner.calls == [r.name for r in runs], "every run was tried, in order"
    assert report.ran == ["drv-J1-seed0", "drv-J2-seed1"]
    assert set(report.failed) == {"drv-J2-seed0", "drv-J1-seed1"} and not report.ok
    assert "RuntimeError: runner bug" in report.failed["drv-J1-seed1"]
    assert "[0/4] start drv-J1-seed0 (new)" in text
    assert "[1/4] done drv-J1-seed0" in text and "test acc 50.00 %" in text
    assert "[1/4] FAILED drv-J2-seed0" in text and "finished:failed" in text and "drv-J2-seed0.log" in text
    assert "sweep finished: 2/4 runs complete" in text and "2 failed: drv-J2-seed0, drv-J1-seed1" in text
    assert (tmp_path / "_sweeps" / "drv" / "drv-J1-seed0.toml").is_file()
    assert "stand-in drv-J1-seed0" in (tmp_path / "_sweeps" / "drv" / "drv-J1-seed0.log").read_text()

    # The same sweep again: the finished runs are skipped, only the failed ones run.
    again = StandIn()
    out = io.StringIO()
    report = Sweep(runs, {"federated": again}, out=out).run()
    assert again.calls == ["drv-J2-seed0", "drv-J1-seed1"]
    assert report.ok and report.skipped == ["drv-J1-seed0", "drv-J2-seed1"]
    assert out.getvalue().startswith("sweep: 4 runs under") and "2 finished, 0 to resume, 2 new" in out.getvalue()
    assert "sweep finished: 4/4 runs complete (2 run now, 2 were already finished)" in out.getvalue()


def test_progress_lines_show_the_round_and_an_eta(tmp_path: Path):
    runs = _runs(tmp_path)[:2]
    out = io.StringIO()
    Sweep(runs, {"federated": StandIn(delay=0.4)}, out=out, progress_every=0.0, poll_s=0.05).run()
    text = out.getvalue()
    assert "    drv-J1-seed0: train round 1/3 (step 1/3)" in text
    assert "drv-J1-seed0: train round 2/3 (step 2/3) · run ETA " in text
    # the second run starts with the first one's duration as the estimate of what is left
    start_second = next(line for line in text.splitlines() if line.startswith("[1/2] start drv-J2-seed0"))
    assert "sweep ETA ?" not in start_second


def test_eta_is_mean_run_time_times_runs_left():
    sweep = Sweep([], {}, out=io.StringIO(), clock=lambda: 100.0)
    sweep.durations = [60.0, 120.0]
    sweep.todo = 3
    sweep._current_started = 70.0  # the current run has run 30 s of a 90 s mean
    assert sweep.eta() == 60.0 + 3 * 90.0
    assert sweep.eta(current_left=10.0) == 10.0 + 3 * 90.0
    assert format_duration(3725) == "1h02m" and format_duration(65) == "1m05s" and format_duration(None) == "?"


def test_analyses_run_for_finished_runs_that_ask_for_them(tmp_path: Path):
    grid = {**GRID, "analysis": {"mask-agreement": 3}}
    runs = plan(parse_grid(grid), output_root=tmp_path)
    asked: list[tuple[str, int]] = []

    def analyze(run) -> tuple[bool, str]:
        asked.append((run.name, run.mask_agreement_clients))
        return run.name != "drv-J2-seed1", "done" if run.name != "drv-J2-seed1" else "analysis failed"

    out = io.StringIO()
    report = Sweep(runs, {"federated": StandIn(fail={"drv-J1-seed1"})}, out=out, analyze=analyze).run()
    assert asked == [("drv-J1-seed0", 3), ("drv-J2-seed0", 3), ("drv-J2-seed1", 3)], "not for the failed run"
    assert report.analyses_failed == {"drv-J2-seed1": "analysis failed"} and not report.ok
    assert "    analysis of drv-J2-seed1: analysis failed" in out.getvalue()


def test_analysis_subprocess_reports_a_failure_and_skips_what_exists(tmp_path: Path):
    import json

    from fedtalos.study.sweep import analyze_in_subprocess

    run = plan(parse_grid({**GRID, "analysis": {"mask-agreement": 3}}), output_root=tmp_path)[0]
    run.sweep_dir.mkdir(parents=True)
    ok, detail = analyze_in_subprocess(run)  # no run directory: the command fails, its output goes to the log
    assert not ok and str(run.log_path) in detail
    assert "analyze mask-agreement" in run.log_path.read_text()
    (run.run_dir / "analysis").mkdir(parents=True)
    (run.run_dir / "analysis" / "mask_agreement.json").write_text(json.dumps({"clients_requested": 3}))
    assert not analyze_in_subprocess(run)[0], "an analysis from before the noise floor is run again"
    (run.run_dir / "analysis" / "mask_agreement.json").write_text(
        json.dumps({"clients_requested": 3, "noise_floor": []})
    )
    assert analyze_in_subprocess(run) == (True, f"mask agreement already in {run.run_dir}/analysis/mask_agreement.json")
