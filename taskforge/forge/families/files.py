"""File-system families: permission policies, permission audits, disk-usage reports, stale-file cleanup."""

from __future__ import annotations

import datetime
import random

from taskforge.forge import pools
from taskforge.forge.base import Draft, Family, bent
from taskforge.forge.common import add_group, add_user, bullets, pick, python_block, test_module

SCRIPT_NAMES = ["start", "stop", "backup", "deploy", "healthcheck", "rotate", "migrate", "restore"]
CONF_NAMES = ["app", "db", "cache", "logging", "queue", "mail"]
KEY_NAMES = ["tls", "api", "signing", "client", "db"]
DATA_NAMES = ["users", "orders", "events", "metrics", "prices"]
LOG_NAMES = ["app", "access", "error", "worker"]
BAD_FILE_MODES = [0o600, 0o644, 0o664, 0o666, 0o755, 0o777, 0o700, 0o640]
BAD_DIR_MODES = [0o700, 0o755, 0o777, 0o775]


def _tree(rng: random.Random, base: str) -> dict[str, str]:
    """A small application tree: path -> kind (sh, conf, key, data, log)."""
    tree: dict[str, str] = {}
    for name in pick(rng, SCRIPT_NAMES, rng.randint(2, 4)):
        tree[f"{base}/bin/{name}.sh"] = "sh"
    for name in pick(rng, CONF_NAMES, rng.randint(2, 3)):
        tree[f"{base}/conf/{name}.conf"] = "conf"
    for name in pick(rng, KEY_NAMES, rng.randint(1, 3)):
        tree[f"{base}/secrets/{name}.{rng.choice(['key', 'pem'])}"] = "key"
    for name in pick(rng, DATA_NAMES, rng.randint(2, 3)):
        tree[f"{base}/data/{name}.{rng.choice(['csv', 'json'])}"] = "data"
    for name in pick(rng, LOG_NAMES, rng.randint(1, 2)):
        tree[f"{base}/logs/{name}.log"] = "log"
    return tree


def _content(rng: random.Random, kind: str, path: str) -> str:
    if kind == "sh":
        return f"#!/bin/bash\n# {path.rsplit('/', 1)[1]}\necho running {rng.randint(1, 999)}\n"
    if kind == "conf":
        return f"[main]\nport = {rng.randint(1024, 9999)}\nworkers = {rng.randint(1, 16)}\n"
    if kind == "key":
        return (
            "-----BEGIN PRIVATE KEY-----\n"
            + "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdef0123456789") for _ in range(48))
            + "\n-----END PRIVATE KEY-----\n"
        )
    if kind == "log":
        return "".join(f"2024-0{rng.randint(1, 9)}-1{rng.randint(0, 9)} line {i}\n" for i in range(rng.randint(2, 6)))
    return "".join(f"{rng.randint(1, 999)},{rng.random():.3f}\n" for _ in range(rng.randint(2, 6)))


def _dirs_of(paths, base: str) -> list[str]:
    dirs = {base}
    for p in paths:
        parent = p.rsplit("/", 1)[0]
        while parent.startswith(base):
            dirs.add(parent)
            parent = parent.rsplit("/", 1)[0]
    return sorted(dirs)


