"""reports/timings.json (pipeline.timings): merged per stage and key, robust to a torn file."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.config import Params
from pipeline.timings import record_timing, timing_key, timings_path

PARAMS = Params(dataset="digits", model="fmnist-ddpm", layer="up_ft0", t=25)


def test_keys_follow_what_each_stage_depends_on() -> None:
    assert timing_key("data", PARAMS.key) == "digits"
    assert timing_key("model", PARAMS.key) == "fmnist-ddpm"
    assert timing_key("encode", PARAMS.key) == "digits/fmnist-ddpm"
    assert timing_key("fit_sae", PARAMS.key) == "digits/fmnist-ddpm/trained/up_ft0/t25"
    assert timing_key("extract", PARAMS.for_control("input").key) == "digits/fmnist-ddpm/input/input/t25"


def test_fields_merge_and_a_torn_file_is_replaced(tmp_path: Path) -> None:
    record_timing("fit_sae", PARAMS.key, {"train_seconds": 1.5}, tmp_path)
    record_timing("fit_sae", PARAMS.key, {"seconds": 2.0}, tmp_path)
    record_timing("data", PARAMS.key, {"seconds": 0.5}, tmp_path)
    table = json.loads(timings_path(tmp_path).read_text())
    entry = table["fit_sae"]["digits/fmnist-ddpm/trained/up_ft0/t25"]
    assert entry["train_seconds"] == 1.5 and entry["seconds"] == 2.0 and "torch" in entry["machine"]
    assert table["data"]["digits"]["seconds"] == 0.5
    timings_path(tmp_path).write_text('{"fit_sae": {')  # killed mid-write by hand
    record_timing("model", PARAMS.key, {"seconds": 3.0}, tmp_path)
    assert list(json.loads(timings_path(tmp_path).read_text())) == ["model"]
    assert [p.name for p in timings_path(tmp_path).parent.iterdir()] == ["timings.json"]  # no temp left
