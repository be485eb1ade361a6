"""``guarantees.md``: the page ``python -m training.guarantees`` writes from its summary, targets included."""

from __future__ import annotations

import math

from training.guarantee_experiments import MAX_OOD_SHARE

BH_FLOOR_Q = 0.05  # the q at which the page works out how many floor p-values a batch needs before BH flags any
SD_ALPHA = 0.1  # the alpha at which the page quotes a test set's own sampling sd of the realized FPR
MIXTURE_DETECTED = "10%"  # the mixture stream held to a target (the others are reported)
MAX_MEDIAN_DELAY = 1000  # its target: every stream detected, median delay at most this many images


def shortened_streams(s: dict) -> list[str]:
    """The paragraph that says so when the test set is too small for the streams asked for."""
    asked = s.get("drift_length_asked", s["drift_length"])
    if asked <= s["drift_length"]:
        return []
    return [
        "",
        f"**Shortened streams.** {asked} images per stream were asked for, but the in-distribution test set has "
        f"only {s['n_in']}: every stream is {s['drift_length']} images long, each test image at most once per "
        "stream (drawing with replacement would repeat images, and a stream with repeats is not exchangeable "
        "with the calibration set, so its null figures would test the resampling, not the alarm). The 50 "
        "in-distribution streams are therefore 50 orders of the same images (or, redrawn, of the same pool), "
        "not independent streams; mixture streams change after "
        f"{s.get('drift_prefix', '?')} images and have {s['drift_length'] - s.get('drift_prefix', 0)} images "
        "left to detect in.",
    ]


