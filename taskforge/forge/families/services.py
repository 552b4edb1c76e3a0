"""Service families: a live service runs in the task's container and the tests probe it.

Each environment ships a small supervisor (`svc-supervisor`, started by the image's ENTRYPOINT
before it execs the keep-alive command, so it runs under our sandbox and under `harbor run`
alike). It starts every service in /etc/svc/<name>/run, logs to /var/log/svc/<name>.log and
restarts one when `svc restart <name>` asks. A service is something broken in a way its user
notices (a symptom): a web server that does not answer or serves stale pages, a spool worker
whose jobs pile up, a git server whose pushes are not deployed, a scheduler whose report goes
stale. The tests talk to the running service (HTTP requests, new jobs, pushes, changed data), so
a fix that is never loaded (a config edited but the service not restarted) scores 0. The sandbox
spares the supervisor's process tree when it kills what the agent left running before the
verifier (sandbox/docker.py: _KILL_LEFTOVERS); a server the agent starts itself does not survive.
"""

from __future__ import annotations

import json
import random

from taskforge.forge import pools
from taskforge.forge.base import Draft, Family
from taskforge.forge.common import add_user, bullets, heredoc, pick, test_module

ENTRYPOINT = "/usr/local/sbin/svc-entrypoint"
# Every service task reports what its user sees and leaves the cause to be found ([metadata] style).
SYMPTOM_STYLE: dict[str, str | int | float | bool] = {"style": "symptom"}

_ENTRYPOINT_SH = """#!/bin/bash
# Starts the service supervisor in the background, then runs the container's command.
/usr/local/sbin/svc-supervisor >>/var/log/svc/supervisor.log 2>&1 &
if [ $# -eq 0 ]; then set -- sleep infinity; fi
exec "$@"
"""

_SUPERVISOR_SH = r"""#!/bin/bash
# svc-supervisor: runs every service /etc/svc/<name>/run (output appended to
# /var/log/svc/<name>.log) and acts on the requests `svc` leaves in /run/svc/<name>.request.
# A service that exits stays down until `svc start <name>` or `svc restart <name>`.
declare -A pids

start() {
  "/etc/svc/$1/run" >>"/var/log/svc/$1.log" 2>&1 &
  pids[$1]=$!
  echo "$!" >"/run/svc/$1.pid"
  echo "$(date '+%F %T') started $1 (pid $!)"
}

stop() {
  local pid=${pids[$1]:-}
  [ -n "$pid" ] || return 0
  kill "$pid" 2>/dev/null
  (sleep 5; kill -9 "$pid" 2>/dev/null) &
  local killer=$!
  wait "$pid" 2>/dev/null
  kill "$killer" 2>/dev/null
  unset "pids[$1]"
  rm -f "/run/svc/$1.pid"
  echo "$(date '+%F %T') stopped $1"
}

mkdir -p /run/svc /var/log/svc
rm -f /run/svc/*.request  # services start with the configuration they find now
for run in /etc/svc/*/run; do
  name=${run%/run}
  start "${name##*/}"
done
while sleep 0.2; do
  for request in /run/svc/*.request; do
    [ -e "$request" ] || continue
    name=$(basename "$request" .request)
    action=$(cat "$request")
    stop "$name"
    if [ "$action" != stop ]; then start "$name"; fi
    rm -f "$request"
  done
done
"""

_SVC_SH = r"""#!/bin/bash
# svc: controls the services the supervisor runs (see /etc/svc/<name>/run).
# usage: svc start|stop|restart|status <name>      logs: /var/log/svc/<name>.log
action=${1:-} name=${2:-}
case "$action" in
  start | stop | restart | status) ;;
  *) echo "usage: svc start|stop|restart|status <name>" >&2; exit 2 ;;
esac
if [ ! -x "/etc/svc/$name/run" ]; then
  echo "svc: no service '$name'; services: $(ls /etc/svc | tr '\n' ' ')" >&2
  exit 2
fi
if [ "$action" != status ]; then
  echo "$action" >"/run/svc/$name.request"
  for _ in $(seq 100); do
    [ -e "/run/svc/$name.request" ] || break
    sleep 0.1
  done
  if [ -e "/run/svc/$name.request" ]; then echo "svc: the supervisor did not answer" >&2; exit 1; fi
fi
pid=$(cat "/run/svc/$name.pid" 2>/dev/null)
if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
  echo "$name: running (pid $pid)"
else
  echo "$name: stopped"
  [ "$action" = stop ] || exit 3
fi
"""

# Every services test module starts with these helpers (the tests run inside the container).
_PROBE_HELPERS = '''
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
'''


def service_image(name: str, run: str) -> tuple[dict[str, str], list[str]]:
    """Files and setup lines of the supervisor and one service, `name`, whose run script is `run`."""
    files = {
        ENTRYPOINT: _ENTRYPOINT_SH,
        "/usr/local/sbin/svc-supervisor": _SUPERVISOR_SH,
        "/usr/local/bin/svc": _SVC_SH,
        f"/etc/svc/{name}/run": run,
    }
    setup = [
        f"chmod 755 {ENTRYPOINT} /usr/local/sbin/svc-supervisor /usr/local/bin/svc /etc/svc/{name}/run",
        "mkdir -p /run/svc /var/log/svc",
    ]
    return files, setup


