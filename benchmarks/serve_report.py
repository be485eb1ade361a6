"""``docs/benchmarks.md``: the serving benchmark's page, its targets, and the run-to-run statistics behind them."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np

from benchmarks.harness import REPO

# the targets: throughput at least this share of the lower ceiling (model or HTTP) ...
CEILING_SHARE_TARGET = 0.7
# ... and p50 at concurrency 1 with dynamic batching at most this factor of batching disabled (10% slower)
P50_SLOWDOWN_TARGET = 1.1
Z_ONE_SIDED_5_PERCENT = 1.645  # the standard normal's 95th percentile: a one-sided test at 5%


def summarize(runs: list[dict]) -> dict:
    """One point of one mode over its repeats: medians, plus the best and worst throughput."""
    rates = [r["images_per_s"] for r in runs]
    out = {key: float(np.median([r[key] for r in runs])) for key in ("images_per_s", "rps", "p50", "p95", "p99")}
    out["avg_batch"] = float(np.median([r["avg_batch"] for r in runs]))
    out["errors"] = sum(r["errors"] for r in runs)
    out["min_images_per_s"], out["max_images_per_s"] = min(rates), max(rates)
    out["repeats"] = [{k: r[k] for k in ("images_per_s", "p50", "p99", "avg_batch")} for r in runs]
    return out


def pooled_relative_sd(tables: list[dict]) -> float:
    """Run-to-run sd of one run's throughput, relative, pooled over every point and mode of the sweep.

    Computed on log throughput: each repeat's deviation from its point's mean, squared, summed, and
    divided by the degrees of freedom (repeats - 1 per point). On this shared VM it is several percent.
    """
    squares, dof = 0.0, 0
    for table in tables:
        for point in table.values():
            logs = np.log([r["images_per_s"] for r in point["repeats"] if r["images_per_s"] > 0])
            if len(logs) > 1:
                squares += float(((logs - logs.mean()) ** 2).sum())
                dof += len(logs) - 1
    return math.sqrt(squares / dof) if dof else math.nan


def slower_beyond_noise(fast: dict, slow: dict, sd: float, z: float = Z_ONE_SIDED_5_PERCENT) -> bool:
    """``fast`` really slower than ``slow``: a one-sided test at 5% on the medians' log ratio.

    Without repeats (``sd`` unknown) any gap counts.
    """
    gap = math.log(slow["images_per_s"] / fast["images_per_s"])
    if not math.isfinite(sd):
        return gap > 0
    n_fast, n_slow = len(fast["repeats"]), len(slow["repeats"])
    return gap > z * sd * math.sqrt(1 / n_fast + 1 / n_slow)


# ---- report -----------------------------------------------------------------------------------------


def report(args, info, host, model_ceil, http_ceil, dynamic, disabled, command) -> str:
    lines = ["# Serving benchmark", ""]
    lines.append(f"Written by `benchmarks/serve_bench.py` on {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC.")
    lines += ["", "## Machine", ""]
    lines += [f"- {k}: {v}" for k, v in host.items()]
    lines += [
        f"- model: `{info['name']}/{info['version']}`, input {info['input']['shape']}, "
        f"runtime {info['backend']} on {info['device']}",
        f"- service: max_batch_size {args.max_batch_size}, max_batch_delay_ms {args.max_batch_delay_ms}, "
        f"intra_op_threads {args.intra_op_threads or 'all cores'}, "
        f"one uvicorn worker process, `application/x-npy` bodies",
        "",
        "## Commands",
        "",
        "```bash",
        command,
        "# each point: hey -z <duration>s -c <concurrency> -m POST -T application/x-npy -D <body.npy> -o csv "
        "http://127.0.0.1:<port>/score",
        "```",
        "",
        "## Ceilings",
        "",
        "| ceiling | how | result |",
        "|---|---|---|",
    ]
    for batch, rate in model_ceil.items():
        lines.append(
            f"| model, batch {batch} | `{info['backend']}` runtime in-process, "
            f"best of 3 loops of {args.duration / 3:.1f} s "
            f"| {rate:.0f} images/s |"
        )
    for n, best in http_ceil.items():
        lines.append(
            f"| HTTP, {n}-image body | trivial FastAPI endpoint, same uvicorn, hey, best over the sweep "
            f"(c={best['concurrency']}) | {best['rps']:.0f} req/s = {best['rps'] * n:.0f} images/s |"
        )
    verdicts = []
    noise = pooled_relative_sd([dynamic, disabled])
    for n in args.shapes:
        lines += [
            "",
            f"## {n}-image requests",
            "",
            "| c | mode | images/s | range over repeats | req/s | p50 ms | p95 ms | p99 ms | avg batch | errors |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for c in args.concurrency:
            for mode, table in (("dynamic", dynamic), ("disabled", disabled)):
                r = table[(n, c)]
                lines.append(
                    f"| {c} | {mode} | {r['images_per_s']:.0f} | "
                    f"{r['min_images_per_s']:.0f}-{r['max_images_per_s']:.0f} | {r['rps']:.1f} | "
                    f"{r['p50'] * 1000:.1f} | "
                    f"{r['p95'] * 1000:.1f} | {r['p99'] * 1000:.1f} | {r['avg_batch']:.1f} | {r['errors']} |"
                )
        lower = min(model_ceil[args.max_batch_size], http_ceil[n]["rps"] * n)
        best = max(dynamic[(n, c)]["max_images_per_s"] for c in args.concurrency)
        verdicts.append(
            (
                f"{n}-image requests: best throughput (best run) {best:.0f} images/s = {100 * best / lower:.0f}% "
                f"of the lower ceiling ({lower:.0f} images/s)",
                best >= CEILING_SHARE_TARGET * lower,
            )
        )
        behind = [c for c in args.concurrency if dynamic[(n, c)]["images_per_s"] < disabled[(n, c)]["images_per_s"]]
        slower = [c for c in behind if slower_beyond_noise(dynamic[(n, c)], disabled[(n, c)], noise)]
        ties = [c for c in behind if c not in slower]
        verdicts.append(
            (
                f"{n}-image requests: dynamic batching at least as fast as disabled at every concurrency"
                + (f" (slower at c={slower})" if slower else "")
                + (f" (behind, but within run-to-run noise, at c={ties})" if ties else ""),
                not slower,
            )
        )
        if 1 in args.concurrency:
            d, o = dynamic[(n, 1)]["p50"], disabled[(n, 1)]["p50"]
            verdicts.append(
                (
                    f"{n}-image requests: p50 at c=1 {d * 1000:.2f} ms vs {o * 1000:.2f} ms disabled "
                    f"({100 * (d / o - 1):+.1f}%)",
                    d <= P50_SLOWDOWN_TARGET * o,
                )
            )
    lines += ["", "## Targets", ""]
    lines += [f"- {'PASS' if ok else 'MISS'}: {text}" for text, ok in verdicts]
    lines += [
        "",
        f"Each point is the median of {args.repeats} runs per mode, each on a fresh pair of server processes, "
        "the modes interleaved; the range column "
        "shows the worst and best run. Throughput against the ceilings uses the best run, as the ceilings "
        "use the best loop (interference from other tenants only ever lowers a figure). Dynamic batching "
        "counts as slower than disabled only where a one-sided test at 5% says so: the medians' log ratio "
        f"beyond {Z_ONE_SIDED_5_PERCENT} standard errors, from the run-to-run sd pooled over the whole sweep "
        f"({100 * noise:.1f}% "
        "of a run's throughput here).",
    ]
    raw = args.out.with_suffix(".json")
    shown = raw.relative_to(REPO) if raw.is_relative_to(REPO) else raw
    lines += ["", f"Raw numbers: `{shown}`.", ""]
    return "\n".join(lines)
