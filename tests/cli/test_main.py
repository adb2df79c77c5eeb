"""The ``fedtalos`` dispatcher: every command listed and reached, the ``fedtalos-central`` alias, errors exit 2."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fedtalos.cli import central, main, search

REPO = Path(__file__).resolve().parents[2]
EXPECTED = ["run", "central", "edit", "search", "sweep", "summarize", "analyze", "plot", "demo"]


def help_text(capsys: pytest.CaptureFixture, call) -> str:
    """What a ``--help`` prints; it exits with status 0."""
    with pytest.raises(SystemExit) as e:
        call()
    assert e.value.code == 0
    return capsys.readouterr().out


def test_help_lists_every_command(capsys):
    assert list(main.COMMANDS) == EXPECTED
    text = help_text(capsys, lambda: main.main(["--help"]))
    listed = [m.group(1) for m in re.finditer(r"^ {4}(\S+)", text, flags=re.MULTILINE)]
    assert listed == EXPECTED, text


@pytest.mark.parametrize("name", EXPECTED)
def test_each_command_has_its_own_help_under_its_own_name(name, capsys):
    text = help_text(capsys, lambda: main.main([name, "--help"]))
    assert text.startswith(f"usage: fedtalos {name} ")


def test_central_and_the_fedtalos_central_alias_show_the_same_options(capsys, monkeypatch):
    ours = help_text(capsys, lambda: main.main(["central", "--help"]))
    monkeypatch.setattr(sys, "argv", ["fedtalos-central", "--help"])
    alias = help_text(capsys, central.fedtalos_central)
    assert alias.startswith("usage: fedtalos-central [-h] [--config FILE.toml]")
    assert "--lr X" in ours and "--no-progress" in ours
    assert alias.replace("fedtalos-central", "fedtalos central") == ours, "the same parser under the older name"


@pytest.mark.parametrize(
    ("argv", "prog"),
    [
        (["search"], "fedtalos search"),
        (["central", "search"], "fedtalos central search"),
        ("alias", "fedtalos-central search"),
    ],
)
def test_search_and_fedtalos_central_search_reach_the_same_parser(argv, prog, tmp_path, capsys, monkeypatch):
    built: list[str] = []
    original = search.build_parser

    def spy(prog: str = search.PROG):
        built.append(prog)
        return original(prog)

    monkeypatch.setattr(search, "build_parser", spy)
    args = [str(tmp_path / "space.toml"), "--trials", "0", "--output-root", str(tmp_path / "runs")]
    if argv == "alias":
        monkeypatch.setattr(sys, "argv", ["fedtalos-central", "search", *args])
        code = central.fedtalos_central()
    else:
        code = main.main([*argv, *args])
    assert (code, built) == (2, [prog])
    assert capsys.readouterr().err == f"{prog}: --trials must be at least 1\n"
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("argv", [["bogus"], ["--central"]])
def test_an_unknown_command_exits_2(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: fedtalos [-h] [--version] COMMAND ...") and "fedtalos: error:" in err


def test_bare_fedtalos_prints_the_help(capsys):
    assert main.main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: fedtalos [-h] [--version] COMMAND ...") and "summarize" in out


def test_version_comes_from_the_package_metadata(capsys, monkeypatch):
    from importlib import metadata

    monkeypatch.setattr(metadata, "version", lambda name: "9.8.7" if name == "fedtalos" else "?")
    with pytest.raises(SystemExit) as e:
        main.main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out == "fedtalos 9.8.7\n"


def test_a_commands_own_help_line_is_the_one_the_dispatcher_lists():
    import importlib

    for name, line in main.COMMANDS.items():
        module = importlib.import_module(f"fedtalos.cli.{name}")
        assert getattr(module, "HELP", line) == line, name


# Commands whose --help and argument errors answer before torch or Flower are imported (summarize, plot and sweep
# import their machinery at the top of their modules).
LIGHT_COMMANDS = ["run", "central", "edit", "search", "analyze", "sweep", "summarize", "plot", "demo"]


def test_the_parsers_import_neither_torch_nor_flower():
    """``fedtalos --help`` and a light command's parser: no torch, no flwr, no matplotlib in ``sys.modules``."""
    code = (
        "import importlib, sys\n"
        "from fedtalos.cli import main\n"
        "main.build_parser()\n"
        f"for name in {LIGHT_COMMANDS!r}:\n"
        "    importlib.import_module(f'fedtalos.cli.{name}').build_parser()\n"
        "print(sorted(m for m in ('torch', 'flwr', 'matplotlib', 'timm', 'optuna') if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_python_dash_m_fedtalos_cli_is_the_fedtalos_command(tmp_path):
    """What the sweep runs: ``python -m fedtalos.cli central ...`` (bad input: one error line, before compute)."""
    command = [sys.executable, "-m", "fedtalos.cli", "central", "--epochs", "0", "--output-root", str(tmp_path / "r")]
    done = subprocess.run(
        command, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("fedtalos central: invalid run configuration") and "epochs = 0" in done.stderr
    assert not (tmp_path / "r").exists()


BAD_INPUT = {
    "run": ["--run-config", "num-server-rounds=0", "--check"],
    "central": ["--epochs", "0"],
    "edit": ["--out", "mask.safetensors", "--sparsity", "2"],
    "search": ["nowhere.toml", "--trials", "1"],
    "sweep": ["nowhere.toml"],
    "summarize": ["nowhere"],
    "analyze": ["mask-agreement", "nowhere"],
    "plot": ["nowhere"],
    "demo": ["--app", "nowhere"],
}


@pytest.mark.parametrize("name", EXPECTED)
def test_bad_input_exits_2_with_one_message_under_the_commands_name(name, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main.main([name, *BAD_INPUT[name]]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"fedtalos {name}") and ": " in captured.err.splitlines()[0], captured.err
    assert captured.out == "" and list(tmp_path.iterdir()) == [], "nothing computed, nothing written"
