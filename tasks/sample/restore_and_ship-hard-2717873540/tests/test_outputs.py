"""Outcome checks for a taskforge task (family: restore_and_ship). Generated; expected values embedded."""

import csv
import io
import json
import os
import pathlib
import re
import subprocess

EXPECTED = json.loads("{\"aggregates\": [{\"format\": \"csv\", \"header\": [\"warehouse\", \"max_stock\"], \"ordered\": true, \"path\": \"/var/reports/warehouse_max.csv\", \"rows\": [[\"berlin\", 461.0], [\"lagos\", 444.0], [\"osaka\", 229.0]]}], \"checksums\": {\"digests\": {\"2024-02.csv\": \"40f1380a6bff4f3a5a841f32d7ecb50aa2cfefcfd8e19c6700473959095419f1\", \"2024-03.csv\": \"67e66a67c55a96fce20c6115cddd6136ccb3b978974ea5ef458c446ff788516f\", \"2024-08.csv\": \"5423076bc475102c05bdf588881fa0025106e6086a6db4b15c8977fe97bc0572\", \"2024-11.csv\": \"43eb0b835e94e6138a529ed59a181ecddf0d9eb160e79e4b94ab9268390f2ba6\"}, \"path\": \"/var/reports/SHA256SUMS\"}, \"data_dir\": \"/srv/data/search\", \"final\": {\"2024-02.csv\": \"40f1380a6bff4f3a5a841f32d7ecb50aa2cfefcfd8e19c6700473959095419f1\", \"2024-03.csv\": \"67e66a67c55a96fce20c6115cddd6136ccb3b978974ea5ef458c446ff788516f\", \"2024-08.csv\": \"5423076bc475102c05bdf588881fa0025106e6086a6db4b15c8977fe97bc0572\", \"2024-11.csv\": \"43eb0b835e94e6138a529ed59a181ecddf0d9eb160e79e4b94ab9268390f2ba6\"}, \"merge\": {\"header\": [\"id\", \"warehouse\", \"stock\", \"status\"], \"path\": \"/var/reports/all.csv\", \"rows\": [[\"2024-02-01\", \"berlin\", \"84\", \"refunded\"], [\"2024-02-02\", \"berlin\", \"79\", \"pending\"], [\"2024-02-03\", \"osaka\", \"162\", \"pending\"], [\"2024-02-04\", \"lagos\", \"497\", \"refunded\"], [\"2024-02-05\", \"osaka\", \"152\", \"pending\"], [\"2024-02-06\", \"lagos\", \"200\", \"pending\"], [\"2024-02-07\", \"berlin\", \"203\", \"pending\"], [\"2024-02-08\", \"lagos\", \"307\", \"refunded\"], [\"2024-02-09\", \"lagos\", \"353\", \"pending\"], [\"2024-02-28\", \"berlin\", \"1500\", \"pending\"], [\"2024-02-29\", \"berlin\", \"0\", \"refunded\"], [\"2024-03-01\", \"lagos\", \"362\", \"refunded\"], [\"2024-03-02\", \"berlin\", \"196\", \"refunded\"], [\"2024-03-03\", \"berlin\", \"43\", \"completed\"], [\"2024-03-04\", \"osaka\", \"447\", \"pending\"], [\"2024-03-05\", \"osaka\", \"381\", \"pending\"], [\"2024-03-06\", \"berlin\", \"461\", \"completed\"], [\"2024-03-07\", \"berlin\", \"97\", \"refunded\"], [\"2024-03-28\", \"lagos\", \"1500\", \"refunded\"], [\"2024-03-29\", \"lagos\", \"0\", \"pending\"], [\"2024-08-01\", \"berlin\", \"403\", \"completed\"], [\"2024-08-02\", \"osaka\", \"104\", \"pending\"], [\"2024-08-03\", \"lagos\", \"404\", \"refunded\"], [\"2024-08-04\", \"lagos\", \"478\", \"refunded\"], [\"2024-08-05\", \"lagos\", \"89\", \"pending\"], [\"2024-08-06\", \"osaka\", \"161\", \"completed\"], [\"2024-08-28\", \"berlin\", \"1500\", \"pending\"], [\"2024-08-29\", \"berlin\", \"0\", \"pending\"], [\"2024-11-01\", \"lagos\", \"444\", \"completed\"], [\"2024-11-02\", \"berlin\", \"319\", \"pending\"], [\"2024-11-03\", \"lagos\", \"99\", \"refunded\"], [\"2024-11-04\", \"osaka\", \"229\", \"completed\"], [\"2024-11-05\", \"osaka\", \"358\", \"pending\"], [\"2024-11-06\", \"berlin\", \"387\", \"pending\"], [\"2024-11-28\", \"lagos\", \"1500\", \"refunded\"], [\"2024-11-29\", \"lagos\", \"0\", \"refunded\"]]}, \"no_gz\": [\"2024-02.csv.gz\", \"2024-03.csv.gz\", \"2024-08.csv.gz\", \"2024-11.csv.gz\"], \"package\": {\"members\": {\"search/2024-02.csv\": \"40f1380a6bff4f3a5a841f32d7ecb50aa2cfefcfd8e19c6700473959095419f1\", \"search/2024-03.csv\": \"67e66a67c55a96fce20c6115cddd6136ccb3b978974ea5ef458c446ff788516f\", \"search/2024-08.csv\": \"5423076bc475102c05bdf588881fa0025106e6086a6db4b15c8977fe97bc0572\", \"search/2024-11.csv\": \"43eb0b835e94e6138a529ed59a181ecddf0d9eb160e79e4b94ab9268390f2ba6\"}, \"path\": \"/var/reports/search-bundle.tar.gz\"}, \"restored\": true}")

