"""Archive families: make backups with exclusions and manifests; restore files from dated archives."""

from __future__ import annotations

import hashlib
import random

from taskforge.forge import pools
from taskforge.forge.base import Draft, Family, bent
from taskforge.forge.common import bullets, pick, python_block, test_module

STAGE = "/tmp/forge-stage"
EXCLUDE_FILES = ["*.log", "*.tmp", "*.bak"]
EXCLUDE_DIRS = ["cache", "node_modules", "tmp", "__pycache__"]
DOC_WORDS = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa"]


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _source_tree(rng: random.Random, base: str, skip_ext: str, skip_dir: str | None) -> dict[str, str]:
    tree: dict[str, str] = {}
    for sub in pick(rng, ["src", "docs", "config", "scripts", "assets"], rng.randint(2, 4)):
        for i in range(rng.randint(1, 3)):
            ext = {"src": "py", "docs": "md", "config": "ini", "scripts": "sh", "assets": "svg"}[sub]
            tree[f"{base}/{sub}/{rng.choice(DOC_WORDS)}{i}.{ext}"] = f"{sub} {i} {rng.randint(0, 10**9)}\n"
    tree[f"{base}/README.md"] = f"# {base.rsplit('/', 1)[1]}\n{rng.randint(0, 10**9)}\n"
    for i in range(rng.randint(1, 3)):
        tree[f"{base}/{rng.choice(['run', 'build', 'debug', 'old'])}{i}{skip_ext[1:]}"] = f"noise {rng.random()}\n"
    if skip_dir:
        for i in range(rng.randint(1, 3)):
            tree[f"{base}/{skip_dir}/blob{i}.dat"] = f"cached {rng.random()}\n"
    return tree


ARCHIVE_TEST = """
import hashlib
import tarfile


def archive_members(path):
    assert os.path.isfile(path), f"{path} does not exist"
    try:
        with tarfile.open(path, "r:*") as tar:
            return {m.name.lstrip("./").lstrip("/"): (hashlib.sha256(tar.extractfile(m).read()).hexdigest(), m.mode & 0o7777) for m in tar.getmembers() if m.isfile()}
    except tarfile.TarError as exc:
        raise AssertionError(f"{path} is not a readable tar archive: {exc}") from None


def test_archive_contents():
    got = archive_members(EXPECTED["archive"])
    want = EXPECTED["members"]
    assert sorted(got) == sorted(want), f"members {sorted(got)} != {sorted(want)}"
    for name, digest in want.items():
        assert got[name][0] == digest, f"{name}: content differs from the source file"
    for name, mode in EXPECTED["modes"].items():
        assert got[name][1] == mode, f"{name}: archived mode {got[name][1]:o}, expected {mode:o}"


def test_format():
    with open(EXPECTED["archive"], "rb") as handle:
        magic = handle.read(6)
    want = {"gz": b"\\x1f\\x8b", "xz": b"\\xfd7zXZ"}[EXPECTED["compression"]]
    assert magic.startswith(want), f"{EXPECTED['archive']} is not {EXPECTED['compression']}-compressed"


def test_manifest():
    if not EXPECTED["manifest"]:
        assert not EXPECTED["manifest_lines"]
        return
    got = {}
    for line in content_lines(EXPECTED["manifest"]):
        digest, _, name = line.partition("  ")
        got[name.strip().lstrip("./")] = digest.strip()
    assert got == EXPECTED["manifest_lines"], f"manifest {got} != {EXPECTED['manifest_lines']}"
"""


