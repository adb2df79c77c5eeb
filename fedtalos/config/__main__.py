"""``python -m fedtalos.config``: the ``[tool.flwr.app.config]`` section of ``pyproject.toml``, generated."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from fedtalos.config import RunConfig


def toml_section(values: Mapping[str, Any] | None = None) -> str:
    """The ``[tool.flwr.app.config]`` body: every key with its help as a comment; the federated app ignores the
    keys of centralized runs, so their comment says so."""
    values = dict(RunConfig.defaults(), **(values or {}))
    lines = []
    for key, facts in RunConfig.facts().items():
        value = values[key]
        if isinstance(value, bool):
            literal = str(value).lower()
        else:
            literal = json.dumps(value) if isinstance(value, str) else repr(value)
        lines.append(f"# {'centralized only: ' if facts.scope == 'centralized' else ''}{facts.help}")
        lines.append(f"{key} = {literal}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(toml_section(), end="")
