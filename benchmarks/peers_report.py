"""``docs/peers.md``: the peer benchmark's page, from its medians and the run's record."""

from __future__ import annotations

from benchmarks.loadgen import BODY_KINDS

# ---- report -----------------------------------------------------------------------------------------


def fmt_run(r: dict) -> str:
    return (
        f"{r['images_per_s']:.0f} | {r['min_images_per_s']:.0f}-{r['max_images_per_s']:.0f} | {r['p50_ms']:.1f} | "
        f"{r['p99_ms']:.1f} | {r['errors']} | {100 * r['steal']:.1f}%"
    )


def per_round(meta: dict, key: str) -> str:
    return ", ".join(f"{c[key]:.0f}" for c in meta["ceiling_rounds"])


def by_threads(meta: dict) -> str:
    """Each ceiling at each intra-op thread count it was measured at (medians), when there were several."""
    counts = sorted(int(k.split("_")[-1][:-1]) for k in meta["ceilings"] if k.startswith("oodgate_worker_"))
    if len(counts) < 2:
        return ""
    parts = [
        f"{label} " + ", ".join(f"{meta['ceilings'][f'{key}_{t}t']:.0f} on {t}" for t in counts)
        for key, label in (("one_pass", "one pass"), ("oodgate_worker", "worker step"))
    ]
    return f" By intra-op threads (images/s on that many threads): {'; '.join(parts)}."


def measured_at(results: dict, point: str) -> list[dict]:
    """Each server's (and body kind's) run at ``point``, in the order they ran; those not run there left out."""
    return [r[point] for r in results.values() if r.get(point) is not None]


