"""Wall time and peak memory of ferry conversions, against `cp -r` and transformers.

    python bench/run.py --size-gib 2                                   # one model, every task
    python bench/run.py --only-scaling --sizes 0.5,1,2                 # HF -> TensorRT-LLM tp=2 at several sizes
    python bench/run.py --size-gib 2 --scaling --write-results bench/RESULTS.md   # both, saved

Every task runs as a child process, spawned with subprocess.Popen and reaped with os.wait4, so
its peak RSS is the kernel's ru_maxrss for exactly that child. This script imports neither torch
nor ferry (checkpoints are made by bench/make_checkpoints.py in a child process): on Linux a
child's ru_maxrss starts from its parent's resident size when it execs, so the parent must stay
small. Inputs are read once beforehand and each task runs once untimed, so the page cache is
warm; then --runs timed rounds, the tasks interleaved within a round. Outputs are deleted (and
`sync`ed) between runs, untimed. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
MiB, GiB = 1024**2, 1024**3
PY = sys.executable
FERRY = [PY, "-m", "ferry", "convert"]
PEER = """
import sys, torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.bfloat16)
model.save_pretrained(sys.argv[2], max_shard_size="1GB")
"""
FAILURES: list[str] = []  # "task: message", once per failing task


# -- measuring one child ---------------------------------------------------------------------------
def measure(argv: list[str], log: Path) -> dict:
    """Run argv to completion: wall seconds, the child's peak RSS (KiB), exit code."""
    with open(log, "wb") as f:
        start = time.perf_counter()
        child = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    return {"wall_s": wall, "maxrss_kib": usage.ru_maxrss, "rc": child.returncode}


def remove(path: Path) -> None:
    """Delete an output (and any temporary directory ferry left beside it), then flush writes."""
    for p in [path, *path.parent.glob(f".{path.name}.ferry-*")]:
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    os.sync()


def warm(paths: list[Path]) -> None:
    """Read every file under `paths` once (like cat > /dev/null), into one small reused buffer."""
    buf = bytearray(MiB)
    for root in paths:
        for f in sorted(root.rglob("*")):
            if f.is_file():
                with open(f, "rb", buffering=0) as fh:
                    while fh.readinto(buf):
                        pass


def run_tasks(tasks: list[dict], scratch: Path, runs: int) -> None:
    """One untimed round, then `runs` timed rounds; fills task["runs"] with measure() results."""
    scratch.mkdir(parents=True, exist_ok=True)
    for round_no in range(runs + 1):
        for task in tasks:
            out = scratch / task["key"]
            log = scratch / f"{task['key']}.log"
            argv = task["argv"](out)
            remove(out)
            result = measure(argv, log)
            remove(out)
            label = "warm-up" if round_no == 0 else f"run {round_no}/{runs}"
            print(f"  {label} {task['name']}: {result['wall_s']:.2f} s, {result['maxrss_kib'] / 1024:.0f} MiB"
                  + (f", FAILED (exit {result['rc']})" if result["rc"] else ""), file=sys.stderr)
            if result["rc"] and "error" not in task:
                task["error"] = " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
                FAILURES.append(f"{task['name']}: {task['error']}")
                print(f"    {task['error']}", file=sys.stderr)
            if round_no == 0:
                task["command"] = shlex.join(argv)
                task["runs"] = []
            else:
                task["runs"].append(result)


def summary(task: dict) -> dict:
    ok = [r for r in task["runs"] if r["rc"] == 0]
    if not ok:
        return {"median_s": None, "min_s": None, "max_s": None, "rss_mib": None}
    walls = [r["wall_s"] for r in ok]
    return {"median_s": statistics.median(walls), "min_s": min(walls), "max_s": max(walls),
            "rss_mib": max(r["maxrss_kib"] for r in ok) / 1024}


def saved(task: dict) -> dict:
    """A task as JSON: name, command, every run, the summary."""
    return {"key": task["key"], "name": task["name"], "command": task["command"], "runs": task["runs"],
            "error": task.get("error"), **summary(task)}


# -- the checkpoint ------------------------------------------------------------------------------
def checkpoint(size_gib: float, root: Path, hidden: int | None, megatron: bool) -> dict:
    """Make (or reuse) the checkpoint with bench/make_checkpoints.py; its info.json, plus the bound."""
    argv = [PY, str(HERE / "make_checkpoints.py"), "--size-gib", str(size_gib), "--out", str(root)]
    argv += ["--hidden", str(hidden)] if hidden else []
    argv += [] if megatron else ["--no-megatron"]
    subprocess.run(argv, check=True, stdout=sys.stderr)
    info = json.loads((root / "info.json").read_text())
    info["bound_bytes"] = GiB + 3 * info["largest_bytes"]
    return info


