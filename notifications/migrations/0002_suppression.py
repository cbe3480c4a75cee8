"""Unsubscribes become the suppression list (rows kept), with a reason; removals are audited."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("notifications", "0001_initial"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.RenameModel("Unsubscribe", "Suppression"),
        migrations.AddField(
            model_name="suppression",
            name="reason",
            field=models.CharField(
                choices=[
                    ("unsubscribed", "unsubscribed"),
                    ("hard_bounce", "hard bounce (refused by the receiving server)"),
                    ("imported", "imported from a provider's bounce list"),
                ],
                default="unsubscribed",
                max_length=20,
            ),
        ),
        migrations.AddField(
            model_name="suppression",
            name="detail",
            field=models.TextField(blank=True),
        ),
        migrations.AlterField(
            model_name="suppression",
            name="campaign",
            field=models.ForeignKey(
                blank=True,
                help_text="The campaign whose link was used or whose mail bounced.",
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                to="notifications.campaign",
            ),
        ),
        migrations.AlterField(
            model_name="delivery",
            name="status",
            field=models.CharField(
                choices=[
                    ("queued", "queued"),
                    ("sending", "sending"),
                    ("deferred", "deferred (server said: try later)"),
                    ("sent", "sent"),
                    ("failed", "failed"),
                    ("skipped", "skipped (suppressed)"),
                ],
                default="queued",
                max_length=10,
            ),
        ),
        migrations.CreateModel(
            name="SuppressionRemoval",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("email", models.CharField(db_index=True, max_length=254)),
                ("reason", models.CharField(max_length=20)),
                ("detail", models.TextField(blank=True)),
                ("suppressed_at", models.DateTimeField()),
                ("removed_at", models.DateTimeField(auto_now_add=True)),
                (
                    "removed_by",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
            ],
            options={"ordering": ("-removed_at",)},
        ),
    ]
