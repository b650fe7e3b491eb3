"""`ferry verify` cannot be fooled: two checkpoints with the same weights that differ in one fact
fail, naming it; the probe passes every window and rope boundary and says so; and the CLI's
rough edges (closed pipes, --version, literal {OUT}, config.json diagnosis, inspect, help)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import make_tiny, run

import ferry
from ferry.synthetic import llama_spec, write_checkpoint

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("verify")
    return {
        "mistral": make_tiny(root / "mistral", "mistral", sliding_window=5),
        "llama": make_tiny(root / "llama", "llama", rope_scaling={"rope_type": "yarn", "factor": 2.0,
                                                                  "original_max_position_embeddings": 8}),
    }


def edited(src: Path, dst: Path, **changes) -> Path:
    """A copy of an HF checkpoint with config.json fields changed (same weights)."""
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(changes)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


@pytest.mark.parametrize("change, fact", [
    ({"sliding_window": 7}, "attention.window: 5 tokens on every layer vs 7 tokens on every layer"),
    ({"sliding_window": None}, "attention.window: 5 tokens on every layer vs none (full attention)"),
    ({"hidden_act": "gelu"}, "mlp.activation: 'silu' vs 'gelu'"),
])
def test_verify_fails_naming_the_one_fact_that_differs(tiny, tmp_path, change, fact):
    other = edited(tiny["mistral"], tmp_path / "other", **change)
    code, out, _ = run("verify", tiny["mistral"], other)
    assert code == 1
    assert out.splitlines()[0] == f"MISMATCH: facts differ: {fact}"


def test_verify_names_a_differing_rope_scaling(tiny, tmp_path):
    cfg = json.loads((tiny["llama"] / "config.json").read_text())
    params = {**cfg["rope_parameters"], "rope_type": "linear", "factor": 2.0}
    params.pop("original_max_position_embeddings", None)
    other = edited(tiny["llama"], tmp_path / "other", rope_parameters=params)
    code, out, _ = run("verify", tiny["llama"], other)
    assert code == 1
    assert out.splitlines()[0] == ("MISMATCH: facts differ: positions.rope_scaling: yarn (factor=2.0, "
                                   "original_max_position_embeddings=8) vs linear (factor=2.0)")


def test_verify_names_a_differing_softcap(tmp_path):
    """Soft-caps live in ferry's record inside Megatron checkpoints (no HF family here has one)."""
    spec = llama_spec(layers=2, hidden=32, heads=4, kv_heads=2, ffn=48, vocab=67)
    a = write_checkpoint(spec, tmp_path / "a", to="megatron")
    b = write_checkpoint(spec.replace(**{"attention.softcap": 20.0}), tmp_path / "b", to="megatron")
    code, out, _ = run("verify", a, b)
    assert code == 1 and out.splitlines()[0] == "MISMATCH: facts differ: attention.softcap: None vs 20.0"
    with ferry.read(b) as model:
        assert model.spec.attention.softcap == 20.0


def test_verify_probe_passes_every_boundary_and_says_so(tiny, tmp_path):
    ferry.convert(tiny["llama"], tmp_path / "meg", to="megatron", tp=2)
    code, out, _ = run("verify", tiny["llama"], tmp_path / "meg")
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0] == "facts: the 29 sizes and facts that change the computation are the same"
    assert lines[1] == "probe: 2 x 17 tokens, past rope yarn: positions past the original context 8 (token 9)"
    assert lines[2].startswith("OK: max abs logit diff")
    code, out, _ = run("verify", tiny["llama"], tmp_path / "meg", "--seq-len", "8")
    assert code == 0 and "not checked (probe too short): rope yarn: positions past the original context 8 (needs 9 tokens)" in out


def test_a_window_the_old_short_probe_missed_is_named_and_crossed(tmp_path):
    """Same weights, window 40 vs none: transformers agrees on 16 tokens and differs past the
    window; verify names the window and its probe runs past it (49 tokens)."""
    import torch
    from helpers import hf_logits

    a = make_tiny(tmp_path / "a", "mistral", sliding_window=40, max_position_embeddings=64)
    b = edited(a, tmp_path / "b", sliding_window=None)
    ids = torch.randint(0, 67, (1, 49), generator=torch.Generator().manual_seed(0))
    assert (hf_logits(a, ids[:, :16]) - hf_logits(b, ids[:, :16])).abs().max().item() == 0
    assert (hf_logits(a, ids) - hf_logits(b, ids)).abs().max().item() > 1e-2
    code, out, _ = run("verify", a, b, "--json")
    report = json.loads(out)
    assert code == 1 and report["fact_differences"] == ["attention.window: 40 tokens on every layer vs none (full attention)"]
    assert report["seq_len"] == 49 and report["crossed"] == [
        "attention window 40 (a query past it no longer sees the first token) (token 41)"]
    assert report["logits_ok"] is False and report["max_abs"] > 1e-2  # ferry's forward sees what transformers sees