def describe(info: dict) -> str:
    s = info["spec"]
    return (f"Llama-shaped, {s['dtype']}, {s['num_layers']} layers, hidden {s['hidden_size']}, heads {s['num_heads']} "
            f"(kv {s['num_kv_heads']}), ffn {s['ffn_hidden_size']}, vocab {s['vocab_size']}; "
            f"{info['bytes'] / GiB:.3f} GiB of safetensors")


# -- cp -------------------------------------------------------------------------------------------
def cp_command(scratch: Path) -> tuple[list[str], str]:
    """`cp -r --reflink=never` when cp knows the flag: no reflinks, and GNU cp then copies with
    read/write rather than copy_file_range. The system calls it makes are noted when strace exists."""
    scratch.mkdir(parents=True, exist_ok=True)
    a, b = scratch / "cp-probe-a", scratch / "cp-probe-b"
    a.write_bytes(os.urandom(MiB))
    cmd = ["cp", "-r", "--reflink=never"]
    if subprocess.run(["cp", "--reflink=never", a, b], capture_output=True).returncode != 0:
        cmd = ["cp", "-r"]
    note = "strace not available to check its system calls"
    if shutil.which("strace"):
        b.unlink(missing_ok=True)
        wanted = ("copy_file_range", "ioctl", "sendfile", "read", "write")
        trace = subprocess.run(["strace", "-f", "-c", "-e", "trace=" + ",".join(wanted), *cmd, a, b],
                               capture_output=True, text=True).stderr
        calls = [line.split()[-1] for line in trace.splitlines() if line.split() and line.split()[-1] in wanted]
        note = "copies with: " + ", ".join(calls)
    a.unlink(missing_ok=True)
    b.unlink(missing_ok=True)
    return cmd, f"{shlex.join(cmd)} ({note})"


# -- machine facts ----------------------------------------------------------------------------------
def sh(*argv) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""


