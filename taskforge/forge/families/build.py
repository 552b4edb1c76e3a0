"""Build and project-metadata families: Makefiles, Python packaging metadata, docker-compose files."""

from __future__ import annotations

import json
import random

from taskforge.forge import pools
from taskforge.forge.base import Draft, Family, bent
from taskforge.forge.common import bullets, heredoc, pick, python_block, test_module

WORDS = ["intro", "setup", "usage", "config", "deploy", "faq", "api", "notes", "release", "design"]

RENDER_SH = """#!/bin/sh
# usage: render.sh PAGE.md OUT.html  -- a tiny Markdown-ish to HTML converter
{ printf '<html><body>\\n'
  sed -e 's|^# \\(.*\\)|<h1>\\1</h1>|' -e 't' -e 's|^\\(..*\\)$|<p>\\1</p>|' "$1"
  printf '</body></html>\\n'; } > "$2"
"""
INDEX_SH = """#!/bin/sh
# usage: index.sh OUT.html PAGE.html...  -- writes a list of links to the pages
out=$1; shift
{ echo '<ul>'
  for p in "$@"; do n=$(basename "$p" .html); echo "<li><a href=\\"$n.html\\">$n</a></li>"; done
  echo '</ul>'; } > "$out"
"""

MAKE_TEST = """
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
            assert count == str(got.count("\\n")), f"{EXPECTED['targets'][1]} holds {count!r}, expected {got.count(chr(10))}"
    else:
        src, out = EXPECTED["src_dir"], EXPECTED["build_dir"]
        pages = sorted(n[:-3] for n in os.listdir(os.path.join(WORK, src)) if n.endswith(".md"))
        for name in pages:
            html = os.path.join(WORK, out, name + ".html")
            assert os.path.isfile(html), f"{out}/{name}.html was not built"
            assert read_text(html) == render(os.path.join(WORK, src, name + ".md")), f"{out}/{name}.html is not the output of tools/render.sh"
        index = read_text(os.path.join(WORK, out, "index.html"))
        links = sorted(re.findall(r'href="([^"]+)\\.html"', index))
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
        handle.write("one more line\\n")
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
"""


