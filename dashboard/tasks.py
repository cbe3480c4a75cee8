"""The collector task: beat sends it every 10 s to the maintenance queue (its entry names the
queue: `dashboard` is not in the queue table, so without it the task would go to `default`)."""

from celery import shared_task


@shared_task(name="dashboard.tasks.collect_sample")
def collect_sample() -> dict:
    """Store one sample of every queue for the dashboard's charts (dashboard.samples)."""
    from . import samples

    sample = samples.collect_sample()
    return {"t": sample["t"], "queues": len(sample["q"])}
