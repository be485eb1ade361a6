"""``oodgate-eval BUNDLE_DIR``: measure a calibrated bundle's OOD gate on an in-distribution test set and OOD sets.

Every image goes through the service's runtime and the bundle's own
:class:`service.ood.Detector`, so the flags measured here are the flags the
service returns. The report folder holds a markdown table (AUROC, FPR at 95%
TPR and the flag rate at each alpha, per score and set; the realized
false-positive rate on the in-distribution test set), histograms per score,
example images per set, and every per-image score as CSV. The default score is
recommended by its *worst* AUROC over all OOD sets, never by MNIST alone, among
the scores that meet every target of the report (all scores when none does).
"""

from __future__ import annotations

import argparse
import functools
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from service.artifact import ArtifactError
from service.ood import Detector, conformal_p_values
from training.data import DatasetError, load_fashion_mnist, load_image_folder, load_npz
from training.metrics import auroc, flag_rate, fpr_at_tpr
from training.ood_sets import BUILTIN_SETS, Context, ImageSet, SetUnavailable, build_set, fit_to_shape, load_set
from training.scoring import Bundle, open_bundle, run_complexity, run_statistics

ALPHAS = (0.01, 0.05, 0.1)
AUROC_TIE = 0.01
IN_DISTRIBUTION = "in-distribution"


@dataclass
class ScoredSet:
    name: str
    kind: str  # "in", "ood" or "invariant"
    description: str
    images: np.ndarray
    stats: dict[str, np.ndarray]
    complexity: np.ndarray
    scores: dict[str, np.ndarray]
    p_values: dict[str, np.ndarray]
    seconds: float = 0.0

    @property
    def n(self) -> int:
        return len(self.images)


@dataclass
class Evaluation:
    bundle: Bundle
    detector: Detector
    sets: list[ScoredSet]
    alphas: tuple[float, ...]
    rows: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    recommended: str | None = None
    worst: dict[str, tuple[float, str]] = field(default_factory=dict)
    meets_targets: set[str] = field(default_factory=set)  # scores that meet every target the report checks
    command: str = ""
    seconds: float = 0.0

    @property
    def in_set(self) -> ScoredSet:
        return self.sets[0]


def score_set(
    bundle: Bundle, detector: Detector, image_set: ImageSet | ScoredSet, kind: str, batch_size: int, progress: bool
) -> ScoredSet:
    started = time.monotonic()
    stats = run_statistics(bundle, image_set.images, batch_size=batch_size, desc=image_set.name, progress=progress)
    complexity = run_complexity(image_set.images, desc=f"{image_set.name} L(x)", progress=progress)
    scores = detector.score(stats, complexity)
    # the service's own formula on the service's own scores (Detector.predict does exactly this)
    p_values = {name: conformal_p_values(detector.calibration[name], scores[name]) for name in scores}
    return ScoredSet(
        image_set.name,
        kind,
        image_set.description,
        image_set.images,
        stats,
        complexity,
        scores,
        p_values,
        time.monotonic() - started,
    )


def metric_rows(in_set: ScoredSet, sets: list[ScoredSet], alphas: tuple[float, ...]) -> list[dict]:
    rows = []
    for scored in [in_set, *sets]:
        for name, values in scored.scores.items():
            row = {"set": scored.name, "kind": scored.kind, "n": scored.n, "score": name}
            if scored is in_set:
                row["auroc"] = row["fpr95"] = float("nan")
            else:
                row["auroc"] = auroc(in_set.scores[name], values)
                row["fpr95"] = fpr_at_tpr(in_set.scores[name], values, 0.95)
            for alpha in alphas:
                row[f"flag@{alpha:g}"] = flag_rate(scored.p_values[name], alpha)
            rows.append(row)
    return rows


