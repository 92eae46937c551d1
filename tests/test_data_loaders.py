"""Loaders: MovieLens folders of three layouts, generic tables, predefined splits, and their errors."""

from __future__ import annotations

import numpy as np
import pytest

from memory.errors import DataFormatError, UnknownItemError, UsageError
from memory.loaders import (ColumnMapping, DataSource, load_movielens_dir, load_predefined_split,
                            load_table_dataset)


def _write(path, text, encoding="utf-8"):
    path.write_text(text, encoding=encoding)
    return path


def _ml100k(folder, bad_rating=False):
    folder.mkdir()
    _write(folder / "u.data", "1\t10\t5\t881250949\n1\t20\t3\t881250950\n2\t10\t" +
           ("x" if bad_rating else "4") + "\t881250951\n")
    flags = lambda on: "|".join("1" if g in on else "0" for g in range(19))  # noqa: E731
    _write(folder / "u.item", f"10|Toy Story (1995)|01-Jan-1995||http://x|{flags({3, 4, 5})}\n"
                              f"20|GoldenEye (1995)|01-Jan-1995||http://y|{flags({1, 2, 16})}\n", encoding="latin-1")
    return folder


def test_movielens_100k_folder(tmp_path):
    ds = load_movielens_dir(_ml100k(tmp_path / "ml-100k"))
    assert ds.name == "ml-100k" and len(ds.catalog) == 2 and len(ds.interactions) == 3
    assert ds.catalog.get("10").categories == ("Animation", "Children's", "Comedy")
    assert ds.catalog.get("20").categories == ("Action", "Adventure", "Thriller")
    assert ds.interactions.for_user("1").ratings.tolist() == [5.0, 3.0]


def test_movielens_100k_bad_cell_names_file_line_column(tmp_path):
    with pytest.raises(DataFormatError) as e:
        load_movielens_dir(_ml100k(tmp_path / "ml-100k", bad_rating=True))
    msg = str(e.value)
    assert "u.data" in msg and "line 3" in msg and "'rating'" in msg


def test_movielens_1m_folder(tmp_path):
    d = tmp_path / "ml-1m"
    d.mkdir()
    _write(d / "ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n")
    _write(d / "movies.dat", "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n661::James and the Giant Peach "
                             "(1996)::Animation|Children's|Musical\n", encoding="latin-1")
    ds = load_movielens_dir(d)
    assert ds.name == "ml-1m" and ds.catalog.get("661").categories == ("Animation", "Children's", "Musical")


def test_movielens_latest_folder_and_short_line(tmp_path):
    d = tmp_path / "ml-latest-small"
    d.mkdir()
    _write(d / "ratings.csv", "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,4.5,964981247\n")
    _write(d / "movies.csv", 'movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n'
                             '3,"Grumpier Old Men, The (1995)",(no genres listed)\n')
    ds = load_movielens_dir(d)
    assert ds.catalog.get("3").title == "Grumpier Old Men, The (1995)" and ds.catalog.get("3").categories == ()
    assert ds.interactions.ratings.tolist() == [4.0, 4.5]
    _write(d / "ratings.csv", "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3\n")
    with pytest.raises(DataFormatError, match=r"ratings.csv, line 3"):
        load_movielens_dir(d)


def test_movielens_folder_errors(tmp_path):
    with pytest.raises(DataFormatError, match="not a folder"):
        load_movielens_dir(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataFormatError, match="no MovieLens files"):
        load_movielens_dir(tmp_path / "empty")


def test_table_with_column_mapping(tmp_path):
    inter = _write(tmp_path / "events.csv", "uid,iid,stars,ts\nu1,a,5,10\nu1,b,2,11\nu2,a,4,12\n")
    items = _write(tmp_path / "items.csv", "iid,name,tags\na,Alpha,X;Y\nb,Beta,Y\n")
    m = ColumnMapping.parse("user=uid,item=iid,rating=stars,timestamp=ts,title=name,categories=tags,"
                            "category_separator=;")
    ds = load_table_dataset(inter, items, m)
    assert ds.catalog.get("a").categories == ("X", "Y") and ds.catalog.get("b").title == "Beta"
    assert ds.interactions.for_user("u1").items.tolist() == ["a", "b"]


def test_table_errors_name_file_line_column(tmp_path):
    items = _write(tmp_path / "items.csv", "item,title\na,Alpha\n")
    bad = _write(tmp_path / "bad.csv", "user,item,rating,timestamp\nu1,a,5,1\nu1,a,five,2\n")
    with pytest.raises(DataFormatError) as e:
        load_table_dataset(bad, items)
    assert "bad.csv" in str(e.value) and "line 3" in str(e.value) and "'rating'" in str(e.value)
    missing = _write(tmp_path / "missing.csv", "person,item\nu1,a\n")
    with pytest.raises(DataFormatError, match="missing column 'user'"):
        load_table_dataset(missing, items)
    unknown = _write(tmp_path / "unknown.csv", "user,item\nu1,zzz\n")
    with pytest.raises(UnknownItemError, match="zzz"):
        load_table_dataset(unknown, items)
    with pytest.raises(DataFormatError, match="file not found"):
        load_table_dataset(tmp_path / "absent.csv", items)
    with pytest.raises(UsageError, match="column mapping key"):
        ColumnMapping.parse("usr=uid")


def test_parquet_table(tmp_path):
    import pandas as pd

    pd.DataFrame({"user": ["1", "1"], "item": ["a", "b"], "rating": [5.0, 4.0], "timestamp": [1, 2]}).to_parquet(
        tmp_path / "x.parquet")
    ds = load_table_dataset(tmp_path / "x.parquet")
    assert len(ds.interactions) == 2 and len(ds.catalog) == 2


def test_predefined_split(tmp_path):
    items = _write(tmp_path / "items.csv", "item,title,categories\na,A,X\nb,B,Y\nc,C,X|Y\n")
    train = _write(tmp_path / "train.csv", "user,item,rating,timestamp\n1,a,5,1\n1,b,4,2\n")
    test = _write(tmp_path / "test.csv", "user,item,rating,timestamp\n1,c,5,3\n")
    ds = load_predefined_split(train, test, items)
    assert len(ds.interactions) == 2 and ds.test is not None and ds.test.items.tolist() == ["c"]
    bad_test = _write(tmp_path / "bad_test.csv", "user,item,rating,timestamp\n1,q,5,3\n")
    with pytest.raises(UnknownItemError, match="'q'.*bad_test.csv"):
        load_predefined_split(train, bad_test, items)
    with pytest.raises(UsageError, match="all three"):
        DataSource(train=str(train)).load()


def test_packaged_ml100k():
    ds = DataSource(dataset="ml-100k").load()
    assert (len(ds.catalog), len(ds.interactions.user_ids()), len(ds.interactions)) == (1682, 943, 100000)
    assert ds.catalog.get("1").title == "Toy Story (1995)"
    p = ds.catalog.category_distribution()
    assert np.allclose(p[p.sum(1) > 0].sum(1), 1.0)


def test_unknown_dataset_name_lists_allowed():
    with pytest.raises(UsageError, match="ml-100k"):
        DataSource(dataset="netflix").load()


def test_synthetic_generator_is_deterministic(synthetic):
    from memory.synthetic import generate_synthetic

    again = generate_synthetic(seed=0)
    assert again.dataset.fingerprint() == synthetic.dataset.fingerprint()
    assert generate_synthetic(seed=1).dataset.fingerprint() != synthetic.dataset.fingerprint()
    for u, labels in synthetic.planted.items():
        assert 2 <= len(set(labels.values())) <= 3
