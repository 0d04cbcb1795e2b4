"""The SCALe contract every host honours, written once; each host runs it in its own environment.

Like PEFT's common tests: :class:`ScaleContract` holds the tests, a host test class subclasses it and implements
the small harness below (``tests/trl/test_contract.py``, ``tests/axolotl/test_contract.py``,
``tests/llamafactory/test_contract.py``). The contract:

- equal weights (constant schedule, answer weight 0.5, token normalization) == the host's stock loss: the same
  loss and grad norm every step, the same trained parameters;
- gradient accumulation is exact: batch 8 == batch 2 x 4 accumulation steps, for both normalizations;
- packing == padding, for both normalizations (hosts that pack);
- a resumed run continues exactly: the same SCALe weights, losses and final parameters as the uninterrupted run;
- a mode SCALe refuses stops with the host's clear error, naming the key (one representative per host);
- two processes == one process, for both normalizations, under DDP and the shipped DeepSpeed ZeRO-2 / ZeRO-3 /
  ZeRO-3-offload configs (``recipes/deepspeed``) where the host supports them: 2 ranks x micro-batch 2 x 2
  accumulation steps train exactly what 1 process x 8 does (CPU: gloo, DeepSpeed's CPU accelerator). The harness
  launches the workers (:meth:`ScaleContract.run_distributed`);
- two nodes == one process (``zero3_2nodes``): the same runs under ZeRO-3 on two nodes of one process each, started
  as multi-node training is started, one launcher per node (``--nnodes 2``, node ranks 0 and 1, rendezvous on
  127.0.0.1; :func:`run_nodes`): each node's only process has local rank 0, so whatever reads the local rank where
  it means the global one shows up here.

Every comparison has a counterpart that shows it can fail: the default SCALe loss differs from the stock loss,
sample normalization from token normalization, and the resumed steps' weights change from step to step.

Each host trains on its own tiny model and exactly :data:`SAMPLES` chain-of-thought samples, so that every
optimizer step (8 samples) sees the whole data set, whatever the micro-batch split or the packing.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest

SAMPLES = 8
"""Samples in a host's contract data set: one optimizer step of :data:`SAMPLES` samples is one epoch."""