class MakefileBuild(Family):
    name = "makefile_build"
    domain = "development_tooling"
    summary = "write or fix a Makefile with correct prerequisites, pattern rules and a clean target"

    def build(self, rng: random.Random, difficulty: str) -> Draft:
        app = rng.choice(pools.APPS)
        project = f"/home/user/{app}-{rng.choice(['docs', 'site', 'notes', 'bundle'])}"
        files: dict[str, str] = {}
        setup: list[str] = []
        out = rng.choice(["build", "dist", "out", "public"])
        if difficulty in ("easy", "medium"):
            src_dir = rng.choice(["src", "parts", "chapters"])
            ext = rng.choice([".txt", ".md"])
            names = [f"{i + 1:02d}-{w}{ext}" for i, w in enumerate(pick(rng, WORDS, rng.randint(3, 5)))]
            for n in names:
                files[f"{project}/{src_dir}/{n}"] = "".join(
                    f"{n[3 : -len(ext)]} line {j} {rng.randint(0, 999)}\n" for j in range(rng.randint(2, 4))
                )
            bundle = f"{out}/{rng.choice(['bundle', 'all', 'book', 'combined'])}{ext}"
            targets = [bundle]
            mode = "bundle"
            if difficulty == "medium":
                count = f"{out}/{rng.choice(['lines', 'line_count', 'count'])}.txt"
                targets.append(count)
                mode = "bundle+count"
                broken = (
                    "# Builds the bundle and its line count.\n"
                    f"all: {bundle} {count}\n\n"
                    f"{bundle}:\n"
                    f"    mkdir -p {out}\n"
                    f"    cat {src_dir}/*{ext} > $@\n\n"
                    f"{count}: {bundle}\n"
                    "\twc -l $< > $@\n\n"
                    "clean:\n"
                    f"\trm -r {out}/*\n"
                )
                files[f"{project}/Makefile"] = broken
                instruction = (
                    f"The Makefile of `{project}` does not work. Fix it so that, run in `{project}`:\n"
                    + bullets(
                        [
                            (
                                f"`make` builds `{bundle}` (every `{src_dir}/*{ext}` file concatenated in file-name "
                                f"order) and `{count}` (just the number of lines of `{bundle}`)"
                            ),
                            (
                                "`make` rebuilds them when a source file changes or a new one is added, "
                                "and does nothing when nothing changed"
                            ),
                            f"`make clean` removes the `{out}` directory",
                        ]
                    )
                    + "\n"
                )
                makefile = (
                    f"SOURCES := $(sort $(wildcard {src_dir}/*{ext}))\n\n"
                    f"all: {bundle} {count}\n\n"
                    f"{bundle}: $(SOURCES)\n\tmkdir -p {out}\n\tcat $(SOURCES) > $@\n\n"
                    f"{count}: {bundle}\n\twc -l < $< > $@\n\n"
                    f"clean:\n\trm -rf {out}\n\n.PHONY: all clean\n"
                )
            else:
                instruction = (
                    f"Write `{project}/Makefile` so that, run in `{project}`:\n"
                    + bullets(
                        [
                            (
                                f"`make` (the default target) builds `{bundle}`: every `{src_dir}/*{ext}` file "
                                "concatenated in file-name order"
                            ),
                            (
                                f"`make` rebuilds `{bundle}` when a source file changes or a new one is added, "
                                "and does nothing when nothing changed"
                            ),
                            f"`make clean` removes the `{out}` directory",
                        ]
                    )
                    + "\n"
                )
                makefile = (
                    f"SOURCES := $(sort $(wildcard {src_dir}/*{ext}))\n\n"
                    f"{bundle}: $(SOURCES)\n\tmkdir -p {out}\n\tcat $(SOURCES) > $@\n\n"
                    f"clean:\n\trm -rf {out}\n\n.PHONY: clean\n"
                )
            sources = [f"{src_dir}/{n}" for n in names]
            expected = {
                "mode": mode,
                "src_dir": src_dir,
                "src_ext": ext,
                "targets": targets,
                "all_outputs": targets,
                "untouched_outputs": [],
                "touch": sources[0],
                "new_source": f"{src_dir}/99-extra{ext}",
                "new_text": "extra line\n",
            }
        else:
            src_dir = rng.choice(["pages", "content", "docs"])
            pages = pick(rng, WORDS, rng.randint(3, 5))
            for p in pages:
                files[f"{project}/{src_dir}/{p}.md"] = f"# {p.capitalize()}\n\n" + "".join(
                    f"{p} paragraph {j} {rng.randint(0, 999)}\n" for j in range(rng.randint(1, 3))
                )
            files[f"{project}/tools/render.sh"] = RENDER_SH
            files[f"{project}/tools/index.sh"] = INDEX_SH
            setup.append(f"chmod 755 {project}/tools/*.sh")
            touched = pages[0]
            instruction = (
                f"`{project}` has Markdown pages in `{src_dir}/` and two helper scripts: "
                "`tools/render.sh PAGE.md OUT.html` and `tools/index.sh OUT.html PAGE.html...`. "
                f"Write `{project}/Makefile` so that, run in `{project}`:\n"
                + bullets(
                    [
                        (
                            f"`make` builds `{out}/<name>.html` from every `{src_dir}/<name>.md` with "
                            f"`tools/render.sh`, and `{out}/index.html` with `tools/index.sh` from all those pages"
                        ),
                        (
                            "a page is re-rendered only when its own `.md` changed; a new page is picked up "
                            "automatically; nothing is rebuilt when nothing changed"
                        ),
                        f"`make clean` removes the `{out}` directory",
                    ]
                )
                + "\n"
            )
            makefile = (
                f"PAGES := $(patsubst {src_dir}/%.md,{out}/%.html,$(sort $(wildcard {src_dir}/*.md)))\n\n"
                f"all: {out}/index.html\n\n"
                f"{out}/index.html: $(PAGES) tools/index.sh\n\tsh tools/index.sh $@ $(PAGES)\n\n"
                f"{out}/%.html: {src_dir}/%.md tools/render.sh\n\t@mkdir -p {out}\n\tsh tools/render.sh $< $@\n\n"
                f"clean:\n\trm -rf {out}\n\n.PHONY: all clean\n"
            )
            sources = [f"{src_dir}/{p}.md" for p in pages] + ["tools/render.sh", "tools/index.sh"]
            outputs = [f"{out}/{p}.html" for p in pages] + [f"{out}/index.html"]
            expected = {
                "mode": "pages",
                "src_dir": src_dir,
                "src_ext": ".md",
                "targets": outputs,
                "all_outputs": outputs,
                "untouched_outputs": [f"{out}/{p}.html" for p in pages if p != touched],
                "touch": f"{src_dir}/{touched}.md",
                "new_source": f"{src_dir}/zz-extra.md",
                "new_text": "# Extra\n\nextra page\n",
                "render_sh": RENDER_SH,
            }
        expected.update(project=project, sources=sources, build_dir=out)
        solution = heredoc(f"{project}/Makefile", makefile) + "\n"
        near_misses = {"clean_keeps_build_dir": bent(solution, f"\trm -rf {out}\n", f"\trm -rf {out}/*\n")}
        if difficulty == "hard":
            near_misses["renders_every_page"] = bent(
                solution, f"{out}/%.html: {src_dir}/%.md", f"{out}/%.html: {src_dir}/%.md $(wildcard {src_dir}/*.md)"
            )
        else:
            near_misses["bundle_without_prerequisites"] = bent(solution, f"{bundle}: $(SOURCES)\n", f"{bundle}:\n")
        if difficulty == "medium":
            near_misses["count_with_file_name"] = bent(solution, "wc -l < $< > $@", "wc -l $< > $@")
        tests = test_module(self.name, expected, MAKE_TEST, helpers=("nobody",))
        return Draft(
            instruction=instruction,
            tests=tests,
            solution=solution,
            outputs=[project],
            files=files,
            setup=setup,
            near_misses=near_misses,
        )


