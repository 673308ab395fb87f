"""scripts/mini_paper.py's statistics and table: the 95% t-interval over seeds and the markdown it prints."""

from __future__ import annotations

import math

import pytest

from .conftest import load_entry_point


@pytest.fixture(scope="module")
def mini_paper():
    return load_entry_point("scripts/mini_paper.py")


def test_interval_is_the_student_t_interval(mini_paper):
    mean, half = mini_paper.interval([40.0, 42.0, 44.0])
    # s = 2, n = 3, t(0.975, 2) = 4.303
    assert mean == pytest.approx(42.0) and half == pytest.approx(4.303 * 2 / math.sqrt(3))
    assert mini_paper.t975(2) == pytest.approx(12.706) and mini_paper.t975(30) == pytest.approx(1.96)


def test_table_has_one_row_per_method_and_intervals(mini_paper):
    rows = {"SD (base alone)": [{"AP": 1.0, "SAP": 5.0, "PCE": 1.5, "FID": 30.0, "KID": 2.0},
                                {"AP": 3.0, "SAP": 7.0, "PCE": 1.7, "FID": 32.0, "KID": None}],
            "+ PGI": [{"AP": 60.0, "SAP": 70.0, "PCE": 0.2, "FID": 10.0, "KID": 0.5},
                      {"AP": 62.0, "SAP": 72.0, "PCE": 0.4, "FID": 12.0, "KID": 0.7}]}
    table = mini_paper.render("2", rows, [0, 1]).splitlines()
    assert table[2].startswith("| method | AP ↑ | SAP ↑ | PCE ↓")
    assert table[4].startswith("| SD (base alone) | 2.00 ± 12.71 |") and "| 2.00 |" in table[4]  # one KID value
    assert table[5].startswith("| + PGI | 61.00 ± 12.71 | 71.00 ± 12.71 | 0.30 ± 1.27 |")


def test_every_preset_of_the_tables_exists(mini_paper):
    root = load_entry_point.__globals__["REPO"]
    for rows in mini_paper.TABLES.values():
        for _, preset in rows:
            assert (root / preset).is_file(), preset


def test_rows_filter_refuses_a_preset_outside_the_table(mini_paper):
    from grpose.errors import ConfigError

    with pytest.raises(ConfigError, match="--rows graphs_0: not a preset of Table 1"):
        mini_paper.main(["--table", "1", "--rows", "graphs_0", "t2i_adapter"])
