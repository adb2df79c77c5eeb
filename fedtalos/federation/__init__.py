"""The federated run on the server side, and how it is started.

``server`` is the round loop; each phase is one small class with ``run_round`` (``train_round``: fine-tuning and
linear probing, ``head``: the ridge head, ``calibration``: the mask); ``wire`` owns a message exchange end to end,
over the node registry (``cohort``) and the weights ``transport``; ``protocol`` is what travels in messages and how
replies are checked; ``aggregate`` the weighted mean; ``state`` the resumable server state; ``mask_sync`` the
content-addressed mask cache; ``evaluation`` the server-side and federated evaluation; ``launcher`` and
``superlink`` start runs with ``flwr run`` and private simulation SuperLinks.
"""
