"""Outcome checks for a taskforge task (family: web_service_repair). Generated; expected values embedded."""

import csv
import io
import json
import os
import pathlib
import re
import subprocess

EXPECTED = json.loads("{\"files\": {\"about.html\": \"<html><head><title>search about</title></head><body><p>payments payments west valve gadget frontend</p></body></html>\\n\", \"index.html\": \"<html><head><title>search index</title></head><body><p>sensor central data mobile sprocket security</p></body></html>\\n\", \"reports/2024-07.txt\": \"central platform: 703\\nbracket security: 387\\n\", \"reports/2024-08.txt\": \"sensor payments: 754\\ncentral sensor: 561\\neast doohickey: 370\\npayments platform: 506\\nmobile central: 297\\n\", \"reports/2024-11.txt\": \"platform south: 220\\nbracket mobile: 712\\ngadget mobile: 590\\n\", \"status.json\": \"{\\\"service\\\": \\\"search\\\", \\\"build\\\": 8947, \\\"healthy\\\": true}\\n\"}, \"port\": 8088, \"root\": \"/opt/search/public\", \"service\": \"search-web\", \"user\": \"appsvc\"}")

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



def fetch(path):
    """(status, body) of GET http://127.0.0.1:PORT<path>; status None when nothing answers."""
    url = f"http://127.0.0.1:{EXPECTED['port']}{path}"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except OSError:
        return None, ""


def test_every_file_is_served_with_its_contents():
    assert wait_until(lambda: fetch("/")[0] is not None, 6), f"nothing answers on 127.0.0.1:{EXPECTED['port']}"
    for rel, text in EXPECTED["files"].items():
        status, body = fetch("/" + rel)
        assert status == 200, f"GET /{rel} answered {status}, expected 200"
        assert body == text, f"GET /{rel} did not return the contents of {EXPECTED['root']}/{rel}"
