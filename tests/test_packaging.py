"""A non-editable install works outside the source tree (``pip install .``).

The wheel is built from a copy of the checkout (no build isolation: no download,
and nothing written into the working tree), installed into a fresh virtual
environment, and Django and Celery are run from a folder outside the source tree.

Dependencies are not downloaded again. The fresh environment gets links to the
distributions of the wheel's dependency closure, as installed in the test
environment, and only those: an import the wheel's metadata does not declare
fails here as it would for a user, and ``pip check`` holds the declared version
ranges against what is linked.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

PROJECT_DIR = Path(__file__).resolve().parent.parent
# Folders of the checkout that are not installed (pyproject.toml: packages.find.exclude).
NOT_INSTALLED = {"tests", "bench", "deploy", "docs", "spec", "var", "logs", "build", "dist"}
# Never part of a build: local environments, caches, run-time data.
COPY_IGNORE = shutil.ignore_patterns(
    ".git", ".venv*", "venv", "var", "logs", "build", "dist", "*.egg-info", "__pycache__",
    "*.pyc", ".pytest_cache", ".ruff_cache", ".mypy_cache", "node_modules",
)  # fmt: skip
# Variables of the test run that a user's shell would not have.
RUN_ONLY_VARIABLES = (
    "PYTHONPATH", "VIRTUAL_ENV", "DJANGO_SETTINGS_MODULE", "DJANGO_READ_DOT_ENV", "SECRET_KEY",
    "DATABASE_URL", "TEST_DATABASE_NAME", "LOG_DIR", "MEDIA_ROOT", "STATIC_ROOT",
    "ADMIN_BACKEND_HOME", "CELERY_EXTRA_TASK_MODULES",
)  # fmt: skip

pytestmark = pytest.mark.database_independent


def run(args, *, cwd, env=None, timeout=240) -> subprocess.CompletedProcess:
    completed = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert completed.returncode == 0, (
        f"{' '.join(map(str, args))} exited {completed.returncode}\n"
        f"--- stdout\n{completed.stdout[-4000:]}\n--- stderr\n{completed.stderr[-4000:]}"
    )
    return completed


def requirement_applies(requirement: Requirement, extras: frozenset[str]) -> bool:
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate({"extra": extra}) for extra in extras | {""})


def dependency_closure(requirements: list[str]) -> dict[str, metadata.Distribution]:
    """The installed distributions ``requirements`` need, recursively, by canonical name."""
    found: dict[str, metadata.Distribution] = {}
    done: set[tuple[str, frozenset[str]]] = set()
    todo = [(Requirement(text), frozenset()) for text in requirements]
    while todo:
        requirement, parent_extras = todo.pop()
        if not requirement_applies(requirement, parent_extras):
            continue
        name = canonicalize_name(requirement.name)
        extras = frozenset(requirement.extras)
        if (name, extras) in done:
            continue
        done.add((name, extras))
        try:
            dist = found.get(name) or metadata.distribution(name)
        except metadata.PackageNotFoundError:
            pytest.fail(f"{requirement} is required but not installed in the test environment")
        found[name] = dist
        todo.extend((Requirement(text), extras) for text in dist.requires or [])
    return found


def link_distribution(dist: metadata.Distribution, site_packages: Path) -> None:
    """Make ``dist`` importable and known to pip in ``site_packages``, by symbolic links."""
    if dist.files is None:
        pytest.fail(f"{dist.metadata['Name']} has no RECORD: cannot tell its files")
    base = Path(dist.locate_file(""))
    tops = {f.parts[0] for f in dist.files if f.parts and f.parts[0] not in ("..", "__pycache__")}
    for top in tops:
        target = site_packages / top
        if (base / top).exists() and not target.exists():
            target.symlink_to(base / top)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A copy of the checkout: others' edits during the run do not reach the build."""
    copy = tmp_path_factory.mktemp("packaging") / "source"
    shutil.copytree(PROJECT_DIR, copy, ignore=COPY_IGNORE)
    return copy


@pytest.fixture(scope="module")
def wheel(source) -> Path:
    work = source.parent
    run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--no-index", "-q", "-w", work / "dist", source],
        cwd=work,
    )  # fmt: skip
    (built,) = (work / "dist").glob("admin_backend-*.whl")
    return built


