"""The evaluation report folder: markdown tables, histograms, example images, per-image CSV.

Written so a reader can check every headline number: the command that produced
it is at the top, the raw per-image scores are next to the tables, and the naive
``bpd`` row stands beside the fixed scores so the failure and the fix are seen
side by side.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import io
import json
import math
import subprocess
from pathlib import Path

import numpy as np

from service.artifact import ONNX_KEY
from training.evaluation import Evaluation, find_row
from training.ood_sets import DOMAIN_FREE_OOD
from training.targets import REPORT_ALPHA


def _fmt(value: float, digits: int = 3) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def headline_table(result: Evaluation, score: str) -> str:
    """bpd beside the default score, one row per set: the table the README shows."""
    alpha = REPORT_ALPHA if REPORT_ALPHA in result.alphas else result.alphas[0]
    lines = [
        f"| set | n | AUROC `bpd` | AUROC `{score}` | FPR95 `{score}` | flagged at α={alpha:g} (`{score}`) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for scored in result.sets:
        b, s = find_row(result.rows, scored.name, "bpd"), find_row(result.rows, scored.name, score)
        label = scored.name if scored.kind != "invariant" else f"{scored.name} (should pass)"
        if scored.kind == "in":
            label = f"{scored.name} test (false positives)"
        lines.append(
            f"| {label} | {scored.n} | {_fmt(b['auroc'])} | {_fmt(s['auroc'])} | {_fmt(s['fpr95'])} | "
            f"{100 * s[f'flag@{alpha:g}']:.1f}% |"
        )
    return "\n".join(lines)


def full_table(result: Evaluation, kind: str) -> str:
    alphas = result.alphas
    head = "| set | score | AUROC | FPR95 | " + " | ".join(f"flag α={a:g}" for a in alphas) + " |"
    lines = [head, "|---|---|---:|---:|" + "---:|" * len(alphas)]
    for scored in [s for s in result.sets if s.kind == kind]:
        for name in result.detector.score_names:
            r = find_row(result.rows, scored.name, name)
            flags = " | ".join(f"{100 * r[f'flag@{a:g}']:.1f}%" for a in alphas)
            lines.append(f"| {scored.name} | `{name}` | {_fmt(r['auroc'])} | {_fmt(r['fpr95'])} | {flags} |")
    return "\n".join(lines)


def realized_fpr_table(result: Evaluation) -> str:
    lines = [
        "| score | " + " | ".join(f"α={a:g}" for a in result.alphas) + " |",
        "|---|" + "---:|" * len(result.alphas),
    ]
    for name in result.detector.score_names:
        r = find_row(result.rows, result.in_set.name, name)
        lines.append(f"| `{name}` | " + " | ".join(f"{r[f'flag@{a:g}']:.4f}" for a in result.alphas) + " |")
    return "\n".join(lines)


def worst_table(result: Evaluation) -> str:
    lines = [
        "| score | meets every choosing target | worst AUROC, domain-free sets | on set | "
        "worst AUROC, every OOD set | on set |",
        "|---|---|---:|---|---:|---|",
    ]
    for name, (value, where) in sorted(result.worst.items(), key=lambda kv: -kv[1][0]):
        every = min((r["auroc"], r["set"]) for r in result.rows if r["score"] == name and r["kind"] == "ood")
        mark = " **(recommended)**" if name == result.recommended else ""
        meets = "yes" if name in result.meets_targets else "no"
        lines.append(f"| `{name}`{mark} | {meets} | {value:.4f} | {where} | {every[0]:.4f} | {every[1]} |")
    return "\n".join(lines)


def negative_training_line(training: dict) -> str:
    """Whether an OOD set's transform was trained against: its flag rate is then not zero-shot, and says so."""
    negative = (training or {}).get("negative")
    if not negative:
        return "- negative training: none; every OOD set is unseen in kind"
    return (
        f"- negative training: the flow was trained to rank each training image at least "
        f"{negative['margin_bpd']} bits/dim above its `{negative['transform']}` copy (weight {negative['weight']}); "
        f"the `{negative['transform']}` set transforms test images it never saw, but the transform itself was "
        f"trained against, so that set's rates are not zero-shot"
    )