EQUAL = {"schedule": "constant", "answer_weight_start": 0.5, "normalization": "token"}
"""SCALe options under which SCALe is the stock token-mean cross-entropy."""


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run, in host-neutral terms (the harness maps it to its config)."""

    scale: bool = True  # False: the host's stock loss, no SCALe at all
    options: dict[str, Any] = dataclasses.field(default_factory=dict)  # SCALe options (core names, no prefix)
    per_device: int = SAMPLES  # micro-batch size (rows: packed rows when packing)
    grad_accum: int = 1
    packing: bool = False  # all SAMPLES samples in one packed row (per_device=1)
    max_steps: int = 2
    save_steps: int | None = None  # save a checkpoint every this many steps
    resume: tuple[str, int] | None = None  # (name of an earlier run, step): resume from that run's checkpoint


TWO_NODES = "zero3_2nodes"
"""ZeRO-3 on two nodes of one process each: two launches, node ranks 0 and 1 (:func:`run_nodes`)."""

DISTRIBUTED = ("ddp", "zero2", "zero3", "zero3_offload", TWO_NODES)
"""Two-process modes: plain DDP, the DeepSpeed configs of ``recipes/deepspeed`` of these names (one node, two
processes), and :data:`TWO_NODES`."""

RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "deepspeed"


def deepspeed_config(mode: str) -> Path | None:
    """The shipped DeepSpeed config of a :data:`DISTRIBUTED` mode (None: plain DDP)."""
    return None if mode == "ddp" else RECIPES / f"{mode.removesuffix('_2nodes')}.json"


def nodes(mode: str) -> int:
    """How many nodes (launcher processes) a :data:`DISTRIBUTED` mode runs on; 2 processes in all either way."""
    return 2 if mode == TWO_NODES else 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_node_args(node_rank: int, master_port: int, nnodes: int = 2) -> list[str]:
    """torchrun's options for node ``node_rank`` of a multi-node launch of one process per node (static rendezvous at
    ``127.0.0.1:master_port``, as ``--master_addr $MASTER_ADDR`` on a cluster)."""
    return [
        "--nnodes",
        str(nnodes),
        "--node_rank",
        str(node_rank),
        "--nproc_per_node",
        "1",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(master_port),
    ]


def run_nodes(
    launch: Callable[[int, int], tuple[list[str], dict[str, str]]], cwd: Path, timeout: float, nnodes: int = 2
) -> list[str]:
    """Start one launcher per node, as on a cluster: ``launch(node_rank, master_port)`` gives node ``node_rank``'s
    command and environment; all of them run at once and rendezvous on 127.0.0.1. Returns each node's output
    (stdout and stderr); asserts that every node exited 0. A node that fails stops the others (they would wait for it
    in the rendezvous until ``timeout``)."""
    port = free_port()
    procs, logs = [], []
    for rank in range(nnodes):
        command, env = launch(rank, port)
        log = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: a full pipe would stall a node
        procs.append(subprocess.Popen(command, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, text=True))
        logs.append(log)
    deadline = time.monotonic() + timeout
    try:
        while True:
            codes = [p.poll() for p in procs]  # every node, every time: a failed one must not hide behind a running one
            if None not in codes or any(c not in (None, 0) for c in codes) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    outputs = []
    for log in logs:
        log.seek(0)
        outputs.append(log.read())
        log.close()
    codes = [p.returncode for p in procs]
    report = "\n".join(f"--- node {r} (exit {c}) ---\n{o[-4000:]}" for r, (c, o) in enumerate(zip(codes, outputs)))
    assert codes == [0] * nnodes, report
    return outputs


def distributed_runs() -> dict[str, Run]:
    """What each two-process mode trains: 2 ranks x micro-batch 2 x 2 accumulation steps = one step of all
    :data:`SAMPLES` samples, compared with the ``<normalization>_b8`` run of one process."""
    return {f"{n}_2proc": Run(options={"normalization": n}, per_device=2, grad_accum=2) for n in ("sample", "token")}


@dataclasses.dataclass
class RunResult:
    rows: list[dict[str, Any]]  # the training logs of the steps this run trained (step, loss, grad_norm, scale/*)
    params: dict[str, Any] | None  # name -> final trainable tensor; None where the host cannot return them
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)  # what a host's own tests add (e.g. eval)

    def step(self, k: int) -> dict[str, Any]:
        """The log of step ``k``."""
        [row] = [r for r in self.rows if r["step"] == k]
        return row


def step_recorder() -> Any:
    """A transformers callback whose ``rows`` are the training logs of the steps trained while it is attached
    (a resumed run's log history also holds the steps before its checkpoint: these do not)."""
    from transformers import TrainerCallback

    class StepRecorder(TrainerCallback):
        def __init__(self) -> None:
            self.rows: list[dict[str, Any]] = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs and "train_loss" not in logs:
                self.rows.append({**logs, "step": state.global_step})

    return StepRecorder()


def _runs(contract: ScaleContract) -> dict[str, Run]:
    runs = {"stock": Run(scale=False), "equal": Run(options=EQUAL)}
    for norm in ("sample", "token"):
        runs[f"{norm}_b8"] = Run(options={"normalization": norm})
        runs[f"{norm}_b2_ga4"] = Run(options={"normalization": norm}, per_device=2, grad_accum=4)
        if contract.supports_packing:
            runs[f"{norm}_packed"] = Run(options={"normalization": norm}, per_device=1, packing=True)
    if contract.supports_resume:
        linear = {"schedule": "linear"}
        runs["full"] = Run(options=linear, max_steps=4, save_steps=2)
        runs["resumed"] = Run(options=linear, max_steps=4, save_steps=2, resume=("full", 2))
    return runs


class ScaleContract:
    """The contract tests. A host subclass (named ``Test...``) implements :meth:`run_all` or :meth:`run`, and
    :meth:`start`, and sets the capability flags; what a host cannot do is skipped with the reason given."""

    supports_packing: ClassVar[bool] = True
    packing_skip_reason: ClassVar[str] = ""
    supports_resume: ClassVar[bool] = True
    resume_skip_reason: ClassVar[str] = ""
    refused: ClassVar[tuple[dict[str, Any], str]] = ({}, "")
    """(host config keys of a mode SCALe refuses, text the host's error must contain)"""
    distributed_modes: ClassVar[tuple[str, ...]] = ()
    """The :data:`DISTRIBUTED` modes the host supports (and the harness can launch); the others are skipped."""
    loss_tol: ClassVar[float] = 1e-5  # absolute, on the logged loss
    grad_norm_tol: ClassVar[float] = 1e-4  # relative
    param_tol: ClassVar[float] = 1e-5  # absolute, on the final parameters

    # -- the harness ------------------------------------------------------------------------------------

    def run(self, run: Run, output_dir: Path, resume_from: Path | None) -> RunResult:
        """Train ``run`` with its output in ``output_dir``; ``resume_from``: the checkpoint to resume from."""
        raise NotImplementedError

    def checkpoint(self, output_dir: Path, step: int) -> Path:
        return output_dir / f"checkpoint-{step}"

    def run_all(self, runs: dict[str, Run], workdir: Path) -> dict[str, RunResult]:
        """Every run, in order (a resumed run after the run it resumes). One at a time here; a host whose runs
        are expensive to start (a subprocess each) runs them all at once instead."""
        results = {}
        for name, run in runs.items():
            resume_from = self.checkpoint(workdir / run.resume[0], run.resume[1]) if run.resume else None
            results[name] = self.run(run, workdir / name, resume_from)
        return results

    def start(self, host_config: dict[str, Any], workdir: Path) -> None:
        """Set up (no need to train) a SCALe run with ``host_config`` added; raise the host's error if refused."""
        raise NotImplementedError

    def run_distributed(self, runs: dict[str, Run], mode: str, workdir: Path) -> dict[str, RunResult]:
        """Train every run on 2 processes (gloo on CPU) under ``mode`` (:func:`deepspeed_config`): on one node, or on
        :func:`nodes` nodes of one process each, one launcher per node started through :func:`run_nodes` with the
        host's documented multi-node launch. The harness also asserts that no rank fell back to the ``[B, T, V]``
        logits (``scale/logits_path``)."""
        raise NotImplementedError

    # -- the runs ---------------------------------------------------------------------------------------

    @pytest.fixture(scope="class")
    def contract_runs(self, tmp_path_factory: pytest.TempPathFactory) -> dict[str, RunResult]:
        return self.run_all(_runs(self), tmp_path_factory.mktemp("contract"))

    @pytest.fixture(scope="class", params=DISTRIBUTED)
    def two_process_runs(self, request: pytest.FixtureRequest, tmp_path_factory) -> tuple[str, dict[str, RunResult]]:
        """(mode, the :func:`distributed_runs` trained on 2 processes under it): once per mode and class."""
        mode = request.param
        if mode not in self.distributed_modes:
            pytest.skip(f"{type(self).__name__}: {mode} is not a mode of this host's harness")
        if mode != "ddp" and importlib.util.find_spec("deepspeed") is None:
            pytest.skip("deepspeed is not installed (DS_BUILD_OPS=0 pip install deepspeed)")
        return mode, self.run_distributed(distributed_runs(), mode, tmp_path_factory.mktemp(f"two_{mode}"))

    def assert_same_steps(self, got: RunResult, want: RunResult, steps: list[int] | None = None) -> None:
        steps = steps or [r["step"] for r in want.rows]
        assert [r["step"] for r in got.rows if r["step"] in steps] == steps
        for k in steps:
            a, b = got.step(k), want.step(k)
            assert a["loss"] == pytest.approx(b["loss"], abs=self.loss_tol), k
            assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=self.grad_norm_tol), k
            for key in ("scale/answer_weight", "scale/think_weight", "scale/think_tokens", "scale/answer_tokens"):
                assert (key in a) == (key in b), key
                if key in b:
                    assert a[key] == pytest.approx(b[key], abs=1e-12), (k, key)
            for key in ("scale/think_loss", "scale/answer_loss"):
                if key in b:
                    assert a[key] == pytest.approx(b[key], abs=self.loss_tol), (k, key)

    def assert_same_params(self, got: RunResult, want: RunResult) -> None:
        if got.params is None or want.params is None:
            return  # the grad norms above stand for the update
        assert set(got.params) & set(want.params)
        for side in (got.params, want.params):
            # a tied weight may be saved under both of its names on one side only (DeepSpeed's state dict keeps
            # lm_head.weight beside embed_tokens.weight): such a key must be an alias of another key of its side
            for name in set(side) - (set(got.params) & set(want.params)):
                assert any(
                    o != name and side[o].shape == side[name].shape and bool((side[o] == side[name]).all())
                    for o in side
                ), name
        for name, value in want.params.items():
            if name not in got.params:
                continue
            diff = float((got.params[name].float() - value.float()).abs().max())
            assert diff <= self.param_tol, (name, diff)

    # -- the contract -----------------------------------------------------------------------------------

    def test_runs_train_what_they_say(self, contract_runs):
        """The stock run has no SCALe, the others do, on the same supervised tokens; every step is logged."""
        runs, specs = contract_runs, _runs(self)
        assert not any(key.startswith("scale/") for row in runs["stock"].rows for key in row)
        for name, result in runs.items():
            first = specs[name].resume[1] + 1 if specs[name].resume else 1
            assert [r["step"] for r in result.rows] == list(range(first, specs[name].max_steps + 1)), name
            for row in result.rows:
                assert math.isfinite(row["loss"]) and math.isfinite(row["grad_norm"]), name
                if name != "stock":
                    assert row["scale/think_tokens"] > 0 and row["scale/answer_tokens"] > 0, name
        reference = runs["sample_b8"].step(1)
        for name in [n for n in runs if n not in ("stock", "full", "resumed")]:
            for key in ("scale/think_tokens", "scale/answer_tokens"):
                assert runs[name].step(1)[key] == reference[key], (name, key)

    def differs(self, a: RunResult, b: RunResult) -> bool:
        """``a`` and ``b`` are told apart by the comparisons of :meth:`assert_same_steps`, ten times over."""
        loss = max(abs(x["loss"] - y["loss"]) for x, y in zip(a.rows, b.rows, strict=True))
        norm = max(abs(x["grad_norm"] / y["grad_norm"] - 1) for x, y in zip(a.rows, b.rows, strict=True))
        return loss > 10 * self.loss_tol and norm > 10 * self.grad_norm_tol

    def test_default_scale_loss_differs_from_the_stock_loss(self, contract_runs):
        """The equal-weights comparison would be vacuous if SCALe trained the stock loss anyway; and the two
        normalizations must differ for their separate checks to mean anything."""
        runs = contract_runs
        assert self.differs(runs["sample_b8"], runs["stock"]) and self.differs(runs["token_b8"], runs["stock"])
        assert self.differs(runs["sample_b8"], runs["token_b8"])

    def test_equal_weights_give_the_stock_loss_and_update(self, contract_runs):
        self.assert_stock_equivalent(contract_runs["equal"], contract_runs["stock"])

    def assert_stock_equivalent(self, equal: RunResult, stock: RunResult) -> None:
        for row in equal.rows:
            assert row["scale/answer_weight"] == 0.5 and row["scale/think_weight"] == 0.5
        assert [r["step"] for r in equal.rows] == [r["step"] for r in stock.rows]
        for a, b in zip(equal.rows, stock.rows, strict=True):
            assert a["loss"] == pytest.approx(b["loss"], abs=self.loss_tol), a["step"]
            assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=self.grad_norm_tol), a["step"]
        self.assert_same_params(equal, stock)

    @pytest.mark.parametrize("normalization", ["sample", "token"])
    def test_gradient_accumulation_is_exact(self, contract_runs, normalization):
        """Batch 8 == batch 2 x 4 accumulation steps, and the weights follow optimizer steps, not micro-batches."""
        whole, split = contract_runs[f"{normalization}_b8"], contract_runs[f"{normalization}_b2_ga4"]
        self.assert_same_steps(split, whole)
        self.assert_same_params(split, whole)

    @pytest.mark.parametrize("normalization", ["sample", "token"])
    def test_packing_matches_padding(self, contract_runs, normalization):
        if not self.supports_packing:
            pytest.skip(self.packing_skip_reason)
        padded, packed = contract_runs[f"{normalization}_b8"], contract_runs[f"{normalization}_packed"]
        self.assert_same_steps(packed, padded)
        self.assert_same_params(packed, padded)

    def test_resume_continues_exactly(self, contract_runs):
        if not self.supports_resume:
            pytest.skip(self.resume_skip_reason)
        full, resumed = contract_runs["full"], contract_runs["resumed"]
        weights = [full.step(k)["scale/answer_weight"] for k in (1, 2, 3, 4)]
        assert len(set(weights)) == 4  # a resumed run that restarted the schedule would differ
        assert [r["step"] for r in resumed.rows] == [3, 4]  # it trained from the checkpoint on, not from scratch
        self.assert_same_steps(resumed, full, steps=[3, 4])
        self.assert_same_params(resumed, full)

    @pytest.mark.distributed
    @pytest.mark.parametrize("normalization", ["sample", "token"])
    def test_two_processes_equal_one_process(self, contract_runs, two_process_runs, normalization):
        """Segment counts and normalizers are summed over ranks: 2 ranks train what 1 process does, step by step."""
        _, runs = two_process_runs
        got, want = runs[f"{normalization}_2proc"], contract_runs[f"{normalization}_b8"]
        self.assert_same_steps(got, want)
        self.assert_same_params(got, want)

    def test_refused_mode_is_a_clear_error(self, tmp_path):
        host_config, named = self.refused
        self.start({}, tmp_path / "accepted")  # the same run without the refused key starts
        with pytest.raises(Exception) as err:
            self.start(host_config, tmp_path / "refused")
        assert named and named in str(err.value), str(err.value)[-2000:]
