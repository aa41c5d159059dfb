"""An ill-typed Tetragon record stops the run with an input error naming file, line and field,
as the JSONL source does for a line that is not a JSON object."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from webhook import errors
from webhook.runtime.sources import tetragon

GOOD = {"process_exec": {"process": {"binary": "/bin/sh", "pid": 1}}, "time": "2024-05-01T10:00:00Z"}


@pytest.mark.parametrize(
    ("record", "field"),
    [
        ({"process_exec": []}, "process_exec must be an object, not list"),
        ({"process_exec": {"process": {"binary": 1}}}, "process_exec.process.binary must be a string, not int"),
        ({"process_exec": {"process": {"auid": "x"}}}, "process_exec.process.auid must be an integer, not str"),
        ({"process_exit": {"process": {"pod": {"container": []}}}}, "process_exit.process.pod.container must be"),
        ({"process_kprobe": {"args": [1]}}, "process_kprobe.args[0] must be an object, not int"),
        ({"process_kprobe": {"args": [{"sock_arg": {"dport": "80"}}]}}, "process_kprobe.args[0].sock_arg.dport"),
        ({"process_exec": {}, "time": "2024-13-01T00:00:00Z"}, "record.time '2024-13-01T00:00:00Z' is not"),
        ({"process_exec": {}, "time": "2024-01-01T00:00:00.x1Z"}, "record.time"),
    ],
)
def test_an_ill_typed_record_names_the_field(record: dict[str, Any], field: str) -> None:
    with pytest.raises(tetragon.TetragonRecordError) as info:
        tetragon.to_fields(record)
    assert field in str(info.value)
    assert isinstance(info.value, errors.InputError)


async def test_the_source_names_file_and_line_of_the_bad_record(tmp_path: Path) -> None:
    path = tmp_path / "export.jsonl"
    path.write_bytes(orjson.dumps(GOOD) + b"\n" + orjson.dumps({"process_exec": {"process": {"cwd": 1}}}) + b"\n")
    source = tetragon.TetragonSource(path)
    with pytest.raises(tetragon.TetragonRecordError, match=r"export\.jsonl:2: process_exec\.process\.cwd"):
        async for _ in source.batches():
            pass
