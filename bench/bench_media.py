"""B3: the media pipeline against a naive Pillow loop, on the same generated photos.

    .venv/bin/python bench/bench_media.py            # 200 images, 3 rounds (about 6 minutes)
    .venv/bin/python bench/bench_media.py --images 40 --rounds 1   # a quick look

Contenders, each making the same three renditions (thumbnail 150 px JPEG,
medium 800 px JPEG, 800 px WebP) of every 12 MP JPEG:

- pipeline: our uploads processed by a real Celery worker on the media queue,
  shaped by the queue table (prefork, 2 processes, prefetch 1), through Redis
  and the database, with everything the task does: validation by content, EXIF
  orientation, metadata stripping, sRGB, JPEG draft decoding, atomic writes,
  status updates. Timed from the first message sent to the last upload ready.
- naive: one process, ``Image.open`` / ``resize`` / ``save`` per rendition.
- naive x2: the same naive loop split over 2 processes, to separate what the
  second core gives from what the pipeline's decoding gives.

Rounds interleave the contenders so that load from other work on the machine
falls on all of them alike; the figures are medians over rounds. Memory is the
peak resident set size, sampled every 20 ms over the whole process tree (for
the pipeline: the worker's main process and its pool children).

Everything runs in a temporary directory with its own SQLite database and a
Redis of its own (a claimed database on 127.0.0.1:6379, or a private
redis-server), like the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))

NAIVE_RENDITIONS = (
    ("thumbnail", 150, "JPEG", 85),
    ("medium", 800, "JPEG", 85),
    ("webp", 800, "WEBP", 80),
)


# --- the naive baseline (also run as a child process: --naive-child) ---------------


def naive_process(paths: list[str], out_dir: str) -> None:
    from PIL import Image

    for path in paths:
        with Image.open(path) as image:
            image = image.convert("RGB")
            width, height = image.size
            stem = Path(path).stem
            for name, bound, fmt, quality in NAIVE_RENDITIONS:
                scale = bound / max(width, height)
                size = (round(width * scale), round(height * scale))
                ext = "jpg" if fmt == "JPEG" else "webp"
                image.resize(size).save(f"{out_dir}/{stem}-{name}.{ext}", fmt, quality=quality)


def naive_child(args) -> None:
    paths = json.loads(Path(args.naive_child).read_text())
    out_dir = args.out_dir
    if args.processes == 1:
        naive_process(paths, out_dir)
    else:
        from multiprocessing import Pool

        chunks = [paths[i :: args.processes] for i in range(args.processes)]
        with Pool(args.processes) as pool:
            pool.starmap(naive_process, [(chunk, out_dir) for chunk in chunks])


# --- measurement ----------------------------------------------------------------


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def _descendants(pid: int) -> list[int]:
    found, stack = [], [pid]
    while stack:
        current = stack.pop()
        try:
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        for child in map(int, children):
            found.append(child)
            stack.append(child)
    return found


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU time used so far by a process and its living descendants."""
    total = 0
    for member in [pid, *_descendants(pid)]:
        try:
            stat = Path(f"/proc/{member}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        fields = stat.rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLOCK_TICKS


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class PeakMemory:
    """Peak RSS of a process tree: the sum over processes, and the largest single process."""

    def __init__(self, pid: int, interval: float = 0.02):
        self.pid, self.interval = pid, interval
        self.peak_total_kb = self.peak_process_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            sizes = [_rss_kb(pid) for pid in [self.pid, *_descendants(self.pid)]]
            self.peak_total_kb = max(self.peak_total_kb, sum(sizes))
            self.peak_process_kb = max(self.peak_process_kb, max(sizes, default=0))
            time.sleep(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        self._thread.join()


def run_naive(paths: list[str], work_dir: Path, processes: int) -> dict:
    out_dir = work_dir / f"naive-out-{uuid.uuid4().hex[:6]}"
    out_dir.mkdir()
    list_file = work_dir / "naive-paths.json"
    list_file.write_text(json.dumps(paths))
    command = [
        sys.executable,
        __file__,
        "--naive-child",
        str(list_file),
        "--out-dir",
        str(out_dir),
        "--processes",
        str(processes),
    ]
    cpu_before = children_cpu_seconds()
    started = time.perf_counter()
    child = subprocess.Popen(command)
    with PeakMemory(child.pid) as memory:
        if child.wait() != 0:
            raise SystemExit(f"naive loop failed with exit code {child.returncode}")
    seconds = time.perf_counter() - started
    cpu = children_cpu_seconds() - cpu_before
    made = len(list(out_dir.iterdir()))
    shutil.rmtree(out_dir)
    assert made == len(paths) * len(NAIVE_RENDITIONS), made
    return {
        "seconds": seconds,
        "cpu": cpu,
        "peak_total_kb": memory.peak_total_kb,
        "peak_process_kb": memory.peak_process_kb,
    }


def run_pipeline(upload_ids: list[int], worker) -> dict:
    from media.models import Upload
    from media.tasks import process_upload

    Upload.objects.filter(pk__in=upload_ids).update(status=Upload.Status.PENDING)
    cpu_before = tree_cpu_seconds(worker.process.pid)
    with PeakMemory(worker.process.pid) as memory:
        started = time.perf_counter()
        for upload_id in upload_ids:
            process_upload.delay(upload_id)
        while True:
            done = Upload.objects.filter(pk__in=upload_ids).exclude(
                status__in=[Upload.Status.PENDING, Upload.Status.PROCESSING]
            )
            if done.count() == len(upload_ids):
                break
            time.sleep(0.05)
        seconds = time.perf_counter() - started
    cpu = tree_cpu_seconds(worker.process.pid) - cpu_before
    ready = Upload.objects.filter(pk__in=upload_ids, status=Upload.Status.READY).count()
    if ready != len(upload_ids):
        failed = Upload.objects.filter(pk__in=upload_ids).exclude(status=Upload.Status.READY)
        raise SystemExit(f"pipeline: {failed.count()} uploads not ready: {failed.first().reason}")
    return {
        "seconds": seconds,
        "cpu": cpu,
        "peak_total_kb": memory.peak_total_kb,
        "peak_process_kb": memory.peak_process_kb,
    }


# --- set-up ------------------------------------------------------------------------


def prepare_environment(work_dir: Path):
    from taskcore.testing.pytest_plugin import claim_redis

    claimed = claim_redis(f"bench-media-{uuid.uuid4().hex[:6]}", work_dir)
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "admin_backend.settings",
            "REDIS_URL": claimed.url,
            "CELERY_BROKER_URL": claimed.url,
            "CELERY_RESULT_BACKEND": claimed.url,
            "CACHE_URL": claimed.url,
            "CACHE_KEY_PREFIX": f"bench-{uuid.uuid4().hex[:6]}",
            "LOG_DIR": str(work_dir / "logs"),
            "MEDIA_ROOT": str(work_dir / "media"),
            "DATABASE_URL": f"sqlite:///{work_dir / 'bench.sqlite3'}",
            "DEBUG": "0",
            "SECURE_SSL_REDIRECT": "0",
            "SECRET_KEY": f"bench-{uuid.uuid4().hex}",
        }
    )
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    return claimed


