#!/usr/bin/env python3
"""Processes order jobs from a spool directory: each job file (lines `sku,quantity,unit_cents`)
becomes <name>.result in the done directory, and the job file is removed."""
import configparser
import pathlib
import sys
import time

config = configparser.ConfigParser()
config.read(sys.argv[1])
spool = config["spool"]
incoming = pathlib.Path(spool["incoming"])
done = pathlib.Path(spool["done"])
pattern = spool.get("pattern", "*.job")
poll_seconds = spool.getfloat("poll_seconds", 1.0)


def result_of(text):
    lines = total = 0
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            sku, quantity, unit_cents = line.split(",")
            lines += 1
            total += int(quantity) * int(unit_cents)
    return f"lines={lines}\ntotal_cents={total}\n"


print(f"watching {incoming}/{pattern} every {poll_seconds:g} s, results in {done}", flush=True)
while True:
    for job in sorted(incoming.glob(pattern)):
        try:
            (done / (job.stem + ".result")).write_text(result_of(job.read_text()))
            job.unlink()
            print(f"processed {job.name}", flush=True)
        except (OSError, ValueError) as exc:
            print(f"failed {job.name}: {exc}", flush=True)
    time.sleep(poll_seconds)