def render(summary: dict) -> str:
    s = summary
    lines = [
        f"# Guarantees: {s['bundle']}",
        "",
        "Produced by",
        "",
        "```bash",
        s["command"],
        "```",
        "",
        f"- bundle `{s['bundle']}`, decision score `{s['score']}` (the bundle's default), "
        f"{s['n_calibration']} calibration scores from its `calibration.npz`",
        f"- in-distribution: {s['in_description']}, {s['n_in']} images; OOD: {s['ood_description']}, "
        f"{s['n_ood']} images",
        f"- held-out slice re-scored through the runtime: its calibration part reproduces `calibration.npz` to "
        f"{s['parity']:.2g} (max abs difference)",
        f"- seed {s['seed']}; {s['seconds']:.0f} s on a shared 2-core machine, 1 thread, "
        f"{s['scoring_seconds']:.0f} s of it scoring (0 when cached); {s['when']}",
        "- the code: service/guarantees.py and service/drift_martingale.py (the math the service runs), "
        "training/guarantee_experiments.py (this experiment)",
        "",
        "All p-values are the service's split-conformal ones against the bundle's fixed calibration set, so the "
        "FDR and flag figures hold *conditionally on this calibration set*; the conditional section varies it.",
        "",
        f"## False-discovery rate: {s['fdr_batches']} batches of {s['fdr_batch_size']} images, "
        f"0-{MAX_OOD_SHARE:.0%} OOD",
        "",
        f"Each batch: a uniform 0-{MAX_OOD_SHARE:.0%} share of OOD images, the rest in-distribution test images, "
        "both drawn "
        f"without replacement within the batch from the {s['n_in']} test and {s['n_ood']} OOD images (batches "
        "share images with each other). FDP: "
        "in-distribution images among the flagged ones (0 when none is flagged); power: share of the batch's "
        "OOD images flagged. BH: `POST /score?fdr=q`. Per-image: `alpha=q`. BH's power is limited by the "
        f"p-values' resolution: the smallest conformal p-value is 1/(n+1) = {1 / (s['n_calibration'] + 1):.2g}, "
        f"and BH over m = {s['fdr_batch_size']} images needs k p-values <= k q / m, so at q = {BH_FLOOR_Q} a batch "
        f"needs at least {math.ceil(s['fdr_batch_size'] / (BH_FLOOR_Q * (s['n_calibration'] + 1)))} images at that "
        "floor before it flags any (a larger calibration set lowers the floor). BH's bound holds over the draw "
        "of the calibration set and the batch; the main columns hold the bundle's one calibration set fixed. The "
        "last column redraws it for every batch from the pool of calibration and test scores (the batch's "
        "in-distribution images from what is left; its own random numbers, same seed), which is the bound as "
        "stated.",
        "",
        "| q | mean FDP, BH | target | mean power, BH | flagged per batch, BH | mean FDP, alpha = q | "
        "mean power, alpha = q | mean FDP, BH, calibration redrawn per batch |",
        "|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for row in s["fdr"]:
        met = "met" if row["mean_fdp"] <= row["q"] else "**missed**"
        lines.append(
            f"| {row['q']} | {row['mean_fdp']:.4f} | <= {row['q']} {met} | {row['mean_power']:.3f} | "
            f"{row['mean_discoveries']:.1f} | {row['alpha_mean_fdp']:.4f} | {row['alpha_mean_power']:.3f} | "
            f"{row['redrawn_mean_fdp']:.4f} |"
        )
    lines += [
        "",
        f"## Calibration-conditional flags: {s['conditional_splits']} random calibration/test splits",
        "",
        f"The pool: the {s['n_calibration']} calibration scores and the {s['n_in']} test scores (all "
        f"in-distribution, none fitted on); each split draws a calibration set of {s['n_calibration']} and "
        'tests on the rest. Realized FPR: share of the split\'s test images flagged. "exact": the same share '
        "computed, not sampled, for a random split of exchangeable scores (negative hypergeometric count of test "
        "scores above the flag's calibration rank). \"population\": the chance that the flag's FPR on the "
        "whole in-distribution population exceeds alpha, `P(Bin(n, alpha) < k)`. The conditional flag is the "
        "Simes-band calibration-conditional p-value of Bates et al. 2023 (Section 3, k = n/2) at <= alpha: the "
        "band bounds every threshold's population FPR at once with probability >= 1 - delta, so at one alpha it "
        "keeps a margin below alpha that also absorbs the test set's own sampling noise (sd "
        f"{math.sqrt(SD_ALPHA * (1 - SD_ALPHA) / s['n_in']):.3f} at alpha {SD_ALPHA} on {s['n_in']} images), "
        "which the exact single-alpha "
        "binomial correction it replaced did not (on models/fashion-glow/1: 0.135 of 200 splits above alpha 0.1 "
        "with it). OOD flagged: the OOD set at the bundle's own calibration, "
        "plain vs conditional (the price of the guarantee).",
        "",
        "| alpha | delta | FPR > alpha, plain: measured / exact | FPR > alpha, conditional: measured / exact | "
        "population FPR > alpha, conditional (<= delta) | mean FPR, plain | mean FPR, conditional | "
        "OOD flagged, plain | OOD flagged, conditional |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in s["conditional"]:
        lines.append(
            f"| {row['alpha']} | {row['delta']} | {row['share_plain_above']:.3f} / {row['expected_plain_above']:.3f} "
            f"| {row['share_conditional_above']:.3f} / {row['expected_conditional_above']:.3f} | "
            f"{row['population_conditional_above']:.3f} | {row['mean_fpr_plain']:.4f} | "
            f"{row['mean_fpr_conditional']:.4f} | {row['ood_flagged_plain']:.3f} | "
            f"{row['ood_flagged_conditional']:.3f} |"
        )
    lines += [
        "",
        f"## Drift alarm: conformal test martingale at delta {s['drift_delta']}",
        "",
        f"Streams of {s['drift_length']} images fed to `service.drift_martingale.DriftMartingale` in order, as the "
        "service feeds it. In-distribution streams: a fresh shuffle of the test images each, against the bundle's "
        "calibration set, or, as the guarantee is stated, with the calibration set redrawn from the pool of "
        "calibration and test scores for each stream (the stream is the rest of the pool); an alarm there is a "
        "false alarm (Ville: probability <= delta per stream, over the calibration draw and the stream). "
        "Mixture streams (the bundle's calibration): in-distribution images, then "
        "from the change on each image is OOD with the given probability (test and OOD images drawn without "
        "replacement); delay = images from the change to the alarm.",
        *shortened_streams(s),
        "",
        "| stream | streams | alarms | alarms before the change | median delay | p90 delay | max delay | "
        "median of max log10 wealth |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in s["drift"]:

        def cell(value, fmt="{:.0f}"):
            return "-" if value is None else fmt.format(value)

        lines.append(
            f"| {row['stream']} | {row['streams']} | {row['alarms']} | "
            f"{row['early_alarms'] if row['change_at'] is not None else '-'} | {cell(row['delay_median'])} | "
            f"{cell(row['delay_p90'])} | {cell(row['delay_max'])} | {row['max_log10_wealth_median']:.2f} |"
        )
    nulls = [row for row in s["drift"] if row["change_at"] is None]
    lines += [
        "",
        "## Targets",
        "",
        "| target | met | measured |",
        "|---|---|---|",
    ]
    for row in s["fdr"]:
        lines.append(
            f"| FDR: mean FDP <= {row['q']} | {'yes' if row['mean_fdp'] <= row['q'] else 'no'} | "
            f"{row['mean_fdp']:.4f} |"
        )
    for row in s["fdr"]:
        lines.append(
            f"| FDR, calibration redrawn per batch (as BH's bound is stated): mean FDP <= {row['q']} | "
            f"{'yes' if row['redrawn_mean_fdp'] <= row['q'] else 'no'} | {row['redrawn_mean_fdp']:.4f} |"
        )
    for row in s["conditional"]:
        ok = row["share_conditional_above"] <= row["delta"]
        lines.append(
            f"| conditional, alpha {row['alpha']}: share of splits with realized FPR > alpha <= {row['delta']} | "
            f"{'yes' if ok else 'no'} | {row['share_conditional_above']:.3f} (exact for this experiment: "
            f"{row['expected_conditional_above']:.3f}; population FPR: {row['population_conditional_above']:.3f}) |"
        )
    for null in nulls:
        allowed = max(1, int(s["drift_delta"] * null["streams"]))
        lines.append(
            f"| drift: false alarms on {null['streams']} streams ({null['stream']}) <= {allowed} | "
            f"{'yes' if null['alarms'] <= allowed else 'no'} | {null['alarms']} |"
        )

    def dash(value) -> str:
        return "-" if value is None else f"{value:g}"

    for row in s["drift"][len(nulls) :]:
        detected = row["alarms"] - row["early_alarms"]
        every = detected == row["streams"]
        if row["stream"].startswith(MIXTURE_DETECTED):
            ok = every and row["delay_median"] is not None and row["delay_median"] <= MAX_MEDIAN_DELAY
            lines.append(
                f"| drift: {row['stream']}: every stream detected, median delay <= {MAX_MEDIAN_DELAY:,} | "
                f"{'yes' if ok else 'no'} | "
                f"{detected}/{row['streams']} detected, median {dash(row['delay_median'])} |"
            )
        else:
            lines.append(
                f"| drift: {row['stream']} (reported) | - | {detected}/{row['streams']} detected, median "
                f"{dash(row['delay_median'])} |"
            )
    return "\n".join(lines) + "\n"