def guarantees_line(result: Evaluation, out: Path) -> list[str]:
    """A link to ``python -m training.guarantees``' account when it sits in the same folder, so a rerun keeps it."""
    if not (out / "guarantees.md").exists():
        return []
    return [
        "- guarantees (FDR per batch, calibration-conditional flags, the anytime-valid drift alarm): "
        f"[`guarantees.md`](guarantees.md), by `python -m training.guarantees {result.bundle.directory}`"
    ]


def write_markdown(result: Evaluation, out: Path, plots: bool) -> None:
    manifest, detector = result.bundle.manifest, result.detector
    score = detector.default_score
    cal = manifest.calibration or {}
    checks = result.targets[score]
    graph = manifest.files[ONNX_KEY]  # its sha256 was verified when the bundle was opened
    lines = [
        f"# OOD report: {manifest.name}/{manifest.version}",
        "",
        "Produced by",
        "",
        "```bash",
        result.command,
        "```",
        "",
        *guarantees_line(result, out),
        f"- bundle: `{result.bundle.directory}`, `{graph.path}` sha256 `{graph.sha256[:16]}…`,"
        f" test bpd {manifest.metrics.get('test_bpd', float('nan')):.4f}",
        f"- calibration: {cal.get('method')} on {cal.get('n_holdout')} held-out training images "
        f"({cal.get('n_fit')} fit the densities, calibration sets {cal.get('n_calibration')}), dose density "
        f"`{detector.dose_density}`, fitted {cal.get('fitted')} by `oodgate-calibrate {result.bundle.directory}`",
        "- calibration options: orientation pass "
        + (
            "**on** (each image and its vertical flip go through the flow: two flow passes per image)"
            if detector.orientation
            else "off"
        )
        + (
            f"; `combined` joins the tail evidence of `{'`, `'.join(detector.combined_parts)}`"
            + (" by its sum (Fisher's method)" if detector.combine_rule == "sum" else ", the larger taken")
            if detector.combined_parts
            else ""
        ),
        f"- in-distribution: {result.in_set.description}, {result.in_set.n} images",
        negative_training_line(manifest.training),
        f"- runtime: {cal.get('runtime')} on the exported graph, the service's own; code at commit `{_git_commit()}`;"
        f" {result.seconds:.0f} s; {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}",
        f"- default score of the bundle: **`{score}`**; recommended (meets every choosing target, then best worst "
        f"AUROC over the domain-free OOD sets): **`{result.recommended}`**",
        "",
        "Scores: higher = more OOD. AUROC and FPR95 (false-positive rate at 95% true-positive rate) compare each set "
        "with the in-distribution test set; flag rates are `p_value <= alpha` with the bundle's conformal calibration.",
        "",
        f"## Headline: naive `bpd` against the default score `{score}`",
        "",
        headline_table(result, score),
        "",
        f"## Targets (default score `{score}`)",
        "",
        "| target | met | measured | chooses the default score |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {c.target} | {'yes' if c.met else 'NO'} | {c.measured} | {'yes' if c.chooses else 'no'} |" for c in checks
    ]
    lines += [
        "",
        "## Choosing the default score: worst AUROC over the domain-free sets",
        "",
        "The choice sees only in-distribution data and the domain-free synthetic sets "
        f"({', '.join(DOMAIN_FREE_OOD)}), never the sets the bundle is judged on: among the scores that meet "
        "every target of the table above marked as choosing (all scores, if none does), the one whose worst "
        "AUROC over the domain-free OOD sets is highest; differences under 0.01 (about two standard errors on "
        "a 2,000-image set) count as ties and go to the next-worst set, then to the mean. The last two columns "
        "show every OOD set measured, for reading, not choosing.",
        "",
        worst_table(result),
        "",
        "## Realized false-positive rate on the in-distribution test set",
        "",
        realized_fpr_table(result),
        "",
        "## Every score on every OOD set",
        "",
        full_table(result, "ood"),
        "",
        "## Semantic-invariant transformations (should not be flagged)",
        "",
        "AUROC here is how well the score *separates* the transformed images from the originals: 0.5 is ideal.",
        "",
        full_table(result, "invariant"),
        "",
        "## Sets",
        "",
        "| set | kind | n | what |",
        "|---|---|---:|---|",
    ]
    lines += [f"| {s.name} | {s.kind} | {s.n} | {s.description} |" for s in result.sets]
    if result.notes:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in result.notes]
    lines += [
        "",
        "## Files",
        "",
        "- `metrics.csv`, `metrics.json`: the tables above, machine-readable",
        "- `scores.csv.gz`: every image's statistics, scores and p-values (gzipped CSV)",
    ]
    if plots:
        lines += [
            "- `examples.png`: eight images of every set",
            "- `hist_<score>.png`: the score's histogram per set (the papers' Figure 2, for each score)",
        ]
        lines += ["", "![examples](examples.png)", ""]
        lines += [f"![{name}](hist_{name}.png)" for name in detector.score_names]
    (out / "README.md").write_text("\n".join(lines) + "\n")


