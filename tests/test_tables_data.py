"""Tables in the data layer: reading CSV and Parquet files, inferring and overriding column types, encoding with NaN
for missing cells and decoding back, the schema's JSON, the seeded splits, and one-line refusals of bad input."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from pyrovae.cli import build_parser
from pyrovae.data.datasets import DataConfig, from_arrays, from_table, load_dataset
from pyrovae.data.tables import COLUMN_TYPES, MAX_LEVELS, Column, TableSchema, infer_schema, read_table
from pyrovae.settings import from_args

RNG = np.random.default_rng(0)
N = 60


def mixed_frame(n=N):
    """A table of every type, with a few missing cells; each column's inferred type is in its name."""
    return pd.DataFrame({
        "real": RNG.normal(3.0, 2.0, n),
        "count": RNG.poisson(40, n),
        "category": RNG.choice(["red", "green", "blue"], n),
        "small_int": RNG.integers(1, 5, n),
        "binary": RNG.choice(["no", "yes"], n),
        "flag": RNG.random(n) < 0.5,
        "positive": RNG.lognormal(0.0, 1.0, n),
    })


def with_missing(frame, share=0.1):
    frame = frame.copy()
    for name in ("real", "category", "positive"):
        frame.loc[RNG.random(len(frame)) < share, name] = np.nan
    return frame


def one_line_error(error_type, call, *words):
    with pytest.raises(error_type) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message and all(word in message for word in words), message
    return message


def test_types_are_inferred_from_the_values_and_overridden_by_name():
    frame = mixed_frame()
    assert infer_schema(frame).specs() == ("real", "real", "categorical:3", "categorical:4", "binary", "binary",
                                           "real")
    schema = infer_schema(frame, overrides={"positive": "positive", "small_int": "count", "count": "real"})
    assert schema.specs() == ("real", "real", "categorical:3", "count", "binary", "binary", "positive")
    assert infer_schema(frame, overrides="small_int=count,positive=positive").specs()[3::3] == ("count", "positive")


def test_integers_with_few_values_are_categories_and_with_many_reals():
    few = pd.DataFrame({"x": np.arange(100) % MAX_LEVELS})
    many = pd.DataFrame({"x": np.arange(100) % (MAX_LEVELS + 1)})
    negative = pd.DataFrame({"x": np.arange(100) % (MAX_LEVELS + 1) - 3})
    assert [infer_schema(f).specs() for f in (few, many, negative)] == [(f"categorical:{MAX_LEVELS}",), ("real",),
                                                                          ("real",)]


def test_levels_are_sorted_and_encoded_by_their_index_and_missing_cells_are_nan():
    frame = pd.DataFrame({"c": ["b", "a", None, "c", "a"], "f": [True, False, True, None, False]})
    schema = infer_schema(frame)
    assert [column.levels for column in schema.columns] == [["a", "b", "c"], [False, True]]
    x = schema.encode(frame, "t")
    assert x.dtype == torch.float32 and x.shape == (5, 2)
    expected = torch.tensor([[1, 1], [0, 0], [np.nan, 1], [2, np.nan], [0, 0]], dtype=torch.float32)
    torch.testing.assert_close(x, expected, equal_nan=True)


def test_reals_are_standardized_with_the_observed_training_cells_only():
    frame = with_missing(mixed_frame())
    train = np.arange(0, N, 2)
    schema = infer_schema(frame, train)
    observed = frame["real"].iloc[train].dropna()
    column = schema.columns[0]
    assert column.mean == pytest.approx(observed.mean()) and column.std == pytest.approx(observed.std(ddof=0))
    x = schema.encode(frame, "t")[train, 0]
    x = x[~x.isnan()]
    assert x.mean().item() == pytest.approx(0, abs=1e-5) and x.std(unbiased=False).item() == pytest.approx(1, abs=1e-5)


def test_a_csv_round_trips_through_the_schema_with_names_order_units_levels_and_dtypes(tmp_path):
    frame = mixed_frame()
    frame.to_csv(tmp_path / "t.csv", index=False)
    read = read_table(tmp_path / "t.csv")
    schema = TableSchema.from_json(json.loads(json.dumps(infer_schema(read, overrides={"positive": "positive"})
                                                         .to_json())), "t.json")
    back = schema.decode(schema.encode(read, "t.csv"))
    pd.testing.assert_frame_equal(back, read, check_exact=False, rtol=1e-5)