# -- CLI rough edges -------------------------------------------------------------------------


def ferry_into_closed_pipe(*args: str) -> tuple[int, str]:
    """Run `python -m ferry ARGS` with its stdout a pipe whose reader has already gone."""
    env = {**os.environ, "PYTHONPATH": SRC}
    proc = subprocess.Popen([sys.executable, "-m", "ferry", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    proc.stdout.close()  # the reader goes before ferry writes a byte (like `| true`, `| head -1`)
    err = proc.stderr.read().decode()
    return proc.wait(), err


@pytest.mark.parametrize("command", [["inspect", "{src}"], ["convert", "{src}", "{out}", "--to", "trtllm", "--dry-run"]])
def test_closed_pipe_exits_quietly(tiny, tmp_path, command):
    args = [c.format(src=tiny["llama"], out=tmp_path / "out") for c in command]
    code, err = ferry_into_closed_pipe(*args)
    assert (code, err) == (0, "")


def test_version(capsys):
    from ferry.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out == f"ferry {ferry.__version__}\n"


def test_megatron_note_names_the_output_directory(tiny, tmp_path):
    code, _, err = run("convert", tiny["llama"], tmp_path / "meg", "--to", "megatron")
    assert code == 0
    assert f"ferry: note: Megatron-LM loads this with --load {tmp_path / 'meg'} (a release checkpoint: weights only)" in err
    assert "{OUT}" not in err


def test_megatron_note_names_a_fact_megatron_will_not_compute(tmp_path):
    src = make_tiny(tmp_path / "relu", "gpt2", activation_function="relu")
    code, _, err = run("convert", src, tmp_path / "meg", "--to", "megatron")
    assert code == 0
    assert ("ferry: note: mlp.activation = 'relu': kept in ferry's record in the checkpoint; Megatron-LM will not "
            "compute it (ferry reads it back exactly)") in err


def test_config_problems_are_named(tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text('{"hidden_size": ')
    code, _, err = run("inspect", tmp_path / "bad")
    assert code == 2 and err.startswith(f"ferry: error: {tmp_path / 'bad' / 'config.json'}: not valid JSON (")
    (tmp_path / "bad" / "config.json").write_text('{"model_type": "llama"}')
    code, _, err = run("inspect", tmp_path / "bad")
    assert code == 2 and err == (f"ferry: error: {tmp_path / 'bad' / 'config.json'}: field architectures is missing "
                                 "(a Hugging Face config names the model class there, e.g. [\"LlamaForCausalLM\"])\n")


def test_inspect_is_readable_and_json_stays_for_machines(tiny, tmp_path):
    ferry.convert(tiny["mistral"], tmp_path / "meg", to="megatron", tp=2, pp=2)
    code, out, _ = run("inspect", tmp_path / "meg")
    assert code == 0
    lines = out.splitlines()
    assert "  21 tensors, 22,880 parameters, 89.4 KiB" in lines
    assert "  attention: window [5, 5]" in lines
    assert "  metadata: hf_architecture MistralForCausalLM, bos_token_id 1, eos_token_id 2, pad_token_id 3, source_dtype float32" in lines
    assert "  file                               layers  tensors  bytes" in lines
    assert "  mp_rank_01_001/model_optim_rng.pt  1       8        34.4 KiB" in lines
    code, out, _ = run("inspect", tmp_path / "meg", "--json")
    info = json.loads(out)
    assert info["spec"]["attention"]["window"] == [5, 5] and info["bytes"] == 22880 * 4


def test_every_verify_option_has_help(capsys):
    import re

    from ferry.cli import main

    with pytest.raises(SystemExit):
        main(["verify", "--help"])
    text = capsys.readouterr().out
    for option in ("--seq-len", "--batch", "--seed", "--atol", "--rtol", "--json", "src", "out"):
        assert re.search(rf"^  {option}( [A-Z_]+)?  +[a-z]", text, re.M), f"{option} has no help text:\n{text}"
