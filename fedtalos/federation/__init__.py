"""The federated run on the server side, and how it is started.

``server`` runs the phases on the shared phase machine; each phase is a small class in Flower's configure /
aggregate vocabulary (``fedavg``: fine-tuning and linear probing, ``head``: the ridge head, ``calibration``: the
mask); ``messenger`` owns the node registry (``cohort``), the weights ``transport`` and one round trip with its
retry; ``protocol`` is what travels in messages and how replies are checked; ``aggregate`` the weighted average;
``state`` the resumable server state; ``mask_sync`` the content-addressed mask cache; ``evaluation`` the server-side
and federated evaluation; ``launcher`` starts a run with ``flwr run`` and reads its final status; ``superlink``
starts a private simulation SuperLink (its own port, FLWR_HOME and environment, killed with its starter) for a sweep
slot or a test.
"""