def make_uploads(count: int, distinct: int) -> list[int]:
    """``count`` stored uploads of 12 MP photo-like JPEGs (``distinct`` different ones)."""
    from django.core.files.base import ContentFile

    from media import testing
    from media.models import Upload

    sources = [
        testing.photo_jpeg(
            (4000, 3000), seed=seed, exif=testing.camera_exif(6 if seed % 4 == 3 else 1)
        )
        for seed in range(distinct)
    ]
    ids = []
    for index in range(count):
        data = sources[index % distinct]
        upload = Upload(original_name=f"photo-{index:03d}.jpg", size_bytes=len(data))
        upload.file.save(upload.original_name, ContentFile(data), save=True)
        ids.append(upload.pk)
    return ids


def start_worker(work_dir: Path):
    from admin_backend import queues
    from admin_backend.celery import app
    from taskcore.testing.workers import WorkerProcess

    spec = queues.QUEUES_BY_NAME["media"]
    extra = [
        f"--prefetch-multiplier={spec.prefetch_multiplier}",
        f"--max-tasks-per-child={spec.max_tasks_per_child}",
    ]
    if spec.max_memory_per_child_kb:
        extra.append(f"--max-memory-per-child={spec.max_memory_per_child_kb}")
    worker = WorkerProcess(
        app,
        [spec.name],
        log_path=work_dir / "worker.out",
        concurrency=spec.concurrency,
        pool=spec.pool,
        extra_args=extra,
        name="bench-media",
    )
    return worker.start(), spec