class ArchiveBackup(Family):
    name = "archive_backup"
    domain = "system_operations"
    summary = "create tar.gz / tar.xz backups with exclusions, incremental selection and a sha256 manifest"

    def build(self, rng: random.Random, difficulty: str) -> Draft:
        app = rng.choice(pools.APPS)
        parent = rng.choice(["/home/user", "/srv", "/opt"])
        base = f"{parent}/{app}"
        skip_ext = rng.choice(EXCLUDE_FILES)
        skip_dir = rng.choice(EXCLUDE_DIRS) if difficulty != "easy" else None
        tree = _source_tree(rng, base, skip_ext, skip_dir)
        out_dir = rng.choice(["/backup", f"/var/backups/{app}", "/srv/backups"])
        compression = "xz" if difficulty == "hard" else "gz"
        archive = f"{out_dir}/{app}-{rng.choice(['backup', 'snapshot', 'full'])}.tar.{compression}"
        if difficulty == "hard":
            archive = archive.replace("-full", "-incr").replace("-backup", "-incr").replace("-snapshot", "-incr")
        manifest = archive.rsplit(".tar", 1)[0] + ".sha256" if difficulty != "easy" else None
        setup = [f"chmod 755 {p}" for p in tree if p.endswith(".sh")]
        since = None
        chosen = [p for p in tree if not p.endswith(skip_ext[1:]) and (skip_dir is None or f"/{skip_dir}/" not in p)]
        if difficulty == "hard":
            since_month = rng.randint(4, 9)
            since = f"2024-{since_month:02d}-01"
            recent = set()
            for p in sorted(tree):
                month = rng.randint(1, 12)
                month = month if month != since_month else since_month + 1
                setup.append(f"touch -d '2024-{month:02d}-{rng.randint(2, 27):02d} 12:00:00' {p}")
                if month > since_month:
                    recent.add(p)
            if set(chosen) <= recent:  # an old file too, so the date rule is tested
                p = sorted(chosen)[-1]
                setup.append(f"touch -d '2024-01-10 12:00:00' {p}")
                recent.discard(p)
            if not recent & set(chosen):
                p = sorted(chosen)[0]
                setup.append(f"touch -d '2024-{since_month:02d}-15 12:00:00' {p}")
                recent.add(p)
            chosen = [p for p in chosen if p in recent]
        members = {f"{app}/{p[len(base) + 1 :]}": _sha(tree[p]) for p in sorted(chosen)}
        modes = (
            {f"{app}/{p[len(base) + 1 :]}": 0o755 for p in chosen if p.endswith(".sh")} if difficulty == "hard" else {}
        )

        rules = [
            f"member paths start with `{app}/` (for example `{app}/README.md`)",
            f"leave out every `{skip_ext}` file",
        ]
        if skip_dir:
            rules.append(f"leave out any `{skip_dir}/` directory and its contents")
        if since:
            rules.insert(0, f"only files last modified on or after `{since} 00:00:00` (UTC)")
            rules.append("keep the files' permission bits")
        if manifest:
            rules.append(
                f"write `{manifest}` listing every archived file as `<sha256 hex digest>  <member path>` (two spaces, "
                "the format of `sha256sum`), one line per file"
            )
        kind = "an xz-compressed tar archive" if compression == "xz" else "a gzip-compressed tar archive"
        instruction = f"Back up `{base}`: create `{archive}`, {kind} of its regular files:\n{bullets(rules)}\n"

        excludes = f"--exclude='{skip_ext}'" + (f" --exclude='{skip_dir}'" if skip_dir else "")
        if difficulty == "easy":
            solution = f"mkdir -p {out_dir}\ntar -czf {archive} -C {parent} {excludes} {app}\n"
            near_misses = {
                "keeps_excluded_files": bent(solution, f" {excludes}", ""),
                "members_without_folder": bent(solution, f"-C {parent} {excludes} {app}", f"-C {base} {excludes} ."),
            }
        else:
            find = f"find {app} -type f ! -name '{skip_ext}' ! -path '*/{skip_dir}/*'" + (
                f" -newermt '{since} 00:00:00'" if since else ""
            )
            flag = "-cJf" if compression == "xz" else "-czf"
            solution = (
                f"mkdir -p {out_dir}\ncd {parent}\n{find} | sort > /tmp/backup-list.txt\n"
                f"tar {flag} {archive} --no-recursion -T /tmp/backup-list.txt\n"
                f"xargs -d '\\n' sha256sum < /tmp/backup-list.txt > {manifest}\n"
            )
            absolute = f"sed 's|^|{parent}/|' /tmp/backup-list.txt | xargs -d '\\n' sha256sum > {manifest}"
            near_misses = {
                "manifest_absolute_paths": bent(
                    solution, f"xargs -d '\\n' sha256sum < /tmp/backup-list.txt > {manifest}", absolute
                )
            }
            if since:
                near_misses["ignores_date"] = bent(solution, f" -newermt '{since} 00:00:00'", "")
                near_misses["gzip_not_xz"] = bent(solution, "tar -cJf", "tar -czf")
            else:
                near_misses["keeps_excluded_dir"] = bent(solution, f" ! -path '*/{skip_dir}/*'", "")
        expected = {
            "archive": archive,
            "members": members,
            "modes": modes,
            "compression": compression,
            "manifest": manifest,
            "manifest_lines": members if manifest else {},
        }
        tests = test_module(self.name, expected, ARCHIVE_TEST)
        outputs = [archive] + ([manifest] if manifest else [])
        return Draft(
            instruction=instruction,
            tests=tests,
            solution=solution,
            outputs=outputs,
            files=tree,
            setup=setup,
            near_misses=near_misses,
        )


