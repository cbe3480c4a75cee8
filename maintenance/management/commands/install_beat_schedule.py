"""Install (or refresh) the default beat schedule; safe to run any number of times."""

from django.core.management.base import BaseCommand

from maintenance.schedule import install_default_schedule


class Command(BaseCommand):
    help = "Create or update the default periodic tasks (health check, outbox relay, cleanups)"

    def handle(self, **options):
        for name, what in install_default_schedule().items():
            self.stdout.write(f"{what:>7}: {name}")
