"""Benchmark B4: exports of 10k and 1M rows to CSV and XLSX, ours vs naive, SQLite and PostgreSQL.

    .venv/bin/python bench/bench_reports.py                  # everything (takes a while)
    .venv/bin/python bench/bench_reports.py --rows 10000 --databases sqlite --formats csv

"ours" is ``reports.services.run_export``: exactly what the reports worker runs
for an export request (values_list().iterator(chunk_size), streaming writer,
temporary file + rename, progress saved in the record). "naive" is what the
first version of an export usually is: ``list(queryset)`` of model instances,
then a csv.writer / a default (in-memory) XlsxWriter workbook.

Each case runs in a fresh process, so its peak RSS (``ru_maxrss``) is its own;
rows/s counts the export alone (not the process start). One dataset of the
largest size is generated per database with one SQL statement; smaller sizes
export its first N rows (``pk <= N``).

Targets (issue 6): CSV >= 200,000 rows/s; peak RSS flat: 1M within 1.5x of
10k and under 150 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PG_URL = "postgres://postgres@127.0.0.1:5432/postgres"
FIELDS = ["id", "name", "email", "quantity", "amount", "active", "created_at", "notes"]


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- child: one case in its own process -------------------------------------------


def run_case(impl: str, fmt: str, rows: int) -> dict:
    import django

    django.setup()
    from reports.models import ExportRequest, SampleRecord

    baseline = rss_mb()
    started, cpu_started = time.perf_counter(), cpu_seconds()
    if impl == "ours":
        from reports import services

        export = ExportRequest.objects.create(
            model_label="reports.SampleRecord",
            fields=FIELDS,
            filters={"pk__lte": rows},
            format=fmt,
            task_id="bench",
        )
        result = services.run_export(export.pk, task_id="bench")
        written = result["rows"]
        path = services.export_path(ExportRequest.objects.get(pk=export.pk))
    else:
        path = Path(tempfile.mkdtemp(prefix="bench-naive-")) / f"naive.{fmt}"
        records = list(SampleRecord.objects.filter(pk__lte=rows).order_by("pk"))
        if fmt == "csv":
            import csv

            with open(path, "w", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle)
                writer.writerow(FIELDS)
                for record in records:
                    writer.writerow([getattr(record, name) for name in FIELDS])
        else:
            import xlsxwriter
            from django.utils import timezone

            book = xlsxwriter.Workbook(str(path))
            sheet = book.add_worksheet()
            sheet.write_row(0, 0, FIELDS)
            for row, record in enumerate(records, start=1):
                values = [getattr(record, name) for name in FIELDS]
                values[6] = timezone.make_naive(values[6])
                sheet.write_row(row, 0, values)
            book.close()
        written = len(records)
    seconds = time.perf_counter() - started
    cpu = cpu_seconds() - cpu_started
    size = path.stat().st_size
    path.unlink()
    return {
        "impl": impl,
        "format": fmt,
        "rows": written,
        "seconds": round(seconds, 3),
        "rows_per_s": round(written / seconds),
        # This process's CPU time: what the export costs when the machine is shared
        # (PostgreSQL's own work runs in the server process and is not in it).
        "cpu_seconds": round(cpu, 3),
        "rows_per_cpu_s": round(written / cpu) if cpu else None,
        "peak_rss_mb": round(rss_mb(), 1),
        "rss_before_mb": round(baseline, 1),
        "file_mb": round(size / 1e6, 1),
        # Other work on the machine slows a case down: keep the load it ran under.
        "load_1min": round(os.getloadavg()[0], 2),
    }


# --- parent: databases, data, cases ----------------------------------------------------


def child_env(database_url: str, work: Path) -> dict:
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "admin_backend.settings",
        "DATABASE_URL": database_url,
        "SECRET_KEY": "bench-only",
        "MEDIA_ROOT": str(work / "media"),
        "LOG_DIR": str(work / "logs"),
        "PYTHONPATH": str(ROOT),
    }


def sqlite_insert(rows: int) -> str:
    return f"""
    WITH RECURSIVE seq(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM seq WHERE i < {rows})
    INSERT INTO reports_samplerecord
        (name, email, quantity, amount, active, created_at, notes, api_token)
    SELECT
        'Record ' || i || CASE i % 5
            WHEN 0 THEN ', "quoted", comma' WHEN 1 THEN ' Zoë Ångström 東京'
            WHEN 2 THEN char(10) || 'second line' ELSE '' END,
        'user' || i || '@example.org',
        i % 1000,
        printf('%.2f', (i % 100000) / 100.0),
        i % 2,
        strftime('%Y-%m-%d %H:%M:%f', '2024-01-01', '+' || i || ' seconds'),
        CASE WHEN i % 7 = 0 THEN NULL WHEN i % 7 = 1 THEN '=1+' || i ELSE 'note ' || i END,
        'secret-token-' || i
    FROM seq
    """


def postgres_insert(rows: int) -> str:
    return f"""
    INSERT INTO reports_samplerecord
        (name, email, quantity, amount, active, created_at, notes, api_token)
    SELECT
        'Record ' || i || CASE i % 5
            WHEN 0 THEN ', "quoted", comma' WHEN 1 THEN ' Zoë Ångström 東京'
            WHEN 2 THEN chr(10) || 'second line' ELSE '' END,
        'user' || i || '@example.org',
        i % 1000,
        round((i % 100000) / 100.0, 2),
        i % 2 = 0,
        timestamptz '2024-01-01 00:00:00+00' + i * interval '1 second',
        CASE WHEN i % 7 = 0 THEN NULL WHEN i % 7 = 1 THEN '=1+' || i ELSE 'note ' || i END,
        'secret-token-' || i
    FROM generate_series(1, {rows}) AS i
    """


def prepare_database(kind: str, work: Path, rows: int, pg_url: str) -> tuple[str, callable]:
    """Create the database, migrate it, fill it; return (DATABASE_URL, cleanup)."""
    if kind == "sqlite":
        url = f"sqlite:///{work / 'bench.sqlite3'}"
        cleanup = lambda: None  # noqa: E731 - the work directory goes as a whole
    else:
        import psycopg

        name = f"bench_reports_{os.getpid()}"
        admin_url = pg_url.replace("postgres://", "postgresql://", 1)
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name}")
            conn.execute(f"CREATE DATABASE {name}")
        url = pg_url.rsplit("/", 1)[0] + f"/{name}"

        def cleanup():
            with psycopg.connect(admin_url, autocommit=True) as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    env = child_env(url, work)
    subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "migrate", "--verbosity=0"],
        env=env,
        check=True,
    )
    started = time.perf_counter()
    insert = sqlite_insert(rows) if kind == "sqlite" else postgres_insert(rows)
    code = (
        "import django; django.setup()\n"
        "from django.db import connection\n"
        "with connection.cursor() as c:\n"
        f"    c.execute({insert!r})\n"
        + ("    c.execute('ANALYZE reports_samplerecord')\n" if kind == "postgres" else "")
    )
    subprocess.run([sys.executable, "-c", code], env=env, check=True, cwd=ROOT)
    print(f"  {kind}: {rows:,} rows generated in {time.perf_counter() - started:.1f}s", flush=True)
    return url, cleanup


def machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{os.cpu_count()} cores ({cpu}), {memory:.0f} GiB RAM, Python "
        f"{platform.python_version()}, {platform.system()} {platform.release()}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", default="10000,1000000", help="comma-separated sizes")
    parser.add_argument("--databases", default="sqlite,postgres")
    parser.add_argument("--formats", default="csv,xlsx")
    parser.add_argument("--impls", default="ours,naive")
    parser.add_argument(
        "--skip",
        default="",
        help="cases to leave out, e.g. 'naive-xlsx-1000000' (impl-format-rows, comma-separated)",
    )
    parser.add_argument("--pg-url", default=os.environ.get("BENCH_POSTGRES_URL", DEFAULT_PG_URL))
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument(
        "--child", nargs=3, metavar=("IMPL", "FORMAT", "ROWS"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()

    if args.child:
        impl, fmt, rows = args.child
        print(json.dumps(run_case(impl, fmt, int(rows))))
        return 0

    sizes = sorted(int(n) for n in args.rows.split(","))
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    print(f"B4 reports benchmark on {machine()}", flush=True)
    results = []
    for kind in args.databases.split(","):
        with tempfile.TemporaryDirectory(prefix="bench-reports-") as tmp:
            work = Path(tmp)
            url, cleanup = prepare_database(kind, work, max(sizes), args.pg_url)
            try:
                for rows in sizes:
                    for fmt in args.formats.split(","):
                        for impl in args.impls.split(","):
                            if f"{impl}-{fmt}-{rows}" in skip:
                                continue
                            out = subprocess.run(
                                [sys.executable, __file__, "--child", impl, fmt, str(rows)],
                                env=child_env(url, work),
                                capture_output=True,
                                text=True,
                                cwd=ROOT,
                            )
                            if out.returncode != 0:
                                print(out.stderr[-3000:], file=sys.stderr)
                                raise SystemExit(f"case {kind} {impl} {fmt} {rows} failed")
                            result = {"database": kind, **json.loads(out.stdout.splitlines()[-1])}
                            results.append(result)
                            print(
                                f"  {kind:8} {impl:5} {fmt:4} {rows:>9,} rows: "
                                f"{result['seconds']:8.2f}s {result['rows_per_s']:>9,} rows/s "
                                f"({result['rows_per_cpu_s']:,} per CPU s) "
                                f"peak RSS {result['peak_rss_mb']:7.1f} MB "
                                f"(before export {result['rss_before_mb']:.1f} MB) "
                                f"load {result['load_1min']}",
                                flush=True,
                            )
            finally:
                cleanup()

    print(
        "\n| database | impl | format | rows | seconds | rows/s | rows/CPU s | peak RSS MB | load |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['database']} | {r['impl']} | {r['format']} | {r['rows']:,} | {r['seconds']:.2f} "
            f"| {r['rows_per_s']:,} | {r['rows_per_cpu_s']:,} | {r['peak_rss_mb']:.1f} "
            f"| {r['load_1min']} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
