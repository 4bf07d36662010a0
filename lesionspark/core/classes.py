"""The class map every stage shares (docs/contracts.md: Classes).

Plain data and pure functions: imported wherever a stage runs (driver, executors, ranks).
"""
from __future__ import annotations

# Canonical order: alphabetical, labels 0..6.
CLASSES: tuple[str, ...] = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
LABEL_OF: dict[str, int] = {dx: i for i, dx in enumerate(CLASSES)}
MALIGNANT: frozenset[str] = frozenset({"mel", "bcc", "akiec"})

# The Kaggle "Skin Cancer MNIST: HAM10000" pixel files (hmnist_<s>_<s>_{L,RGB}.csv) use their own
# label order. Checked by class counts: label 4 has 6,705 rows, which only nv has.
HMNIST_LABELS: dict[int, str] = {0: "akiec", 1: "bcc", 2: "bkl", 3: "df", 4: "nv", 5: "vasc", 6: "mel"}


BINARY_CLASSES: tuple[str, ...] = ("benign", "malignant")  # a binary-mode model's outputs


def malignant_outputs(classes) -> list[int]:
    """Which of a model's output classes (its card's ``classes``) are malignant: summed, they are
    ``malignant_probability`` for a 7-class model, and the single output of a binary one."""
    return [i for i, c in enumerate(classes) if c in MALIGNANT or c == "malignant"]


def malignant_probability(probabilities, classes) -> float:
    """One image's ``malignant_probability``: its probabilities summed over ``malignant_outputs``."""
    return float(sum(probabilities[i] for i in malignant_outputs(classes)))


def is_binary(classes) -> bool:
    return tuple(classes) == BINARY_CLASSES


def balanced_weights(counts: dict) -> dict:
    """Class weights that give every present class the same total weight: ``n / (k * count)``,
    scikit-learn's "balanced" rule; classes with no rows get none."""
    present = {c: n for c, n in counts.items() if n}
    total, k = sum(present.values()), len(present)
    return {c: total / (k * n) for c, n in present.items()}


def binary_label(dx: str) -> int:
    """Benign (0) / malignant (1), from the class map and nothing else."""
    return int(dx in MALIGNANT)