def as_user(user: str, command: str) -> str:
    """A run script that execs `command` as `user` (the supervisor itself runs as root)."""
    return f"#!/bin/sh\nexec setpriv --reuid={user} --regid={user} --init-groups {command}\n"


def supervisor_note(rng: random.Random, name: str) -> str:
    """How the service is run, in one of a few phrasings."""
    return rng.choice(
        [
            f"The service `{name}` runs under a small supervisor: `svc status|start|stop|restart {name}` "
            f"controls it, its output goes to `/var/log/svc/{name}.log` and `/etc/svc/{name}/run` starts it.",
            f"`{name}` is supervised: `/etc/svc/{name}/run` starts it, `svc restart {name}` (or `start`, `stop`, "
            f"`status`) controls it, and whatever it prints lands in `/var/log/svc/{name}.log`.",
            f"A supervisor keeps `{name}` running from `/etc/svc/{name}/run`; use `svc status {name}`, "
            f"`svc restart {name}` and friends, and read its log at `/var/log/svc/{name}.log`.",
        ]
    )


def reported(rng: random.Random, symptom: str) -> str:
    """The symptom as someone reported it (a few framings)."""
    person, team = rng.choice(pools.PEOPLE).capitalize(), rng.choice(pools.TEAMS)
    return rng.choice(
        [
            f"{person} from the {team} team reports: {symptom}.",
            f"Ticket from {person} ({team}): {symptom}.",
            f"{symptom[0].upper()}{symptom[1:]}, {person} noticed this morning.",
            f"On-call handover from {person}: {symptom}; nobody has looked into it yet.",
        ]
    )


def fix_it(rng: random.Random) -> str:
    return rng.choice(
        [
            "Find the cause and fix it",
            "Diagnose the problem and repair it",
            "Track down what is wrong and fix it",
            "Investigate and put it right",
        ]
    )


def started(name: str) -> str:
    """Waits until the service has logged its first line (it has read its configuration by then)."""
    return f"until [ -s /var/log/svc/{name}.log ]; do sleep 0.2; done"


def ini_line_edit(path: str, key: str, value: str) -> str:
    return f"sed -i 's|^{key} = .*|{key} = {value}|' {path}"


def service_tests(family: str, expected: dict, body: str) -> str:
    return test_module(family, expected, _PROBE_HELPERS + "\n\n" + body)


def _words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(pools.PRODUCTS + pools.REGIONS + pools.TEAMS) for _ in range(n))


# ------------------------------------------------------------------------------------------
# A web server

PORTS = [3000, 5000, 8000, 8080, 8081, 8088, 8888, 9000, 9090]

_WEB_SERVER = '''#!/usr/bin/env python3
"""Serves the files under a document root over HTTP; the settings come from an INI file."""
import configparser
import http.server
import os
import sys

config = configparser.ConfigParser()
config.read(sys.argv[1])
settings = config["server"]
root = os.path.realpath(settings["root"])


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        path = os.path.realpath(os.path.join(root, self.path.split("?")[0].lstrip("/")))
        if path != root and not path.startswith(root + os.sep):
            return self.send_error(403)
        if os.path.isdir(path):
            path = os.path.join(path, settings.get("index", "index.html"))
        try:
            with open(path, "rb") as f:
                body = f.read()
        except FileNotFoundError:
            return self.send_error(404)
        except PermissionError:
            return self.send_error(403)
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


address = (settings.get("bind", "127.0.0.1"), settings.getint("port"))
print(f"serving {root} on {address[0]}:{address[1]}", flush=True)
http.server.ThreadingHTTPServer(address, Handler).serve_forever()
'''

WEB_TEST = '''
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

'''

WEB_USER_TEST = """
def test_service_runs_as_its_user():
    import pwd

    pid = wait_until(lambda: supervised_pid(EXPECTED["service"]), 5)
    assert pid, f"the service {EXPECTED['service']} is not running"
    uid = os.stat(f"/proc/{pid}").st_uid
    assert uid == pwd.getpwnam(EXPECTED["user"]).pw_uid, f"the service runs as uid {uid}, not as {EXPECTED['user']}"
"""


