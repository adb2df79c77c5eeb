"""Server strategies, selected by the run-config key ``strategy``.

Each strategy turns the weighted average of the clients' weights into the next global weights, in place, and
keeps whatever state it needs (server momentum, Adam moments) as tensors, so a checkpoint can hold it. The
update rules are those of Flower 1.42's strategy classes of the same names (``flwr.serverapp.strategy``), and so
are the server-lr defaults (``config.SERVER_LR_DEFAULTS``): ``tests/strategies/test_registry.py`` runs each
strategy built by :func:`make_strategy` beside Flower's class over the same averages (relative difference < 1e-5
per round) and resumes each mid-run from its ``state_dict``. Flower's classes themselves are not used for the
round loop because they sample nodes with an unseeded global ``random`` over node ids, count rounds from 1 on every
start, and keep their state in attributes that no checkpoint sees: an exactly resumable run needs all three under
our control.
"""

from fedtalos.strategies.base import ServerStrategy
from fedtalos.strategies.registry import STRATEGIES, make_strategy

__all__ = ["STRATEGIES", "ServerStrategy", "make_strategy"]