# ------------------------------------------------------------------------------------------
# Packaging metadata

DEPENDENCIES = [
    "requests>=2.28",
    "click>=8.0",
    "pyyaml>=6.0",
    "rich>=13.0",
    "jinja2>=3.1",
    "httpx>=0.25",
    "pydantic>=2.0",
    "attrs>=23.1",
    "packaging>=23.0",
    "tomli>=2.0",
]
DESCRIPTIONS = [
    "Command-line helpers for {app}",
    "Client library for the {app} API",
    "Data tools for {app} reports",
    "Utilities shared by the {app} services",
]

PACKAGING_TEST = """
import tomllib


def norm(spec):
    return spec.replace(" ", "").lower()


def test_pyproject():
    data = tomllib.loads(read_text(EXPECTED["pyproject"]))
    project = data.get("project", {})
    for key, want in EXPECTED["fields"].items():
        got = project.get(key)
        assert got == want, f"[project] {key} = {got!r}, expected {want!r}"
    if EXPECTED["dependencies"] is not None:
        got = sorted(norm(d) for d in project.get("dependencies", []))
        assert got == sorted(norm(d) for d in EXPECTED["dependencies"]), f"dependencies {got} != {EXPECTED['dependencies']}"
    if EXPECTED["scripts"] is not None:
        assert project.get("scripts") == EXPECTED["scripts"], f"[project.scripts] {project.get('scripts')} != {EXPECTED['scripts']}"
    if EXPECTED["extras"] is not None:
        got = {k: sorted(norm(d) for d in v) for k, v in project.get("optional-dependencies", {}).items()}
        assert got == {k: sorted(norm(d) for d in v) for k, v in EXPECTED["extras"].items()}, f"optional-dependencies {got}"
    assert data.get("build-system", {}).get("build-backend") == "setuptools.build_meta", "build-system must stay setuptools"


def test_version_everywhere():
    text = read_text(EXPECTED["init"])
    m = re.search(r"^__version__\\s*=\\s*['\\"]([^'\\"]+)['\\"]", text, re.M)
    assert m and m.group(1) == EXPECTED["fields"]["version"], f"{EXPECTED['init']}: __version__ is not {EXPECTED['fields']['version']}"
    for path in EXPECTED["gone"]:
        assert not os.path.exists(path), f"{path} should have been removed"
"""


