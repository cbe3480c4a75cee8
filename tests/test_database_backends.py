"""What the settings promise on each database the README offers (SQLite, PostgreSQL, MariaDB).

./run_tests.sh runs the suite once per database; these tests say what a user
would see go wrong on one of them: text beyond three UTF-8 bytes (an emoji in a
subject) and a value too long for its column.
"""

from __future__ import annotations

import pytest
from django.db import DataError, connection, transaction

from notifications.models import Notification

pytestmark = pytest.mark.django_db


def test_text_of_all_of_unicode_round_trips():
    subject = "Welcome 👋 to AU-VLP — ünïcödé 漢字"
    notification = Notification.objects.create(
        template="welcome", subject=subject, text_body=f"{subject}\n🎉"
    )
    notification.refresh_from_db()
    assert notification.subject == subject
    assert notification.text_body.endswith("🎉")


@pytest.mark.skipif(
    connection.vendor == "sqlite", reason="SQLite does not enforce a column's length"
)
def test_a_value_too_long_for_its_column_is_an_error_not_cut():
    with pytest.raises(DataError), transaction.atomic():
        Notification.objects.create(template="t" * 101, subject="s", text_body="b")


@pytest.mark.skipif(connection.vendor != "mysql", reason="MariaDB/MySQL connection options")
def test_mariadb_connection_is_utf8mb4_and_strict():
    with connection.cursor() as cursor:
        cursor.execute("SELECT @@character_set_connection, @@sql_mode")
        charset, sql_mode = cursor.fetchone()
        cursor.execute(
            "SELECT default_character_set_name FROM information_schema.schemata"
            " WHERE schema_name = DATABASE()"
        )
        (database_charset,) = cursor.fetchone()
    assert charset == "utf8mb4"
    assert database_charset == "utf8mb4"
    assert "STRICT_TRANS_TABLES" in sql_mode.split(",")
