"""The psi.* settings and the demo data they work on."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from launch.config import ConfigError, load_config
from mpc.data.synthetic import LABEL, write_vertical
from mpc.reference import common_id_rows


def test_psi_settings_load_and_bad_values_name_the_setting():
    config = load_config(["data.partition=vertical", "data.overlap=0.6", "psi.enabled=true", "psi.min_intersection=50"])
    assert (config.psi.enabled, config.psi.min_intersection, config.data.overlap) == (True, 50, 0.6)
    assert config.psi.reveal == "ids" and load_config(["data.partition=vertical", "psi.enabled=true",
                                                       "psi.reveal=size"]).psi.reveal == "size"
    for overrides, message in [
        (["data.partition=vertical", "data.overlap=0.6"], "data.overlap=0.6 gives the parties different ids"),
        (["data.overlap=0.6", "psi.enabled=true"], "data.overlap=0.6 applies to data.partition=vertical only"),
        (["psi.enabled=true"], "psi.enabled=true applies to data.partition=vertical"),
        (["data.partition=vertical", "data.overlap=0", "psi.enabled=true"], "data.overlap=0.0 must be in (0, 1]"),
        (["data.partition=vertical", "psi.enabled=true", "psi.min_intersection=0"],
         "psi.min_intersection=0 must be at least 1"),
        (["data.partition=vertical", "psi.enabled=true", "psi.reveal=ids_and_rows"],
         "psi.reveal=ids_and_rows is not a mode; choose one of ids, size"),
    ]:
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
            load_config(overrides)


def test_unaligned_demo_data_overlaps_as_asked(tmp_path):
    files = write_vertical(tmp_path, parties=3, rows=500, test_rows=100, seed=4, overlap=0.6)
    tables = [pd.read_csv(path) for path in files.train]
    assert all(len(t) == 500 and t["id"].is_unique for t in tables)
    common = set.intersection(*(set(t["id"]) for t in tables))
    assert len(common) == 300
    assert not (tables[0]["id"].to_numpy() == tables[1]["id"].to_numpy()).all()  # not aligned
    joined = common_id_rows(tables, "id")
    assert all((j["id"].to_numpy() == np.array(sorted(common))).all() for j in joined)
    assert LABEL in joined[0].columns and joined[0][LABEL].isin((0, 1)).all()
    held_out = [set(pd.read_csv(path)["id"]) for path in files.test]
    assert len(set.intersection(*held_out)) == 60
    assert not set.union(*held_out) & set.union(*(set(t["id"]) for t in tables))