def _bump(version: tuple[int, int, int], part: str) -> str:
    major, minor, patch = version
    if part == "major":
        return f"{major + 1}.0.0"
    if part == "minor":
        return f"{major}.{minor + 1}.0"
    return f"{major}.{minor}.{patch + 1}"


class PackagingMetadata(Family):
    name = "packaging_metadata"
    domain = "development_tooling"
    summary = "edit Python packaging metadata: version bumps, dependencies, entry points, setup.cfg to pyproject.toml"

    def build(self, rng: random.Random, difficulty: str) -> Draft:
        app = rng.choice(pools.APPS)
        pkg = f"{app}_{rng.choice(['tools', 'client', 'core', 'utils'])}"
        root = rng.choice([f"/home/user/{pkg}", f"/srv/src/{pkg}", f"/home/user/projects/{pkg}"])
        version = (rng.randint(0, 3), rng.randint(0, 12), rng.randint(0, 9))
        old = ".".join(map(str, version))
        part = rng.choice(["major", "minor", "patch"])
        new = _bump(version, part)
        description = rng.choice(DESCRIPTIONS).format(app=app)
        deps = pick(rng, DEPENDENCIES, rng.randint(2, 4))
        init = f"{root}/src/{pkg}/__init__.py"
        pyproject = f"{root}/pyproject.toml"
        files = {
            init: f'"""{description}."""\n\n__version__ = "{old}"\n',
            f"{root}/src/{pkg}/cli.py": "def main():\n    print('hello')\n",
        }
        fields = {"name": pkg, "version": new}
        expected = {
            "pyproject": pyproject,
            "init": init,
            "dependencies": None,
            "scripts": None,
            "extras": None,
            "gone": [],
        }

        def toml(deps_: list[str], python: str, scripts: dict | None) -> str:
            text = '[build-system]\nrequires = ["setuptools>=68"]\nbuild-backend = "setuptools.build_meta"\n\n'
            text += (
                f'[project]\nname = "{pkg}"\nversion = "{old}"\ndescription = "{description}"\n'
                f'requires-python = "{python}"\ndependencies = [\n'
            )
            text += "".join(f'    "{d}",\n' for d in deps_) + "]\n"
            if scripts:
                text += "\n[project.scripts]\n" + "".join(f'{k} = "{v}"\n' for k, v in scripts.items())
            return text

        if difficulty == "easy":
            files[pyproject] = toml(deps, ">=3.9", None)
            instruction = (
                f"Release a new {part} version of the Python package in `{root}`: bump the version (now `{old}`) in "
                f"`{pyproject}` and in `{init}` (`__version__`), following semantic versioning.\n"
            )
            solution = (
                f'sed -i \'s/^version = "{old}"/version = "{new}"/\' {pyproject}\n'
                f'sed -i \'s/^__version__ = "{old}"/__version__ = "{new}"/\' {init}\n'
            )
        elif difficulty == "medium":
            files[pyproject] = toml(deps, ">=3.9", None)
            add = rng.choice([d for d in DEPENDENCIES if d not in deps])
            drop = rng.choice(deps)
            python = rng.choice([">=3.10", ">=3.11", ">=3.12"])
            command = f"{app}-{rng.choice(['cli', 'tool', 'ctl'])}"
            scripts = {command: f"{pkg}.cli:main"}
            new_deps = [d for d in deps if d != drop] + [add]
            fields["requires-python"] = python
            expected.update(dependencies=new_deps, scripts=scripts)
            instruction = (
                f"Update the packaging metadata of the Python package in `{root}`:\n"
                + bullets(
                    [
                        f"bump the {part} version (now `{old}`) in `{pyproject}` and in `{init}` (`__version__`)",
                        f"add the dependency `{add}` and drop `{drop.split('>=')[0]}`",
                        f"require Python `{python}`",
                        f"add a console script `{command}` that runs `{pkg}.cli:main`",
                    ]
                )
                + "\n"
            )
            solution = python_block(f"""
                import re
                path, init = {pyproject!r}, {init!r}
                text = open(path).read()
                text = text.replace('version = "{old}"', 'version = "{new}"').replace('requires-python = ">=3.9"', 'requires-python = "{python}"')
                text = text.replace('    "{drop}",\\n', '').replace("dependencies = [\\n", 'dependencies = [\\n    "{add}",\\n')
                text += '\\n[project.scripts]\\n{command} = "{pkg}.cli:main"\\n'
                open(path, "w").write(text)
                source = open(init).read()
                open(init, "w").write(re.sub(r'__version__ = ".*"', '__version__ = "{new}"', source))
                """)
        else:
            extras = {"dev": pick(rng, ["pytest>=7.0", "ruff>=0.4", "mypy>=1.8", "coverage>=7.0"], 2)}
            command = f"{app}-{rng.choice(['cli', 'tool', 'ctl'])}"
            python = rng.choice([">=3.9", ">=3.10", ">=3.11"])
            setup_cfg = (
                f"[metadata]\nname = {pkg}\nversion = {old}\ndescription = {description}\n\n"
                f"[options]\npackage_dir =\n    = src\npackages = find:\npython_requires = {python}\n"
                "install_requires =\n"
                + "".join(f"    {d}\n" for d in deps)
                + "\n[options.packages.find]\nwhere = src\n\n[options.extras_require]\ndev =\n"
                + "".join(f"    {d}\n" for d in extras["dev"])
                + f"\n[options.entry_points]\nconsole_scripts =\n    {command} = {pkg}.cli:main\n"
            )
            files[f"{root}/setup.cfg"] = setup_cfg
            files[f"{root}/setup.py"] = "from setuptools import setup\n\nsetup()\n"
            fields.update({"description": description, "requires-python": python})
            expected.update(
                dependencies=deps,
                scripts={command: f"{pkg}.cli:main"},
                extras=extras,
                gone=[f"{root}/setup.cfg", f"{root}/setup.py"],
            )
            instruction = (
                f"Move the Python package in `{root}` from `setup.cfg`/`setup.py` to a `pyproject.toml` (PEP 621):\n"
                + bullets(
                    [
                        (
                            f"`{pyproject}` with a `[build-system]` using `setuptools.build_meta` and a "
                            "`[project]` table carrying the name, description, Python requirement, dependencies, "
                            "the `dev` extra (as optional dependencies) and the console script from `setup.cfg`"
                        ),
                        (
                            f"the version becomes the next {part} version after `{old}`, in `pyproject.toml` "
                            f"and in `{init}` (`__version__`)"
                        ),
                        "delete `setup.cfg` and `setup.py`",
                    ]
                )
                + "\n"
            )
            body = toml(deps, python, {command: f"{pkg}.cli:main"}).replace(f'version = "{old}"', f'version = "{new}"')
            body += (
                "\n[project.optional-dependencies]\ndev = [" + ", ".join(json.dumps(d) for d in extras["dev"]) + "]\n"
            )
            solution = heredoc(pyproject, body) + (
                f'\nsed -i \'s/^__version__ = "{old}"/__version__ = "{new}"/\' {init}\n'
                f"rm -f {root}/setup.cfg {root}/setup.py\n"
            )
        expected["fields"] = fields
        other_part = next(p for p in ("minor", "patch", "major") if p != part)
        near_misses = {"bumps_the_wrong_part": bent(solution, f'"{new}"', f'"{_bump(version, other_part)}"')}
        if difficulty == "easy":
            near_misses["skips_init_version"] = bent(solution, solution.splitlines(keepends=True)[1], "")
        elif difficulty == "medium":
            near_misses["keeps_dropped_dependency"] = bent(solution, f".replace('    \"{drop}\",\\n', '')", "")
        else:
            near_misses["keeps_setup_files"] = bent(solution, f"rm -f {root}/setup.cfg {root}/setup.py\n", "")
        tests = test_module(self.name, expected, PACKAGING_TEST)
        outputs = [pyproject, init]
        return Draft(
            instruction=instruction,
            tests=tests,
            solution=solution,
            outputs=outputs,
            files=files,
            extra={"bump": part},
            near_misses=near_misses,
        )


