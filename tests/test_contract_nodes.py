"""contract.run_nodes, the launcher of the two-node contract runs: every node's output comes back, and a node that
fails stops the others at once (they would wait for it in the rendezvous) with a report naming it."""

from __future__ import annotations

import sys
import time

import pytest

from .contract import run_nodes, torchrun_node_args


def test_every_node_is_started_with_its_rank_and_the_shared_port(tmp_path):
    def launch(rank: int, port: int):
        return [sys.executable, "-c", f"print('node', {rank}, 'port', {port})"], {}

    outputs = run_nodes(launch, tmp_path, 60)
    assert [o.split()[:2] for o in outputs] == [["node", "0"], ["node", "1"]]
    assert outputs[0].split()[3] == outputs[1].split()[3]  # one rendezvous port for both


def test_a_failing_node_stops_the_others_and_is_reported(tmp_path):
    def launch(rank: int, port: int):
        code = "import time; time.sleep(120)" if rank == 0 else "import sys; print('boom'); sys.exit(3)"
        return [sys.executable, "-c", code], {}

    start = time.monotonic()
    with pytest.raises(AssertionError) as err:
        run_nodes(launch, tmp_path, 120)
    assert time.monotonic() - start < 30  # node 0 was killed, not waited for
    assert "--- node 1 (exit 3) ---\nboom" in str(err.value)


def test_torchrun_node_args_name_the_node_and_the_rendezvous():
    assert torchrun_node_args(1, 29511) == [
        "--nnodes", "2", "--node_rank", "1", "--nproc_per_node", "1",
        "--master_addr", "127.0.0.1", "--master_port", "29511",
    ]  # fmt: skip