def median_of(results: list[dict], images: int) -> dict:
    return {
        "images_per_s": statistics.median(images / r["seconds"] for r in results),
        "cpu_ms_per_image": statistics.median(1000 * r["cpu"] / images for r in results),
        "peak_total_mb": max(r["peak_total_kb"] for r in results) / 1024,
        "peak_process_mb": max(r["peak_process_kb"] for r in results) / 1024,
        "runs": [round(images / r["seconds"], 2) for r in results],
    }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--distinct", type=int, default=8, help="different source photos")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--naive-child", help=argparse.SUPPRESS)
    parser.add_argument("--out-dir", help=argparse.SUPPRESS)
    parser.add_argument("--processes", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    if args.naive_child:
        naive_child(args)
        return

    work_dir = Path(tempfile.mkdtemp(prefix="bench-media-"))
    claimed = worker = None
    try:
        claimed = prepare_environment(work_dir)
        from django.conf import settings

        from media.models import Upload

        print(f"generating {args.images} 12 MP JPEGs ({args.distinct} distinct) ...", flush=True)
        upload_ids = make_uploads(args.images, args.distinct)
        stored = Upload.objects.filter(pk__in=upload_ids).values_list("file", flat=True)
        paths = [str(Path(settings.MEDIA_ROOT) / name) for name in sorted(stored)]
        mean_mb = statistics.mean(os.path.getsize(path) for path in paths) / 2**20
        worker, spec = start_worker(work_dir)
        run_pipeline(upload_ids[: 2 * spec.concurrency], worker)  # warm the pool children

        results: dict[str, list[dict]] = {"pipeline": [], "naive": [], "naive x2": []}
        loads = []
        for round_number in range(1, args.rounds + 1):
            for name in results:
                if name == "pipeline":
                    outcome = run_pipeline(upload_ids, worker)
                else:
                    outcome = run_naive(paths, work_dir, 2 if name == "naive x2" else 1)
                results[name].append(outcome)
                loads.append(os.getloadavg()[0])
                rate = args.images / outcome["seconds"]
                print(
                    f"round {round_number} {name:9} {rate:6.2f} images/s"
                    f"  {1000 * outcome['cpu'] / args.images:5.0f} CPU ms/image"
                    f"  peak {outcome['peak_total_kb'] / 1024:4.0f} MB  load {loads[-1]:.1f}"
                )

        summary = {name: median_of(runs, args.images) for name, runs in results.items()}
        # Each round's contenders ran back to back under about the same outside load.
        round_ratios = [
            (args.images / p["seconds"]) / (args.images / n["seconds"])
            for p, n in zip(results["pipeline"], results["naive"], strict=True)
        ]
        print()
        print(
            f"B3 media: {args.images} photo-like JPEGs 4000x3000 (mean {mean_mb:.1f} MB), "
            f"{args.rounds} rounds; "
            f"{os.cpu_count()} cores ({cpu_model()}), Python {platform.python_version()}; "
            f"load average during the runs {min(loads):.1f}-{max(loads):.1f}"
        )
        print()
        print(
            "| contender | images/s, median | runs (images/s) | CPU ms per image "
            "| peak RSS, all processes | largest process |"
        )
        print("|---|---|---|---|---|---|")
        for name, figures in summary.items():
            print(
                f"| {name} | {figures['images_per_s']:.2f} | {figures['runs']} "
                f"| {figures['cpu_ms_per_image']:.0f} "
                f"| {figures['peak_total_mb']:.0f} MB | {figures['peak_process_mb']:.0f} MB |"
            )
        ratio = summary["pipeline"]["images_per_s"] / summary["naive"]["images_per_s"]
        ratio2 = summary["pipeline"]["images_per_s"] / summary["naive x2"]["images_per_s"]
        print()
        print(
            f"pipeline / naive: {ratio:.2f}x of medians, "
            f"per round {[round(r, 2) for r in round_ratios]} (target >= 1.8x); "
            f"pipeline / naive x2: {ratio2:.2f}x"
        )
    finally:
        if worker:
            worker.stop()
        if claimed:
            claimed.release()
        if args.keep:
            print(f"work directory kept: {work_dir}")
        else:
            shutil.rmtree(work_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