def recommend(
    rows: list[dict], score_names: tuple[str, ...], tie: float = AUROC_TIE, eligible: set[str] | None = None
) -> tuple[str | None, dict[str, tuple[float, str]]]:
    """The score whose worst AUROC over the OOD sets is best, among ``eligible`` if any is.

    Differences under ``tie`` (about two standard errors of an AUROC on a
    2,000-image set) are noise, not a ranking: such ties go to the next-worst
    set, then to the mean AUROC. ``eligible``: the scores that meet the hard
    targets; a score that misses one (say, lets upside-down images through) is not
    recommended over one that meets them all, however good its worst AUROC.
    ``worst`` is returned for every score either way.
    """
    profiles, worst = {}, {}
    for name in score_names:
        ood = sorted((r["auroc"], r["set"]) for r in rows if r["score"] == name and r["kind"] == "ood")
        if ood:
            worst[name] = ood[0]
            if not eligible or name in eligible:
                profiles[name] = [value for value, _ in ood]

    def compare(a: str, b: str) -> int:
        for x, y in zip(profiles[a], profiles[b], strict=True):
            if abs(x - y) >= tie:
                return 1 if x > y else -1
        mean_a, mean_b = float(np.mean(profiles[a])), float(np.mean(profiles[b]))
        return (mean_a > mean_b) - (mean_a < mean_b)  # Python bools: numpy's refuse to subtract

    best = max(profiles, key=functools.cmp_to_key(compare)) if profiles else None
    return best, worst


def in_distribution_images(bundle: Bundle, path: str | None) -> tuple[np.ndarray, str]:
    shape = tuple(bundle.manifest.input.shape)
    if path:
        source = Path(path)
        images = load_image_folder(source, shape[0], shape[1:]) if source.is_dir() else load_npz(source)
        return fit_to_shape(images, shape), f"in-distribution test images from {path}"
    data = bundle.manifest.data
    if data is not None and data.source == "fashion-mnist":
        images, _ = load_fashion_mnist("test", data.path)
        return images, "FashionMNIST test split (never trained on, never calibrated on)"
    raise DatasetError("the bundle was not trained on FashionMNIST: pass --in-dist TEST_IMAGES(.npz|folder)")


def eager_flow(bundle: Bundle, checkpoint: str | None, images: np.ndarray) -> tuple[object | None, str | None]:
    """The flow that Algorithm 1 inverts: ``--checkpoint`` when given, else the bundle's ``weights.npz``.

    Either way it must score like the bundle's graph, or ``latent_zeroed`` would be
    built by some other model. Returns the flow and where it came from, or None and why not.
    """
    import torch

    from service.artifact import bits_per_dim
    from training.flows import dequantize
    from training.weights import flow_from_bundle

    if checkpoint:
        from training.train import model_from_checkpoint

        flow, source = model_from_checkpoint(checkpoint)[0], f"checkpoint {checkpoint}"
    else:
        try:
            flow, source = flow_from_bundle(bundle.directory), f"{bundle.directory}/weights.npz"
        except ArtifactError as exc:
            return None, f"no eager flow to invert: {exc}"
    with torch.no_grad():
        log_pz, log_det = flow(dequantize(torch.from_numpy(images[:32])))
        eager = bits_per_dim(log_pz.sum(1) + log_det.sum(1), flow.dims).double().numpy()
    exported = run_statistics(bundle, images[:32], progress=False)["bpd"].astype(np.float64)
    delta = float(np.max(np.abs(eager - exported)))
    if delta > 1e-3:
        return None, f"{source} is not this bundle's model (max |Δ bpd| {delta:.3g})"
    return flow, f"latent_zeroed inverts the eager flow from {source} (max |Δ bpd| {delta:.2g} against the graph)"


def parse_extra(values: list[str], kind: str) -> list[tuple[str, str, str]]:
    out = []
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"oodgate-eval: expected NAME=PATH, got {value!r}")
        out.append((name, path, kind))
    return out