def read_text(path):
    p = pathlib.Path(path)
    assert p.is_file(), f"{path} does not exist or is not a regular file"
    return p.read_text(errors="replace")


def num(value):
    try:
        return float(str(value).strip())
    except ValueError:
        raise AssertionError(f"{value!r} is not a number") from None


def close(actual, expected, tol=0.011):
    return abs(num(actual) - float(expected)) <= tol


def content_lines(path):
    """Non-blank lines of a file, stripped."""
    return [line.strip() for line in read_text(path).splitlines() if line.strip()]

def csv_rows(path):
    """Rows of a CSV file, cells stripped, blank rows dropped; the header is rows[0]."""
    rows = [[cell.strip() for cell in row] for row in csv.reader(io.StringIO(read_text(path)))]
    rows = [row for row in rows if any(row)]
    assert rows, f"{path} is empty"
    return rows


def check_csv_table(path, header, rows, numeric, ordered):
    """The CSV at path has exactly this header and these rows (numbers within tolerance)."""
    got = csv_rows(path)
    assert [h.lower() for h in got[0]] == [h.lower() for h in header], f"{path}: header {got[0]} != {header}"
    body = got[1:]
    assert len(body) == len(rows), f"{path}: {len(body)} data rows, expected {len(rows)}"
    if not ordered:
        body = sorted(body, key=lambda r: r[0])
        rows = sorted(rows, key=lambda r: str(r[0]))
    for got_row, want_row in zip(body, rows):
        assert len(got_row) == len(want_row), f"{path}: row {got_row} should have {len(want_row)} fields"
        for i, (g, w) in enumerate(zip(got_row, want_row)):
            if header[i] in numeric:
                assert close(g, w), f"{path}: {header[i]}={g!r} in row {got_row}, expected {w}"
            else:
                assert g == str(w), f"{path}: {header[i]}={g!r} in row {got_row}, expected {w!r}"

def load_json(path):
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise AssertionError(f"{path} is not valid JSON: {exc}") from None

import grp
import pwd
import stat as statmod


def mode_of(path):
    return statmod.S_IMODE(os.lstat(path).st_mode)


def owner_of(path):
    st = os.lstat(path)
    return f"{pwd.getpwuid(st.st_uid).pw_name}:{grp.getgrgid(st.st_gid).gr_name}"

import fnmatch
import hashlib

def test_data_files_restored():
    for name, digest in EXPECTED["final"].items():
        path = os.path.join(EXPECTED["data_dir"], name)
        data = pathlib.Path(path).read_bytes() if os.path.isfile(path) else None
        assert data is not None, f"{path} does not exist"
        assert hashlib.sha256(data).hexdigest() == digest, f"{path}: content differs from the expected file"


def test_no_compressed_files_left():
    left = [n for n in EXPECTED["no_gz"] if os.path.exists(os.path.join(EXPECTED["data_dir"], n))]
    assert not left, f"still compressed: {left}"


def two_decimals(value):
    assert re.fullmatch(r"-?\d+(\.\d{1,2})?", str(value).strip()), f"{value!r} is not rounded to 2 decimals"


def test_aggregates():
    for want in EXPECTED["aggregates"]:
        if want["format"] == "csv":
            check_csv_table(want["path"], want["header"], want["rows"], {want["header"][1]}, ordered=True)
            for row in csv_rows(want["path"])[1:]:
                two_decimals(row[1])
        else:
            got = load_json(want["path"])
            assert isinstance(got, dict), f"{want['path']} must hold a JSON object"
            assert sorted(got) == sorted(k for k, _ in want["rows"]), f"{want['path']}: keys {sorted(got)}"
            for key, value in want["rows"]:
                assert close(got[key], value), f"{want['path']}: {key} = {got[key]}, expected {value}"
                two_decimals(got[key])


def test_merged_csv():
    want = EXPECTED["merge"]
    rows = csv_rows(want["path"])
    assert rows[0] == want["header"], f"{want['path']}: header {rows[0]}"
    assert rows[1:] == want["rows"], f"{want['path']}: {len(rows) - 1} data rows, not the expected ones in order"


def test_checksums():
    want = EXPECTED["checksums"]
    got = {}
    for line in content_lines(want["path"]):
        digest, _, name = line.partition("  ")
        got[name.strip().lstrip("*")] = digest.strip()
    assert got == want["digests"], f"{want['path']}: {got} != {want['digests']}"


import tarfile


def test_package():
    want = EXPECTED["package"]
    assert os.path.isfile(want["path"]), f"{want['path']} does not exist"
    with tarfile.open(want["path"], "r:gz") as tar:
        got = {m.name.removeprefix("./"): hashlib.sha256(tar.extractfile(m).read()).hexdigest()
               for m in tar.getmembers() if m.isfile()}
    assert got == want["members"], f"{want['path']}: members {sorted(got)} != {sorted(want['members'])}"
