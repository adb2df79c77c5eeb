"""The run-config keys of the strategies that combine every client's update (robust rules, q-FedAvg) and of the
differential-privacy wrappers, with Flower 1.42's hyper-parameter names (kebab-case) and defaults, and the checks
that need the cohort size. ``RunConfig`` declares one field per key from the facts below."""

from __future__ import annotations

from typing import Any

from fedtalos.config.keys import choice, in_range, opt

# The names of strategies/registry.py's STRATEGIES, listed here because the registry imports the config package.
STRATEGIES = (
    "fedavg",
    "fedavgm",
    "fedprox",
    "fedadam",
    "fedyogi",
    "fedadagrad",
    "fedmedian",
    "fedtrimmedavg",
    "krum",
    "multikrum",
    "bulyan",
    "qfedavg",
)
# 'none', Flower's fixed-clipping wrappers: clipping on the server (DifferentialPrivacyServerSideFixedClipping) or on
# the clients (DifferentialPrivacyClientSideFixedClipping with the fixedclipping_mod).
DP_MODES = ("none", "server-fixed", "client-fixed")
BYZANTINE = ("krum", "multikrum", "bulyan")

STRATEGY = opt("fedavg", "server strategy: " + ", ".join(STRATEGIES), choice(*STRATEGIES), scope="federated")
NUM_MALICIOUS_NODES = opt(
    0, "krum/multikrum/bulyan: f, the Byzantine clients assumed per cohort", in_range(0), scope="federated"
)
NUM_NODES_TO_SELECT = opt(
    1, "multikrum: the lowest-scoring updates averaged (1 = krum)", in_range(1), scope="federated"
)
BETA = opt(
    0.2,
    "fedtrimmedavg: fraction of the updates cut off each tail, per coordinate",
    in_range(0.0, 0.5, hi_open=True),
    scope="federated",
)
Q = opt(0.1, "qfedavg: fairness exponent q (its client-learning-rate is lr)", in_range(0.0), scope="federated")
DP = opt(
    "none",
    "differential privacy around the strategy: 'none', 'server-fixed' or 'client-fixed' clipping, then Gaussian "
    "noise of std noise-multiplier·clipping-norm/cohort-size",
    choice(*DP_MODES),
    scope="federated",
)
CLIPPING_NORM = opt(
    1.0, "dp: L2 norm each client's update is clipped to", in_range(0.0, lo_open=True), scope="federated"
)
NOISE_MULTIPLIER = opt(
    1.0,
    "dp: noise multiplier of the Gaussian mechanism (1.0 or more for strong privacy)",
    in_range(0.0),
    scope="federated",
)


def aggregation_problems(config: Any) -> list[str]:
    """What the cohort size (fraction-train × num-clients) makes impossible for the chosen strategy, one line each.

    Krum's score sums the n − f − 2 nearest distances and needs n ≥ 2f + 3 (Blanchard et al., 2017); Bulyan's
    selection and trimmed median need n ≥ 4f + 3 (El Mhamdi et al., 2018: Flower's Bulyan skips the round below
    it); MultiKrum cannot select more updates than the cohort holds.
    """
    n, f, name = config.cohort_size, config.num_malicious_nodes, config.strategy
    cohort = (
        f"the {n} clients sampled per round (fraction-train = {config.fraction_train} of num-clients = "
        f"{config.num_clients})"
    )
    problems = []
    needed = {"krum": 2 * f + 3, "multikrum": 2 * f + 3, "bulyan": 4 * f + 3}.get(name)
    if needed is not None and n < needed:
        rule = "4f + 3" if name == "bulyan" else "2f + 3"
        problems.append(
            f"num-malicious-nodes = {f} with strategy = {name!r}: needs at least {rule} = {needed} clients per round, "
            f"not {cohort}; lower num-malicious-nodes or raise fraction-train"
        )
    if name == "multikrum" and config.num_nodes_to_select > n:
        problems.append(f"num-nodes-to-select = {config.num_nodes_to_select}: more than {cohort}")
    return problems
