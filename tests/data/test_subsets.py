import pytest

from fromscratch.data.subsets import choose_subset, read_subset, write_subset
from fromscratch.errors import DataError


def test_same_seed_same_ids_and_nested():
    ids = list(range(1000, 3000, 3))
    a = choose_subset(ids, 100, seed=0)
    assert a == choose_subset(list(reversed(ids)), 100, seed=0)  # independent of input order
    assert set(choose_subset(ids, 30, seed=0)) <= set(a)  # nested across sizes, same seed
    assert a != choose_subset(ids, 100, seed=1)
    assert len(set(a)) == 100 and set(a) <= set(ids)


def test_too_large(tmp_path):
    with pytest.raises(DataError, match="only 3"):
        choose_subset([1, 2, 3], 5, 0)


def test_file_round_trip(tmp_path):
    write_subset(tmp_path / "s.json", [3, 1, 2], "x.json", 0)
    assert read_subset(tmp_path / "s.json") == [3, 1, 2]
    (tmp_path / "bad.json").write_text('{"image_ids": [1, "a"]}')
    with pytest.raises(DataError, match="image_ids"):
        read_subset(tmp_path / "bad.json")
