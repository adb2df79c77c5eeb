"""The run-config keys of the server strategies beyond ``server-*`` (robust rules, q-FedAvg, the differential-privacy
wrappers) with Flower 1.42's hyper-parameter names (kebab-case) and defaults, the checks that need the cohort size,
and the server-lr defaults of Flower's server optimisers. ``RunConfig`` declares one field per key from these."""

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
# server-lr when the key is left at 0: the defaults of Flower's classes (flwr.serverapp.strategy, 1.42). Adaptive
# steps of 1.0 would move each weight by up to ~1 per round and wreck a pretrained model. fedavg and fedprox take
# no server step; their resolved server-lr is 1.0, the value their result hashes hold.
SERVER_LR_DEFAULTS = {"fedavgm": 1.0, "fedadam": 0.1, "fedyogi": 0.01, "fedadagrad": 0.1}
# 'none', and Flower's wrappers: fixed clipping (DifferentialPrivacy{Server,Client}SideFixedClipping) or adaptive
# clipping (DifferentialPrivacy{Server,Client}SideAdaptiveClipping), on the server or on the clients.
DP_MODES = ("none", "server-fixed", "client-fixed", "server-adaptive", "client-adaptive")
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
    "differential privacy around the strategy: " + ", ".join(repr(m) for m in DP_MODES) + " (clipping, then Gaussian "
    "noise of std noise-multiplier·clipping-norm/clients-per-round)",
    choice(*DP_MODES),
    scope="federated",
)
CLIPPING_NORM = opt(
    1.0, "dp fixed: L2 norm each client's update is clipped to", in_range(0.0, lo_open=True), scope="federated"
)
NOISE_MULTIPLIER = opt(
    1.0,
    "dp: noise multiplier of the Gaussian mechanism (1.0 or more for strong privacy)",
    in_range(0.0),
    scope="federated",
)
INITIAL_CLIPPING_NORM = opt(
    0.1, "dp adaptive: the clipping norm of the first round", in_range(0.0, lo_open=True), scope="federated"
)
TARGET_CLIPPED_QUANTILE = opt(
    0.5, "dp adaptive: the fraction of updates the norm adapts to clip", in_range(0.0, 1.0), scope="federated"
)
CLIP_NORM_LR = opt(
    0.2,
    "dp adaptive: learning rate of the clipping norm's geometric update",
    in_range(0.0, lo_open=True),
    scope="federated",
)
CLIPPED_COUNT_STDDEV = opt(
    0.0,
    "dp adaptive: std of the noise on the count of clipped updates; 0 = clients-per-round/20 (Flower's default)",
    in_range(0.0),
    scope="federated",
)

# The keys above, which runs from before them did not have: at their defaults they stay out of the result hash, so
# those runs keep their hashes, names and directories (tests/tracking/test_identity.py).
ADDED_DEFAULTS = {
    name: key.default
    for name, key in {
        "num-malicious-nodes": NUM_MALICIOUS_NODES,
        "num-nodes-to-select": NUM_NODES_TO_SELECT,
        "beta": BETA,
        "q": Q,
        "dp": DP,
        "clipping-norm": CLIPPING_NORM,
        "noise-multiplier": NOISE_MULTIPLIER,
        "initial-clipping-norm": INITIAL_CLIPPING_NORM,
        "target-clipped-quantile": TARGET_CLIPPED_QUANTILE,
        "clip-norm-lr": CLIP_NORM_LR,
        "clipped-count-stddev": CLIPPED_COUNT_STDDEV,
    }.items()
}


def without_added_defaults(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` (result keys → values) without the keys of :data:`ADDED_DEFAULTS` that hold their defaults."""
    return {k: v for k, v in values.items() if k not in ADDED_DEFAULTS or v != ADDED_DEFAULTS[k]}


def strategy_problems(config: Any) -> list[str]:
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
    sigma, count_std = config.noise_multiplier, config.clipped_count_stddev or n / 20
    if config.dp.endswith("-adaptive") and sigma > 0 and sigma >= 2 * count_std:
        problems.append(
            f"noise-multiplier = {sigma} with dp = {config.dp!r}: must be below 2 × clipped-count-stddev = "
            f"{2 * count_std:g} (the count's noise takes part of the budget); raise clipped-count-stddev"
            + (f" (0: {cohort} / 20)" if not config.clipped_count_stddev else "")
            + " or lower noise-multiplier"
        )
    return problems