class PermissionsFix(Family):
    name = "permissions_fix"
    domain = "system_operations"
    summary = "apply a permission / ownership / ACL policy to an application tree"

    def build(self, rng: random.Random, difficulty: str) -> Draft:
        app = rng.choice(pools.APPS)
        base = f"{rng.choice(['/srv', '/opt'])}/{app}"
        tree = _tree(rng, base)
        dirs = _dirs_of(tree, base)
        modes = {p: rng.choice(BAD_FILE_MODES) for p in tree}
        dir_modes = {d: rng.choice(BAD_DIR_MODES) for d in dirs}

        script_mode = rng.choice([0o755, 0o750, 0o700])
        key_mode = rng.choice([0o600, 0o400])
        conf_mode = rng.choice([0o640, 0o644] if difficulty == "hard" else [0o644, 0o640, 0o600])
        dir_mode = rng.choice([0o755, 0o750, 0o711])
        data_mode = rng.choice([0o640, 0o644, 0o660])
        log_mode = rng.choice([0o640, 0o644, 0o600])
        pool = {
            "sh": (script_mode, f"every `*.sh` file: mode `{script_mode:o}`"),
            "key": (key_mode, f"every file in `{base}/secrets/`: mode `{key_mode:o}`"),
            "conf": (conf_mode, f"every `*.conf` file: mode `{conf_mode:o}`"),
            "data": (data_mode, f"every file in `{base}/data/`: mode `{data_mode:o}`"),
            "log": (log_mode, f"every `*.log` file: mode `{log_mode:o}`"),
        }
        kinds = rng.sample(sorted(pool), 2) if difficulty == "easy" else ["sh", "key", "conf"]
        rules = [(k, pool[k][0], pool[k][1]) for k in kinds]
        rng.shuffle(rules)
        for kind, want, _ in rules:  # at least one file of each rule starts out wrong
            victim = rng.choice(sorted(p for p, k in tree.items() if k == kind))
            if modes[victim] == want:
                modes[victim] = 0o666

        want_modes: dict[str, int] = {}
        for path, kind in tree.items():
            for rule_kind, want, _ in rules:
                if kind == rule_kind:
                    want_modes[path] = want
        want_dir_modes: dict[str, int] = {}
        lines = [text for _, _, text in rules]
        setup = []
        owners: dict[str, str] = {}
        acl: dict[str, str] = {}
        if difficulty != "easy":
            lines.append(
                f"every directory, `{base}` included: mode `{dir_mode:o}`"
                + (f" (except `{base}/logs`, see below)" if difficulty == "hard" else "")
            )
            want_dir_modes = {d: dir_mode for d in dirs}
            dir_modes[base] = 0o777
        if difficulty == "hard":
            owner = rng.choice(pools.SERVICE_ACCOUNTS)
            group = rng.choice(pools.GROUPS)
            log_owner = rng.choice([a for a in pools.SERVICE_ACCOUNTS if a != owner])
            reader = rng.choice(pools.PEOPLE)
            setup += [
                add_group(group),
                add_user(owner, system=True),
                add_user(log_owner, system=True),
                add_user(reader, shell="/bin/bash"),
            ]
            lines.append(
                f"everything under `{base}` (itself included) owned by user `{owner}` and group "
                f"`{group}`, except `{base}/logs`"
            )
            lines.append(
                f"`{base}/logs` and the files in it owned by user `{log_owner}` and group `{group}`; "
                f"`{base}/logs` itself has mode `2770` (setgid)"
            )
            lines.append(
                f"user `{reader}` can read every `*.conf` file through an ACL entry (`user:{reader}:r--`), "
                "without changing the modes above"
            )
            for p in [*tree, *dirs]:
                owners[p] = f"{owner}:{group}"
            for p in [p for p in tree if tree[p] == "log"] + [f"{base}/logs"]:
                owners[p] = f"{log_owner}:{group}"
            want_dir_modes[f"{base}/logs"] = 0o2770
            acl = {p: f"user:{reader}:r" for p, k in tree.items() if k == "conf"}
        files = {p: _content(rng, k, p) for p, k in tree.items()}
        setup += [f"chmod {m:o} {p}" for p, m in sorted(modes.items())]
        setup += [f"chmod {m:o} {d}" for d, m in sorted(dir_modes.items())]
        unchanged = {p: m for p, m in modes.items() if p not in want_modes}
        if not want_dir_modes:
            unchanged.update({d: m for d, m in dir_modes.items()})

        instruction = (
            f"`{base}` holds an application's files: scripts in `bin/`, configuration in `conf/`, keys in `secrets/`, "
            "data in `data/` and logs in `logs/`. "
            f"Apply this policy:\n{bullets(lines)}\n\nLeave the modes of all other "
            f"files{' and directories' if not want_dir_modes else ''} unchanged.\n"
        )
        sol = []
        if difficulty == "hard":
            sol += [f"chown -R {owner}:{group} {base}", f"chown -R {log_owner}:{group} {base}/logs"]
        if difficulty != "easy":
            sol.append(f"find {base} -type d -exec chmod {dir_mode:o} {{}} +")
        rule_lines = {}
        for kind, want, _ in rules:
            if kind == "sh":
                rule_lines[kind] = f"find {base} -type f -name '*.sh' -exec chmod {want:o} {{}} +"
            elif kind in ("key", "data"):
                folder = "secrets" if kind == "key" else "data"
                rule_lines[kind] = f"find {base}/{folder} -type f -exec chmod {want:o} {{}} +"
            else:
                rule_lines[kind] = f"find {base} -type f -name '*.{kind}' -exec chmod {want:o} {{}} +"
        sol += rule_lines.values()
        if difficulty == "hard":
            sol.append(f"chmod 2770 {base}/logs")
            sol.append(f"find {base} -type f -name '*.conf' -exec setfacl -m u:{reader}:r {{}} +")
        solution = "\n".join(sol) + "\n"
        # Each near-miss skips one line of the policy: a rule's chmod, the directory modes, the setgid bit.
        skipped = kinds[:2] if difficulty == "easy" else kinds[:1]
        near_misses = {f"skips_{kind}_rule": bent(solution, rule_lines[kind] + "\n", "") for kind in skipped}
        if difficulty != "easy":
            dir_line = f"find {base} -type d -exec chmod {dir_mode:o} {{}} +\n"
            near_misses["skips_directory_modes"] = bent(solution, dir_line, "")
        if difficulty == "hard":
            near_misses["logs_without_setgid"] = bent(solution, f"chmod 2770 {base}/logs", f"chmod 770 {base}/logs")
        expected = {
            "modes": {p: m for p, m in sorted({**want_modes, **want_dir_modes}.items())},
            "unchanged": dict(sorted(unchanged.items())),
            "owners": dict(sorted(owners.items())),
            "acl": dict(sorted(acl.items())),
        }
        body = """
            def test_modes():
                for path, want in EXPECTED["modes"].items():
                    assert os.path.exists(path), f"{path} is missing"
                    assert mode_of(path) == want, f"{path}: mode {mode_of(path):o}, expected {want:o}"


            def test_other_modes_unchanged():
                for path, want in EXPECTED["unchanged"].items():
                    assert os.path.exists(path), f"{path} is missing"
                    assert mode_of(path) == want, f"{path}: mode changed to {mode_of(path):o} (was {want:o})"


            def test_owners_and_acls():
                for path, want in EXPECTED["owners"].items():
                    assert owner_of(path) == want, f"{path}: owned by {owner_of(path)}, expected {want}"
                for path, entry in EXPECTED["acl"].items():
                    out = subprocess.run(["getfacl", "-p", path], capture_output=True, text=True).stdout
                    lines = [line.split("#")[0].strip() for line in out.splitlines()]
                    assert any(line.startswith(entry) for line in lines), f"{path}: no ACL entry {entry}-- in {out!r}"
                    assert "effective:---" not in out.replace("\\t", "").replace(" ", ""), f"{path}: the ACL mask hides the entry"
                assert EXPECTED["modes"], "the policy names files"
            """
        tests = test_module(self.name, expected, body, helpers=("stat",))
        return Draft(
            instruction=instruction,
            tests=tests,
            solution=solution,
            outputs=[base],
            files=files,
            setup=setup,
            near_misses=near_misses,
        )