def evaluate(args: argparse.Namespace, command: str) -> Evaluation:
    started = time.monotonic()
    progress = not args.no_progress
    bundle = open_bundle(args.bundle, threads=args.threads)
    detector = Detector.from_bundle(bundle.manifest, bundle.directory)
    if not detector.fitted:
        raise ArtifactError(f"{args.bundle} carries no calibration: run oodgate-calibrate {args.bundle} first")
    shape = tuple(bundle.manifest.input.shape)
    in_images, in_description = in_distribution_images(bundle, args.in_dist)
    if args.limit:
        in_images = in_images[: args.limit]
    notes: list[str] = []
    names = list(BUILTIN_SETS) if args.sets == "all" else [s for s in args.sets.split(",") if s]
    ctx = Context(shape, in_images, per_set=args.per_set, seed=args.seed)
    if "latent_zeroed" in names:
        ctx.flow, said = eager_flow(bundle, args.checkpoint, in_images)
        if ctx.flow is None:
            ctx.why_no_flow = said
        else:
            notes.append(said)

    unknown = [n for n in names if n not in BUILTIN_SETS]
    if unknown:
        raise SystemExit(f"oodgate-eval: unknown sets {unknown}; built-in: {', '.join(BUILTIN_SETS)}")
    image_sets: list[ImageSet] = []
    for name in names:
        try:
            image_sets.append(build_set(name, ctx))
        except SetUnavailable as exc:
            notes.append(f"set {name} skipped: {exc}")
            print(f"oodgate-eval: set {name} skipped: {exc}", file=sys.stderr)
    for name, path, kind in parse_extra(args.add, "ood") + parse_extra(args.add_invariant, "invariant"):
        image_sets.append(load_set(name, path, kind, shape))

    in_source = ImageSet(IN_DISTRIBUTION, "in", in_images, in_description)
    in_set = score_set(bundle, detector, in_source, "in", args.batch_size, progress)
    scored = []
    for image_set in image_sets:
        scored.append(score_set(bundle, detector, image_set, image_set.kind, args.batch_size, progress))
        print(f"  {image_set.name}: {len(image_set.images)} images, {scored[-1].seconds:.1f} s", file=sys.stderr)
    from training.report import target_checks  # report renders an Evaluation; import late, no cycle

    rows = metric_rows(in_set, scored, tuple(args.alphas))
    result = Evaluation(
        bundle, detector, [in_set, *scored], tuple(args.alphas), rows, notes + ctx.notes, command=command
    )
    result.meets_targets = {
        name for name in detector.score_names if all(met is not False for _, met, _ in target_checks(result, name))
    }
    result.recommended, result.worst = recommend(rows, detector.score_names, eligible=result.meets_targets)
    result.seconds = time.monotonic() - started
    return result


def parse_alphas(text: str) -> list[float]:
    alphas = [float(a) for a in text.split(",") if a]
    if not alphas or any(not 0 < a < 1 for a in alphas):
        raise argparse.ArgumentTypeError("alphas must lie in (0, 1)")
    return alphas


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="oodgate-eval", description=__doc__.splitlines()[0])
    parser.add_argument("bundle", help="a calibrated models/<name>/<version>/ (see oodgate-calibrate)")
    parser.add_argument("--out", default="ood-report", help="report folder (default: ./ood-report)")
    parser.add_argument(
        "--sets", default="all", help=f"comma-separated built-in sets, or 'all': {','.join(BUILTIN_SETS)}"
    )
    parser.add_argument(
        "--add",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="an extra OOD set: a folder of images or an .npz (repeatable)",
    )
    parser.add_argument(
        "--add-invariant",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="an extra set that should NOT be flagged (repeatable)",
    )
    parser.add_argument("--in-dist", help="in-distribution test images (default: FashionMNIST test for such bundles)")
    parser.add_argument("--limit", type=int, help="use only the first N in-distribution test images")
    parser.add_argument("--per-set", type=int, default=2000, help="images per transformed/synthetic set (cap)")
    parser.add_argument(
        "--checkpoint", help="a training checkpoint to invert for latent_zeroed (default: the bundle's weights.npz)"
    )
    parser.add_argument("--alphas", type=parse_alphas, default=list(ALPHAS), help="flag levels (0.01,0.05,0.1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (default: all cores)")
    parser.add_argument(
        "--set-default", action="store_true", help="write the recommended default score into the bundle's calibration"
    )
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG histograms")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    from training.report import write_report

    args = build_parser().parse_args(argv)
    command = "oodgate-eval " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    try:
        result = evaluate(args, command)
    except (ArtifactError, DatasetError, ValueError) as exc:
        print(f"oodgate-eval: {exc}", file=sys.stderr)
        return 2
    if args.set_default and result.recommended and result.recommended != result.detector.default_score:
        result.detector.default_score = result.recommended
        result.bundle.manifest = result.detector.save(
            result.bundle.directory, result.bundle.manifest, extra=_kept_calibration_fields(result.bundle.manifest)
        )
        result.notes.append(f"default score of {args.bundle} set to {result.recommended} (--set-default)")
    out = write_report(result, Path(args.out), plots=not args.no_plots)
    print(
        f"wrote {out}; recommended default score: {result.recommended} "
        f"(worst AUROC {result.worst[result.recommended][0]:.4f} on {result.worst[result.recommended][1]})"
    )
    return 0


def _kept_calibration_fields(manifest) -> dict:
    """Provenance fields written by calibration that a default-score change must not drop."""
    calibration = manifest.calibration or {}
    return {k: calibration[k] for k in ("holdout_sha256", "runtime", "fitted") if k in calibration}


if __name__ == "__main__":
    sys.exit(main())