class WebServiceRepair(Family):
    name = "web_service_repair"
    domain = "system_operations"
    summary = "a supervised HTTP file server misbehaves (wrong port, bind address, root, permissions): fix it live"

    def build(self, rng: random.Random, difficulty: str) -> Draft:
        app = rng.choice(pools.APPS)
        user = rng.choice(pools.SERVICE_ACCOUNTS)
        service = f"{app}-web"
        conf = f"/etc/{app}/server.ini"
        root = rng.choice(
            [f"/srv/{app}/site", f"/var/www/{app}", f"/opt/{app}/public", f"/srv/www/{app}", f"/var/lib/{app}/htdocs"]
        )
        port = rng.choice(PORTS)
        names = ["index.html", "about.html", "status.json", *[f"reports/{m}.txt" for m in pick(rng, pools.MONTHS, 3)]]
        files_served = {rel: self._page(rng, app, rel) for rel in names}
        causes = self._causes(rng, difficulty)
        settings = {"port": str(port), "bind": "127.0.0.1", "root": root, "index": "index.html"}
        files = {f"{root}/{rel}": text for rel, text in files_served.items()}
        setup = [add_user(user, system=True)]
        fixes: list[str] = []
        if "port" in causes:
            settings["port"] = str(rng.choice([p for p in PORTS if p != port]))
            fixes.append(ini_line_edit(conf, "port", str(port)))
        if "bind" in causes:
            settings["bind"] = rng.choice(["10.0.0.5", "192.168.1.20", "172.16.4.9"])
            fixes.append(ini_line_edit(conf, "bind", "127.0.0.1"))
        if "root" in causes:
            stale = f"{root}.old"
            settings["root"] = stale
            files.update({f"{stale}/{rel}": self._page(rng, app, rel) for rel in names})
            fixes.append(ini_line_edit(conf, "root", root))
        locked = rng.sample(names, 2)
        if "perms" in causes:
            setup.append(f"chmod 600 {' '.join(f'{root}/{rel}' for rel in locked)}")
            setup.append(f"chmod 700 {root}/reports")
        files[conf] = "[server]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items())
        files[f"/opt/{app}/server.py"] = _WEB_SERVER
        service_files, service_setup = service_image(service, as_user(user, f"python3 /opt/{app}/server.py {conf}"))
        files.update(service_files)
        setup += service_setup

        symptom = {
            "port": f"nothing answers on http://127.0.0.1:{port}/",
            "bind": f"nothing answers on http://127.0.0.1:{port}/",
            "root": f"http://127.0.0.1:{port}/ serves outdated pages, not the current files in `{root}`",
            "perms": "some pages answer with an error",
        }[causes[0]]
        rules = [
            f"every file under `{root}` must be served at its path: "
            f"`{root}/about.html` at http://127.0.0.1:{port}/about.html, "
            f"`{root}/reports/{names[3].split('/')[1]}` at http://127.0.0.1:{port}/reports/{names[3].split('/')[1]}",
            "leave the files' contents as they are",
            f"the service must be running under its supervisor when you are done (`svc status {service}`)",
        ]
        if difficulty == "hard":
            rules.append(f"it must keep running as user `{user}`, not as root")
        instruction = (
            f"{reported(rng, f'the {app} web server is broken, {symptom}')} {supervisor_note(rng, service)} "
            f"Its settings are in `{conf}`. {fix_it(rng)}:\n{bullets(rules)}\n"
        )
        if "perms" in causes:
            fixes.append(f"chmod -R a+rX {root}")
        config_changed = any(c in causes for c in ("port", "bind", "root"))
        solution = "\n".join([f"cat /var/log/svc/{service}.log {conf}", *fixes])
        if config_changed:
            solution += f"\nsvc restart {service}"
        expected = {
            "service": service,
            "port": port,
            "root": root,
            "files": files_served,
            "user": user,
        }
        config_fixes = [f for f in fixes if f.startswith("sed")]
        restart = [f"svc restart {service}"] if config_changed else []
        near_misses = {}
        if config_changed:
            near_misses["config_not_reloaded"] = "\n".join([started(service), *fixes])
        if "perms" in causes:
            unlock_files = f"find {root} -type f -exec chmod a+r {{}} +"
            near_misses["files_readable_dirs_locked"] = "\n".join([*config_fixes, unlock_files, *restart])
        if difficulty == "hard":
            as_root = heredoc(f"/etc/svc/{service}/run", f"#!/bin/sh\nexec python3 /opt/{app}/server.py {conf}\n")
            near_misses["runs_as_root"] = "\n".join([*config_fixes, as_root, f"svc restart {service}"])
        # The whole fix, then the server stopped (to edit it, never started again): "running when you are done".
        near_misses["left_stopped"] = f"{solution}\nsvc stop {service}"
        return Draft(
            extra=SYMPTOM_STYLE,
            instruction=instruction,
            tests=service_tests(self.name, expected, WEB_TEST + (WEB_USER_TEST if difficulty == "hard" else "")),
            solution=solution + "\n",
            outputs=[root],
            files=files,
            setup=setup,
            entrypoint=ENTRYPOINT,
            near_misses=near_misses,
        )

    def _causes(self, rng: random.Random, difficulty: str) -> list[str]:
        listening = rng.choice(["port", "bind"])
        if difficulty == "easy":
            return [listening]
        if difficulty == "medium":
            return [rng.choice(["root", "perms"])]
        return [listening, "perms", *(["root"] if rng.random() < 0.5 else [])]

    def _page(self, rng: random.Random, app: str, rel: str) -> str:
        if rel.endswith(".json"):
            return json.dumps({"service": app, "build": rng.randint(100, 9999), "healthy": True}) + "\n"
        if rel.endswith(".html"):
            title = rel.split(".")[0]
            return f"<html><head><title>{app} {title}</title></head><body><p>{_words(rng, 6)}</p></body></html>\n"
        return "".join(f"{_words(rng, 2)}: {rng.randint(1, 999)}\n" for _ in range(rng.randint(2, 5)))