def test_decoding_rounds_counts_and_levels_and_clips_them_to_their_range():
    schema = TableSchema([Column("n", "count", dtype="int64"), Column("c", "categorical", levels=["a", "b", "c"],
                                                                        dtype="object")])
    back = schema.decode(torch.tensor([[2.6, 1.4], [-0.7, 7.0]]))
    assert back["n"].tolist() == [3, 0] and back["c"].tolist() == ["b", "c"] and str(back["n"].dtype) == "int64"
    one_line_error(ValueError, lambda: schema.decode(torch.tensor([[np.nan, 1.0]])), "NaN", "impute")


def test_csv_cells_empty_na_and_nan_are_missing_and_nothing_else(tmp_path):
    (tmp_path / "t.csv").write_text("a,b\n1.5,x\n,NA\nNaN,None\n2.5,null\n")
    frame = read_table(tmp_path / "t.csv")
    assert frame["a"].isna().tolist() == [False, True, True, False]
    assert frame["b"].isna().tolist() == [False, True, False, False]


def test_a_parquet_file_is_read_like_a_csv(tmp_path):
    frame = with_missing(mixed_frame())
    frame.to_parquet(tmp_path / "t.parquet")
    pd.testing.assert_frame_equal(read_table(tmp_path / "t.parquet"), frame)


def test_bad_files_are_refused_in_one_line_naming_the_file_and_the_line(tmp_path, monkeypatch):
    path = tmp_path / "t.csv"
    path.write_text("a,b\n1,2\n3,4,5\n6,7\n")
    one_line_error(ValueError, lambda: read_table(path), str(path), "line 3")
    path.write_text("")
    one_line_error(ValueError, lambda: read_table(path), str(path), "empty")
    path.write_bytes(b"\xff\xfe\x00\x81garbage")
    one_line_error(ValueError, lambda: read_table(path), str(path), "UTF-8")
    (tmp_path / "t.parquet").write_bytes(b"not parquet at all")
    one_line_error(ValueError, lambda: read_table(tmp_path / "t.parquet"), "t.parquet", "Parquet")
    one_line_error(FileNotFoundError, lambda: read_table(tmp_path / "absent.csv"), "absent.csv")

    def no_engine(*args, **kwargs):
        raise ImportError("Unable to find a usable engine")

    monkeypatch.setattr(pd, "read_parquet", no_engine)
    one_line_error(ImportError, lambda: read_table(tmp_path / "t.parquet"), "pip install pyarrow")


@pytest.mark.parametrize("frame,words", [
    (pd.DataFrame({"a": [1.0, 2.0, 3.0], "gone": [np.nan] * 3}), ["'gone'", "entirely missing", "drop"]),
    (pd.DataFrame({"a": [1.0, 2.0, 3.0], "same": ["x", "x", None]}), ["'same'", "one value", "drop"]),
    (pd.DataFrame({"a": np.arange(20) / 3, "id": [f"u{i}" for i in range(20)]}), ["'id'", "ID", "drop"]),
    (pd.DataFrame({"a": np.arange(20) / 3, "id": np.arange(20) * 7}), ["'id'", "ID"]),
    (pd.DataFrame({"a": [1.0, np.inf, 3.0]}), ["'a'", "infinite"]),
    (pd.DataFrame({"a": pd.to_datetime(["2020-01-01", "2021-01-01"])}), ["'a'", "dates"]),
    (pd.DataFrame({"a": []}), ["no rows"]),
    (pd.DataFrame({0: [1.0, 2.0]}), ["rename(columns=str)"]),
], ids=["all-missing", "one-value", "id-text", "id-integers", "infinite", "dates", "no-rows", "unnamed"])
def test_columns_that_carry_nothing_are_refused_naming_them(frame, words):
    one_line_error(ValueError, lambda: infer_schema(frame, name="t.csv"), "t.csv", *words)


