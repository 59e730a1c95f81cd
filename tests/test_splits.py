import pytest
import torch

from unlearning.data.splits import build_splits, check_classes, retain_classes
from unlearning.errors import UsageError

LABELS = torch.arange(10).repeat(20)  # 200 samples, 20 per class


def _all(splits):
    return torch.cat(list(splits.values()))


def test_class_mode_is_a_disjoint_complete_partition_with_the_right_classes():
    splits = build_splits(LABELS, forget_classes=[9], new_classes=[3], val_size=30, seed=0)
    everything = _all(splits)
    assert len(everything) == len(LABELS) and len(everything.unique()) == len(LABELS)
    assert len(splits["val"]) == 30
    assert set(LABELS[splits["forget"]].tolist()) == {9}
    assert set(LABELS[splits["new"]].tolist()) == {3}
    assert not {3, 9} & set(LABELS[splits["retain"]].tolist())
    # every sample of a forget or new class not held out for validation is in its split
    assert len(splits["forget"]) == 20 - int((LABELS[splits["val"]] == 9).sum())
    assert len(splits["new"]) == 20 - int((LABELS[splits["val"]] == 3).sum())


def test_random_mode_forgets_the_fraction_of_non_new_samples():
    splits = build_splits(LABELS, forget_classes=[], new_classes=[3], forget_fraction=0.9, val_size=20, seed=1)
    pool = len(LABELS) - 20 - len(splits["new"])
    assert len(splits["forget"]) == round(0.9 * pool)
    assert len(splits["retain"]) == pool - round(0.9 * pool)
    assert 3 not in LABELS[splits["forget"]].tolist()
    assert len(_all(splits).unique()) == len(LABELS)
    assert len(set(LABELS[splits["forget"]].tolist())) == 9  # random samples span the classes


def test_splits_are_deterministic_per_seed_and_differ_across_seeds():
    a = build_splits(LABELS, forget_fraction=0.5, forget_classes=[], val_size=30, seed=0)
    b = build_splits(LABELS, forget_fraction=0.5, forget_classes=[], val_size=30, seed=0)
    c = build_splits(LABELS, forget_fraction=0.5, forget_classes=[], val_size=30, seed=1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["val"], c["val"]) and not torch.equal(a["forget"], c["forget"])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"forget_classes": [10]}, "0..9"),
        ({"forget_classes": [-1]}, "0..9"),
        ({"forget_classes": [6], "new_classes": [6]}, "both forget_classes and new_classes"),
        ({"forget_classes": [], "forget_fraction": 1.0}, r"\(0, 1\)"),
        ({"forget_classes": [], "forget_fraction": 0.0}, r"\(0, 1\)"),
        ({"forget_classes": [9], "forget_fraction": 0.5}, "forget_classes must be empty"),
        ({"forget_classes": []}, "nothing to forget"),
        ({"val_size": 0}, "val_size"),
        ({"val_size": 199, "forget_classes": [9]}, "split is empty"),
    ],
)
def test_bad_inputs_are_rejected_with_a_clear_message(kwargs, message):
    with pytest.raises(UsageError, match=message):
        build_splits(LABELS, **kwargs)


def test_a_class_absent_from_the_data_gives_an_empty_split_error():
    with pytest.raises(UsageError, match="'forget' split is empty"):
        build_splits(LABELS[LABELS != 9], forget_classes=[9], val_size=10)


def test_check_classes_rejects_repeats():
    with pytest.raises(UsageError, match="repeats"):
        check_classes([1, 1], [])


def test_retain_classes_are_those_neither_forgotten_nor_new():
    assert retain_classes([9], []) == list(range(9))
    assert retain_classes([6], [3]) == [0, 1, 2, 4, 5, 7, 8, 9]
    assert retain_classes([], []) == list(range(10))
