"""Runs every bench in one go, prints one table, and writes
benches/results.json and benches/chart.png. Started by benches/run.sh, which
prepares the virtual environments it is given."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
ROOT = HERE.parent
#: What one run measures; `--only` runs some of them again.
PARTS = ("request_cost", "sync", "gthread", "scrape")


def results_of(output: str) -> list[dict]:
    return [json.loads(line[len("RESULT "):]) for line in output.splitlines()
            if line.startswith("RESULT ")]


def run(cmd: list[str], **kwargs) -> str:
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, **kwargs).stdout
    print("\n".join(line for line in out.splitlines() if not line.startswith("RESULT ")))
    return out


#: Python's string hashes are seeded at random, and the dictionary probes of a
#: run with them: the instructions per request move by about 150 from one
#: seed to another. Each count is the mean over these seeds.
HASH_SEEDS = ("0", "1", "2")


def instructions(python: str, mode: str, n: int) -> float:
    """Instructions callgrind counts for `request_cost.py MODE N` (mean over HASH_SEEDS)."""
    counts = []
    for seed in HASH_SEEDS:
        out = subprocess.run(
            ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", python,
             str(HERE / "request_cost.py"), mode, str(n)],
            capture_output=True, text=True, check=True,
            env={**os.environ, "PYTHONHASHSEED": seed}).stderr
        counts.append(int(re.search(r"Collected : (\d+)", out).group(1)))
    return sum(counts) / len(counts)


def request_cost(this: str, pypi024: str) -> dict:
    """Instructions per request over the bare stand-in, from the difference
    between 1,000 and 5,000 requests (start-up cost cancels out); ns per
    request from the wall clock, for scale."""
    low, high = 1_000, 5_000

    def per_request(python: str, mode: str) -> float:
        return (instructions(python, mode, high) - instructions(python, mode, low)) / (high - low)

    out = {}
    modes_of_this = ["this", "this_no_signals", "prometheus_client"]
    for python, modes in ((this, modes_of_this), (pypi024, ["pypi024"])):
        base = per_request(python, "plain")
        for mode in modes:
            per = per_request(python, mode)
            wall = subprocess.run([python, str(HERE / "request_cost.py"), "--wall", mode],
                                  capture_output=True, text=True, check=True).stdout
            out[mode] = {"instructions": per - base, "ns": float(wall)}
    print("instrumentation cost per request (over Gunicorn's own handling)")
    print(f"{'variant':<20}{'instructions':>14}{'ns (wall)':>12}")
    for mode, r in out.items():
        print(f"{mode:<20}{r['instructions']:>14.0f}{r['ns']:>12.0f}")
    return out


def chart(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    names = ["plain", "this", "pypi-0.2.4"]
    for offset, wt in enumerate(("sync", "gthread")):
        variants = results["throughput"][wt]["variants"]
        axes[0].bar([i + offset * 0.4 for i in range(3)], [variants[n]["ratio"] for n in names],
                    width=0.4, label=f"{wt} workers")
    axes[0].set_xticks([i + 0.2 for i in range(3)], names)
    axes[0].axhline(0.97, color="grey", linestyle=":", label="target 0.97")
    axes[0].set_title("Throughput, ratio to plain Gunicorn")
    axes[0].legend()
    cost = results["request_cost"]
    axes[1].bar(list(cost), [c["instructions"] for c in cost.values()], color="tab:orange")
    axes[1].set_title("Instructions added per request")
    for deaths in (0, 10_000):
        rows = [r for r in results["scrape"] if r["deaths"] == deaths]
        axes[2].plot([r["workers"] for r in rows], [r["this_ms"] for r in rows], marker="o",
                     label=f"this, {deaths} deaths")
        axes[2].plot([r["workers"] for r in rows], [r["mpc_ms"] for r in rows], marker="x",
                     linestyle="--", label=f"MultiProcessCollector, {deaths} deaths")
    pc = results.get("scrape_prometheus_client")
    if pc:
        axes[2].plot([64], [pc["this_ms"]], marker="s", linestyle="none",
                     label="this, prometheus_client's files (64 × 200 histograms)")
        axes[2].plot([64], [pc["mpc_ms"]], marker="D", linestyle="none",
                     label="MultiProcessCollector, the same files")
    axes[2].axhline(10, color="grey", linestyle=":", label="target 10 ms")
    axes[2].set_xlabel("live workers × 200 series")
    axes[2].set_ylabel("ms per scrape")
    axes[2].set_yscale("log")
    axes[2].set_title("Scrape time")
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--this", required=True, help="python of the venv with this project")
    ap.add_argument("--pypi024", required=True, help="python of the venv with 0.2.4")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--duration", type=int, default=1)
    ap.add_argument("--only", default=",".join(PARTS),
                    help="comma-separated parts to run again (of: " + ", ".join(PARTS) + "); "
                    "the others are kept from benches/results.json")
    a = ap.parse_args()
    only = set(a.only.split(","))
    if not only <= set(PARTS):
        ap.error(f"--only: unknown part {sorted(only - set(PARTS))}")
    results: dict = {"throughput": {}}
    if only != set(PARTS):
        results = json.loads((HERE / "results.json").read_text())
    if "request_cost" in only:
        results["request_cost"] = request_cost(a.this, a.pypi024)
    for wt in ("sync", "gthread"):
        if wt not in only:
            continue
        print()
        out = run([sys.executable, str(HERE / "throughput.py"), "--this", a.this, "--pypi024",
                   a.pypi024, "--rounds", str(a.rounds), "--duration", str(a.duration),
                   "--worker-type", wt])
        results["throughput"][wt] = results_of(out)[0]
    if "scrape" in only:
        print()
        out = run(["cargo", "bench", "--quiet", "--bench", "scrape"], cwd=ROOT,
                  env={**os.environ, "PYTHON": a.this})
        rows = results_of(out)
        results["scrape"] = [r for r in rows if "deaths" in r]
        results["scrape_formats"] = {r["format"]: r["ms"] for r in rows if "format" in r}
        results["scrape_prometheus_client"] = next(
            r for r in rows if "prometheus_client_files" in r)
    results["parts_run"] = sorted(only, key=PARTS.index)
    sync = results["throughput"]["sync"]["variants"]
    after = {r["workers"]: r for r in results["scrape"] if r["deaths"] == 10_000}
    fresh = {r["workers"]: r for r in results["scrape"] if r["deaths"] == 0}
    formats = results["scrape_formats"]
    pc = results["scrape_prometheus_client"]
    summary = [
        ("instrumentation per request, route and queue time on", "≤ 1 µs",
         f"{results['request_cost']['this']['ns']:.0f} ns "
         f"({results['request_cost']['this']['instructions']:.0f} instructions)"),
        ("instrumentation per request, route and queue time off", "≤ 0.5 µs",
         f"{results['request_cost']['this_no_signals']['ns']:.0f} ns "
         f"({results['request_cost']['this_no_signals']['instructions']:.0f} instructions)"),
        ("hello-world throughput, 2 sync workers", "≥ 97% of plain",
         f"{sync['this']['ratio']:.1%} (0.2.4: {sync['pypi-0.2.4']['ratio']:.1%})"),
        ("hello-world throughput, 2 gthread workers", "≥ 97% of plain",
         f"{results['throughput']['gthread']['variants']['this']['ratio']:.1%}"),
        ("scrape, 32 workers × 200 series, after 10,000 deaths", "≤ 5 ms",
         f"{after[32]['this_ms']:.1f} ms (MultiProcessCollector {after[32]['mpc_ms']:.1f} ms)"),
        ("scrape, prometheus_client's files of 64 processes × 200 histograms "
         "(+ 200 counters), against MultiProcessCollector", "≥ 60× faster",
         f"{pc['mpc_ms'] / pc['this_ms']:.0f}× ({pc['this_ms']:.1f} vs {pc['mpc_ms']:.0f} ms, "
         f"{pc['samples']} samples identical)"),
        ("scrape, 64 workers × 200 series of the bench's workers, against "
         "MultiProcessCollector", "≥ 60× faster",
         f"{fresh[64]['mpc_ms'] / fresh[64]['this_ms']:.0f}× ({fresh[64]['this_ms']:.1f} vs "
         f"{fresh[64]['mpc_ms']:.0f} ms)"),
        ("scrape, 32 × 200 with native buckets and exemplars", "≤ 10 ms each format",
         ", ".join(f"{name} {ms:.1f} ms" for name, ms in formats.items())),
        ("files after 10,000 restarts, 32 workers", "≤ 4 per worker + const",
         f"{after[32]['files']} = 3 × 32 + 2"),
        ("resident memory added per worker", "≤ 2 MiB",
         f"{sync['this']['rss_mib'] - sync['plain']['rss_mib']:.1f} MiB"),
    ]
    results["summary"] = summary
    print("\nTargets")
    width = max(len(figure) for figure, _, _ in summary) + 2
    print(f"{'figure':<{width}}{'target':<26}measured")
    for figure, target, measured in summary:
        print(f"{figure:<{width}}{target:<26}{measured}")
    (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    chart(results, HERE / "chart.png")
    print(f"\nwrote {HERE / 'results.json'} and {HERE / 'chart.png'}")


if __name__ == "__main__":
    main()