# ------------------------------------------------------------------------------------------
# docker-compose

COMPOSE_TEST = """
import yaml


def env_of(service):
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return {str(k): None if v is None else str(v) for k, v in env.items()}


def names_of(value):
    if isinstance(value, dict):
        return sorted(value)
    return sorted(value or [])


def test_compose_file():
    data = yaml.safe_load(read_text(EXPECTED["path"]))
    services = data.get("services", {})
    assert sorted(services) == EXPECTED["services"], f"services {sorted(services)} != {EXPECTED['services']}"
    for name, want in EXPECTED["checks"].items():
        svc = services[name]
        for key in ("image", "restart", "command"):
            if key in want:
                assert svc.get(key) == want[key], f"{name}.{key} = {svc.get(key)!r}, expected {want[key]!r}"
        if "env" in want:
            assert env_of(svc) == want["env"], f"{name}.environment {env_of(svc)} != {want['env']}"
        if "ports" in want:
            got = sorted(str(p) for p in svc.get("ports", []))
            assert got == sorted(want["ports"]), f"{name}.ports {got} != {want['ports']}"
        if "depends_on" in want:
            assert names_of(svc.get("depends_on")) == sorted(want["depends_on"]), f"{name}.depends_on {svc.get('depends_on')}"
        if "volumes" in want:
            got = sorted(str(v) for v in svc.get("volumes", []))
            assert got == sorted(want["volumes"]), f"{name}.volumes {got} != {want['volumes']}"
    if EXPECTED["top_volumes"] is not None:
        assert sorted(data.get("volumes") or {}) == EXPECTED["top_volumes"], f"top-level volumes {data.get('volumes')}"
"""