class PermissionAudit(Family):
    name = "permission_audit"
    domain = "system_operations"
    summary = "find world-writable, setuid and user-owned files; report them and fix the risky bits"

    def build(self, rng: random.Random, difficulty: str) -> Draft:
        base = rng.choice(
            ["/srv/shared", "/srv/projects", "/var/share", "/opt/tools", "/srv/www", "/home/shared", "/opt/scripts"]
        )
        users = pick(rng, pools.PEOPLE, 3)
        target_user = rng.choice(users)
        subdirs = pick(rng, ["docs", "bin", "scripts", "data", "tmp", "build", "releases"], rng.randint(3, 5))
        files: dict[str, str] = {}
        modes: dict[str, int] = {}
        owner: dict[str, str] = {}
        for sub in subdirs:
            for i in range(rng.randint(2, 4)):
                ext = rng.choice(["sh", "txt", "bin", "cfg", "py"])
                path = (
                    f"{base}/{sub}/{rng.choice(['report', 'tool', 'notes', 'run', 'sync', 'index', 'helper'])}{i}.{ext}"
                )
                files[path] = f"# {sub} {i}\n{rng.random():.6f}\n"
                modes[path] = rng.choice([0o644, 0o640, 0o755, 0o750, 0o600])
                owner[path] = rng.choice(users + ["root"])
        paths = sorted(files)
        world = sorted(rng.sample(paths, rng.randint(2, max(2, len(paths) // 3))))
        for p in world:
            modes[p] |= 0o002
        setuid: list[str] = []
        easy_kind = rng.choice(["world", "setuid", "owned", "group"]) if difficulty == "easy" else None
        if difficulty != "easy" or easy_kind == "setuid":
            executables = [p for p in paths if modes[p] & 0o100]
            for p in paths[: max(0, 2 - len(executables))]:
                modes[p] |= 0o755
            executables = [p for p in paths if modes[p] & 0o100]
            setuid = sorted(rng.sample(executables, min(len(executables), rng.randint(2, 3))))
            for p in setuid:
                modes[p] |= 0o4000
        for p in rng.sample(paths, max(0, 2 - sum(owner[p] == target_user for p in paths))):
            owner[p] = target_user
        owned = sorted(p for p in paths if owner[p] == target_user)
        setup = [add_user(u, shell="/bin/bash") for u in users]
        setup += [f"chown {owner[p]}:{owner[p] if owner[p] != 'root' else 'root'} {p}" for p in paths]
        setup += [f"chmod {modes[p]:o} {p}" for p in paths]  # after chown, which clears setuid bits
        out_dir = rng.choice(pools.OUT_DIRS)

        if easy_kind == "group":  # some files gain the group write bit
            for p in rng.sample(paths, rng.randint(2, max(2, len(paths) // 3))):
                modes[p] |= 0o020
            setup = [line for line in setup if not line.startswith("chmod")] + [
                f"chmod {modes[p]:o} {p}" for p in paths
            ]
        if difficulty == "easy":
            what, find, lines = {
                "world": ("writable by others (world-writable)", "-perm -o+w", world),
                "setuid": ("has the setuid bit set", "-perm -4000", setuid),
                "owned": (f"is owned by user `{target_user}`", f"-user {target_user}", owned),
                "group": ("is writable by its group", "-perm -g+w", sorted(p for p in paths if modes[p] & 0o020)),
            }[easy_kind]
            stem = {
                "world": "world_writable",
                "setuid": "setuid_files",
                "owned": target_user + "_files",
                "group": "group_writable",
            }[easy_kind]
            out = f"{out_dir}/{rng.choice([stem, 'audit_' + stem, stem + '_report'])}.txt"
            relative = rng.random() < 0.5
            if relative:
                lines = sorted(p[len(base) + 1 :] for p in lines)
            form = f"path relative to `{base}` (like `docs/notes1.txt`)" if relative else "absolute path"
            instruction = (
                f"Audit `{base}`: write to `{out}` the {form} of every regular file under it that {what}, "
                "one per line, sorted, nothing else. Do not change any file.\n"
            )
            solution = (
                f"mkdir -p {out_dir}\ncd {base}\nfind {'.' if relative else base} -type f {find} | "
                f"sed 's|^\\./||' | sort > {out}\n"
            )
            near_misses = {
                "reverse_sorted": bent(solution, f"| sort > {out}", f"| sort -r > {out}"),
                "relative_absolute_swapped": bent(
                    solution, f"find {'.' if relative else base} ", f"find {base if relative else '.'} "
                ),
            }
            expected = {"path": out, "lines": lines, "report": None, "fixed": {}}
            body = """
                def test_report_lines():
                    got = content_lines(EXPECTED["path"])
                    assert got == EXPECTED["lines"], f"{got} != {EXPECTED['lines']}"
                """
        else:
            out = f"{out_dir}/{rng.choice(['audit', 'permission_audit', 'fs_audit'])}.json"
            report = {"world_writable": world, "setuid": setuid, f"owned_by_{target_user}": owned}
            keys = ", ".join(f"`{k}`" for k in report)
            instruction = (
                f"Audit the regular files under `{base}` and write `{out}`: a JSON object with the keys {keys}, "
                "each a sorted list of absolute paths: "
                f"files writable by others, files with the setuid bit, and files owned by user `{target_user}`.\n"
            )
            if difficulty == "medium":
                instruction += "\nOnly report: do not change any file.\n"
            fixed = {}
            if difficulty == "hard":
                instruction += (
                    "\nThe report describes the files as you found them. Then fix them: remove the write bit for "
                    "others from the world-writable files "
                    "and the setuid bit from the setuid files, changing no other permission bits and no other file.\n"
                )
                for p in paths:
                    fixed[p] = modes[p] & ~0o002 & ~0o4000
            else:
                fixed = {p: modes[p] for p in paths}
            solution = f"mkdir -p {out_dir}\n" + python_block(f"""
                import json, os, pwd, stat
                base = {base!r}
                found = []
                for folder, _, names in os.walk(base):
                    found += [os.path.join(folder, n) for n in names if os.path.isfile(os.path.join(folder, n))]
                report = {{
                    "world_writable": sorted(p for p in found if os.stat(p).st_mode & stat.S_IWOTH),
                    "setuid": sorted(p for p in found if os.stat(p).st_mode & stat.S_ISUID),
                    {"owned_by_" + target_user!r}: sorted(p for p in found if pwd.getpwuid(os.stat(p).st_uid).pw_name == {target_user!r}),
                }}
                json.dump(report, open({out!r}, "w"), indent=2)
                """)
            fix = (
                f"find {base} -type f -perm -o+w -exec chmod o-w {{}} +\n"
                f"find {base} -type f -perm -4000 -exec chmod u-s {{}} +\n"
            )
            world_code = "sorted(p for p in found if os.stat(p).st_mode & stat.S_IWOTH)"
            near_misses = {
                "lists_unsorted": bent(solution, world_code, world_code[:-1].replace("(", "((", 1) + "), reverse=True)")
            }
            if difficulty == "hard":
                near_misses["report_after_fix"] = f"mkdir -p {out_dir}\n" + fix + solution.split("\n", 1)[1] + "\n"
                solution += "\n" + fix
                near_misses["keeps_setuid"] = bent(solution, fix.splitlines()[1] + "\n", "")
            else:
                near_misses["fixes_files"] = solution + "\n" + fix
            expected = {"path": out, "report": report, "fixed": fixed}
            body = """
                def test_report():
                    data = load_json(EXPECTED["path"])
                    assert isinstance(data, dict), "the report must be a JSON object"
                    for key, want in EXPECTED["report"].items():
                        assert key in data, f"missing key {key}"
                        assert data[key] == want, f"{key}: {data[key]} != {want} (a sorted list)"


                def test_file_modes():
                    for path, want in EXPECTED["fixed"].items():
                        assert os.path.isfile(path), f"{path} is missing"
                        assert mode_of(path) == want, f"{path}: mode {mode_of(path):o}, expected {want:o}"
                """
        tests = test_module(self.name, expected, body, helpers=("json", "stat"))
        return Draft(
            instruction=instruction,
            tests=tests,
            solution=solution,
            outputs=[out],
            files=files,
            setup=setup,
            near_misses=near_misses,
        )


EXTENSIONS = ["log", "csv", "tar", "jpg", "txt", "bin", "json"]
SUBFOLDERS = ["docs", "media", "backups", "exports", "tmp", "archive"]


class DiskUsageReport(Family):
    name = "disk_usage_report"
    domain = "system_operations"
    summary = "report disk usage per directory, largest files, per owner and per extension"

    def build(self, rng: random.Random, difficulty: str) -> Draft:
        root = rng.choice(
            ["/srv/storage", "/data/home", "/var/lib/shares", "/srv/projects", "/srv/nas/users", "/data/apps"]
        )
        tops = pick(
            rng, pools.PEOPLE if any(w in root for w in ("home", "shares", "users")) else pools.APPS, rng.randint(3, 5)
        )
        sizes_used: set[int] = set()
        entries = []  # (path, size, owner, hidden)
        for top in tops:
            for _ in range(rng.randint(2, 6)):
                sub = rng.choice(SUBFOLDERS + ["", ""])
                hidden = difficulty == "hard" and rng.random() < 0.2
                name = f"{rng.choice(['file', 'data', 'img', 'dump', 'part'])}{rng.randint(1, 99)}"
                ext = rng.choice(EXTENSIONS + [""])
                fname = f"{name}.{ext}" if ext else name
                if hidden:
                    fname = "." + fname if rng.random() < 0.5 else f".cache/{fname}"
                path = "/".join(x for x in [root, top, sub, fname] if x)
                if any(path == e[0] for e in entries):
                    continue
                size = rng.randint(200, 120_000)
                while size in sizes_used:
                    size += 1
                sizes_used.add(size)
                entries.append(
                    (path, size, rng.choice(tops) if difficulty == "hard" and "home" not in root else top, hidden)
                )
        tops = [t for t in tops if any(p.startswith(f"{root}/{t}/") for p, _, _, _ in entries)]
        if difficulty == "hard" and not any(hidden for *_, hidden in entries):  # "skip hidden" is tested
            owner = entries[0][2]
            entries.append((f"{root}/{tops[0]}/.cache/blob{rng.randint(1, 99)}", max(sizes_used) + 1, owner, True))
        if difficulty == "medium":  # the sorted list of large files has two entries at least
            ranked = sorted(entries, key=lambda e: -e[1])
            for i in (0, 1):
                if ranked[i][1] <= 16 * 1024:
                    path, _, owner, hidden = ranked[i]
                    entries[entries.index(ranked[i])] = (path, max(sizes_used) + 20_000 + i, owner, hidden)
        setup = [f"mkdir -p {p.rsplit('/', 1)[0]} && head -c {s} /dev/urandom > {p}" for p, s, _, _ in entries]
        owners = sorted({o for _, _, o, _ in entries})
        if difficulty == "hard":
            setup = [add_user(o) for o in owners] + setup
            setup += [f"chown {o} {p}" for p, _, o, _ in entries]
            links = rng.sample(entries, 2)
            setup += [f"ln -s {p} {root}/{tops[0]}/link-{i}" for i, (p, _, _, _) in enumerate(links)]
        visible = [e for e in entries if not e[3]]
        out_dir = rng.choice(pools.OUT_DIRS)

        if difficulty == "easy":
            only = rng.choice([None, None, *EXTENSIONS])
            if only and all(p.endswith("." + only) for p, *_ in entries):
                only = None  # the extension filter must leave something out
            by_name = rng.random() < 0.4
            out = f"{out_dir}/{rng.choice(['usage', 'disk_usage', 'du_report'])}{'_' + only if only else ''}.csv"
            totals = {
                t: sum(
                    s for p, s, _, _ in entries if p.startswith(f"{root}/{t}/") and (not only or p.endswith("." + only))
                )
                for t in tops
            }
            rows = sorted(
                ([t, b] for t, b in totals.items()), key=(lambda r: r[0]) if by_name else (lambda r: (-r[1], r[0]))
            )
            scope = f"`*.{only}` files" if only else "regular files"
            instruction = (
                f"Each folder directly under `{root}` belongs to one "
                f"{'user' if tops[0] in pools.PEOPLE else 'project'}.\n\n"
                f"Write `{out}` with the header `directory,bytes`: one row per such folder (its name, not its path) "
                f"with the total size in bytes of all {scope} below it "
                "(apparent sizes, i.e. the sum of the file lengths; 0 when there are none), "
                f"{'sorted by folder name' if by_name else 'largest first, ties by name'}.\n"
            )
            pattern = f"-name '*.{only}'" if only else ""
            solution = (
                f"mkdir -p {out_dir}\n{{ echo directory,bytes; for d in {root}/*/; do n=$(basename $d); "
                f"b=$(find $d -type f {pattern} -printf '%s\\n' | awk '{{s+=$1}} END {{print s+0}}'); echo \"$n,$b\"; "
                f"done | sort -t, {'-k1,1' if by_name else '-k2,2nr -k1,1'}; }} > {out}\n"
            )
            near_misses = {"no_header": bent(solution, "echo directory,bytes; ", "")}
            if only:
                near_misses["ignores_extension_filter"] = bent(solution, f"-type f {pattern} ", "-type f ")
            else:
                near_misses["disk_usage_not_apparent"] = bent(
                    solution,
                    "$(find $d -type f  -printf '%s\\n' | awk '{s+=$1} END {print s+0}')",
                    "$(du -s --block-size=1 $d | cut -f1)",
                )
            expected = {"path": out, "header": ["directory", "bytes"], "rows": rows}
            body = """
                def test_usage_table():
                    check_csv_table(EXPECTED["path"], EXPECTED["header"], EXPECTED["rows"], {"bytes"}, ordered=True)
                """
            helpers = ("csv",)
        elif difficulty == "medium":
            top_n = rng.randint(3, 5)
            out = f"{out_dir}/{rng.choice(['storage_report', 'usage_summary', 'space_report'])}.json"
            largest = [{"path": p, "bytes": s} for p, s, _, _ in sorted(entries, key=lambda e: -e[1])[:top_n]]
            by_dir = {t: sum(s for p, s, _, _ in entries if p.startswith(f"{root}/{t}/")) for t in tops}
            kib = rng.choice([k for k in (16, 32, 48, 64, 100) if sum(s > k * 1024 for _, s, _, _ in entries) >= 2])
            over = sorted(p for p, s, _, _ in entries if s > kib * 1024)
            instruction = (
                f"Write `{out}`, a JSON report on the regular files under `{root}` (sizes in bytes, apparent size):\n"
                + bullets(
                    [
                        "`total_bytes`: the size of all of them together",
                        (
                            f"`largest_files`: the {top_n} largest, as a list of "
                            '`{"path": <absolute path>, "bytes": <size>}`, largest first'
                        ),
                        (
                            f"`by_directory`: an object mapping the name of each folder directly under `{root}` to "
                            "the size of the files below it"
                        ),
                        (
                            f"`over_{kib}k`: the sorted absolute paths of the files larger "
                            f"than {kib} KiB ({kib * 1024} bytes)"
                        ),
                    ]
                )
                + "\n"
            )
            solution = f"mkdir -p {out_dir}\n" + python_block(f"""
                import json, os
                root = {root!r}
                files = []
                for folder, _, names in os.walk(root):
                    for n in names:
                        p = os.path.join(folder, n)
                        if os.path.isfile(p) and not os.path.islink(p):
                            files.append((p, os.path.getsize(p)))
                files.sort(key=lambda f: -f[1])
                by_dir = {{d: sum(s for p, s in files if p.startswith(os.path.join(root, d) + "/")) for d in os.listdir(root)}}
                report = {{"total_bytes": sum(s for _, s in files), "largest_files": [{{"path": p, "bytes": s}} for p, s in files[:{top_n}]], "by_directory": by_dir,
                          "over_{kib}k": sorted(p for p, s in files if s > {kib * 1024})}}
                json.dump(report, open({out!r}, "w"), indent=2)
                """)
            over_code = f"sorted(p for p, s in files if s > {kib * 1024})"
            near_misses = {
                "over_list_unsorted": bent(solution, over_code, over_code[:-1] + ", reverse=True)"),
                "by_directory_full_paths": bent(solution, "by_dir = {d: sum(", "by_dir = {os.path.join(root, d): sum("),
            }
            expected = {
                "path": out,
                "total": sum(s for _, s, _, _ in entries),
                "largest": largest,
                "by_dir": by_dir,
                "over_key": f"over_{kib}k",
                "over": over,
            }
            body = """
                def test_storage_report():
                    data = load_json(EXPECTED["path"])
                    assert int(data["total_bytes"]) == EXPECTED["total"], f"total_bytes {data['total_bytes']} != {EXPECTED['total']}"
                    got = [(d["path"], int(d["bytes"])) for d in data["largest_files"]]
                    want = [(d["path"], d["bytes"]) for d in EXPECTED["largest"]]
                    assert got == want, f"largest_files {got} != {want}"
                    got_dirs = {k: int(v) for k, v in data["by_directory"].items()}
                    assert got_dirs == EXPECTED["by_dir"], f"by_directory {got_dirs} != {EXPECTED['by_dir']}"
                    assert data[EXPECTED["over_key"]] == EXPECTED["over"], f"{EXPECTED['over_key']} {data[EXPECTED['over_key']]} != {EXPECTED['over']} (sorted)"
                """
            helpers = ("json",)
        else:
            out = f"{out_dir}/{rng.choice(['ownership_usage', 'usage_breakdown', 'storage_breakdown'])}.json"
            skip = rng.choice([None, *EXTENSIONS])
            second = rng.choice(["by_extension", "by_folder"])
            by_owner: dict[str, int] = {}
            by_second: dict[str, int] = {}
            for p, s, o, _ in visible:
                if skip and p.endswith("." + skip):
                    continue
                by_owner[o] = by_owner.get(o, 0) + s
                name = p.rsplit("/", 1)[1]
                if second == "by_extension":
                    key = name.rsplit(".", 1)[1] if "." in name else "(none)"
                else:
                    key = p[len(root) + 1 :].split("/", 1)[0]
                by_second[key] = by_second.get(key, 0) + s
            second_text = (
                "`by_extension`: extension (text after the last `.`, no dot; `(none)` if there is none) -> bytes"
                if second == "by_extension"
                else f"`by_folder`: name of the folder directly under `{root}` -> bytes"
            )
            instruction = (
                f"Write `{out}`, a JSON report on the regular files under `{root}` (apparent sizes in bytes). "
                "Skip hidden files and hidden folders (names starting with `.`)"
                + (f" and `*.{skip}` files" if skip else "")
                + "; do not follow or count symbolic links.\n"
                + bullets(["`by_owner`: owning user name -> bytes", second_text])
                + "\n"
            )
            skip_test = f' or n.endswith(".{skip}")' if skip else ""
            key_code = (
                'n.rsplit(".", 1)[1] if "." in n else "(none)"'
                if second == "by_extension"
                else 'os.path.relpath(p, root).split("/", 1)[0]'
            )
            solution = f"mkdir -p {out_dir}\n" + python_block(f"""
                import json, os, pwd
                root = {root!r}
                by_owner, by_second = {{}}, {{}}
                for folder, dirs, names in os.walk(root):
                    dirs[:] = [d for d in dirs if not d.startswith(".")]
                    for n in names:
                        p = os.path.join(folder, n)
                        if n.startswith(".") or os.path.islink(p) or not os.path.isfile(p){skip_test}:
                            continue
                        st = os.stat(p)
                        owner = pwd.getpwuid(st.st_uid).pw_name
                        key = {key_code}
                        by_owner[owner] = by_owner.get(owner, 0) + st.st_size
                        by_second[key] = by_second.get(key, 0) + st.st_size
                json.dump({{"by_owner": by_owner, {second!r}: by_second}}, open({out!r}, "w"), indent=2)
                """)
            near_misses = {
                "counts_hidden": bent(
                    bent(solution, '    dirs[:] = [d for d in dirs if not d.startswith(".")]\n', ""),
                    'if n.startswith(".") or ',
                    "if ",
                ),
                "follows_symlinks": bent(solution, "os.path.islink(p) or ", ""),
            }
            expected = {"path": out, "by_owner": by_owner, "second": second, "by_second": by_second}
            body = """
                def test_breakdown():
                    data = load_json(EXPECTED["path"])
                    got = {k: int(v) for k, v in data["by_owner"].items() if int(v)}
                    assert got == EXPECTED["by_owner"], f"by_owner {got} != {EXPECTED['by_owner']}"
                    got = {k.lstrip("."): int(v) for k, v in data[EXPECTED["second"]].items() if int(v)}
                    assert got == EXPECTED["by_second"], f"{EXPECTED['second']} {got} != {EXPECTED['by_second']}"
                """
            helpers = ("json",)
        tests = test_module(self.name, expected, body, helpers=helpers)
        return Draft(
            instruction=instruction,
            tests=tests,
            solution=solution,
            outputs=[out],
            setup=setup,
            near_misses=near_misses,
        )


class StaleFileCleanup(Family):
    name = "stale_file_cleanup"
    domain = "system_operations"
    summary = "delete or archive files last modified before a date, with exceptions and a removal report"

    def build(self, rng: random.Random, difficulty: str) -> Draft:
        app = rng.choice(pools.APPS)
        base = rng.choice([f"/var/cache/{app}", f"/srv/{app}/tmp", f"/var/tmp/{app}", f"/srv/{app}/spool"])
        cutoff_month = rng.randint(3, 10)
        cutoff_day = rng.randint(1, 28)
        cutoff = f"2024-{cutoff_month:02d}-{cutoff_day:02d}"
        files: dict[str, str] = {}
        mtimes: dict[str, str] = {}
        subdirs = pick(rng, ["sessions", "thumbs", "exports", "uploads", "jobs", "reports"], rng.randint(2, 3))
        if difficulty == "hard":
            subdirs.append("keep")
        for sub in subdirs:
            for i in range(rng.randint(2, 5)):
                ext = rng.choice(["log", "tmp", "dat", "json"] if difficulty != "easy" else ["tmp", "dat", "json"])
                path = f"{base}/{sub}/{rng.choice(['item', 'chunk', 'entry', 'job'])}-{i}{rng.randint(10, 99)}.{ext}"
                month = rng.randint(1, 12)
                if month == cutoff_month:
                    month = cutoff_month - 1
                files[path] = f"{sub} {i} {rng.random():.6f}\n"
                mtimes[path] = (
                    f"2024-{month:02d}-{rng.randint(1, 28):02d} {rng.randint(0, 23):02d}:{rng.randint(1, 59):02d}:00"
                )
            if difficulty == "hard" and rng.random() < 0.6:
                files[f"{base}/{sub}/.keep"] = ""
                mtimes[f"{base}/{sub}/.keep"] = "2023-01-01 00:00:00"
        # every rule of the task applies to at least one file: an old log to archive, an old file to delete
        plain_dir = f"{base}/{subdirs[0]}"
        old_mtime = (
            f"2024-{cutoff_month - 1:02d}-{rng.randint(2, 27):02d} {rng.randint(0, 23):02d}:{rng.randint(1, 59):02d}:00"
        )
        # A folder whose files are all old, so the rule about directories (keep them; hard: remove the
        # ones left empty) is tested in every instance.
        emptied = f"{base}/{subdirs[1]}"
        for path in [p for p in files if p.startswith(emptied + "/")]:
            if path.endswith("/.keep"):
                del files[path], mtimes[path]
            else:
                mtimes[path] = f"2024-{rng.randint(1, cutoff_month - 1):02d}-{rng.randint(1, 28):02d} 12:00:00"
        # Files either side of the cutoff by hours, so the cutoff's day and time are tested too.
        day_before = datetime.date(2024, cutoff_month, cutoff_day) - datetime.timedelta(days=1)
        for stem, ext, mtime in (("edge", "dat", f"{cutoff} 06:00:00"), ("eve", "tmp", f"{day_before} 18:00:00")):
            edge = f"{plain_dir}/{stem}-{rng.randint(10, 99)}.{ext}"
            files[edge], mtimes[edge] = f"{stem} {rng.random():.6f}\n", mtime
        if difficulty == "hard":
            # something old to leave alone in keep/, and a .keep file outside it
            keep_files = sorted(p for p in files if p.startswith(f"{base}/keep/") and not p.endswith("/.keep"))
            mtimes[keep_files[0]] = old_mtime
            files[f"{plain_dir}/.keep"], mtimes[f"{plain_dir}/.keep"] = "", "2023-01-01 00:00:00"
        if difficulty != "easy" and not any(
            p.endswith(".log") and mtimes[p] < cutoff and "/keep/" not in p for p in files
        ):
            extra = f"{plain_dir}/stale-{rng.randint(10, 99)}.log"
            files[extra], mtimes[extra] = f"old log {rng.random():.6f}\n", old_mtime
        if not any(not p.endswith((".log", "/.keep")) and mtimes[p] < cutoff and "/keep/" not in p for p in files):
            extra = f"{plain_dir}/leftover-{rng.randint(10, 99)}.tmp"
            files[extra], mtimes[extra] = f"leftover {rng.random():.6f}\n", old_mtime
        old = sorted(p for p, m in mtimes.items() if m < cutoff)
        setup = [f"touch -d '{m}' {p}" for p, m in sorted(mtimes.items())]
        archive = f"/srv/archive/{app}"
        report = None
        if difficulty == "easy":
            removed = old
            moved: list[str] = []
            instruction = (
                f"Clean up `{base}`: delete every regular file below it that was last modified before "
                f"`{cutoff} 00:00:00` (UTC). Keep all other files and all directories.\n"
            )
            solution = f"find {base} -type f ! -newermt '{cutoff} 00:00:00' -delete\n"
            near_misses = {
                "removes_empty_dirs": solution + f"find {base} -mindepth 1 -type d -empty -delete\n",
                "cutoff_day_late": bent(solution, "00:00:00", "23:59:59"),
            }
        elif difficulty == "medium":
            moved = [p for p in old if p.endswith(".log")]
            removed = [p for p in old if not p.endswith(".log")]
            instruction = (
                f"Clean up `{base}`; the cutoff is `{cutoff} 00:00:00` (UTC, last modification time):\n"
                + bullets(
                    [
                        (
                            f"move every `*.log` file below it modified before the cutoff into `{archive}/`, "
                            f"keeping its path relative to `{base}` (so `{base}/x/a.log` goes to `{archive}/x/a.log`)"
                        ),
                        "delete every other regular file modified before the cutoff",
                        "leave newer files and all directories in place",
                    ]
                )
                + "\n"
            )
            solution = (
                f"cd {base}\n"
                f"find . -type f -name '*.log' ! -newermt '{cutoff} 00:00:00' | while read -r f; "
                f'do mkdir -p {archive}/$(dirname "$f"); mv "$f" {archive}/"$f"; done\n'
                f"find . -type f ! -newermt '{cutoff} 00:00:00' -delete\n"
            )
            move = f'do mkdir -p {archive}/$(dirname "$f"); mv "$f" {archive}/"$f"; done'
            near_misses = {
                "deletes_old_logs": solution.replace(solution.splitlines()[1] + "\n", ""),
                "flattens_archive": bent(solution, move, f'do mkdir -p {archive}; mv "$f" {archive}/; done'),
                "removes_empty_dirs": solution + f"find {base} -mindepth 1 -type d -empty -delete\n",
                "cutoff_day_late": bent(solution, "00:00:00", "23:59:59"),
            }
        else:
            protected = [p for p in old if f"{base}/keep/" in p or p.endswith("/.keep")]
            removable = [p for p in old if p not in protected]
            moved = [p for p in removable if p.endswith(".log")]
            removed = [p for p in removable if not p.endswith(".log")]
            report = f"{rng.choice(pools.OUT_DIRS)}/{app}_cleanup.txt"
            instruction = (
                f"Clean up `{base}`; the cutoff is `{cutoff} 00:00:00` (UTC, last modification time):\n"
                + bullets(
                    [
                        f"never touch anything in `{base}/keep/`, nor any file named `.keep`",
                        (
                            f"move every other `*.log` file modified before the cutoff into `{archive}/`, "
                            f"keeping its path relative to `{base}`"
                        ),
                        "delete every other regular file modified before the cutoff",
                        (
                            "write the absolute original paths of the files you moved or deleted to "
                            f"`{report}`, one per line, sorted"
                        ),
                        f"then remove directories under `{base}` that are left empty",
                    ]
                )
                + "\n"
            )
            solution = f"mkdir -p {report.rsplit('/', 1)[0]}\n" + python_block(f"""
                import os, shutil
                from datetime import datetime, timezone
                base, archive = {base!r}, {archive!r}
                cutoff = datetime(2024, {cutoff_month}, {cutoff_day}, tzinfo=timezone.utc).timestamp()
                done = []
                for folder, dirs, names in os.walk(base):
                    if folder == os.path.join(base, "keep") or folder.startswith(os.path.join(base, "keep") + "/"):
                        continue
                    for n in names:
                        p = os.path.join(folder, n)
                        if n == ".keep" or os.path.getmtime(p) >= cutoff:
                            continue
                        if n.endswith(".log"):
                            target = os.path.join(archive, os.path.relpath(p, base))
                            os.makedirs(os.path.dirname(target), exist_ok=True)
                            shutil.move(p, target)
                        else:
                            os.remove(p)
                        done.append(p)
                open({report!r}, "w").write("".join(p + "\\n" for p in sorted(done)))
                for folder, dirs, names in sorted(os.walk(base), key=lambda w: -len(w[0])):
                    if folder != base and not os.listdir(folder):
                        os.rmdir(folder)
                """)
            skip_keep = (
                '    if folder == os.path.join(base, "keep") or folder.startswith(os.path.join(base, "keep") + "/"):\n'
                "        continue\n"
            )
            near_misses = {
                "keeps_empty_dirs": solution.split("for folder, dirs, names in sorted(")[0] + "PY\n",
                "touches_keep_dir": bent(solution, skip_keep, ""),
                "deletes_dot_keep": bent(solution, 'if n == ".keep" or ', "if "),
            }
        kept = sorted(p for p in files if p not in removed and p not in moved)
        kept_dirs = sorted(
            {p.rsplit("/", 1)[0] for p in kept}
            | ({base} if difficulty == "hard" else {p.rsplit("/", 1)[0] for p in files})
        )
        gone_dirs = sorted({p.rsplit("/", 1)[0] for p in files} - set(kept_dirs)) if difficulty == "hard" else []
        expected = {
            "kept": {p: files[p] for p in kept},
            "removed": removed,
            "moved": {f"{archive}/{p[len(base) + 1 :]}": files[p] for p in moved},
            "moved_from": moved,
            "dirs": kept_dirs,
            "gone_dirs": gone_dirs,
            "report": report,
            "report_lines": sorted(removed + moved),
        }
        body = """
            def test_kept_files_untouched():
                for path, text in EXPECTED["kept"].items():
                    assert os.path.isfile(path), f"{path} should have been kept"
                    assert read_text(path) == text, f"{path} was modified"


            def test_old_files_gone():
                for path in EXPECTED["removed"] + EXPECTED["moved_from"]:
                    assert not os.path.lexists(path), f"{path} should be gone"


            def test_archived_files():
                for path, text in EXPECTED["moved"].items():
                    assert os.path.isfile(path), f"{path} should exist"
                    assert read_text(path) == text, f"{path} has different content"


            def test_directories():
                for path in EXPECTED["dirs"]:
                    assert os.path.isdir(path), f"directory {path} should still exist"
                for path in EXPECTED["gone_dirs"]:
                    assert not os.path.exists(path), f"empty directory {path} should be removed"
                if EXPECTED["report"]:
                    assert content_lines(EXPECTED["report"]) == EXPECTED["report_lines"], "the report does not list the moved and deleted files"
            """
        outputs = [base] + ([archive] if moved or difficulty == "medium" else []) + ([report] if report else [])
        tests = test_module(self.name, expected, body)
        return Draft(
            instruction=instruction,
            tests=tests,
            solution=solution,
            outputs=outputs,
            files=files,
            setup=setup,
            near_misses=near_misses,
        )