# ------------------------------------------------------------------------------------------
# A spool worker

_WORKER = '''#!/usr/bin/env python3
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
    return f"lines={lines}\\ntotal_cents={total}\\n"


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
'''

WORKER_TEST = '''
def result_text(job):
    lines = total = 0
    for line in job.splitlines():
        sku, quantity, unit_cents = line.split(",")
        lines += 1
        total += int(quantity) * int(unit_cents)
    return f"lines={lines}\\ntotal_cents={total}\\n"


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
'''


class SpoolWorker(Family):
    name = "spool_worker"
    domain = "system_operations"
    summary = "a supervised spool worker stops processing jobs (paths, pattern, poll interval, permissions): fix it"

    def build(self, rng: random.Random, difficulty: str) -> Draft:
        app = rng.choice(pools.APPS)
        user = rng.choice(pools.SERVICE_ACCOUNTS)
        service = f"{app}-worker"
        conf = f"/etc/{app}/worker.ini"
        spool = rng.choice(
            [
                f"/var/spool/{app}",
                f"/srv/{app}/spool",
                f"/var/lib/{app}/queue",
                f"/srv/queue/{app}",
                f"/opt/{app}/spool",
            ]
        )
        incoming, done = f"{spool}/incoming", f"{spool}/done"
        ext, seconds = rng.choice(["job", "order", "req", "task"]), rng.choice([5, 10, 15])
        settings = {"incoming": incoming, "done": done, "pattern": f"*.{ext}", "poll_seconds": "1"}
        config_causes, perm_causes = self._causes(rng, difficulty)
        fixes: list[str] = []
        if "incoming" in config_causes:
            settings["incoming"] = rng.choice([f"{spool}/incomming", f"{spool}/inbox", f"{spool}/in"])
            fixes.append(ini_line_edit(conf, "incoming", incoming))
        if "pattern" in config_causes:
            settings["pattern"] = rng.choice([f"*.{ext}s", "*.txt", f"{ext}-*"])
            fixes.append(ini_line_edit(conf, "pattern", f"*.{ext}"))
        if "poll" in config_causes:
            settings["poll_seconds"] = rng.choice(["3600", "86400", "900"])
            fixes.append(ini_line_edit(conf, "poll_seconds", "1"))
        setup = [add_user(user, system=True), f"mkdir -p {incoming} {done}"]
        setup.append(f"chown {user}: {incoming} {done}")
        if "done_owner" in perm_causes:
            setup.append(f"chown root: {done} && chmod 755 {done}")
            fixes.append(f"chown {user}: {done}")
        if "incoming_mode" in perm_causes:
            setup.append(f"chown root: {incoming} && chmod 755 {incoming}")
            fixes.append(f"chown {user}: {incoming}")
        names = [f"order-{n}" for n in rng.sample(range(1000, 9999), 6)]
        jobs = {name: self._job(rng) for name in names}
        n_waiting = rng.randint(2, 4)
        waiting, new = dict(list(jobs.items())[:n_waiting]), dict(list(jobs.items())[n_waiting:])
        files = {f"{incoming}/{name}.{ext}": job for name, job in waiting.items()}
        files[conf] = "[spool]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items())
        files[f"/opt/{app}/worker.py"] = _WORKER
        service_files, service_setup = service_image(service, as_user(user, f"python3 /opt/{app}/worker.py {conf}"))
        files.update(service_files)
        setup += service_setup
        rules = [
            f"each job file `<name>.{ext}` in `{incoming}` must be turned into `{done}/<name>.result` by the "
            f"worker and removed from the spool, within {seconds} seconds of being dropped there",
            f"the jobs waiting in `{incoming}` now must be processed too",
            f"the worker must be running under its supervisor when you are done (`svc status {service}`)",
        ]
        symptom = rng.choice(
            [
                f"{len(waiting)} order jobs of {app} pile up in `{incoming}`, the worker `{service}` does not process them",
                f"the {app} worker `{service}` stopped processing orders: `{incoming}` keeps filling up",
                f"no results have appeared in `{done}` for hours although `{incoming}` holds {len(waiting)} jobs",
            ]
        )
        instruction = (
            f"{reported(rng, symptom)} {supervisor_note(rng, service)} Its settings are in `{conf}`. "
            f"{fix_it(rng)}:\n{bullets(rules)}\n"
        )
        solution = "\n".join([f"tail -n 20 /var/log/svc/{service}.log", f"cat {conf}", *fixes])
        if config_causes:
            solution += f"\nsvc restart {service}"
        expected = {
            "service": service,
            "incoming": incoming,
            "done": done,
            "ext": ext,
            "seconds": seconds,
            "waiting": waiting,
            "new": new,
        }
        by_hand = (
            f"for job in {incoming}/*.{ext}; do\n"
            f'  awk -F, \'{{ n++; t += $2 * $3 }} END {{ printf "lines=%d\\ntotal_cents=%d\\n", n, t }}\' "$job" '
            f'> {done}/$(basename "$job" .{ext}).result\n'
            '  rm "$job"\n'
            "done"
        )
        near_misses = {"results_by_hand": by_hand}
        if config_causes:
            near_misses["config_not_reloaded"] = "\n".join([started(service), *fixes])
        return Draft(
            extra=SYMPTOM_STYLE,
            instruction=instruction,
            tests=service_tests(self.name, expected, WORKER_TEST),
            solution=solution + "\n",
            outputs=[incoming, done],
            files=files,
            setup=setup,
            entrypoint=ENTRYPOINT,
            near_misses=near_misses,
        )

    def _causes(self, rng: random.Random, difficulty: str) -> tuple[list[str], list[str]]:
        config = ["incoming", "pattern", "poll"]
        perms = ["done_owner", "incoming_mode"]
        if difficulty == "easy":
            return [rng.choice(config)], []
        if difficulty == "medium":
            return [rng.choice(config)], [rng.choice(perms)]
        return pick(rng, config, 2), [rng.choice(perms)]

    def _job(self, rng: random.Random) -> str:
        lines = [f"{rng.choice(pools.PRODUCTS)},{rng.randint(1, 20)},{rng.randint(50, 9999)}" for _ in range(4)]
        return "\n".join(lines[: rng.randint(2, 4)]) + "\n"