def write_csvs(result: Evaluation, out: Path) -> None:
    fields = list(result.rows[0])
    with open(out / "metrics.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for row in result.rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    summary = {
        "command": result.command,
        "default_score": result.detector.default_score,
        "recommended": result.recommended,
        "meets_targets": sorted(result.meets_targets),
        "notes": result.notes,
        "worst_auroc": {k: {"auroc": v[0], "set": v[1]} for k, v in result.worst.items()},
        "targets": [
            {"target": c.target, "met": c.met, "measured": c.measured, "chooses": c.chooses}
            for c in result.targets[result.detector.default_score]
        ],
        "rows": [
            {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in result.rows
        ],
    }
    (out / "metrics.json").write_text(json.dumps(summary, indent=1) + "\n")

    names = list(result.detector.score_names)
    stat_names = [n for n in ("bpd", "log_pz", "log_det", "background_bpd", "vflip_bpd") if n in result.in_set.stats]
    header = [
        "set",
        "kind",
        "index",
        *stat_names,
        "complexity_bpd",
        *[f"score_{n}" for n in names],
        *[f"p_{n}" for n in names],
    ]
    dims = result.bundle.manifest.input.dims
    # gzip (mtime 0, so the same scores give the same bytes): tens of thousands of rows stay small enough to commit
    with gzip.GzipFile(out / "scores.csv.gz", "wb", mtime=0) as raw, io.TextIOWrapper(raw, newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for scored in result.sets:
            columns = [scored.stats[n] for n in stat_names] + [scored.complexity / dims]
            columns += [scored.scores[n] for n in names] + [scored.p_values[n] for n in names]
            matrix = np.stack([np.asarray(c, dtype=np.float64) for c in columns], axis=1)
            for i, values in enumerate(matrix):
                writer.writerow([scored.name, scored.kind, i, *(f"{v:.6g}" for v in values)])


def write_plots(result: Evaluation, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = result.sets
    fig, axes = plt.subplots(len(sets), 8, figsize=(8, 1.05 * len(sets)), squeeze=False)
    for r, scored in enumerate(sets):
        for c in range(8):
            ax = axes[r, c]
            ax.axis("off")
            if scored.n:
                image = scored.images[(c * scored.n) // 8]
                ax.imshow(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0), cmap="gray", vmin=0, vmax=255)
        axes[r, 0].set_title(f"{scored.name} ({scored.kind})", fontsize=7, loc="left")
    fig.tight_layout()
    fig.savefig(out / "examples.png", dpi=90)
    plt.close(fig)

    colors = plt.get_cmap("tab20").colors
    for name in result.detector.score_names:
        fig, axes = plt.subplots(1, 2, figsize=(13, 4.2), sharey=False)
        everything = np.concatenate([s.scores[name][np.isfinite(s.scores[name])] for s in sets])
        lo, hi = np.percentile(everything, [0.5, 99.5])
        if not hi > lo:
            lo, hi = lo - 1, hi + 1
        bins = np.linspace(lo, hi, 80)
        for ax, kinds, title in ((axes[0], ("in", "ood"), "OOD sets"), (axes[1], ("in", "invariant"), "should pass")):
            for i, scored in enumerate(s for s in sets if s.kind in kinds):
                values = np.clip(scored.scores[name], lo, hi)
                style = {"linewidth": 2.2, "color": "black"} if scored.kind == "in" else {"color": colors[i % 20]}
                ax.hist(values, bins=bins, density=True, histtype="step", label=scored.name, **style)
            ax.set_title(f"{name}: {title}")
            ax.set_xlabel(f"{name} (clipped to the 0.5-99.5 percentile range)")
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / f"hist_{name}.png", dpi=90)
        plt.close(fig)


def write_report(result: Evaluation, out: Path, plots: bool = True) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    write_csvs(result, out)
    if plots:
        write_plots(result, out)
    write_markdown(result, out, plots)
    return out