def version(pkg: str) -> str:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine(bench_dir: Path) -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    models = [line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")]
    meminfo = {}
    if Path("/proc/meminfo").exists():
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, value = line.split(":", 1)
            meminfo[key] = value.strip()
    return {
        "cpu": models[0] if models else platform.processor(),
        "cpus_listed": len(models),
        "nproc": sh("nproc"),
        "mem_total": meminfo.get("MemTotal"),
        "mem_available": meminfo.get("MemAvailable"),
        "disk": sh("df", "-h", str(bench_dir)),
        "filesystem": (sh("df", "--output=fstype", str(bench_dir)).splitlines() or [""])[-1],
        "kernel": platform.release(),
        "python": platform.python_version(),
        "torch": version("torch"),
        "transformers": version("transformers"),
        "ferry": version("ferry"),
        "cp": (sh("cp", "--version").splitlines() or [""])[0],
        "loadavg_start": os.getloadavg(),
    }


def machine_text(m: dict) -> str:
    return "\n".join([
        f"- CPU: {m['cpu']}, {m['cpus_listed']} logical CPUs in /proc/cpuinfo, nproc {m['nproc']}",
        f"- RAM: {m['mem_total']} total, {m['mem_available']} available at start",
        f"- Disk: filesystem {m['filesystem']}",
        "",
        "```",
        m["disk"],
        "```",
        "",
        f"- Software: Linux {m['kernel']}, Python {m['python']}, torch {m['torch']}, transformers {m['transformers']}, "
        f"ferry {m['ferry']}, {m['cp']}",
        f"- cp used: {m['cp_used']}",
        f"- Load average (1/5/15 min): {fmt_load(m['loadavg_start'])} at start, {fmt_load(m['loadavg_end'])} at end",
        f"- RSS floor: this script's own peak RSS was {m['runner_maxrss_kib'] / 1024:.0f} MiB; a child's "
        "ru_maxrss cannot read lower than that (the kernel counts the parent's pages up to the exec)",
    ])


def fmt_load(load) -> str:
    return "/".join(f"{x:.2f}" for x in load)


# -- tables ---------------------------------------------------------------------------------------
def num(x, spec=".2f") -> str:
    return "failed" if x is None else format(x, spec)


def ratio(a, b) -> str:
    return "" if a is None or not b else f"{a / b:.2f}x"


def main_table(tasks: list[dict], info: dict) -> str:
    s = {t["key"]: summary(t) for t in tasks}
    cp_s, cp_min, peer_s = s["cp"]["median_s"], s["cp"]["min_s"], s["transformers"]["median_s"]
    bound_mib = info["bound_bytes"] / MiB
    rows = [
        "| task | median s | min-max s | GiB/s | peak RSS MiB | vs cp | min vs cp min | vs transformers | RSS under bound |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for t in tasks:
        r = s[t["key"]]
        speed = "" if r["median_s"] is None or t["key"] == "startup" else f"{info['bytes'] / GiB / r['median_s']:.2f}"
        under = ""
        if t["key"].startswith("ferry-") and r["rss_mib"] is not None:
            under = "yes" if r["rss_mib"] <= bound_mib else "NO"
        rows.append(
            f"| {t['name']} | {num(r['median_s'])} | {num(r['min_s'])}-{num(r['max_s'])} | {speed} | "
            f"{num(r['rss_mib'], '.0f')} | {ratio(r['median_s'], cp_s)} | {ratio(r['min_s'], cp_min)} | "
            f"{ratio(r['median_s'], peer_s)} | {under} |"
        )
    rows += [
        "",
        f"Model: {describe(info)}.",
        f"Largest tensor: {info['largest_tensor']}, {info['largest_bytes'] / MiB:.1f} MiB; memory bound for ferry "
        f"1 GiB + 3 x largest = {bound_mib:.0f} MiB.",
        "",
        "Commands (OUT is deleted before and after each run):",
        "",
        *[f"- {t['name']}: `{t['command']}`" for t in tasks],
    ]
    return "\n".join(rows)


def scaling_table(points: list[dict], startup: dict) -> str:
    rows = [
        "| size GiB | layers | median s | min-max s | time vs smallest | minus startup s | that vs smallest "
        "| cp median s | vs cp | peak RSS MiB | RSS vs smallest | bound MiB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    start_s = summary(startup)["median_s"]
    base = summary(points[0]["ferry"])
    base_work = None if base["median_s"] is None else base["median_s"] - start_s
    for p in points:
        r, c, info = summary(p["ferry"]), summary(p["cp"]), p["info"]
        work = None if r["median_s"] is None else r["median_s"] - start_s
        rows.append(
            f"| {info['bytes'] / GiB:.2f} | {info['spec']['num_layers']} | {num(r['median_s'])} | "
            f"{num(r['min_s'])}-{num(r['max_s'])} | {ratio(r['median_s'], base['median_s'])} | {num(work)} | "
            f"{ratio(work, base_work)} | {num(c['median_s'])} | {ratio(r['median_s'], c['median_s'])} | "
            f"{num(r['rss_mib'], '.0f')} | {ratio(r['rss_mib'], base['rss_mib'])} | {info['bound_bytes'] / MiB:.0f} |"
        )
    first = points[0]["info"]
    rows += [
        "",
        f"Startup alone (`{startup['command']}`): median {num(start_s)} s, peak RSS "
        f"{num(summary(startup)['rss_mib'], '.0f')} MiB; \"minus startup\" subtracts it from the ferry median.",
        f"Task: `{points[0]['ferry']['command']}` (and `cp` of the same directory), at each size.",
        f"Same hidden size ({first['spec']['hidden_size']}) at every size, only the layer count grows, so the largest "
        f"tensor ({first['largest_tensor']}, {first['largest_bytes'] / MiB:.1f} MiB) is the same: peak RSS should "
        "stay flat while time grows in proportion to size.",
    ]
    return "\n".join(rows)


# -- the two studies --------------------------------------------------------------------------------
def one_model(a, scratch: Path, cp: list[str]) -> tuple[str, dict]:
    root = a.ckpt or HERE / "out" / (f"{a.size_gib:g}g" + (f"-h{a.hidden}" if a.hidden else ""))
    info = checkpoint(a.size_gib, root, a.hidden, megatron=True)
    hf, meg = info["hf"], info["megatron"]
    tasks = [
        {"key": "cp", "name": f"{shlex.join(cp)} (floor)", "argv": lambda out: [*cp, hf, str(out)]},
        {"key": "startup", "name": "python -c 'import ferry.cli' (startup only)",
         "argv": lambda out: [PY, "-c", "import ferry.cli"]},
        {"key": "ferry-trtllm", "name": "ferry HF -> TensorRT-LLM tp=2",
         "argv": lambda out: [*FERRY, hf, str(out), "--to", "trtllm", "--tp", "2", "--quiet"]},
        {"key": "ferry-hf", "name": "ferry HF -> HF, 1GB shards",
         "argv": lambda out: [*FERRY, hf, str(out), "--to", "hf", "--max-shard-size", "1GB", "--quiet"]},
        {"key": "ferry-megatron", "name": "ferry Megatron tp=2 -> HF (one 5GB shard)",
         "argv": lambda out: [*FERRY, meg, str(out), "--to", "hf", "--quiet"]},
        {"key": "ferry-megatron-1g", "name": "ferry Megatron tp=2 -> HF, 1GB shards",
         "argv": lambda out: [*FERRY, meg, str(out), "--to", "hf", "--max-shard-size", "1GB", "--quiet"]},
        {"key": "transformers", "name": "transformers from_pretrained + save_pretrained(1GB)",
         "argv": lambda out: [PY, "-c", PEER, hf, str(out)]},
    ]
    warm([Path(hf), Path(meg)])
    run_tasks(tasks, scratch, a.runs)
    return main_table(tasks, info), {"checkpoint": info, "tasks": [saved(t) for t in tasks]}


def scaling(a, scratch: Path, cp: list[str]) -> tuple[str, dict]:
    hidden = a.hidden or 2048
    startup = {"key": "startup", "name": "python -c 'import ferry.cli' (startup only)",
               "argv": lambda out: [PY, "-c", "import ferry.cli"]}
    run_tasks([startup], scratch, a.runs)
    points = []
    for size in a.sizes:
        info = checkpoint(size, HERE / "out" / f"scaling-h{hidden}-{size:g}g", hidden, megatron=False)
        hf = info["hf"]
        tasks = [
            {"key": "cp", "name": f"cp, {size:g} GiB", "argv": lambda out, hf=hf: [*cp, hf, str(out)]},
            {"key": "ferry-trtllm", "name": f"ferry HF -> TensorRT-LLM tp=2, {size:g} GiB",
             "argv": lambda out, hf=hf: [*FERRY, hf, str(out), "--to", "trtllm", "--tp", "2", "--quiet"]},
        ]
        warm([Path(hf)])
        run_tasks(tasks, scratch, a.runs)
        points.append({"info": info, "cp": tasks[0], "ferry": tasks[1]})
    raw = [{"checkpoint": p["info"], "cp": saved(p["cp"]), "ferry": saved(p["ferry"])} for p in points]
    return scaling_table(points, startup), {"startup": saved(startup), "points": raw}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-gib", type=float, default=2.0, help="model size for the main table (default 2)")
    p.add_argument("--ckpt", type=Path, help="checkpoint directory (default bench/out/<size>g; made if missing)")
    p.add_argument("--hidden", type=int, help="hidden size (default: make_checkpoints' choice; 2048 for scaling)")
    p.add_argument("--runs", type=int, default=3, help="timed runs per task (default 3)")
    p.add_argument("--scaling", action="store_true", help="also run HF -> TensorRT-LLM tp=2 at each of --sizes")
    p.add_argument("--only-scaling", action="store_true", help="the scaling study without the main table")
    p.add_argument("--sizes", default="0.5,1,2", help="GiB sizes for the scaling study (default 0.5,1,2)")
    p.add_argument("--json", type=Path, help="also save the raw numbers here")
    p.add_argument("--write-results", type=Path, help="write a markdown report (tables, machine, command) here")
    a = p.parse_args()
    a.sizes = [float(s) for s in a.sizes.split(",")]

    scratch = HERE / "out" / "scratch"
    facts = machine(HERE)
    cp, facts["cp_used"] = cp_command(scratch)
    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    sections, raw = [], {}
    if not a.only_scaling:
        table, raw["main"] = one_model(a, scratch, cp)
        sections.append(f"## ferry against cp and transformers\n\n{table}")
    if a.scaling or a.only_scaling:
        table, raw["scaling"] = scaling(a, scratch, cp)
        sections.append(f"## Scaling: HF -> TensorRT-LLM tp=2 at several sizes\n\n{table}")
    facts["loadavg_end"] = os.getloadavg()
    facts["runner_maxrss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    command = shlex.join(["python", *sys.argv])
    report = (
        "\n\n".join(sections)
        + f"\n\nMedians of {a.runs} timed runs, after one untimed warm-up run of every task; peak RSS is the largest "
        "ru_maxrss over the timed runs. Wall time includes Python start-up and imports (the main table's startup "
        "row measures those alone).\n\n"
        f"## Machine\n\n{machine_text(facts)}\n\n## Command\n\n```\n{command}\n```\n\nStarted {started}.\n"
    )
    print(report)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({"command": command, "started": started, "machine": facts, "runs": a.runs,
                                      "failures": FAILURES, **raw}, indent=1) + "\n")
    if a.write_results:
        a.write_results.parent.mkdir(parents=True, exist_ok=True)
        a.write_results.write_text(f"# ferry benchmark results\n\n{report}")
    if FAILURES:
        print(f"{len(FAILURES)} task(s) failed:\n" + "\n".join(FAILURES), file=sys.stderr)
    return 1 if FAILURES else 0


if __name__ == "__main__":
    raise SystemExit(main())