# ------------------------------------------------------------------------------------------
# A git server that deploys on push

GIT_TEST = '''
AUTHOR = ["-c", "user.name=Verifier", "-c", "user.email=verifier@example.com", "-c", "core.hooksPath=/dev/null"]


def git(*args, cwd=None):
    return subprocess.run(["git", *AUTHOR, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def deployed():
    """relative path -> text of every file in the deploy directory."""
    root = pathlib.Path(EXPECTED["deploy"])
    return {p.relative_to(root).as_posix(): p.read_text() for p in root.rglob("*") if p.is_file()}


def commit_and_push(clone, change, subject):
    for rel, text in change["write"].items():
        (clone / rel).parent.mkdir(parents=True, exist_ok=True)
        (clone / rel).write_text(text)
    for rel in change["delete"]:
        (clone / rel).unlink()
    assert git("add", "-A", cwd=clone).returncode == 0
    assert git("commit", "-q", "-m", subject, cwd=clone).returncode == 0
    return git("push", "origin", "HEAD:refs/heads/main", cwd=clone)


def remote_main():
    out = git("ls-remote", EXPECTED["url"], "refs/heads/main").stdout.split()
    return out[0] if out else None


def test_push_to_main_is_deployed(tmp_path):
    assert wait_until(remote_main, 8), f"the git server at {EXPECTED['url']} does not answer"
    clone = tmp_path / "clone"
    cloned = git("clone", "-q", EXPECTED["url"], str(clone))
    assert cloned.returncode == 0, f"git clone {EXPECTED['url']} failed: {cloned.stderr}"
    if EXPECTED["ticket"]:
        before = remote_main()
        rejected = commit_and_push(clone, EXPECTED["rejected_change"], EXPECTED["rejected_subject"])
        assert rejected.returncode != 0, f"a push to main whose commit subject has no ticket id was accepted"
        assert remote_main() == before, "the rejected push moved main"
        assert git("reset", "-q", "--hard", "origin/main", cwd=clone).returncode == 0
    pushed = commit_and_push(clone, EXPECTED["change"], EXPECTED["subject"])
    assert pushed.returncode == 0, f"the push to main was refused: {pushed.stderr}"
    assert remote_main() == git("rev-parse", "HEAD", cwd=clone).stdout.strip(), "main does not point at the push"
    tree = {p.relative_to(clone).as_posix(): p.read_text() for p in clone.rglob("*") if p.is_file() and ".git" not in p.relative_to(clone).parts}
    files = deployed()  # the post-receive hook has run when the push returns
    missing = sorted(set(tree) - set(files))
    assert not missing, f"{EXPECTED['deploy']} lacks {missing} after the push"
    stale = sorted(rel for rel in tree if files[rel] != tree[rel])
    assert not stale, f"{EXPECTED['deploy']} has old contents of {stale} after the push"
    left = sorted(set(files) - set(tree))
    assert not left, f"{EXPECTED['deploy']} still holds {left}, which the pushed commit deleted"
'''

_POST_RECEIVE = """#!/bin/sh
# Deploys the main branch into the web root after every push.
while read -r old new ref; do
  if [ "$ref" = "refs/heads/{branch}" ]; then
    GIT_WORK_TREE={deploy} git checkout -f {branch}
    echo "deployed $new to {deploy}"
  fi
done
"""

_PRE_RECEIVE = """#!/bin/sh
# Refuses commits on main whose subject does not start with a ticket id ({prefix}-123).
zero=0000000000000000000000000000000000000000
while read -r old new ref; do
  [ "$ref" = refs/heads/main ] || continue
  if [ "$old" = "$zero" ]; then range=$new; else range=$old..$new; fi
  if git log --format=%s "$range" | grep -qvE '^{prefix}-[0-9]+'; then
    echo "rejected: every commit subject on main must start with a ticket id like {prefix}-123" >&2
    exit 1
  fi
done
"""


