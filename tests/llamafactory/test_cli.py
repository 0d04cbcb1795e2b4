"""``scale-llamafactory``: the real command, in subprocesses (a train run, errors). Its torchrun / DeepSpeed runs
are the contract's two-process runs (``test_contract.py``)."""

from __future__ import annotations

import json
import os

import pytest

from scale_plugins.core import ScaleOptions, answer_weight, option_fields

from .helpers import CLI, run_cli, step_logs, train_config, write_yaml


@pytest.mark.slow
def test_train_command_trains_with_scale_and_logs_the_schedule(tiny, tmp_path):
    out = tmp_path / "out"
    schedule = dict(scale_schedule="linear", scale_answer_weight_start=0.2, scale_answer_weight_end=0.6)
    config = write_yaml(tmp_path / "train.yaml", train_config(tiny, out, max_steps=4, **schedule))
    result = run_cli("train", str(config))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "SCALe loss active on rank 0 of 1 (ScaleSeq2SeqTrainer)" in result.stdout + result.stderr

    logs = step_logs(out)
    options = ScaleOptions(schedule="linear", answer_weight_start=0.2, answer_weight_end=0.6)
    expected = [answer_weight(step, 4, options) for step in range(4)]  # the weight used in step k+1
    assert expected == pytest.approx([0.2, 0.2 + 0.4 / 3, 0.2 + 0.8 / 3, 0.6])  # p = step / (max_steps - 1)
    assert [entry["scale/answer_weight"] for entry in logs] == pytest.approx(expected)
    assert [entry["scale/think_weight"] for entry in logs] == pytest.approx([1 - w for w in expected])
    assert all(entry["scale/think_tokens"] > 0 and entry["scale/answer_tokens"] > 0 for entry in logs)
    # LLaMA-Factory's own log (the web UI reads it) has every step
    lines = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    lines = [line for line in lines if "loss" in line]  # not the end-of-training summary
    assert [line["current_steps"] for line in lines] == [1, 2, 3, 4]
    assert [line["loss"] for line in lines] == pytest.approx([entry["loss"] for entry in logs])
    # ... with the SCALe metrics of each step (LogCallback writes a fixed set of keys; the launcher adds these)
    for key in ("scale/think_loss", "scale/answer_loss", "scale/think_weight", "scale/answer_weight"):
        assert [line[key] for line in lines] == pytest.approx([entry[key] for entry in logs])
    assert (out / "model.safetensors").is_file()


def test_bad_value_is_reported_naming_the_key(tiny, tmp_path):
    config = write_yaml(tmp_path / "bad.yaml", train_config(tiny, tmp_path / "out", scale_schedule="cosin"))
    result = run_cli("train", str(config), env={"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": "2"})
    assert result.returncode == 2
    assert "scale-llamafactory: error: scale_schedule: 'cosin' is not allowed" in result.stderr
    assert "Traceback" not in result.stderr
    assert "distributed tasks" not in result.stdout + result.stderr  # reported before torchrun starts


def test_misspelled_scale_key_is_one_line_naming_the_closest_key(tiny, tmp_path):
    """Not LLaMA-Factory's 30-line HfArgumentParser traceback: one line, like a bad value, before torchrun starts."""
    config = write_yaml(tmp_path / "typo.yaml", train_config(tiny, tmp_path / "out", scale_schedul="linear"))
    result = run_cli("train", str(config), env={"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": "2"})
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert errors == ["scale-llamafactory: error: scale_schedul: unknown SCALe key; did you mean `scale_schedule`?"]
    assert "Traceback" not in result.stderr and "HfArgumentParser" not in result.stderr
    assert "distributed tasks" not in result.stdout + result.stderr


def test_misspelled_key_in_a_command_line_override(tiny, tmp_path):
    config = write_yaml(tmp_path / "ok.yaml", train_config(tiny, tmp_path / "out"))
    result = run_cli("train", str(config), "scale_answer_weight_ed=0.8")
    assert result.returncode == 2
    assert "error: scale_answer_weight_ed: unknown SCALe key; did you mean `scale_answer_weight_end`?" in result.stderr
    assert "Traceback" not in result.stderr


