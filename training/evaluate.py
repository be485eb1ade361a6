"""``oodgate-eval BUNDLE_DIR``: measure a calibrated bundle's OOD gate on an in-distribution test set and OOD sets.

Every image goes through the service's runtime and the bundle's own
:class:`service.ood.Detector`, so the flags measured here are the flags the
service returns. The report folder holds a markdown table (AUROC, FPR at 95%
TPR and the flag rate at each alpha, per score and set; the realized
false-positive rate on the in-distribution test set), histograms per score,
example images per set, and every per-image score as CSV.

Any bundle, any domain: the in-distribution test set is ``--in-dist``, else the
test set the bundle's manifest records, else FashionMNIST's test split for a
bundle trained on it. The default score is recommended by a rule that sees only
in-distribution data and the domain-free synthetic sets (DESIGN.md, "Scores and
calibration"): among the scores that meet every *choice* target (realized FPR,
domain-free sets flagged; all scores when none does), the best *worst* AUROC over
the domain-free OOD sets. The user's sets and the FashionMNIST-specific ones are
measured and reported, never chosen on.

:func:`evaluate_bundle` is the whole command as a function (typed
:class:`EvalOptions`, no argparse), for ``oodgate-build`` and tests.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from service.artifact import ArtifactError
from service.calibration_file import save_calibration
from training.data import DatasetError, recorded_test_split
from training.evaluation import ALPHAS, IN_DISTRIBUTION, Evaluation, metric_rows, score_set
from training.ood_sets import (
    BUILTIN_SETS,
    DOMAIN_FREE_OOD,
    FASHION_MNIST,
    PER_SET,
    Context,
    ImageSet,
    SetUnavailable,
    build_set,
    default_sets,
    load_set,
    read_images,
)
from training.report import write_report
from training.scoring import BATCH_SIZE, Bundle, open_calibrated_bundle, run_statistics
from training.targets import recommend, target_checks

EAGER_CHECK_IMAGES = 32  # the in-distribution images an eager flow is compared with the graph on
EAGER_TOLERANCE_BPD = 1e-3  # an eager flow off the graph by more than this is some other model (export parity: 1e-4)


@dataclass(frozen=True)
class EvalOptions:
    """What ``oodgate-eval`` measures, beyond the bundle; every field has the CLI's default.

    The CLI builds one from its arguments (:func:`options_from_args`); ``oodgate-build``
    and tests build one directly. Frozen: one evaluation's options do not change under it.
    """

    in_dist: str | None = None  # folder, .npz, IDX, CIFAR binary; None: the bundle's recorded test set
    ood_sets: dict[str, str] = field(default_factory=dict)  # name -> images (same forms), should be flagged
    invariant_sets: dict[str, str] = field(default_factory=dict)  # name -> images (same forms), should pass
    sets: tuple[str, ...] | None = None  # built-in sets; None: those made for the bundle's data
    limit: int | None = None  # only the first N in-distribution test images
    per_set: int = PER_SET
    checkpoint: str | None = None  # the eager flow for latent_zeroed (default: the bundle's weights.npz)
    alphas: tuple[float, ...] = ALPHAS
    seed: int = 0
    batch_size: int = BATCH_SIZE
    threads: int = 0
    progress: bool = True


class SetNameError(ValueError):
    """An extra set's name is taken (by a built-in set, the in-distribution set or another extra set)."""


