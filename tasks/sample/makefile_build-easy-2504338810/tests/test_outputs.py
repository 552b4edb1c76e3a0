"""Outcome checks for a taskforge task (family: makefile_build). Generated; expected values embedded."""

import csv
import io
import json
import os
import pathlib
import re
import subprocess

EXPECTED = json.loads("{\"all_outputs\": [\"dist/bundle.txt\"], \"build_dir\": \"dist\", \"mode\": \"bundle\", \"new_source\": \"chapters/99-extra.txt\", \"new_text\": \"extra line\\n\", \"project\": \"/home/user/gateway-notes\", \"sources\": [\"chapters/01-intro.txt\", \"chapters/02-setup.txt\", \"chapters/03-notes.txt\", \"chapters/04-release.txt\", \"chapters/05-design.txt\"], \"src_dir\": \"chapters\", \"src_ext\": \".txt\", \"targets\": [\"dist/bundle.txt\"], \"touch\": \"chapters/01-intro.txt\", \"untouched_outputs\": []}")

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

def run_as_nobody(args, cwd, timeout=60):
    """Runs agent-written code without root (it must not touch the verifier's files)."""
    return subprocess.run(["runuser", "-u", "nobody", "--", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def copy_for_nobody(src, dst):
    """A copy of src at dst owned by nobody, so agent-written code runs in a scratch tree."""
    subprocess.run(["rm", "-rf", dst], check=True)
    subprocess.run(["cp", "-a", src, dst], check=True)
    subprocess.run(["chown", "-R", "nobody:nogroup", dst], check=True)

import shutil
import time

WORK = "/tmp/forge-make-check"


def make(*args):
    return run_as_nobody(["make", *args], cwd=WORK, timeout=60)


def bundle_of(folder):
    names = sorted(n for n in os.listdir(os.path.join(WORK, folder)) if n.endswith(EXPECTED["src_ext"]))
    return "".join(read_text(os.path.join(WORK, folder, n)) for n in names)


def render(page):
    tool = "/tmp/forge-render.sh"
    with open(tool, "w") as handle:
        handle.write(EXPECTED["render_sh"])
    out = "/tmp/forge-render.html"
    subprocess.run(["sh", tool, page, out], check=True)
    return read_text(out)


def check_outputs():
    for target in EXPECTED["targets"]:
        assert os.path.isfile(os.path.join(WORK, target)), f"make did not build {target}"
    if EXPECTED["mode"] in ("bundle", "bundle+count"):
        got = read_text(os.path.join(WORK, EXPECTED["targets"][0]))
        assert got == bundle_of(EXPECTED["src_dir"]), f"{EXPECTED['targets'][0]} is not the concatenation of the sources in name order"
        if EXPECTED["mode"] == "bundle+count":
            count = read_text(os.path.join(WORK, EXPECTED["targets"][1])).strip()
            assert count == str(got.count("\n")), f"{EXPECTED['targets'][1]} holds {count!r}, expected {got.count(chr(10))}"
    else:
        src, out = EXPECTED["src_dir"], EXPECTED["build_dir"]
        pages = sorted(n[:-3] for n in os.listdir(os.path.join(WORK, src)) if n.endswith(".md"))
        for name in pages:
            html = os.path.join(WORK, out, name + ".html")
            assert os.path.isfile(html), f"{out}/{name}.html was not built"
            assert read_text(html) == render(os.path.join(WORK, src, name + ".md")), f"{out}/{name}.html is not the output of tools/render.sh"
        index = read_text(os.path.join(WORK, out, "index.html"))
        links = sorted(re.findall(r'href="([^"]+)\.html"', index))
        assert links == pages, f"{out}/index.html links {links}, expected {pages}"


def test_make_builds_and_tracks_changes():
    copy_for_nobody(EXPECTED["project"], WORK)
    shutil.rmtree(os.path.join(WORK, EXPECTED["build_dir"]), ignore_errors=True)
    first = make()
    assert first.returncode == 0, f"make failed: {first.stdout[-1500:]} {first.stderr[-1500:]}"
    check_outputs()

    stamps = {t: os.stat(os.path.join(WORK, t)).st_mtime_ns for t in EXPECTED["all_outputs"]}
    again = make()
    assert again.returncode == 0, f"second make failed: {again.stderr[-1500:]}"
    for target, stamp in stamps.items():
        assert os.stat(os.path.join(WORK, target)).st_mtime_ns == stamp, f"make rebuilt {target} although nothing changed"

    future = time.time() + 30
    changed = os.path.join(WORK, EXPECTED["touch"])
    with open(changed, "a") as handle:
        handle.write("one more line\n")
    os.utime(changed, (future, future))
    third = make()
    assert third.returncode == 0, f"make after an edit failed: {third.stderr[-1500:]}"
    check_outputs()
    for target in EXPECTED["untouched_outputs"]:
        assert os.stat(os.path.join(WORK, target)).st_mtime_ns == stamps[target], f"make rebuilt {target} although its source did not change"

    new = os.path.join(WORK, EXPECTED["new_source"])
    with open(new, "w") as handle:
        handle.write(EXPECTED["new_text"])
    os.utime(new, (future + 30, future + 30))
    subprocess.run(["chown", "nobody:nogroup", new], check=True)
    fourth = make()
    assert fourth.returncode == 0, f"make after adding a source failed: {fourth.stderr[-1500:]}"
    check_outputs()


def test_make_clean():
    copy_for_nobody(EXPECTED["project"], WORK)
    assert make().returncode == 0
    cleaned = make("clean")
    assert cleaned.returncode == 0, f"make clean failed: {cleaned.stderr[-1500:]}"
    assert not os.path.exists(os.path.join(WORK, EXPECTED["build_dir"])), f"make clean left {EXPECTED['build_dir']}/ behind"
    for source in EXPECTED["sources"]:
        assert os.path.isfile(os.path.join(WORK, source)), f"make clean removed {source}"