def test_help_needs_no_llamafactory_import():
    result = run_cli("help")
    assert result.returncode == 0
    assert "use_scale_loss" in result.stdout and "scale_answer_weight_start" in result.stdout
    for opt in option_fields():  # derived from the core: a new option is listed
        if opt.name != "ignore_index":
            assert f"scale_{opt.name}" in result.stdout


# -- the web UI listens on loopback unless asked -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "env", "host"),
    [
        ([], {}, "127.0.0.1"),  # LLaMA-Factory's own default would be 0.0.0.0
        ([], {"GRADIO_IPV6": "1"}, "::1"),  # ... and [::] here
        ([], {"GRADIO_SERVER_NAME": "0.0.0.0"}, "0.0.0.0"),
        (["--host", "0.0.0.0"], {}, "0.0.0.0"),
        (["--host=10.1.2.3"], {"GRADIO_SERVER_NAME": "127.0.0.1"}, "10.1.2.3"),  # the flag wins
    ],
)
def test_web_listen_address(args, env, host):
    from scale_plugins.llamafactory.cli import web_listen_address

    got, rest, note = web_listen_address(["--other", *args], env)
    assert (got, rest) == (host, ["--other"])
    if host in ("127.0.0.1", "::1"):
        assert "this machine only" in note and "--host 0.0.0.0" in note and "no authentication" in note
    else:
        assert "warning" in note and "without authentication" in note and host in note


def test_web_listen_address_names_the_port_and_the_share_link():
    from scale_plugins.llamafactory.cli import web_listen_address

    _, _, note = web_listen_address([], {"GRADIO_SERVER_PORT": "7999", "GRADIO_SHARE": "1"})
    assert "port 7999" in note and "ssh -L 7999:127.0.0.1:7999" in note and "public share link" in note


def test_host_flag_without_an_address_is_an_error():
    result = run_cli("webui", "--host")
    assert result.returncode == 2
    assert "scale-llamafactory: error: --host: give the address to listen on" in result.stderr


def _listening_hosts(port: int) -> set[str]:
    """Local addresses with a socket listening on ``port`` (Linux /proc/net/tcp and tcp6)."""
    import ipaddress

    hosts = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            address, port_hex = local.split(":")
            if state == "0A" and int(port_hex, 16) == port and len(address) == width:
                raw = bytes.fromhex(address)  # /proc prints each 32-bit word in host (little-endian) order
                raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                hosts.add(str(ipaddress.ip_address(raw)))
    return hosts


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="reads the listening sockets from /proc/net/tcp")
@pytest.mark.parametrize(("args", "expected"), [([], {"127.0.0.1"}), (["--host", "0.0.0.0"], {"0.0.0.0"})])
def test_webui_listens_where_it_says(tmp_path, args, expected):
    """The real ``scale-llamafactory webui`` without GRADIO_SERVER_NAME: it listens on 127.0.0.1 only, and says so."""
    import socket
    import subprocess
    import time

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {key: value for key, value in os.environ.items() if not key.startswith("GRADIO_SERVER_NAME")}
    env.update(GRADIO_SERVER_PORT=str(port), GRADIO_ANALYTICS_ENABLED="False", BROWSER="true")
    env.pop("GRADIO_SHARE", None)
    log = tmp_path / "webui.log"
    with log.open("w") as out:
        proc = subprocess.Popen([CLI, "webui", *args], cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while not _listening_hosts(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("the web UI did not start:\n" + log.read_text()[-3000:])
            time.sleep(1)
        assert _listening_hosts(port) == expected
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    text = log.read_text()
    if expected == {"127.0.0.1"}:
        assert f"the web UI listens on 127.0.0.1, port {port}: this machine only" in text
    else:
        assert f"warning: the web UI listens on 0.0.0.0, port {port}, without authentication" in text
