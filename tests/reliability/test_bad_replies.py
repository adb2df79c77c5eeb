"""Malformed and implausible replies are rejected, logged and counted, and never touch the global model.

In every case client 6 runs the real ClientApp and then damages its reply; the run must end bit-identical to the
same run in which client 6 simply did not reply, with ``clients_failed`` counting it and the log naming the
problem. Client 6 is in the first train cohort ([2, 4, 6]), the calibration cohort ([2, 4, 6] at
calibration-fraction 0.3) and the first federated-evaluation cohort ([1, 4, 6]).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, RecordDict

from tests.support.fakegrid import run_server
from tests.support.reliability import faulty, npy_array, silent
from tests.support.runs import assert_same_tensors, final_state, rows

pytestmark = pytest.mark.usefixtures("flower_task_identity")

BAD = 6
MARKER = Path("/tmp") / f"fedtalos-bad-reply-marker-{id(object())}"

Edit = Callable[[RecordDict], None]  # damages a reply's content in place


# ------------------------------------------------------------------------------------------- damage helpers
def _arrays(content: RecordDict) -> ArrayRecord:
    return content.array_records["arrays"]


def _set_value(key: Callable[[ArrayRecord], str], value: float) -> Edit:
    def edit(content: RecordDict) -> None:
        record = _arrays(content)
        name = key(record)
        values = record[name].numpy().copy()
        values.flat[values.size // 2] = value
        record[name] = Array(values)

    return edit


def _set_last(key: Callable[[ArrayRecord], str], value: float) -> Edit:
    def edit(content: RecordDict) -> None:
        record = _arrays(content)
        name = key(record)
        values = record[name].numpy().copy()
        values.flat[-1] = value
        record[name] = Array(values)

    return edit


def _replace(key: Callable[[ArrayRecord], str], make: Callable[[np.ndarray], Array]) -> Edit:
    def edit(content: RecordDict) -> None:
        record = _arrays(content)
        name = key(record)
        record[name] = make(record[name].numpy())

    return edit


def _metric(name: str, value: Any) -> Edit:
    def edit(content: RecordDict) -> None:
        content.metric_records["metrics"][name] = value

    return edit


def _drop_metric(name: str) -> Edit:
    def edit(content: RecordDict) -> None:
        del content.metric_records["metrics"][name]

    return edit


def _first(record: ArrayRecord) -> str:
    return next(iter(record))


def _last(record: ArrayRecord) -> str:
    return list(record)[-1]


def _named(name: str) -> Callable[[ArrayRecord], str]:
    return lambda record: name


class _Payload:
    def __reduce__(self):
        return (open, (str(MARKER), "w"))


def _pickled_object_array(values: np.ndarray) -> Array:
    # An object array with a code-running element, saved the only way numpy can save it: as a pickle.
    buffer = io.BytesIO()
    np.save(buffer, np.array([_Payload()] * values.size, dtype=object).reshape(values.shape), allow_pickle=True)
    return Array(dtype="float32", shape=tuple(values.shape), stype="numpy.ndarray", data=buffer.getvalue())


def _delete(name_of: Callable[[ArrayRecord], str]) -> Edit:
    def edit(content: RecordDict) -> None:
        record = _arrays(content)
        del record[name_of(record)]

    return edit


def _add_key(content: RecordDict) -> None:
    _arrays(content)["evil"] = Array(np.zeros(3, np.float32))


def _drop_arrays(content: RecordDict) -> None:
    del content["arrays"]


def _second_record(content: RecordDict) -> None:
    content["more"] = ArrayRecord({"x": Array(np.zeros(3, np.float32))})


def _drop_metrics(content: RecordDict) -> None:
    del content["metrics"]


def _full_tensor_instead_of_masked_values(content: RecordDict) -> None:
    record = _arrays(content)
    del record["__masked_values__"]
    record["blocks.0.mlp.fc1.weight"] = Array(np.zeros((64, 32), np.float32))


def _undecodable(values: np.ndarray) -> Array:
    return Array(dtype=str(values.dtype), shape=tuple(values.shape), stype="numpy.ndarray", data=b"")


# name: (damage, what the rejection says)
TRAIN_CASES: dict[str, tuple[Edit, str]] = {
    "NaN weight": (_set_value(_last, math.nan), "head.bias: contains NaN or Inf"),
    "Inf weight": (_set_value(_first, math.inf), "cls_token: contains NaN or Inf"),
    "-Inf weight": (_set_value(_first, -math.inf), "cls_token: contains NaN or Inf"),
    "wrong shape": (_replace(_last, lambda v: Array(v[:-1].copy())), "head.bias: shape (99,), expected (100,)"),
    "transposed matrix": (
        _replace(_named("head.weight"), lambda v: Array(v.T.copy())),
        "head.weight: shape (32, 100), expected (100, 32)",
    ),
    "shape declared falsely": (
        _replace(_last, lambda v: npy_array(v[:1], shape=v.shape)),
        "head.bias: data is torch.float32 (1,), declared float32 (100,)",
    ),
    "float64": (_replace(_last, lambda v: Array(v.astype(np.float64))), "head.bias: dtype float64, expected float32"),
    "int64": (_replace(_last, lambda v: Array(v.astype(np.int64))), "head.bias: dtype int64, expected float32"),
    "dtype declared falsely": (
        _replace(_last, lambda v: npy_array(v.astype(np.float64), dtype="float32")),
        "head.bias: data is torch.float64 (100,), declared float32",
    ),
    "undecodable bytes": (_replace(_last, _undecodable), "head.bias: undecodable array (EOFError"),
    "pickled object array": (_replace(_last, _pickled_object_array), "Object arrays cannot be loaded"),
    "missing key": (_delete(_first), "arrays do not match: missing ['cls_token'], unexpected []"),
    "extra key": (_add_key, "arrays do not match: missing [], unexpected ['evil']"),
    "no arrays": (_drop_arrays, "expected exactly one ArrayRecord named 'arrays', got []"),
    "two array records": (_second_record, "expected exactly one ArrayRecord named 'arrays', got ['arrays', 'more']"),
    "num-examples zero": (_metric("num-examples", 0), "num-examples must be a positive integer, got 0"),
    "num-examples negative": (_metric("num-examples", -180), "num-examples must be a positive integer, got -180"),
    "num-examples absurd": (
        _metric("num-examples", 10**12),
        "num-examples = 1000000000000, but the node registered 180 examples",
    ),
    "num-examples off by one": (_metric("num-examples", 181), "num-examples = 181, but the node registered 180"),
    "num-examples fractional": (_metric("num-examples", 179.5), "num-examples must be a positive integer, got 179.5"),
    "num-examples NaN": (_metric("num-examples", math.nan), "num-examples is not a number: nan"),
    "num-examples a list": (_metric("num-examples", [180]), "num-examples is not a number: [180]"),
    "num-examples missing": (_drop_metric("num-examples"), "no num-examples"),
    "no metrics record": (_drop_metrics, "no num-examples"),
    "train-loss NaN": (_metric("train-loss", math.nan), "train-loss is not a finite number: nan"),
    "train-loss a list": (_metric("train-loss", [1.0, 2.0]), "train-loss is not a finite number: [1.0, 2.0]"),
}

MASKED_CASES: dict[str, tuple[Edit, str]] = {
    "masked values too short": (
        _replace(_named("__masked_values__"), lambda v: Array(v[:-1].copy())),
        "__masked_values__: shape",
    ),
    "masked values too long": (
        _replace(_named("__masked_values__"), lambda v: Array(np.append(v, v[:5]))),
        "__masked_values__: shape",
    ),
    "masked values declared to fit": (
        _replace(_named("__masked_values__"), lambda v: npy_array(v[:-1], shape=v.shape)),
        "__masked_values__: data is torch.float32",
    ),
    "masked values NaN": (_set_value(_named("__masked_values__"), math.nan), "__masked_values__: contains NaN"),
    "dense tensor instead of masked values": (
        _full_tensor_instead_of_masked_values,
        "missing ['__masked_values__'], unexpected ['blocks.0.mlp.fc1.weight']",
    ),
}

RIDGE_CASES: dict[str, tuple[Edit, str]] = {
    "gram wrong shape": (_replace(_named("gram"), lambda v: Array(v[:-1].copy())), "gram: expected finite float64"),
    "gram NaN": (_set_value(_named("gram"), math.nan), "gram: expected finite float64"),
    "cross float32": (_replace(_named("cross"), lambda v: Array(v.astype(np.float32))), "cross: expected finite"),
    "gram count does not match n": (_set_last(_named("gram"), 179.0), "gram[-1,-1] = 179.0 does not match n = 180"),
    "cross undecodable": (_replace(_named("cross"), _undecodable), "cross: undecodable array"),
    "cross missing": (_delete(_named("cross")), "expected arrays 'gram' and 'cross'"),
}

FISHER_CASES: dict[str, tuple[Edit, str]] = {
    "negative scores": (_set_value(_first, -1.0), "cls_token: negative scores"),
    "NaN scores": (_set_value(_first, math.nan), "cls_token: scores contain NaN or Inf"),
}

EVAL_CASES: dict[str, tuple[Edit, str]] = {
    "eval without num-examples": (_drop_metric("num-examples"), "no num-examples"),
    "eval-loss NaN": (_metric("eval-loss", math.nan), "eval-loss is not a finite number: nan"),
    "eval-acc above 1": (_metric("eval-acc", 3.0), "out of range"),
}


def _damaging(edit: Edit) -> Callable[[Message, Message], Message]:
    def tamper(message: Message, reply: Message) -> Message:
        edit(reply.content)
        return reply

    return tamper


# ------------------------------------------------------------------------------------------- configurations
def _dense(base: dict[str, Any], root: Path) -> dict[str, Any]:
    return {**base, "output-root": str(root), "lr-schedule": "constant", "num-server-rounds": 1, "eval-every": 100}


def _masked(base: dict[str, Any], root: Path) -> dict[str, Any]:
    # step 0 = ridge head (every client), a random mask (no client), one sparse round
    return {**_dense(base, root), "head": "ridge", "mask-rule": "random", "sparsity": 0.9}


def _calibrated(base: dict[str, Any], root: Path) -> dict[str, Any]:
    return {
        **_masked(base, root),
        "mask-rule": "least-sensitive",
        "calibration-rounds": 1,
        "calibration-fraction": 0.3,
        "fisher-samples": 8,
    }


def _evaluated(base: dict[str, Any], root: Path) -> dict[str, Any]:
    return {**_dense(base, root), "federated-eval-fraction": 0.3}


SUITES = {
    "train": (_dense, "train", TRAIN_CASES),
    "masked": (_masked, "train", MASKED_CASES),
    "ridge": (_masked, "query.ridge", RIDGE_CASES),
    "fisher": (_calibrated, "query.fisher", FISHER_CASES),
    "evaluate": (_evaluated, "evaluate", EVAL_CASES),
}
ALL_CASES = [(suite, case) for suite, (_, _, cases) in SUITES.items() for case in cases]


@pytest.fixture(scope="module")
def silent_runs(module_task_identity, tiny_run_config_module, tmp_path_factory):
    """Per suite, (rows, final tensors) of the run in which client 6 does not reply to that message type."""
    cache: dict[str, tuple[list, dict]] = {}

    def get(suite: str) -> tuple[list, dict]:
        if suite not in cache:
            make_config, message_type, _ = SUITES[suite]
            config = make_config(tiny_run_config_module, tmp_path_factory.mktemp(f"silent-{suite}"))
            run_dir, _ = run_server(config, faulty={BAD: faulty({message_type}, silent)})
            cache[suite] = rows(run_dir), final_state(run_dir)
        return cache[suite]

    return get


@pytest.mark.parametrize(("suite", "case"), ALL_CASES, ids=[f"{s}: {c}" for s, c in ALL_CASES])
def test_bad_reply_is_rejected_and_the_model_is_unaffected(
    suite: str, case: str, silent_runs, tiny_run_config_module, tmp_path: Path, fedtalos_log
):
    make_config, message_type, cases = SUITES[suite]
    edit, reason = cases[case]
    config = make_config(tiny_run_config_module, tmp_path / "runs")
    run_dir, _ = run_server(config, faulty={BAD: faulty({message_type}, _damaging(edit))})

    expected_rows, expected_state = silent_runs(suite)
    logged = rows(run_dir)
    failed = [line for line in fedtalos_log.text.splitlines() if f"client {BAD} failed (rejected: " in line]
    assert len(failed) == 1 and reason in failed[0], fedtalos_log.text
    assert_same_tensors(final_state(run_dir), expected_state)
    # the same metrics as when client 6 did not reply, but for the bytes its rejected reply did take up
    assert [_without_bytes_up(r) for r in logged] == [_without_bytes_up(r) for r in expected_rows]
    counted = "fed_eval_clients_failed" if suite == "evaluate" else "clients_failed"
    assert sum(r.get(counted, 0) for r in logged) == 1, "the rejection is counted"
    assert not MARKER.exists(), "a reply ran code on the server"


def _without_bytes_up(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k != "bytes_up"}