class GitPushDeploy(Family):
    name = "git_push_deploy"
    domain = "development_tooling"
    summary = "a git daemon with a post-receive deploy hook stops deploying pushes (hook, branch, permissions, daemon)"

    def build(self, rng: random.Random, difficulty: str) -> Draft:
        app = rng.choice(pools.APPS)
        user = rng.choice(pools.SERVICE_ACCOUNTS)
        service = f"{app}-git"
        repo = f"/srv/git/{app}.git"
        url = f"git://127.0.0.1/{app}.git"
        deploy = rng.choice(
            [f"/srv/www/{app}", f"/var/www/{app}", f"/opt/{app}/current", f"/srv/{app}/htdocs", f"/var/www/html/{app}"]
        )
        prefix = app.upper()[:4]
        causes = self._causes(rng, difficulty)
        first = {"index.html": self._page(rng, app), "app.js": f"// {app} {_words(rng, 3)}\n"}
        second = {"index.html": self._page(rng, app), "config.json": '{"mode": "live"}\n'}
        hook_branch = "master" if "branch" in causes else "main"
        enable = "" if "daemon" in causes else " --enable=receive-pack"
        daemon = f"git daemon --reuseaddr --listen=127.0.0.1 --port=9418 --base-path=/srv/git --export-all{enable}"
        files = {f"/tmp/seed/v1/{rel}": text for rel, text in first.items()}
        files.update({f"/tmp/seed/v2/{rel}": text for rel, text in second.items()})
        files[f"{repo}.hooks/post-receive"] = _POST_RECEIVE.format(branch=hook_branch, deploy=deploy)
        service_files, service_setup = service_image(service, as_user(user, daemon))
        files.update(service_files)
        ops = f"-c user.name=Ops -c user.email=ops@{app}.test"
        seed_commits = [
            "git init -q -b main /tmp/seed/work && cd /tmp/seed/work",
            f"cp -r /tmp/seed/v1/. . && git add -A && git {ops} commit -q -m '{prefix}-1 first release'",
            f"cp -r /tmp/seed/v2/. . && git add -A && git {ops} commit -q -m '{prefix}-2 live config'",
            f"git init -q --bare -b main {repo} && git push -q {repo} main",
            "cd / && rm -rf /tmp/seed",
            f"mv {repo}.hooks/post-receive {repo}/hooks/post-receive && rmdir {repo}.hooks",
            f"chmod {'644' if 'hook_mode' in causes else '755'} {repo}/hooks/post-receive",
            f"mkdir -p {deploy} && git --git-dir={repo} --work-tree={deploy} checkout -q -f main~1 -- .",
            f"chown -R {user}: {repo} {'' if 'deploy_owner' in causes else deploy}".rstrip(),
        ]
        setup = [add_user(user, system=True), *seed_commits, *service_setup]
        fixes = []
        if "hook_mode" in causes:
            fixes.append(f"chmod 755 {repo}/hooks/post-receive")
        if "branch" in causes:
            fixes.append(
                f"sed -i 's|refs/heads/master|refs/heads/main|; s|checkout -f master|checkout -f main|' "
                f"{repo}/hooks/post-receive"
            )
        if "deploy_owner" in causes:
            fixes.append(f"chown -R {user}: {deploy}")
        if difficulty == "hard":
            fixes.append(heredoc(f"{repo}/hooks/pre-receive", _PRE_RECEIVE.format(prefix=prefix)))
            fixes.append(f"chmod 755 {repo}/hooks/pre-receive")
        if "daemon" in causes:
            fixes.append(f"sed -i 's|--export-all|--export-all --enable=receive-pack|' /etc/svc/{service}/run")
            fixes.append(f"svc restart {service}")
        rules = [
            f"a push to `main` at `{url}` must be accepted, and when it returns `{deploy}` must hold exactly "
            "the files of the pushed commit (files the commit deletes disappear from it)",
            f"the git server must be running under its supervisor when you are done (`svc status {service}`)",
        ]
        if difficulty == "hard":
            rules.append(
                f"also make the server refuse any push to `main` that brings a commit whose subject does not "
                f"start with a ticket id such as `{prefix}-123` (`{prefix}-` and digits); such a push must leave "
                "`main` where it was"
            )
        symptom = rng.choice(
            [
                f"pushes to `{url}` no longer reach `{deploy}`",
                f"`{deploy}` still shows an old version of the {app} site although new commits were pushed",
                f"the {app} site stopped updating after pushes to `{url}`",
            ]
        )
        instruction = (
            f"The {app} site is deployed by pushing to the git server at `{url}` (bare repository `{repo}`; "
            f"a `post-receive` hook checks `main` out into `{deploy}`). {reported(rng, symptom)} "
            f"{supervisor_note(rng, service)} {fix_it(rng)}:\n{bullets(rules)}\n"
        )
        change = {
            "write": {
                "index.html": self._page(rng, app),
                f"docs/{rng.choice(pools.MONTHS)}.txt": _words(rng, 5) + "\n",
            },
            "delete": ["app.js"],
        }
        expected = {
            "service": service,
            "url": url,
            "deploy": deploy,
            "change": change,
            "subject": f"{prefix}-{rng.randint(10, 999)} {_words(rng, 3)}",
            "ticket": difficulty == "hard",
            "rejected_change": {"write": {"config.json": '{"mode": "debug"}\n'}, "delete": []},
            "rejected_subject": f"quick fix {_words(rng, 2)}",
        }
        near_misses = {"deploys_by_hand": f"git --git-dir={repo} --work-tree={deploy} checkout -f main -- ."}
        if difficulty == "hard":
            near_misses["no_ticket_rule"] = "\n".join(f for f in fixes if "pre-receive" not in f)
        solution = "\n".join([f"cat {repo}/hooks/post-receive /etc/svc/{service}/run", f"ls -ld {deploy}", *fixes])
        near_misses["left_stopped"] = f"{solution}\nsvc stop {service}"  # "running when you are done"
        return Draft(
            extra=SYMPTOM_STYLE,
            instruction=instruction,
            tests=service_tests(self.name, expected, GIT_TEST),
            solution=solution + "\n",
            outputs=[deploy],
            files=files,
            setup=setup,
            entrypoint=ENTRYPOINT,
            near_misses=near_misses,
        )

    def _causes(self, rng: random.Random, difficulty: str) -> list[str]:
        hook = ["hook_mode", "branch", "deploy_owner"]
        if difficulty == "easy":
            return [rng.choice(hook)]
        if difficulty == "medium":
            return pick(rng, hook, 2)
        return [rng.choice(hook), "daemon"]

    def _page(self, rng: random.Random, app: str) -> str:
        return f"<html><body><h1>{app}</h1><p>{_words(rng, 5)}</p></body></html>\n"


