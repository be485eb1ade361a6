"""The acceptance targets and the default-score choice: worst AUROC over the domain-free sets, among the eligible."""

from __future__ import annotations

from types import SimpleNamespace

from training.ood_sets import DOMAIN_FREE_OOD
from training.targets import recommend, target_checks


def ood(set_name: str, score: str, auroc: float) -> dict:
    """One OOD set's metric row, as :func:`training.evaluation.metric_rows` writes it (the columns recommend reads)."""
    return {"set": set_name, "kind": "ood", "score": score, "auroc": auroc}


def table(**aurocs: dict[str, float]) -> list[dict]:
    """Rows for every score's AUROC per set (``score={set: auroc}``), score by score, sets in the order given."""
    return [ood(name, score, value) for score, by_set in aurocs.items() for name, value in by_set.items()]


def test_default_score_is_chosen_by_worst_auroc_not_by_mnist():
    rows = [
        ood("mnist", "complexity", 0.999),
        ood("photos", "complexity", 0.10),
        ood("mnist", "dose", 0.95),
        ood("photos", "dose", 0.90),
        {"set": "shift1", "kind": "invariant", "score": "dose", "auroc": 0.01},  # not an OOD set: ignored
    ]
    best, worst = recommend(rows, ("complexity", "dose"))
    assert best == "dose" and worst["dose"] == (0.90, "photos") and worst["complexity"] == (0.10, "photos")


def test_worst_auroc_ties_within_noise_go_to_the_next_worst_set():
    rows = table(dose={"vflip": 0.691, "digits": 0.693}, combined={"vflip": 0.682, "digits": 0.876})
    assert recommend(rows, ("dose", "combined"))[0] == "combined"
    assert recommend(rows, ("dose", "combined"), tie=0.0)[0] == "dose"  # the strict rule


def test_scores_tied_on_every_set_go_to_the_mean_auroc():
    rows = table(dose={"constant": 1.0, "noise": 0.995}, combined={"constant": 1.0, "noise": 0.999})
    assert recommend(rows, ("dose", "combined"))[0] == "combined"
    assert recommend(rows[:1] + rows[2:3], ("dose", "combined"))[0] in ("dose", "combined")  # exact tie


def test_a_score_that_misses_a_target_is_not_recommended_over_one_that_meets_them_all():
    rows = table(dose={"latent_zeroed": 0.93, "vflip": 0.99}, combined={"latent_zeroed": 0.90, "vflip": 0.998})
    assert recommend(rows, ("dose", "combined"))[0] == "dose"
    best, worst = recommend(rows, ("dose", "combined"), eligible={"combined"})
    assert best == "combined" and worst["dose"] == (0.93, "latent_zeroed")  # worst still reported for all
    assert recommend(rows, ("dose", "combined"), eligible=set())[0] == "dose"  # none eligible: all compete


def test_the_choice_sees_only_the_domain_free_sets():
    rows = table(dose={"constant": 0.97, "mine": 0.20}, bpd={"constant": 0.90, "mine": 0.99})  # dose fails "mine"
    assert recommend(rows, ("dose", "bpd"))[0] == "bpd"  # unrestricted, the user's set would decide
    best, worst = recommend(rows, ("dose", "bpd"), choice_sets=DOMAIN_FREE_OOD)
    assert best == "dose" and worst["dose"] == (0.97, "constant")


def fake_result(data_source: str, rows: list[dict], set_names: list[str]):
    sets = [SimpleNamespace(name=n, kind="in" if n == "in-distribution" else "ood") for n in set_names]
    return SimpleNamespace(rows=rows, data_source=data_source, sets=sets, in_set=sets[0], alphas=(0.05,))


def test_mnist_is_a_target_only_for_fashion_mnist_bundles_and_user_sets_never_choose():
    rows = [
        {"set": "in-distribution", "score": "dose", "flag@0.05": 0.05},
        {"set": "mnist", "score": "dose", "auroc": 0.5, "fpr95": 0.9, "flag@0.05": 0.1},
        {"set": "mine", "score": "dose", "auroc": 0.995, "fpr95": 0.01, "flag@0.05": 0.9},
    ]
    names = ["in-distribution", "mnist", "mine"]
    fashion = {c.target: c for c in target_checks(fake_result("fashion-mnist", rows, names), "dose")}
    other = {c.target: c for c in target_checks(fake_result("folder", rows, names), "dose")}
    mnist_target = "MNIST: AUROC >= 0.99 and FPR95 <= 0.05"
    assert mnist_target in fashion and not fashion[mnist_target].met and not fashion[mnist_target].chooses
    assert mnist_target not in other
    mine = other["your set mine: AUROC >= 0.99 and FPR95 <= 0.05"]
    assert mine.met and not mine.chooses
    fpr = other["realized FPR at alpha 0.05 in [0.04, 0.06]"]
    assert fpr.met and fpr.chooses