def report(results: dict, meta: dict) -> str:
    m = meta["machine"]
    lines = [
        "# oodgate against its peers",
        "",
        f"Written by `benchmarks/peers.py` on {meta['when']} UTC in {meta['minutes']:.1f} min. Command:",
        "",
        "```bash",
        meta["command"],
        "```",
        "",
        f"One server at a time on loopback, the order rotating each round; {meta['rounds']} round(s) of "
        f"{meta['duration']:.0f} s per closed-loop point and {meta['open_duration']:.0f} s per open-loop point, "
        "medians shown with the range over rounds. The load generator (raw asyncio streams on uvloop, keep-alive, "
        "in the benchmark's own process) shares the cores with the server, the same for every server. "
        f"**Machine: a {m.get('cores')}-core VM ({m.get('cpu', '?')}) shared with other work** (the lead's OOD "
        f"experiments may run beside it): load average {meta['load_before']} before the run, {meta['load_after']} "
        "after; each server's turn records its own below, and every point its steal time.",
        "",
        "What each server does per image:",
        "",
        "- **oodgate** as shipped (`python -m service.cli --models fashion-glow/1 --runtime onnx`): two flow "
        "passes (the image and its upside-down copy, one graph call), all six outputs, the bundled default score "
        "(`combined`), its split-conformal p-value and the OOD decision; dynamic batching (32 images, 2 ms).",
        f"- **MLServer {meta['mlserver']}** (its own venv, with httptools and uvloop): adaptive batching "
        f"(`max_batch_size` {meta['mls_batch']} *requests*, `max_batch_time` {meta['mls_time']} s), default "
        "`parallel_workers` (1: the model runs in a second process), a custom runtime running one flow pass "
        "and returning `bpd` only.",
        "- **naive**: `benchmarks/naive_app.py`, FastAPI, stdlib JSON into a Python list, one ONNX Runtime call "
        "per request in the thread pool, `bpd` only.",
        "",
        f"All three run ONNX Runtime {m.get('onnxruntime')} on `models/fashion-glow/1/model.onnx` with the same "
        f"session settings (intra-op threads {meta['threads'] or 'cores'}, inter-op 1, no spinning, all graph "
        f"optimizations). Every server's `bpd` for the 1-image body matched in-process ONNX Runtime to "
        f"{meta['bpd_max_diff']:.1e}; oodgate's answers carried {', '.join(meta['oodgate_outputs'])}.",
        "",
        "In-process ceilings at batch 32 (best of three windows, measured at the start of every round, median "
        f"shown): one flow pass {meta['ceilings']['one_pass']:.0f} images/s (the most MLServer and naive could "
        f"reach; per round {per_round(meta, 'one_pass')}); oodgate's worker "
        f"step (two passes, every score and p-value) {meta['ceilings']['oodgate_worker']:.0f} images/s (the most "
        f"oodgate can reach; per round {per_round(meta, 'oodgate_worker')}).{by_threads(meta)}",
        "",
        "Body kinds a server did not answer with 200 when probed: "
        + ("; ".join(f"{k}: {v}" for k, v in meta["unsupported"].items()) or "none")
        + ".",
        "",
        "## Closed loop",
        "",
        "| images/request | c | server, body | images/s | range | p50 ms | p99 ms | non-200 | steal |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for n, c in meta["points"]:
        lines += [f"| {n} | {c} | {p['label']} | {fmt_run(p)} |" for p in measured_at(results, f"closed/{n}x{c}")]
    lines += [
        "",
        "## Open loop (fixed arrival rate)",
        "",
        "| images/request | requests/s offered | images/s offered | server, body | images/s | range | p50 ms | "
        "p99 ms | non-200 | steal |",
        "|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for n, rate in meta["open"]:
        lines += [
            f"| {n} | {rate:g} | {n * rate:.0f} | {p['label']} | {fmt_run(p)} |"
            for p in measured_at(results, f"open/{n}x{rate:g}")
        ]
    lines += ["", "## oodgate / MLServer (v2 JSON, closed loop)", ""]
    for n, c in meta["points"]:
        o, ml = (
            results.get("oodgate/v2-json", {}).get(f"closed/{n}x{c}"),
            results.get("mlserver/v2-json", {}).get(f"closed/{n}x{c}"),
        )
        if o and ml and ml["images_per_s"]:
            ratio = o["images_per_s"] / ml["images_per_s"]
            target = ""
            if c == 32 and n in (1, 32):
                met = ratio >= 1.5 and o["p99_ms"] <= ml["p99_ms"]
                target = f" - target >= 1.5x at equal or better p99: **{'met' if met else 'not met'}**"
            lines.append(
                f"- {n} image(s), c={c}: {o['images_per_s']:.0f} / {ml['images_per_s']:.0f} = **{ratio:.2f}x** "
                f"(p99 {o['p99_ms']:.1f} vs {ml['p99_ms']:.1f} ms){target}"
            )
    if meta["baseline"] is not None:
        lines += ["", f"## oodgate / oodgate baseline (`{meta['baseline']}`), same rounds", ""]
        for series in ("v2-json", "v2-binary", "npy"):
            ours, base = results.get(f"oodgate/{series}", {}), results.get(f"baseline/{series}", {})
            for key in [k for k in ours if k in base]:
                o, b = ours[key], base[key]
                lines.append(
                    f"- {BODY_KINDS[series].label}, {key}: {o['images_per_s']:.0f} / {b['images_per_s']:.0f} images/s "
                    f"= {o['images_per_s'] / b['images_per_s']:.2f}x (p99 {o['p99_ms']:.1f} vs {b['p99_ms']:.1f} ms, "
                    f"non-200 {o['errors']} vs {b['errors']})"
                )
    worker = meta["ceilings"]["oodgate_worker"]
    lines += ["", "oodgate against its own in-process ceiling (target >= 0.9):", ""]
    for n in (1, 32):
        ours = results.get("oodgate/v2-json", {})
        best = max((r["images_per_s"] for k, r in ours.items() if k.startswith(f"closed/{n}x")), default=0.0)
        lines.append(f"- {n}-image v2 JSON requests, best closed-loop point: {best:.0f} / {worker:.0f} = "
                     f"{best / worker:.2f}")  # fmt: skip
    lines += ["", "## Load on the machine during each turn", "", "| round | server | load average before | after |"]
    lines += ["|---:|---|---|---|"]
    lines += [f"| {t['round']} | {t['server']} | {t['load_before']} | {t['load_after']} |" for t in meta["turns"]]
    lines += ["", "## Versions", ""]
    lines += [f"- {k}: {v}" for k, v in m.items() if k != "hey"]
    lines += [f"- mlserver: {meta['mlserver']} (in `.peers-venv`, onnxruntime {meta['mls_ort']})", ""]
    lines += ["Raw numbers, every round: `docs/peers.json` (next to this page).", ""]
    return "\n".join(lines)