# ------------------------------------------------------------------------------------------
# A scheduler loop

_TICKD = r"""#!/bin/bash
# tickd: runs the jobs of a ticktab every N seconds. It reads the table once, when it starts.
# Table lines: <every_seconds> <user> <command...>   ('#' starts a comment)
table=${1:-/etc/ticktab}
every=() users=() commands=() last=()
while read -r seconds user command; do
  if [ -z "$seconds" ] || [ "${seconds:0:1}" = "#" ]; then continue; fi
  if ! [[ "$seconds" =~ ^[0-9]+$ ]] || ! id -u "$user" >/dev/null 2>&1; then
    echo "tickd: skipping a bad line: $seconds $user $command"
    continue
  fi
  every+=("$seconds") users+=("$user") commands+=("$command") last+=(0)
done <"$table"
echo "tickd: ${#every[@]} job(s) from $table"
while true; do
  now=$(date +%s)
  for i in "${!every[@]}"; do
    if ((now - last[i] >= every[i])); then
      last[i]=$now
      setpriv --reuid="${users[i]}" --regid="${users[i]}" --init-groups sh -c "${commands[i]}" ||
        echo "tickd: job failed (exit $?): ${commands[i]}"
    fi
  done
  sleep 1
done
"""

TICK_TEST = """
def summary_of(tables):
    rows = total = 0
    for text in tables:
        for line in text.splitlines()[1:]:
            rows += 1
            total += int(line.split(",")[EXPECTED["amount_index"]])
    return f"rows={rows}\\ntotal={total}\\n"


def current_summary():
    try:
        return pathlib.Path(EXPECTED["summary"]).read_text()
    except OSError:
        return None


def test_table_runs_the_job_every_n_seconds_as_its_user():
    lines = [line.split() for line in read_text("/etc/ticktab").splitlines() if not line.startswith("#")]
    every, user, script = str(EXPECTED["every"]), EXPECTED["user"], EXPECTED["script"]
    assert any(words[:2] == [every, user] and script in words[2:] for words in lines), (
        f"/etc/ticktab has no job running {script} as {user} every {every} seconds"
    )


def test_summary_follows_the_data():
    data = pathlib.Path(EXPECTED["data"])
    added = data / EXPECTED["new_file"]
    added.write_text(EXPECTED["new_table"])
    want = summary_of([*EXPECTED["tables"], EXPECTED["new_table"]])
    seconds = 2 * EXPECTED["every"] + 4
    assert wait_until(lambda: current_summary() == want, seconds), (
        f"{EXPECTED['summary']} was not rebuilt within {seconds} s after {added} appeared: "
        f"{current_summary()!r}, expected {want!r}"
    )
"""