def in_distribution_images(bundle: Bundle, path: str | None) -> tuple[np.ndarray, str]:
    """The in-distribution test images: ``path``, else the manifest's recorded test set, else FashionMNIST's.

    Never the training split: a test set the flow was trained or calibrated on would
    make every number of the report optimistic.
    """
    shape = tuple(bundle.manifest.input.shape)
    if path:
        return read_images(path, shape), f"in-distribution test images from {path}"
    data = bundle.manifest.data
    if data is not None and data.test_every:
        images = recorded_test_split(data, shape)
        return images, (
            f"the bundle's recorded test set: every {data.test_every}th image of {data.path} "
            "(never trained on, never calibrated on)"
        )
    if data is not None and data.test_path and data.test_source != FASHION_MNIST:
        images = recorded_test_split(data, shape)
        return images, f"the bundle's recorded test set {data.test_path} (never trained on, never calibrated on)"
    if data is not None and FASHION_MNIST in (data.source, data.test_source):
        images = read_images(data.test_path or data.path, shape, source=FASHION_MNIST, split="test")
        return images, "FashionMNIST test split (never trained on, never calibrated on)"
    recorded = f"trained on {data.source} data from {data.path}" if data is not None else "records no training data"
    raise DatasetError(
        f"the bundle {recorded} and no in-distribution test set: pass --in-dist TEST_IMAGES "
        "(a folder, .npz, IDX file or CIFAR binary)"
    )


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
        from training.checkpoints import model_from_checkpoint

        flow, source = model_from_checkpoint(checkpoint)[0], f"checkpoint {checkpoint}"
    else:
        try:
            flow, source = flow_from_bundle(bundle.directory), f"{bundle.directory}/weights.npz"
        except ArtifactError as exc:
            return None, f"no eager flow to invert: {exc}"
    with torch.no_grad():
        log_pz, log_det = flow(dequantize(torch.from_numpy(images[:EAGER_CHECK_IMAGES])))
        eager = bits_per_dim(log_pz.sum(1) + log_det.sum(1), flow.dims).double().numpy()
    exported = run_statistics(bundle, images[:EAGER_CHECK_IMAGES], progress=False)["bpd"].astype(np.float64)
    delta = float(np.max(np.abs(eager - exported)))
    if delta > EAGER_TOLERANCE_BPD:
        return None, f"{source} is not this bundle's model (max |Δ bpd| {delta:.3g})"
    return flow, f"latent_zeroed inverts the eager flow from {source} (max |Δ bpd| {delta:.2g} against the graph)"


def parse_extra(values: list[str]) -> dict[str, str]:
    """``NAME=PATH`` arguments as a dict; a malformed one is a usage error."""
    out: dict[str, str] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"oodgate-eval: expected NAME=PATH, got {value!r}")
        if name in out:
            raise SetNameError(f"set name {name!r} is given twice; every set needs its own name")
        out[name] = path
    return out


def check_set_names(options: EvalOptions) -> None:
    """Refuse an extra set whose name is taken: its row would merge with (or hide) the other set's."""
    seen: set[str] = set()
    for name in [*options.ood_sets, *options.invariant_sets]:
        if name in BUILTIN_SETS:
            raise SetNameError(
                f"set name {name!r} is a built-in set ({BUILTIN_SETS[name].description}); choose another name"
            )
        if name == IN_DISTRIBUTION or name in seen:
            raise SetNameError(f"set name {name!r} is already taken; choose another name")
        seen.add(name)


def evaluate(bundle_dir: str | Path, options: EvalOptions, command: str = "") -> Evaluation:
    """Score the in-distribution test set and every OOD set through the bundle's own runtime and detector."""
    started = time.monotonic()
    check_set_names(options)
    progress = options.progress
    bundle, detector = open_calibrated_bundle(bundle_dir, threads=options.threads)
    shape = tuple(bundle.manifest.input.shape)
    in_images, in_description = in_distribution_images(bundle, options.in_dist)
    if options.limit:
        in_images = in_images[: options.limit]
    notes: list[str] = []
    data = bundle.manifest.data
    names = list(options.sets) if options.sets is not None else default_sets(data.source if data else None)
    unknown = [n for n in names if n not in BUILTIN_SETS]
    if unknown:
        raise SetNameError(f"unknown sets {unknown}; built-in: {', '.join(BUILTIN_SETS)}")
    ctx = Context(shape, in_images, per_set=options.per_set, seed=options.seed)
    if "latent_zeroed" in names:
        ctx.flow, said = eager_flow(bundle, options.checkpoint, in_images)
        if ctx.flow is None:
            ctx.why_no_flow = said
        else:
            notes.append(said)

    image_sets: list[ImageSet] = []
    for name in names:
        try:
            image_sets.append(build_set(name, ctx))
        except SetUnavailable as exc:
            notes.append(f"set {name} skipped: {exc}")
            print(f"oodgate-eval: set {name} skipped: {exc}", file=sys.stderr)
    for extra, kind in ((options.ood_sets, "ood"), (options.invariant_sets, "invariant")):
        image_sets.extend(load_set(name, path, kind, shape) for name, path in extra.items())

    in_source = ImageSet(IN_DISTRIBUTION, "in", in_images, in_description)
    in_set = score_set(bundle, detector, in_source, "in", options.batch_size, progress)
    scored = []
    for image_set in image_sets:
        scored.append(score_set(bundle, detector, image_set, image_set.kind, options.batch_size, progress))
        print(f"  {image_set.name}: {len(image_set.images)} images, {scored[-1].seconds:.1f} s", file=sys.stderr)
    rows = metric_rows(in_set, scored, tuple(options.alphas))
    result = Evaluation(
        bundle, detector, [in_set, *scored], tuple(options.alphas), rows, notes + ctx.notes, command=command
    )
    result.targets = {name: target_checks(result, name) for name in detector.score_names}
    result.recommended, result.worst = recommend(
        rows, detector.score_names, eligible=result.meets_targets, choice_sets=DOMAIN_FREE_OOD
    )
    result.seconds = time.monotonic() - started
    return result


