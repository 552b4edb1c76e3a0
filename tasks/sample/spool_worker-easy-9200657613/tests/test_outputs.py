"""Outcome checks for a taskforge task (family: spool_worker). Generated; expected values embedded."""

import csv
import io
import json
import os
import pathlib
import re
import subprocess

EXPECTED = json.loads("{\"done\": \"/srv/inventory/spool/done\", \"ext\": \"task\", \"incoming\": \"/srv/inventory/spool/incoming\", \"new\": {\"order-3972\": \"valve,8,9551\\nbracket,7,9009\\nwidget,7,4533\\nbracket,18,948\\n\", \"order-7796\": \"sensor,5,8333\\ndoohickey,5,6546\\ngizmo,7,9539\\nvalve,20,9779\\n\", \"order-8359\": \"widget,14,6103\\ndoohickey,17,7239\\nvalve,5,6615\\nwidget,20,3238\\n\", \"order-9531\": \"gadget,3,8097\\nsprocket,1,6223\\nsprocket,2,8814\\ndoohickey,10,1208\\n\"}, \"seconds\": 15, \"service\": \"inventory-worker\", \"waiting\": {\"order-3277\": \"gadget,8,8499\\nsprocket,1,7957\\ngadget,13,3586\\n\", \"order-5613\": \"sensor,14,5085\\nwidget,5,6438\\ndoohickey,13,1001\\n\"}}")

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

import time
import urllib.error
import urllib.request


def wait_until(check, seconds):
    """Calls check() every 0.25 s until it returns something truthy or `seconds` pass; returns its last value."""
    deadline = time.monotonic() + seconds
    value = check()
    while not value and time.monotonic() < deadline:
        time.sleep(0.25)
        value = check()
    return value


def supervised_pid(name):
    """The pid of the service `name` as its supervisor recorded it, when that process is alive."""
    try:
        pid = int(pathlib.Path(f"/run/svc/{name}.pid").read_text().strip())
        state = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, ValueError, IndexError):
        return None
    return pid if state != "Z" else None


def test_service_runs_under_its_supervisor():
    name = EXPECTED["service"]
    assert wait_until(lambda: supervised_pid(name), 5), f"the service {name} is not running (svc status {name})"



def result_text(job):
    lines = total = 0
    for line in job.splitlines():
        sku, quantity, unit_cents = line.split(",")
        lines += 1
        total += int(quantity) * int(unit_cents)
    return f"lines={lines}\ntotal_cents={total}\n"


def finished(jobs):
    """Every job's result is written and its file gone from the spool."""
    done = pathlib.Path(EXPECTED["done"])
    incoming = pathlib.Path(EXPECTED["incoming"])
    for name, job in jobs.items():
        result = done / f"{name}.result"
        if (incoming / f"{name}.{EXPECTED['ext']}").exists() or not result.is_file() or result.read_text() != result_text(job):
            return False
    return True


import pytest


@pytest.fixture(scope="module")
def processed():
    """Drops the new jobs into the spool, then waits up to the stated limit for every job: which were processed."""
    incoming = pathlib.Path(EXPECTED["incoming"])
    for name, job in EXPECTED["new"].items():
        staged = incoming / f".{name}.tmp"
        staged.write_text(job)
        staged.rename(incoming / f"{name}.{EXPECTED['ext']}")
    every = {**EXPECTED["waiting"], **EXPECTED["new"]}
    wait_until(lambda: finished(every), EXPECTED["seconds"])
    return {name for name in every if finished({name: every[name]})}


def test_waiting_jobs_were_processed(processed):
    left = sorted(set(EXPECTED["waiting"]) - processed)
    assert not left, f"the jobs {left} waiting in {EXPECTED['incoming']} were not processed"


def test_new_jobs_are_processed(processed):
    left = sorted(set(EXPECTED["new"]) - processed)
    assert not left, f"the jobs {left} dropped into {EXPECTED['incoming']} were not processed within {EXPECTED['seconds']} s"