class TickScheduler(Family):
    name = "tick_scheduler"
    domain = "system_operations"
    summary = "a supervised scheduler loop no longer refreshes a report (table line, interval, script, permissions)"

    def build(self, rng: random.Random, difficulty: str) -> Draft:
        app = rng.choice(pools.APPS)
        user = rng.choice(pools.SERVICE_ACCOUNTS)
        service = "tickd"
        table = "/etc/ticktab"
        every = rng.choice([2, 3, 4, 5])
        data = rng.choice([f"/srv/data/{app}", f"/var/data/{app}", f"/opt/data/{app}"])
        reports = rng.choice(["/srv/reports", "/var/reports"])
        summary = f"{reports}/{app}-summary.txt"
        script = f"/usr/local/bin/{app}-summary.sh"
        header = ["id", "quantity", "amount"]
        rng.shuffle(header)
        amount_column = header.index("amount") + 1
        quantity_column = header.index("quantity") + 1
        months = pick(rng, pools.MONTHS, 3)
        tables = [self._table(rng, header) for _ in months]
        table_cause, other_causes = self._causes(rng, difficulty)
        good_line = f"{every} {user} {script}"
        bad_line = {
            "interval": f"{rng.choice([3600, 86400, 900])} {user} {script}",
            "user": f"{every} {user[:-1]} {script}",
            "order": f"{user} {every} {script}",
        }[table_cause]
        summed = quantity_column if "column" in other_causes else amount_column
        files = {f"{data}/orders-{m}.csv": text for m, text in zip(months, tables, strict=True)}
        files[table] = f"# every_seconds user command\n{bad_line}\n"
        files[script] = (
            f"#!/bin/sh\n# Rebuilds {summary} from the order tables in {data}.\n"
            f"awk -F, 'FNR > 1 {{ rows++; total += ${summed} }} END {{ printf \"rows=%d\\ntotal=%d\\n\", rows, total }}' "
            f"{data}/*.csv > {summary}\n"
        )
        files["/usr/local/sbin/tickd"] = _TICKD
        service_files, service_setup = service_image(service, f"#!/bin/sh\nexec /usr/local/sbin/tickd {table}\n")
        files.update(service_files)
        setup = [
            add_user(user, system=True),
            f"mkdir -p {reports} && echo 'rows=0' > {summary}",
            f"chmod {'644' if 'script_mode' in other_causes else '755'} {script}",
            "chmod 755 /usr/local/sbin/tickd",
            f"chown {'root' if 'output_owner' in other_causes else user}: {summary}",
            *service_setup,
        ]
        fixes = [f"sed -i 's|^{bad_line}$|{good_line}|' {table}"]
        if "script_mode" in other_causes:
            fixes.append(f"chmod 755 {script}")
        if "column" in other_causes:
            fixes.append(f"sed -i 's/total += \\${quantity_column} /total += \\${amount_column} /' {script}")
        if "output_owner" in other_causes:
            fixes.append(f"chown {user}: {summary}")
        rules = [
            f"the scheduler must run `{script}` as user `{user}` every {every} seconds again, so that `{summary}` "
            f"follows the files `{data}/*.csv`: a new or changed table is reflected within two runs",
            f"`{summary}` holds two lines, `rows=<number of data rows over all tables>` and "
            "`total=<sum of the amount column over all tables>`",
            f"the scheduler must be running under its supervisor when you are done (`svc status {service}`)",
        ]
        symptom = rng.choice(
            [
                f"`{summary}` is stale, the scheduler no longer refreshes it",
                f"the {app} summary `{summary}` has not changed for days although new tables arrived in `{data}`",
                f"the dashboard reading `{summary}` shows old numbers",
            ]
        )
        instruction = (
            f"{reported(rng, symptom)} The scheduler `tickd` runs the jobs of `{table}`, one per line: "
            f"`<every_seconds> <user> <command>`. {supervisor_note(rng, service)} {fix_it(rng)}:\n{bullets(rules)}\n"
        )
        solution = "\n".join([f"tail -n 20 /var/log/svc/{service}.log", f"cat {table} {script}", *fixes])
        solution += f"\nsvc restart {service}\n"
        expected = {
            "service": service,
            "user": user,
            "script": script,
            "summary": summary,
            "data": data,
            "every": every,
            "tables": tables,
            "amount_index": header.index("amount"),
            "new_file": f"orders-{rng.choice([m for m in pools.MONTHS if m not in months])}.csv",
            "new_table": self._table(rng, header),
        }
        by_hand = "\n".join(
            [started(service), *fixes[1:], f"setpriv --reuid={user} --regid={user} --init-groups {script}"]
        )
        return Draft(
            extra=SYMPTOM_STYLE,
            instruction=instruction,
            tests=service_tests(self.name, expected, TICK_TEST),
            solution=solution,
            outputs=[summary],
            files=files,
            setup=setup,
            entrypoint=ENTRYPOINT,
            near_misses={"runs_job_by_hand": by_hand, "table_not_reloaded": "\n".join([started(service), *fixes])},
        )

    def _causes(self, rng: random.Random, difficulty: str) -> tuple[str, list[str]]:
        table_cause = rng.choice(["interval", "user", "order"])
        others = ["script_mode", "column", "output_owner"]
        if difficulty == "easy":
            return table_cause, []
        if difficulty == "medium":
            return table_cause, [rng.choice(others)]
        return table_cause, pick(rng, others, 2)

    def _table(self, rng: random.Random, header: list[str]) -> str:
        rows = []
        for _ in range(rng.randint(3, 6)):
            values = {"id": rng.randint(1000, 9999), "quantity": rng.randint(1, 40), "amount": rng.randint(5, 5000)}
            rows.append(",".join(str(values[h]) for h in header))
        return ",".join(header) + "\n" + "\n".join(rows) + "\n"