FORMATS = {
    "tar.gz": "tar -czf {out} {app}",
    "tar.bz2": "tar -cjf {out} {app}",
    "tar.xz": "tar -cJf {out} {app}",
    "zip": "zip -qr {out} {app}",
}


class ArchiveRestore(Family):
    name = "archive_restore"
    domain = "system_operations"
    summary = "restore whole archives or single files from the newest dated backup that holds them"

    def build(self, rng: random.Random, difficulty: str) -> Draft:
        app = rng.choice(pools.APPS)
        store = rng.choice([f"/srv/backups/{app}", f"/var/backups/{app}", f"/backup/{app}"])
        restore = rng.choice(["/home/user/restore", f"/srv/{app}-restore", "/tmp/restore"])
        n = rng.randint(3, 5)
        dates = sorted(
            f"2024-{m:02d}-{d:02d}" for m, d in {(rng.randint(1, 12), rng.randint(1, 28)) for _ in range(n * 2)}
        )[-n:]
        formats = ["tar.gz"] * n if difficulty != "hard" else [rng.choice(sorted(FORMATS)) for _ in dates]
        candidates = [f"conf/{w}.ini" for w in pick(rng, ["app", "db", "cache", "mail", "auth"], 3)] + [
            f"bin/{w}.sh" for w in pick(rng, ["start", "stop", "sync"], 2)
        ]
        archives = []  # (name, {relative path: text})
        for date, fmt in zip(dates, formats, strict=False):
            content = {"VERSION": f"{date}\n"}
            for rel in candidates:
                if rng.random() < 0.6:
                    content[rel] = _version_of(rng, rel, date)
            archives.append((f"{app}-{date}.{fmt}", content))
        targets: list[str] = []
        if difficulty != "easy":
            # prefer files the newest archive lacks, so "take the newest archive" is wrong
            present = [rel for rel in candidates if any(rel in c for _, c in archives)]
            rng.shuffle(present)
            present.sort(key=lambda rel: rel in archives[-1][1])
            targets = present[:1]
            if difficulty == "hard":  # a script among them, so "keep the permission bits" is tested
                script = next((r for r in present if r.endswith(".sh")), "bin/run.sh")
                other = next((r for r in present if not r.endswith(".sh")), "conf/main.ini")
                targets = sorted({script, other})
            for rel in targets:
                # in two archives at least, so "the newest that contains it" is tested
                while sum(rel in c for _, c in archives) < 2:
                    lacking = next(c for _, c in archives[:-1] if rel not in c)
                    lacking[rel] = _version_of(rng, rel, lacking["VERSION"].strip())
        files: dict[str, str] = {}
        setup = [f"mkdir -p {store}"]
        for name, content in archives:
            stem = name.split(".", 1)[0]
            for rel, text in content.items():
                files[f"{STAGE}/{stem}/{app}/{rel}"] = text
            setup.append(f"chmod 755 {STAGE}/{stem}/{app}/bin/*.sh 2>/dev/null || true")
            cmd = FORMATS[name.split(".", 1)[1]].format(out=f"{store}/{name}", app=app)
            setup.append(f"(cd {STAGE}/{stem} && {cmd})")
        # File mtimes say nothing useful: the newest archive by date is not the newest by mtime.
        for i, (name, _) in enumerate(archives):
            setup.append(f"touch -d '2024-12-{28 - 3 * i:02d} 08:00:00' {store}/{name}")
        setup.append(f"rm -rf {STAGE}")

        if difficulty == "easy":
            index = rng.randrange(len(archives))
            name, content = archives[index]
            want = {f"{restore}/{app}/{rel}": text for rel, text in content.items()}
            instruction = (
                f"`{store}/` holds dated backups of `{app}`. Extract `{store}/{name}` into `{restore}/` so that its "
                f"files appear under `{restore}/{app}/` (for example `{restore}/{app}/VERSION`).\n"
            )
            solution = f"mkdir -p {restore}\ntar -xzf {store}/{name} -C {restore}\n"
            other = archives[-1 if index != len(archives) - 1 else -2][0]
            near_misses = {
                "extracts_newest_archive": bent(solution, f"{store}/{name}", f"{store}/{other}"),
                "strips_app_folder": bent(solution, f" -C {restore}", f" -C {restore} --strip-components=1"),
            }
            expected = {"files": want, "modes": {}, "sources": None, "sources_path": None}
            outputs = [restore]
        else:
            n_targets = len(targets)
            want, sources, modes = {}, {}, {}
            for rel in targets:
                name, content = next((nm, c) for nm, c in reversed(archives) if rel in c)
                base_name = rel.rsplit("/", 1)[1]
                want[f"{restore}/{base_name}"] = content[rel]
                sources[base_name] = name
                if rel.endswith(".sh") and difficulty == "hard":  # only hard asks to keep permission bits
                    modes[f"{restore}/{base_name}"] = 0o755
            sources_path = f"{restore}/SOURCE" if difficulty == "medium" else f"{restore}/sources.json"
            kinds = (
                "gzip-compressed tar archives"
                if difficulty == "medium"
                else "archives of different kinds (`.tar.gz`, `.tar.bz2`, `.tar.xz`, `.zip`)"
            )
            listing = ", ".join(f"`{app}/{t}`" for t in targets)
            lines = [
                (
                    f"restore {listing} from the newest archive that contains {'it' if n_targets == 1 else 'each'} "
                    f"(newest by the date in the file name, `{app}-YYYY-MM-DD.<ext>`; file times are not reliable)"
                ),
                "write " + " and ".join(f"`{app}/{t}` to `{restore}/{t.rsplit('/', 1)[1]}`" for t in targets),
            ]
            if difficulty == "medium":
                lines.append(
                    f"write the file name of the archive you used (e.g. `{app}-2024-01-31.tar.gz`) to `{sources_path}`"
                )
            else:
                lines.append("keep the permission bits the files have in the archive")
                lines.append(
                    f"write `{sources_path}`: a JSON object mapping each restored file name to the "
                    "archive file name it came from"
                )
            instruction = (
                f"`{store}/` holds dated backups of `{app}`, {kinds}. Not every archive contains "
                f"every file.\n\n{bullets(lines)}\n"
            )
            solution = f"mkdir -p {restore}\n" + python_block(
                _restore_script(store, restore, app, targets, sources_path, zips=difficulty == "hard")
            )
            by_date = 'key=lambda n: re.search(r"\\d{4}-\\d\\d-\\d\\d", n).group(0)'
            near_misses = {
                "newest_by_mtime": bent(solution, by_date, "key=lambda n: os.path.getmtime(os.path.join(store, n))")
            }
            if difficulty == "medium":
                near_misses["names_archive_path"] = bent(
                    solution, "write(sources[base] + ", "write(os.path.join(store, sources[base]) + "
                )
            else:
                near_misses["drops_permission_bits"] = bent(solution, "        os.chmod(target, mode)\n", "")
            expected = {
                "files": want,
                "modes": modes,
                "sources": sources,
                "sources_path": sources_path,
                "medium": difficulty == "medium",
            }
            outputs = list(want) + [sources_path]
        body = """
            def test_restored_files():
                for path, text in EXPECTED["files"].items():
                    assert os.path.isfile(path), f"{path} was not restored"
                    assert read_text(path) == text, f"{path} does not hold the right version"
                for path, mode in EXPECTED["modes"].items():
                    got = os.stat(path).st_mode & 0o7777
                    assert got == mode, f"{path}: mode {got:o}, expected {mode:o}"


            def test_sources():
                if EXPECTED["sources_path"] is None:
                    assert EXPECTED["files"]
                    return
                if EXPECTED.get("medium"):
                    assert content_lines(EXPECTED["sources_path"]) == list(EXPECTED["sources"].values()), "wrong archive named"
                else:
                    data = json.loads(read_text(EXPECTED["sources_path"]))
                    assert data == EXPECTED["sources"], f"{data} != {EXPECTED['sources']}"
            """
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