@pytest.mark.parametrize("given,words", [
    ({"neg": "count"}, ["'neg'", "count", "-2", "real"]),
    ({"zero": "positive"}, ["'zero'", "positive", "0", "real"]),
    ({"three": "binary"}, ["'three'", "binary", "3 values", "categorical"]),
    ({"neg": "binary"}, ["'neg'", "binary", "4 values (-2, 0, 3, 5)", "categorical"]),
    ({"text": "real"}, ["'text'", "real", "numbers", "categorical"]),
    ({"thre": "binary"}, ["'thre'", "did you mean 'three'"]),
    ({"neg": "int"}, ["'neg'", "'int'", *COLUMN_TYPES]),
], ids=["count-on-negatives", "positive-on-zero", "binary-of-three", "binary-of-four-numbers", "real-on-text",
         "unknown-column", "unknown-type"])
def test_an_override_that_does_not_fit_is_refused_naming_the_column_and_the_type(given, words):
    frame = pd.DataFrame({"neg": [-2, 0, 3, 5], "zero": [0.0, 1.5, 2.5, 3.5], "three": ["a", "b", "c", "a"],
                          "text": ["u", "v", "u", "v"]})
    one_line_error(ValueError, lambda: infer_schema(frame, overrides=given), *words)


@pytest.mark.parametrize("change,words", [
    (lambda f: f.assign(category=["purple"] + list(f["category"][1:])), ["'category'", "'purple'", "levels"]),
    (lambda f: f.drop(columns=["binary"]), ["missing", "'binary'"]),
    (lambda f: f.assign(extra=1), ["extra", "'extra'"]),
    (lambda f: f.assign(count=[-1] + list(f["count"][1:])), ["'count'", "-1", "whole number >= 0"]),
    (lambda f: f.assign(positive=[0.0] + list(f["positive"][1:])), ["'positive'", "0.0", "> 0"]),
    (lambda f: f.assign(real=["abc"] + list(f["real"][1:])), ["'real'", "'abc'", "finite number"]),
], ids=["unseen-level", "missing-column", "extra-column", "negative-count", "zero-positive", "text-in-real"])
def test_new_rows_that_do_not_fit_the_schema_are_refused_naming_the_column_and_the_value(change, words):
    frame = mixed_frame()
    schema = infer_schema(frame, overrides={"positive": "positive", "count": "count"})
    one_line_error(ValueError, lambda: schema.encode(change(frame), "new.csv"), "new.csv", *words)


def test_columns_in_another_order_are_encoded_in_the_schemas_order():
    frame = mixed_frame()
    schema = infer_schema(frame)
    torch.testing.assert_close(schema.encode(frame[frame.columns[::-1]], "t"), schema.encode(frame, "t"))


@pytest.mark.parametrize("damage,words", [
    (lambda j: [], ["config.json", "'columns'"]),
    (lambda j: {"columns": [{**j["columns"][0], "type": "reel"}]}, ["config.json", "'reel'", "did you mean 'real'"]),
    (lambda j: {"columns": [{**j["columns"][0], "std": 0.0}]}, ["config.json", "std > 0"]),
    (lambda j: {"columns": [{**j["columns"][2], "levels": ["only"]}]}, ["config.json", "levels"]),
    (lambda j: {"columns": [{**j["columns"][0], "colour": 1}]}, ["config.json", "keys"]),
    (lambda j: {"columns": [j["columns"][0], j["columns"][0]]}, ["config.json", "'real'", "more than once"]),
], ids=["not-an-object", "unknown-type", "zero-std", "one-level", "unknown-key", "twice"])
def test_a_malformed_schema_is_refused_in_one_line_naming_where(damage, words):
    saved = json.loads(json.dumps(infer_schema(mixed_frame()).to_json()))
    one_line_error(ValueError, lambda: TableSchema.from_json(damage(saved), "runs/a/config.json"), *words)


