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


# --------------------------------------------------------------------------- column auto-detection
def test_common_column_names_need_no_mapping(tmp_path):
    inter = _write(tmp_path / "ratings.csv",
                   "user_id,item_id,rating,timestamp\nu1,a,5,10\nu1,b,2,11\nu2,a,4,12\n")
    items = _write(tmp_path / "items.csv", "item_id,title,genres\na,Alpha,Drama|Comedy\nb,Beta,Horror\n")
    ds = load_table_dataset(inter, items)
    assert ds.catalog.get("a").categories == ("Drama", "Comedy")
    assert ds.catalog.get("b").categories == ("Horror",)
    assert ds.interactions.for_user("u1").ratings.tolist() == [5.0, 2.0]
    assert ds.interactions.timestamps.tolist() == [10, 11, 12]
    ds = DataSource(dataset=None, data=str(inter), items=str(items)).load()
    assert ds.catalog.get("a").categories == ("Drama", "Comedy")


def test_movielens_latest_style_columns(tmp_path):
    inter = _write(tmp_path / "ratings.csv", "userId,movieId,rating\n1,1,4.0\n1,3,4.5\n2,1,3.0\n")
    items = _write(tmp_path / "movies.csv", 'movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n'
                                            '3,"Grumpier Old Men, The (1995)",Comedy|Romance\n')
    ds = load_table_dataset(inter, items)
    assert ds.interactions.ratings.tolist() == [4.0, 4.5, 3.0]
    assert ds.interactions.timestamps.tolist() == [0, 1, 2]  # no timestamp column: row order
    assert ds.catalog.get("3").title == "Grumpier Old Men, The (1995)"
    assert ds.catalog.get("3").categories == ("Comedy", "Romance")  # the title's comma is not a separator


def test_header_match_ignores_case_and_prefers_alias_order(tmp_path):
    inter = _write(tmp_path / "x.csv", "UserID,ItemId,Score,uid\nu1,a,3,zz\n")
    m = ColumnMapping().resolve(["UserID", "ItemId", "Score", "uid"])
    assert (m.user, m.item, m.rating, m.timestamp) == ("UserID", "ItemId", "Score", None)
    items = _write(tmp_path / "items.csv", "item,name,category,genres\na,Alpha,Kids,Drama\n")
    ds = load_table_dataset(inter, items)
    assert ds.interactions.users.tolist() == ["u1"] and ds.interactions.ratings.tolist() == [3.0]
    assert ds.catalog.get("a").title == "Alpha" and ds.catalog.get("a").categories == ("Drama",)


def test_explicit_column_missing_fails_naming_it(tmp_path):
    inter = _write(tmp_path / "ratings.csv", "user_id,item_id,rating\nu1,a,5\n")
    items = _write(tmp_path / "items.csv", "item_id,title,genres\na,Alpha,Drama\n")
    with pytest.raises(DataFormatError) as e:
        load_table_dataset(inter, items, ColumnMapping.parse("user=person"))
    msg = str(e.value)
    assert "ratings.csv" in msg and "missing column 'person' for user" in msg
    assert "columns present: user_id, item_id, rating" in msg
    with pytest.raises(DataFormatError, match="missing column 'stars' for rating"):
        load_table_dataset(inter, items, ColumnMapping(rating="stars"))
    # an explicit categories column is never dropped silently, even with a genres column present
    with pytest.raises(DataFormatError, match=r"items.csv.*missing column 'tags' for categories.*genres"):
        load_table_dataset(inter, items, item_mapping=ColumnMapping.parse("categories=tags"))
    with pytest.raises(DataFormatError, match="missing column 'tags' for categories"):
        load_table_dataset(inter, items, ColumnMapping.parse("categories=tags"))  # one mapping, as before
    # an explicit column is matched exactly, not ignoring case
    with pytest.raises(DataFormatError, match="missing column 'User_ID' for user"):
        load_table_dataset(inter, items, ColumnMapping(user="User_ID"))
    # a required field without any alias column: the message lists what was tried
    anon = _write(tmp_path / "anon.csv", "person,item\nu1,a\n")
    with pytest.raises(DataFormatError, match=r"missing column 'user' for user \(also tried user_id") as e:
        load_table_dataset(anon, items)
    assert "columns present: person, item" in str(e.value)


