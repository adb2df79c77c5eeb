"""What a figure command accepts: output formats and x axes (light: a parser reads them without matplotlib)."""

from __future__ import annotations

FORMATS = ("png", "pdf", "svg")

X_AXES = {
    "round": "communication round",
    "client-steps": "local SGD steps per client (round × J)",
    "epoch": "epoch",
}