def test_a_table_file_is_split_as_a_npy_table_of_as_many_rows_is(tmp_path):
    frame = mixed_frame().assign(real=np.arange(N) + 0.5)  # each row's real value is its position
    frame.to_csv(tmp_path / "t.csv", index=False)
    np.save(tmp_path / "t.npy", frame[["real"]].to_numpy(np.float32))
    table, array = load_dataset(DataConfig(dataset=str(tmp_path / "t.csv"))), load_dataset(
        DataConfig(dataset=str(tmp_path / "t.npy"), binarize="none"))
    for split in ("train", "val", "test"):
        rows = table.schema.decode(getattr(table, split).x)["real"].to_numpy()
        np.testing.assert_allclose(rows, getattr(array, split).x[:, 0].numpy(), rtol=1e-5)
    assert table.image_shape == (1, 1, len(frame.columns)) and table.columns == table.schema.specs()
    assert table.provenance["kind"] == "table" and table.provenance["shape"] == [N, len(frame.columns)]
    assert len(table.provenance["sha256"]) == 64 and table.config.dataset == str(tmp_path / "t.csv")


def test_column_types_is_a_flag_and_a_setting_and_a_given_schema_is_used_instead(tmp_path):
    frame = mixed_frame()
    frame.to_csv(tmp_path / "t.csv", index=False)
    args = build_parser().parse_args(["train", "--dataset", str(tmp_path / "t.csv"), "--column-types",
                                      "small_int=count"])
    config = from_args(DataConfig, args, binarize="none")
    data = load_dataset(config)
    assert data.columns[3] == "count"
    inferred = load_dataset(DataConfig(dataset=str(tmp_path / "t.csv")))
    assert load_dataset(config, schema=inferred.schema).columns == inferred.columns != data.columns


@pytest.mark.parametrize("settings,words", [
    ({"column_types": "small_int"}, ["column_types", "NAME=TYPE"]),
    ({"column_types": "small_int=cnt"}, ["'cnt'", "did you mean 'count'"]),
    ({"image_size": 8}, ["image_size", "table"]),
    ({"labeled": 10}, ["labeled", "table"]),
    ({"binarize": "dynamic"}, ["binarize", "table"]),
], ids=["malformed", "unknown-type", "image-size", "labeled", "binarize"])
def test_settings_that_do_not_apply_to_a_table_are_refused(settings, words):
    one_line_error(ValueError, lambda: DataConfig(dataset="t.csv", **settings), *words)


def test_column_types_for_images_are_refused():
    one_line_error(ValueError, lambda: DataConfig(dataset="digits", column_types="a=count"), "column_types", "table")


def test_a_dataframe_loads_with_nan_kept_where_images_still_refuse_it():
    frame = with_missing(mixed_frame())
    data = from_arrays(frame)
    assert data.schema is not None and data.train.table and data.train.x.isnan().any()
    assert data.to("cpu").train.table and len(data.train) + len(data.val) + len(data.test) == N
    assert load_dataset(frame).columns == data.columns
    held = from_table(frame, frame.iloc[:7], column_types={"small_int": "count"})
    assert len(held.test) == 7 and held.columns[3] == "count"
    images = np.full((10, 4), 0.5, dtype=np.float32)
    images[0, 0] = np.nan
    one_line_error(ValueError, lambda: from_arrays(images), "NaN")
    one_line_error(ValueError, lambda: from_arrays(frame, np.zeros(N, dtype=int)), "DataFrame", "labels")


def test_fit_trains_a_table_model_on_a_dataframe_with_missing_cells():
    import pyrovae

    frame = with_missing(mixed_frame())
    columns = from_arrays(frame).columns
    vae = pyrovae.build_vae(pyrovae.ModelConfig(image_shape=(1, 1, len(columns)), columns=columns, likelihood="table",
                                                z_dim=2, hidden=(8,)))
    rows = pyrovae.fit(vae, frame, pyrovae.TrainConfig(epochs=2, batch_size=16, device="cpu"), progress=False,
                       verbose=False)
    assert len(rows) == 2 and all(np.isfinite(row["val_neg_elbo"]) for row in rows)


def test_a_row_with_every_cell_missing_is_refused_naming_it():
    frame = mixed_frame().astype(object)
    frame.iloc[5] = None
    one_line_error(ValueError, lambda: from_table(frame), "1 row(s) have every cell missing", "index 5", "drop")
    one_line_error(ValueError, lambda: infer_schema(mixed_frame()).encode(frame, "new.csv"), "new.csv", "index 5")
