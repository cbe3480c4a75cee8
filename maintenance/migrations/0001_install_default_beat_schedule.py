from django.db import migrations


def install(apps, schema_editor):
    from maintenance.schedule import install_default_schedule

    install_default_schedule(apps)


class Migration(migrations.Migration):
    """Install the default beat schedule once; `install_beat_schedule` refreshes it."""

    dependencies = [
        ("django_celery_beat", "0019_alter_periodictasks_options"),
        ("taskcore", "0001_initial"),
    ]

    operations = [migrations.RunPython(install, migrations.RunPython.noop)]
