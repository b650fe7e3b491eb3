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


SHAPE = {"hidden": 1024, "heads": 16, "kv_heads": 4, "ffn": 4096, "vocab": 8192, "dtype": "bfloat16"}
LARGEST = 8192 * 1024 * 2  # embedding and lm_head, bfloat16: 16 MiB at every layer count


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The same Llama shape at 4 and 40 layers (0.15 and 1.2 GiB of bfloat16); the largest
    tensors are the same in both."""
    root = tmp_path_factory.mktemp("big")
    for name, layers in (("small", 4), ("big", 40)):
        write_checkpoint(llama_spec(layers=layers, **SHAPE), root / name, to="hf", max_shard_size=400 * 10**6)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("to,options", [
    ("trtllm", ["--tp", "2"]),  # bytes copied file to file
    ("trtllm", ["--tp", "2", "--dtype", "float16"]),  # every tensor computed (cast) in memory
    ("hf", ["--max-shard-size", "200MB"]),
    ("megatron", ["--tp", "2", "--pp", "2"]),
])
def test_peak_rss_is_bounded_by_the_largest_tensor(models, tmp_path, to, options):
    bound = GIB + 3 * LARGEST
    assert sum(f.stat().st_size for f in (models / "big").iterdir()) > bound  # the model alone would not fit
    peak = peak_rss("convert", models / "big", tmp_path / "out", "--to", to, *options, "--quiet")
    assert peak < bound, f"peak RSS {peak / 2**20:.0f} MiB >= bound {bound / 2**20:.0f} MiB"


@pytest.mark.slow
def test_megatron_ranks_to_hf_is_bounded(models, tmp_path):
    peak_rss("convert", models / "big", tmp_path / "mg", "--to", "megatron", "--tp", "2", "--quiet")
    peak = peak_rss("convert", tmp_path / "mg", tmp_path / "back", "--to", "hf", "--quiet")
    assert peak < GIB + 3 * LARGEST, f"peak RSS {peak / 2**20:.0f} MiB"


@pytest.mark.slow
@pytest.mark.parametrize("options", [
    [],  # bytes copied file to file, from memory maps
    ["--dtype", "float16"],  # every tensor computed (a cast); default read-ahead: 4 threads, 512 MiB
    ["--dtype", "float16", "--threads", "1", "--max-memory", "1MiB"],  # one tensor at a time
], ids=["copied", "computed", "computed-one-at-a-time"])
def test_peak_rss_stays_flat_while_the_model_grows_tenfold(models, tmp_path, options):
    small, big = (peak_rss("convert", models / name, tmp_path / name, "--to", "trtllm", "--tp", "2", *options, "--quiet")
                  for name in ("small", "big"))
    assert big < 1.2 * small, f"{big / 2**20:.0f} MiB at 40 layers vs {small / 2**20:.0f} MiB at 4"