def test_separate_mappings_for_interactions_and_items(tmp_path):
    inter = _write(tmp_path / "events.csv", "uid,iid,stars\nu1,m1,5\nu1,m2,3\nu2,m1,4\n")
    items = _write(tmp_path / "films.csv", "movie,name,genre\nm1,Alpha,Drama\nm2,Beta,Comedy\n")
    mapping = ColumnMapping.parse("user=uid,item=iid")
    item_mapping = ColumnMapping.parse("item=movie,title=name")
    ds = load_table_dataset(inter, items, mapping=mapping, item_mapping=item_mapping)
    assert ds.catalog.get("m2").title == "Beta" and ds.catalog.get("m1").categories == ("Drama",)
    assert ds.interactions.for_user("u1").items.tolist() == ["m1", "m2"]
    assert ds.interactions.ratings.tolist() == [5.0, 3.0, 4.0]  # stars: an alias of rating
    with pytest.raises(DataFormatError, match="missing column 'iid' for item"):  # explicit: honoured exactly
        load_table_dataset(inter, items, ColumnMapping.parse("user=uid,item=iid,title=name"),
                           item_mapping=ColumnMapping.parse("item=iid"))
    src = DataSource(dataset=None, data=str(inter), items=str(items), columns=mapping,
                     item_columns=item_mapping)
    assert src.load().catalog.get("m2").title == "Beta"
    train = _write(tmp_path / "train.csv", "uid,iid\nu1,m1\n")
    test = _write(tmp_path / "test.csv", "uid,iid\nu1,m2\n")
    split = DataSource(train=str(train), test=str(test), items=str(items), columns=mapping,
                       item_columns=item_mapping).load()
    assert split.test is not None and split.test.items.tolist() == ["m2"] and len(split.catalog) == 2
    split = load_predefined_split(train, test, items, mapping, item_mapping=item_mapping)
    assert split.catalog.get("m1").title == "Alpha"


def test_one_mapping_still_reads_both_files(tmp_path):
    # callers passing one mapping: its items-file fields apply to the items file; its item column
    # is tried first there, and the items file's own id column is auto-detected when absent
    inter = _write(tmp_path / "events.csv", "uid,iid\nu1,a\nu1,b\n")
    items = _write(tmp_path / "items.csv", "item_id,name,tags\na,Alpha,X;Y\nb,Beta,Y\n")
    m = ColumnMapping.parse("user=uid,item=iid,categories=tags")
    ds = load_table_dataset(inter, items, m)
    assert ds.catalog.get("a").categories == ("X", "Y") and ds.catalog.get("b").title == "Beta"
    ds = DataSource(dataset=None, data=str(inter), items=str(items), columns=m).load()
    assert ds.catalog.get("a").categories == ("X", "Y")


def test_absent_or_unusable_categories_give_empty_categories(tmp_path):
    inter = _write(tmp_path / "r.csv", "user,item\nu1,a\nu1,b\n")
    no_col = _write(tmp_path / "no_col.csv", "item,title,tags\na,Alpha,X\nb,Beta,Y\n")  # tags: no alias
    ds = load_table_dataset(inter, no_col)
    assert ds.catalog.get("a").categories == () and ds.catalog.get("a").text == "Alpha"
    empty = _write(tmp_path / "empty.csv", "item,title,genres\na,Alpha,\nb,Beta, | \n")
    ds = load_table_dataset(inter, empty)
    assert ds.catalog.get("a").categories == () and ds.catalog.get("b").categories == ()
    none = _write(tmp_path / "none.csv", "item,title,genres\na,Alpha,X\nb,Beta,Y\n")
    assert load_table_dataset(inter, none, item_mapping=ColumnMapping(categories=None)).catalog.get("a") \
        .categories == ()


