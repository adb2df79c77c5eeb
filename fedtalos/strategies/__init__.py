"""Server strategies, selected by the run-config key ``strategy``.

Each strategy turns the weighted average of the clients' weights into the next global weights, in place, and
keeps whatever state it needs (server momentum, Adam moments) as tensors, so a checkpoint can hold it. The
update rules are those of Flower's strategy classes of the same names (``flwr.serverapp.strategy``); the tests
check parity against them. Flower's classes themselves are not used for the round loop because they sample
nodes with an unseeded global ``random`` over node ids, count rounds from 1 on every start, and keep their state
in attributes that no checkpoint sees: an exactly resumable run needs all three under our control.
"""

from fedtalos.strategies.base import ServerStrategy
from fedtalos.strategies.registry import STRATEGIES, make_strategy

__all__ = ["STRATEGIES", "ServerStrategy", "make_strategy"]
