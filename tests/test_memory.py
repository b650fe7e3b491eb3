"""Peak memory follows the largest tensor, not the model: each conversion runs as a child process
and the OS's own accounting (ru_maxrss) of that process is checked against 1 GiB + 3 x the
largest tensor, for a model larger than that bound. bench/ shows the same at several sizes."""

import subprocess
import sys

import pytest

from ferry.synthetic import llama_spec, write_checkpoint

GIB = 1024**3


# Linux counts a child's peak RSS from the moment it was forked, so a child of this (large) test
# process would inherit its size. A small launcher forks the real command instead.
LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss * 1024)
"""


def peak_rss(*args) -> int:
    """Run `python -m ferry ARGS` and return its peak resident set in bytes."""
    done = subprocess.run([sys.executable, "-c", LAUNCHER, sys.executable, "-m", "ferry", *map(str, args)],
                          capture_output=True, text=True)
    code, peak = map(int, done.stdout.split()[-2:])
    assert code == 0, done.stderr[-2000:]
    return peak


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """~1.2 GiB of bfloat16 Llama; the largest tensors (embedding, lm_head) are 16 MiB."""
    root = tmp_path_factory.mktemp("big")
    spec = llama_spec(layers=40, hidden=1024, heads=16, kv_heads=4, ffn=4096, vocab=8192, dtype="bfloat16")
    write_checkpoint(spec, root / "hf", to="hf", max_shard_size=400 * 10**6)
    size = sum(f.stat().st_size for f in (root / "hf").iterdir())
    return root, size, 8192 * 1024 * 2


@pytest.mark.slow
@pytest.mark.parametrize("to,options", [
    ("trtllm", ["--tp", "2"]),
    ("hf", ["--max-shard-size", "200MB"]),
    ("megatron", ["--tp", "2", "--pp", "2"]),
])
def test_peak_rss_is_bounded_by_the_largest_tensor(big, tmp_path, to, options):
    root, model_bytes, largest = big
    bound = GIB + 3 * largest
    assert model_bytes > bound  # the model alone would not fit under the bound
    peak = peak_rss("convert", root / "hf", tmp_path / "out", "--to", to, *options, "--quiet")
    assert peak < bound, f"peak RSS {peak / 2**20:.0f} MiB >= bound {bound / 2**20:.0f} MiB"


@pytest.mark.slow
def test_megatron_ranks_to_hf_and_a_tight_read_ahead_budget(big, tmp_path):
    root, model_bytes, largest = big
    peak_rss("convert", root / "hf", tmp_path / "mg", "--to", "megatron", "--tp", "2", "--quiet")
    peak = peak_rss("convert", tmp_path / "mg", tmp_path / "back", "--to", "hf", "--quiet")
    assert peak < GIB + 3 * largest
    baseline = peak_rss("inspect", root / "hf")  # python + torch + ferry, no tensor read
    tight = peak_rss("convert", root / "hf", tmp_path / "t", "--to", "trtllm", "--tp", "2", "--threads", "1", "--max-memory", "1MiB", "--quiet")
    assert tight < baseline + 4 * largest, f"{tight / 2**20:.0f} MiB vs baseline {baseline / 2**20:.0f} MiB"