def test_category_separator_rule(tmp_path):
    inter = _write(tmp_path / "r.csv", "user,item\nu1,a\nu1,b\n")

    def cats(body, mapping=None):
        items = _write(tmp_path / "i.csv", "item,title,genres\n" + body)
        ds = load_table_dataset(inter, items, item_mapping=mapping)
        return ds.catalog.get("a").categories, ds.catalog.get("b").categories

    assert cats("a,A,X;Y\nb,B,Z\n") == (("X", "Y"), ("Z",))
    assert cats('a,A,"X, Y"\nb,B,Z\n') == (("X", "Y"), ("Z",))
    assert cats('a,A,"X|Y"\nb,B,"Sci-Fi, Fantasy"\n') == (("X", "Y"), ("Sci-Fi, Fantasy",))  # | wins per file
    assert cats('a,A,"X;Y"\nb,B,"P, Q"\n') == (("X;Y",), ("P, Q",))  # ; and ,: ambiguous, kept whole
    assert cats('a,A,"X, Y"\nb,B,Z\n', ColumnMapping(category_separator="|")) == (("X, Y",), ("Z",))
    assert cats("a,A,X/Y\nb,B,Z\n", ColumnMapping(category_separator="/")) == (("X", "Y"), ("Z",))


def test_timestamp_alias_must_be_numeric(tmp_path):
    items = _write(tmp_path / "items.csv", "item,title\na,A\nb,B\n")
    dated = _write(tmp_path / "dated.csv", "user,item,date\nu1,a,2020-01-01\nu1,b,2020-01-02\n")
    with pytest.raises(DataFormatError) as e:
        load_table_dataset(dated, items)
    msg = str(e.value)
    assert "dated.csv, line 2, column 'date'" in msg and "not a number" in msg and "timestamp=none" in msg
    ds = load_table_dataset(dated, items, ColumnMapping.parse("timestamp=none"))
    assert ds.interactions.timestamps.tolist() == [0, 1]
    unix = _write(tmp_path / "unix.csv", "user,item,time\nu1,a,100\nu1,b,50\n")
    assert load_table_dataset(unix, items).interactions.timestamps.tolist() == [100, 50]


def test_parquet_tables_auto_detected(tmp_path):
    import pandas as pd

    pd.DataFrame({"userId": [1, 1, 2], "movieId": [10, 20, 10], "rating": [5.0, 4.0, 3.5],
                  "timestamp": [3, 1, 2]}).to_parquet(tmp_path / "ratings.parquet")
    pd.DataFrame({"item_id": [10, 20], "name": ["Alpha", "Beta"],
                  "genres": [["Drama", "War"], []]}).to_parquet(tmp_path / "items.parquet")
    ds = load_table_dataset(tmp_path / "ratings.parquet", tmp_path / "items.parquet")
    assert len(ds.interactions) == 3
    assert ds.interactions.for_user("1").items.tolist() == ["20", "10"]  # in timestamp order
    assert ds.catalog.get("10").categories == ("Drama", "War") and ds.catalog.get("20").categories == ()
    assert ds.catalog.get("20").title == "Beta"
    pd.DataFrame({"item_id": [10, 20], "title": ["Alpha", "Beta"],
                  "genres": ["Drama|War", None]}).to_parquet(tmp_path / "items2.parquet")
    ds = load_table_dataset(tmp_path / "ratings.parquet", tmp_path / "items2.parquet")
    assert ds.catalog.get("10").categories == ("Drama", "War") and ds.catalog.get("20").categories == ()
    with pytest.raises(DataFormatError, match="missing column 'uid' for user.*userId, movieId"):
        load_table_dataset(tmp_path / "ratings.parquet", tmp_path / "items.parquet",
                           ColumnMapping(user="uid"))


def test_column_mapping_keeps_what_was_set_explicitly():
    assert ColumnMapping().model_dump() == {} and ColumnMapping().model_fields_set == set()
    m = ColumnMapping.parse("user=uid,rating=none")
    assert m.model_dump() == {"user": "uid", "rating": None}
    again = ColumnMapping.model_validate(m.model_dump(mode="json"))
    assert again == m and again.model_fields_set == {"user", "rating"}
    src = DataSource(columns=m, item_columns=ColumnMapping(title="name"))
    back = DataSource.model_validate(src.model_dump(mode="json"))
    assert back.columns.model_fields_set == {"user", "rating"}
    assert back.item_columns.model_dump() == {"title": "name"}
    assert src.model_dump() != DataSource(columns=m).model_dump()  # item_columns is part of the dump
    r = ColumnMapping(user="uid").resolve(["uid", "item_id", "stars", "ts"])
    assert (r.user, r.item, r.rating, r.timestamp) == ("uid", "item_id", "stars", "ts")
    with pytest.raises(UsageError, match="column mapping key"):
        ColumnMapping(user="x").parse("usr=uid")
    with pytest.raises(Exception, match="extra"):
        ColumnMapping(usr="uid")
