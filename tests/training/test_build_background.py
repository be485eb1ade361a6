"""build_background's ranking of calibrated bundles: best worst AUROC on the domain-free sets wins, ties look on."""

from types import SimpleNamespace

from training.build_background import rank_results

SETS = ("constant", "vflip", "inverted")


def result(aurocs: dict[str, dict[str, float]], meets: set[str] | None = None):
    rows = [
        {"score": score, "set": name, "kind": "ood", "auroc": value}
        for score, by_set in aurocs.items()
        for name, value in by_set.items()
    ]
    return SimpleNamespace(
        rows=rows,
        detector=SimpleNamespace(score_names=tuple(aurocs)),
        meets_targets=set(aurocs) if meets is None else meets,
    )


def test_the_candidate_with_the_best_worst_auroc_wins():
    a = result(
        {
            "combined": {"constant": 0.99, "vflip": 0.52, "inverted": 0.97},
            "bpd": {"constant": 0.4, "vflip": 0.5, "inverted": 0.8},
        }
    )
    b = result({"combined": {"constant": 0.98, "vflip": 0.60, "inverted": 0.95}})
    ranked = rank_results({"v1": a, "v2": b}, SETS)
    assert (ranked.label, ranked.best) == ("v2", "v2: combined")
    assert "0.600 on vflip" in ranked.why


def test_a_tie_on_the_worst_set_goes_to_the_next_worst():
    a = result({"combined": {"constant": 0.99, "vflip": 0.526, "inverted": 0.90}})
    b = result({"combined": {"constant": 0.99, "vflip": 0.520, "inverted": 0.97}})  # 0.006 apart: a tie
    assert rank_results({"v1": a, "v2": b}, SETS).label == "v2"


def test_a_score_that_misses_a_target_is_not_preferred():
    a = result({"combined": {"constant": 0.99, "vflip": 0.9, "inverted": 0.9}}, meets=set())
    b = result({"combined": {"constant": 0.99, "vflip": 0.6, "inverted": 0.9}})
    assert rank_results({"v1": a, "v2": b}, SETS).label == "v2"


def test_sets_outside_the_choice_are_not_looked_at():
    a = result({"combined": {"constant": 0.99, "vflip": 0.8, "inverted": 0.9, "icons": 0.1}})
    b = result({"combined": {"constant": 0.99, "vflip": 0.7, "inverted": 0.9, "icons": 0.99}})
    assert rank_results({"v1": a, "v2": b}, SETS).label == "v1"


def test_the_rule_refuses_a_bundle_with_no_background_attached(tiny_models_root, tmp_path, capsys):
    from training.build_background import main

    # without the background the rule would compare the bundle with a copy of itself and "keep" nothing
    assert main([str(tiny_models_root / "tiny" / "1"), str(tmp_path / "bg.pt")]) == 2
    assert "has no background graph: attach it first" in capsys.readouterr().err


def test_the_general_mix_is_prepared_once_at_the_models_shape_or_reported_missing(tmp_path):
    import numpy as np

    from training.build_background import GENERAL_FILE, prepare_general_mix

    mix = np.random.default_rng(0).integers(0, 256, (30, 3, 12, 12), dtype=np.uint8)
    np.savez(tmp_path / "mix.npz", images=mix)
    run_dir = tmp_path / "run" / "background"
    assert prepare_general_mix(str(tmp_path / "mix.npz"), (1, 8, 8), run_dir)
    prepared = np.load(run_dir / GENERAL_FILE)["images"]
    assert prepared.shape == (30, 1, 8, 8) and prepared.dtype == np.uint8  # gray, resized: the model's shape
    (tmp_path / "mix.npz").unlink()
    assert prepare_general_mix(str(tmp_path / "mix.npz"), (1, 8, 8), run_dir)  # prepared once: not read again
    assert not prepare_general_mix("none", (1, 8, 8), tmp_path / "other")