@pytest.fixture(scope="module")
def wheel_files(wheel) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory):
    """A fresh venv with the wheel installed, and a folder outside the source tree to run in."""
    work = tmp_path_factory.mktemp("installed")
    venv = work / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=work)
    python = venv / "bin" / "python"
    site_packages = Path(
        run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=work
        ).stdout.strip()
    )
    with zipfile.ZipFile(wheel) as archive:
        (metadata_name,) = (n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        wheel_metadata = Parser().parsestr(archive.read(metadata_name).decode())
    for dist in dependency_closure(wheel_metadata.get_all("Requires-Dist") or []).values():
        link_distribution(dist, site_packages)
    pip = [sys.executable, "-m", "pip", "--python", python]
    run([*pip, "install", "--no-deps", "--no-index", "-q", wheel], cwd=work)
    run([*pip, "check"], cwd=work)

    folder = work / "site"
    folder.mkdir()
    # The working directory's .env is read, as a checkout's is beside manage.py.
    (folder / ".env").write_text("SECRET_KEY=installed-copy-test-key\n")
    env = {k: v for k, v in os.environ.items() if k not in RUN_ONLY_VARIABLES}
    env["DJANGO_SETTINGS_MODULE"] = "admin_backend.settings"
    return {"python": python, "site_packages": site_packages, "folder": folder, "env": env}


def source_package_files(root: Path) -> set[str]:
    """Every file of the checkout's installable folders, as wheel paths."""
    files = set()
    for top in root.iterdir():
        if not top.is_dir() or top.name in NOT_INSTALLED or not top.name.isidentifier():
            continue
        for path in top.rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                files.add(path.relative_to(root).as_posix())
    return files


def test_wheel_holds_every_app_and_every_file_of_them(source, wheel_files):
    from django.apps import apps

    tops = {name.split("/", 1)[0] for name in wheel_files if "/" in name}
    packages = {top for top in tops if not top.endswith(".dist-info")}
    # Every project app of INSTALLED_APPS, and nothing that is no package (a stray folder).
    project_apps = {
        config.name.split(".")[0]
        for config in apps.get_app_configs()
        if (source / config.name.split(".")[0] / "__init__.py").is_file()
    }
    assert "dashboard" in project_apps
    assert project_apps <= packages, f"apps missing from the wheel: {project_apps - packages}"
    not_packages = {top for top in packages if f"{top}/__init__.py" not in wheel_files}
    assert not not_packages, (
        f"top-level folders in the wheel that are no Python package: {not_packages}; "
        "add them to [tool.setuptools.packages.find] exclude in pyproject.toml"
    )
    # Every file of every package: modules, migrations, templates, static files, Lua, ...
    missing = source_package_files(source) - wheel_files
    assert not missing, f"files of the source tree missing from the wheel: {sorted(missing)}"
    assert "manage.py" not in wheel_files
    for expected in (
        "dashboard/templates/dashboard/page.html",
        "dashboard/static/dashboard/dashboard.js",
        "dashboard/migrations/0001_initial.py",
    ):
        assert expected in wheel_files


def test_installed_copy_checks_migrates_and_collects_static_outside_the_source_tree(installed):
    python, folder, env = installed["python"], installed["folder"], installed["env"]
    site_packages = installed["site_packages"]

    located = run(
        [python, "-c", "import admin_backend, dashboard; print(admin_backend.__file__)"],
        cwd=folder,
        env=env,
    ).stdout.strip()
    assert Path(located).parent == site_packages / "admin_backend"

    run([python, "-m", "django", "check"], cwd=folder, env=env)
    run([python, "-m", "django", "migrate", "--noinput"], cwd=folder, env=env)
    run([python, "-m", "django", "collectstatic", "--noinput"], cwd=folder, env=env)

    # Data, logs and collected static files in the working directory, none in site-packages.
    assert (folder / "var" / "db.sqlite3").is_file()
    assert (folder / "logs").is_dir()
    assert (folder / "var" / "static" / "dashboard" / "dashboard.css").is_file()
    assert (folder / "var" / "static" / "reports" / "export_progress.js").is_file()
    assert (folder / "var" / "static" / "admin" / "css" / "base.css").is_file()
    assert not (site_packages / "var").exists()
    assert not (site_packages / "logs").exists()

    # The applied migrations include every project app's.
    shown = run([python, "-m", "django", "showmigrations", "--list"], cwd=folder, env=env).stdout
    for app in ("taskcore", "notifications", "media", "reports", "dashboard"):
        assert re.search(rf"^{app}\n \[X\] 0001_initial", shown, re.MULTILINE), shown


def test_installed_copy_finds_every_template_in_site_packages(installed, wheel_files):
    templates = sorted(
        name.split("/templates/", 1)[1] for name in wheel_files if "/templates/" in name
    )
    assert "dashboard/page.html" in templates
    script = (
        "import sys, django; django.setup()\n"
        "from django.template.loader import get_template\n"
        "for name in sys.argv[1:]: print(get_template(name).origin.name)\n"
    )
    origins = run(
        [installed["python"], "-c", script, *templates],
        cwd=installed["folder"],
        env=installed["env"],
    ).stdout.split()
    assert len(origins) == len(templates)
    assert all(Path(o).is_relative_to(installed["site_packages"]) for o in origins), origins


def test_installed_celery_app_loads_every_apps_tasks(installed):
    python, folder, env = installed["python"], installed["folder"], installed["env"]
    run([python, "-m", "celery", "-A", "admin_backend", "inspect", "--help"], cwd=folder, env=env)
    script = (
        "from admin_backend.celery import app\n"
        "app.loader.import_default_modules()\n"
        "print('\\n'.join(sorted(app.tasks)))\n"
    )
    tasks = run([python, "-c", script], cwd=folder, env=env).stdout.split()
    for app in ("notifications", "media", "reports", "maintenance"):
        assert any(name.startswith(f"{app}.") for name in tasks), (app, tasks)


def test_installed_copy_keeps_its_data_in_admin_backend_home(installed, tmp_path):
    home = tmp_path / "home"
    script = "from django.conf import settings; print(settings.VAR_DIR); print(settings.LOG_DIR)"
    env = {**installed["env"], "ADMIN_BACKEND_HOME": str(home), "SECRET_KEY": "x"}
    out = run(
        [installed["python"], "-c", f"import django; django.setup(); {script}"],
        cwd=installed["folder"],
        env=env,
    ).stdout.split()
    assert out == [str(home.resolve() / "var"), str(home.resolve() / "logs")]