def _version_of(rng: random.Random, rel: str, date: str) -> str:
    return f"# {rel} as of {date}\nvalue = {rng.randint(0, 10**6)}\n"


def _restore_script(store: str, restore: str, app: str, targets: list[str], sources_path: str, *, zips: bool) -> str:
    """The reference restore: per target, the newest archive (by the date in its name) holding it.
    Medium: one file from tar.gz archives, the archive named in a text file. Hard: several kinds of
    archive, modes kept, the archives named in a JSON map."""
    if zips:
        read = """
                if name.endswith(".zip"):
                    with zipfile.ZipFile(path) as z:
                        if member not in z.namelist():
                            continue
                        data = z.read(member)
                        mode = (z.getinfo(member).external_attr >> 16) & 0o7777 or 0o644
                else:
                    with tarfile.open(path) as t:
                        try:
                            info = t.getmember(member)
                        except KeyError:
                            continue
                        data = t.extractfile(info).read()
                        mode = info.mode"""
        imports = "import json, os, re, tarfile, zipfile"
        write = f"json.dump(sources, open({sources_path!r}, 'w'), indent=2)"
        chmod = "\n                os.chmod(target, mode)"
    else:
        read = """
                with tarfile.open(path) as t:
                    try:
                        data = t.extractfile(member).read()
                    except KeyError:
                        continue"""
        imports, chmod = "import os, re, tarfile", ""
        write = f"open({sources_path!r}, 'w').write(sources[base] + '\\n')"
    return f"""
        {imports}
        store, restore, app = {store!r}, {restore!r}, {app!r}
        names = sorted(os.listdir(store), key=lambda n: re.search(r"\\d{{4}}-\\d\\d-\\d\\d", n).group(0), reverse=True)
        sources = {{}}
        for rel in {targets!r}:
            member = f"{{app}}/{{rel}}"
            base = rel.rsplit("/", 1)[1]
            for name in names:
                path = os.path.join(store, name){read}
                target = os.path.join(restore, base)
                with open(target, "wb") as handle:
                    handle.write(data){chmod}
                sources[base] = name
                break
        {write}
        """