def set_default_score(result: Evaluation) -> bool:
    """Write the recommended score into the bundle's calibration; False when there is nothing to change."""
    if not result.recommended or result.recommended == result.detector.default_score:
        return False
    result.detector.default_score = result.recommended
    result.bundle.manifest = save_calibration(
        result.detector,
        result.bundle.directory,
        result.bundle.manifest,
        extra=_kept_calibration_fields(result.bundle.manifest),
    )
    result.notes.append(f"default score of {result.bundle.directory} set to {result.recommended} (--set-default)")
    return True


def evaluate_bundle(
    bundle_dir: str | Path,
    out_dir: str | Path,
    options: EvalOptions | None = None,
    *,
    set_default: bool = False,
    plots: bool = True,
    command: str | None = None,
) -> Evaluation:
    """``oodgate-eval`` as a function: evaluate, optionally set the default score, write the report to ``out_dir``.

    Raises :class:`ArtifactError` (not calibrated), :class:`DatasetError` (no
    readable in-distribution test set) or :class:`SetNameError`; never exits.
    """
    options = options or EvalOptions()
    if command is None:
        command = f"evaluate_bundle({str(bundle_dir)!r}, {str(out_dir)!r}, {options!r}, set_default={set_default})"
    result = evaluate(bundle_dir, options, command)
    if set_default:
        set_default_score(result)
    write_report(result, Path(out_dir), plots=plots)
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
        "--sets",
        default="all",
        help="comma-separated built-in sets, or 'all': those made for the bundle's data (the domain-free ones; "
        f"for FashionMNIST bundles every one): {','.join(BUILTIN_SETS)}",
    )
    parser.add_argument(
        "--add",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="an extra OOD set: a folder of images or an .npz (repeatable); NAME must not be taken",
    )
    parser.add_argument(
        "--add-invariant",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="an extra set that should NOT be flagged (repeatable)",
    )
    parser.add_argument(
        "--in-dist",
        help="in-distribution test images: a folder, .npz, IDX file or CIFAR binary (default: the test set "
        "the bundle records; FashionMNIST's test split for bundles trained on it)",
    )
    parser.add_argument("--limit", type=int, help="use only the first N in-distribution test images")
    parser.add_argument("--per-set", type=int, default=PER_SET, help="images per transformed/synthetic set (cap)")
    parser.add_argument(
        "--checkpoint", help="a training checkpoint to invert for latent_zeroed (default: the bundle's weights.npz)"
    )
    parser.add_argument("--alphas", type=parse_alphas, default=list(ALPHAS), help="flag levels (0.01,0.05,0.1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (default: all cores)")
    parser.add_argument(
        "--set-default", action="store_true", help="write the recommended default score into the bundle's calibration"
    )
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG histograms")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def options_from_args(args: argparse.Namespace) -> EvalOptions:
    return EvalOptions(
        in_dist=args.in_dist,
        ood_sets=parse_extra(args.add),
        invariant_sets=parse_extra(args.add_invariant),
        sets=None if args.sets == "all" else tuple(s for s in args.sets.split(",") if s),
        limit=args.limit,
        per_set=args.per_set,
        checkpoint=args.checkpoint,
        alphas=tuple(args.alphas),
        seed=args.seed,
        batch_size=args.batch_size,
        threads=args.threads,
        progress=not args.no_progress,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = "oodgate-eval " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    try:
        options = options_from_args(args)
        result = evaluate_bundle(
            args.bundle, args.out, options, set_default=args.set_default, plots=not args.no_plots, command=command
        )
    except (ArtifactError, DatasetError, ValueError) as exc:
        print(f"oodgate-eval: {exc}", file=sys.stderr)
        return 2
    recommended = result.recommended
    worst = result.worst.get(recommended) if recommended else None
    print(
        f"wrote {args.out}; recommended default score: {recommended}"
        + (f" (worst AUROC {worst[0]:.4f} on {worst[1]}, over the domain-free sets)" if worst else "")
    )
    return 0


def _kept_calibration_fields(manifest) -> dict:
    """Provenance fields written by calibration that a default-score change must not drop."""
    calibration = manifest.calibration or {}
    return {k: calibration[k] for k in ("holdout_sha256", "runtime", "fitted") if k in calibration}


if __name__ == "__main__":
    sys.exit(main())