class ComposeConfigEdit(Family):
    name = "compose_config_edit"
    domain = "development_tooling"
    summary = "edit a docker-compose file: images, environment, new services, dependencies, volumes"

    def build(self, rng: random.Random, difficulty: str) -> Draft:
        app = rng.choice(pools.APPS)
        folder = rng.choice([f"/home/user/{app}", f"/srv/{app}", f"/opt/{app}/deploy"])
        path = f"{folder}/{rng.choice(['docker-compose.yml', 'compose.yaml'])}"
        old_tag = f"{rng.randint(1, 3)}.{rng.randint(0, 9)}.{rng.randint(0, 9)}"
        new_tag = f"{old_tag.split('.')[0]}.{int(old_tag.split('.')[1]) + 1}.0"
        web_port = rng.choice([8000, 8080, 3000, 5000])
        host_port = rng.choice([80, 8080, 8000, 8888])
        web_env = {"APP_ENV": rng.choice(["production", "staging"]), "DB_HOST": "db", "WORKERS": str(rng.randint(2, 8))}
        db_env = {"POSTGRES_DB": app, "POSTGRES_USER": app, "POSTGRES_PASSWORD": "change-me"}
        worker_env = {
            "QUEUE": rng.choice(["default", "high", "emails"]),
            "LOG_LEVEL": "info",
            "CONCURRENCY": str(rng.randint(1, 8)),
        }
        compose = {
            "services": {
                "web": {
                    "image": f"{app}:{old_tag}",
                    "ports": [f"{host_port}:{web_port}"],
                    "environment": dict(web_env),
                    "depends_on": ["db"],
                },
                "db": {"image": f"postgres:{rng.choice([14, 15, 16])}", "environment": dict(db_env)},
                "worker": {
                    "image": f"{app}:{old_tag}",
                    "command": f"python -m {app}.worker",
                    "environment": dict(worker_env),
                    "depends_on": ["db"],
                },
            }
        }
        if difficulty == "hard":
            compose["services"]["legacy"] = {"image": f"{app}-legacy:0.9", "ports": ["9000:9000"]}
        files = {path: _yaml_dump(compose)}
        level = rng.choice(["debug", "warning", "error"])
        lines = [
            f"`web` and `worker` run the image `{app}:{new_tag}`",
            f"`web` gets the environment variable `LOG_LEVEL={level}`",
        ]
        checks = {
            "web": {
                "image": f"{app}:{new_tag}",
                "env": {**web_env, "LOG_LEVEL": level},
                "ports": [f"{host_port}:{web_port}"],
            },
            "worker": {"image": f"{app}:{new_tag}", "env": dict(worker_env)},
            "db": {"env": dict(db_env)},
        }
        services = ["db", "web", "worker"]
        top_volumes = None
        cache = cache_image = volume = None
        dropped = None
        if difficulty != "easy":
            cache = rng.choice(["cache", "redis"])
            cache_image = rng.choice(["redis:7-alpine", "redis:7", "valkey/valkey:7.2"])
            dropped = rng.choice(sorted(worker_env))
            lines += [
                f"add a service `{cache}` running the image `{cache_image}`",
                f"`web` and `worker` also depend on `{cache}`",
                f"remove `{dropped}` from `worker`'s environment",
            ]
            checks[cache] = {"image": cache_image}
            checks["web"]["depends_on"] = ["db", cache]
            checks["worker"]["depends_on"] = ["db", cache]
            del checks["worker"]["env"][dropped]
            services.append(cache)
        if difficulty == "hard":
            volume = f"{app}-dbdata"
            lines += [
                "remove the `legacy` service",
                (
                    f"`db` stores its data in a named volume `{volume}` mounted at `/var/lib/postgresql/data` "
                    "(declare it in the top-level `volumes`)"
                ),
                "every service restarts `unless-stopped`",
            ]
            checks["db"]["volumes"] = [f"{volume}:/var/lib/postgresql/data"]
            for s in services:
                checks.setdefault(s, {})["restart"] = "unless-stopped"
            top_volumes = [volume]
        instruction = f"Edit `{path}` (Compose file format):\n{bullets(lines)}\n\nKeep everything else as it is.\n"
        edits = [
            "import yaml",
            f"path = {path!r}",
            "data = yaml.safe_load(open(path))",
            's = data["services"]',
            'for name in ("web", "worker"):',
            f'    s[name]["image"] = {app + ":" + new_tag!r}',
            f's["web"]["environment"]["LOG_LEVEL"] = {level!r}',
        ]
        if cache:
            edits += [
                f's[{cache!r}] = {{"image": {cache_image!r}}}',
                'for name in ("web", "worker"):',
                f'    s[name]["depends_on"] = ["db", {cache!r}]',
                f'del s["worker"]["environment"][{dropped!r}]',
            ]
        if volume:
            edits += [
                'del s["legacy"]',
                f's["db"]["volumes"] = ["{volume}:/var/lib/postgresql/data"]',
                f'data["volumes"] = {{{volume!r}: {{}}}}',
                "for service in s.values():",
                '    service["restart"] = "unless-stopped"',
            ]
        edits.append('yaml.safe_dump(data, open(path, "w"), sort_keys=False)')
        solution = python_block("\n".join(edits))
        near_misses = {
            "worker_keeps_old_image": bent(
                solution,
                'for name in ("web", "worker"):\n    s[name]["image"]',
                'for name in ("web",):\n    s[name]["image"]',
            )
        }
        if volume:
            near_misses["keeps_legacy_service"] = bent(solution, 'del s["legacy"]\n', "")
        elif cache:
            near_misses["keeps_dropped_variable"] = bent(solution, f'del s["worker"]["environment"][{dropped!r}]\n', "")
        else:
            near_misses["log_level_on_worker"] = bent(solution, 's["web"]["environment"]', 's["worker"]["environment"]')
        expected = {"path": path, "services": sorted(services), "checks": checks, "top_volumes": top_volumes}
        tests = test_module(self.name, expected, COMPOSE_TEST)
        return Draft(
            instruction=instruction,
            tests=tests,
            solution=solution,
            outputs=[path],
            files=files,
            near_misses=near_misses,
        )


def _yaml_dump(data, indent: int = 0) -> str:
    """Block YAML for dicts of dicts / lists / scalars (what a compose file needs), quoted safely."""
    pad = "  " * indent
    out = []
    for key, value in data.items():
        if isinstance(value, dict):
            out.append(f"{pad}{key}:")
            out.append(_yaml_dump(value, indent + 1).rstrip("\n"))
        elif isinstance(value, list):
            out.append(f"{pad}{key}:")
            out.extend(f"{pad}  - {json.dumps(v)}" for v in value)
        else:
            out.append(f"{pad}{key}: {json.dumps(value)}")
    return "\n".join(out) + "\n"
