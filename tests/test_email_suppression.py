"""The suppression list: what the admin shows, audited removal, importing a bounce list.

(That campaigns skip suppressed addresses, and that a hard bounce suppresses,
is tested with a real worker and relay in tests/test_email_relay.py.)
"""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from notifications.models import Campaign, Suppression, SuppressionRemoval

LIST_URL = "/admin/notifications/suppression/"


@pytest.mark.django_db
def test_the_admin_lists_why_each_address_is_suppressed_and_removal_is_audited(
    admin_client, admin_user
):
    campaign = Campaign.objects.create(name="Spring call", subject="s", text_template="t")
    Suppression.objects.create(email="left@example.org", reason="unsubscribed", campaign=campaign)
    bounced = Suppression.objects.create(
        email="gone@example.org",
        reason="hard_bounce",
        detail="550 5.1.1 <gone@example.org>: Recipient address rejected: User unknown",
        campaign=campaign,
    )
    Suppression.objects.create(
        email="ses@example.org", reason="imported", detail="bounces.csv line 2: Permanent"
    )

    page = admin_client.get(LIST_URL).content.decode()
    for text in (
        "left@example.org",
        "gone@example.org",
        "ses@example.org",
        "unsubscribed",
        "hard bounce (refused by the receiving server)",
        "imported from a provider&#x27;s bounce list",
        "550 5.1.1 &lt;gone@example.org&gt;: Recipient address rejected",
        "bounces.csv line 2: Permanent",
        "Spring call",
    ):
        assert text in page, text
    assert (
        admin_client.get(f"{LIST_URL}?reason__exact=hard_bounce")
        .content.decode()
        .count("@example.org</a>")
        == 1
    )
    assert admin_client.get(f"{LIST_URL}add/").status_code == 403  # entries come with evidence

    removed = admin_client.post(
        LIST_URL,
        {"action": "delete_selected", "_selected_action": [bounced.pk], "post": "yes"},
        follow=True,
    )
    assert removed.status_code == 200
    assert not Suppression.objects.filter(email="gone@example.org").exists()
    audit = SuppressionRemoval.objects.get()
    assert (audit.email, audit.reason, audit.removed_by) == (
        "gone@example.org",
        "hard_bounce",
        admin_user,
    )
    assert audit.detail.startswith("550 5.1.1") and audit.suppressed_at == bounced.created_at
    trail = admin_client.get("/admin/notifications/suppressionremoval/").content.decode()
    assert "gone@example.org" in trail and admin_user.username in trail
    # The audit cannot be edited away.
    assert (
        admin_client.get(f"/admin/notifications/suppressionremoval/{audit.pk}/delete/").status_code
        == 403
    )

    # Removing one from its change page is audited the same way.
    left = Suppression.objects.get(email="left@example.org")
    admin_client.post(f"{LIST_URL}{left.pk}/delete/", {"post": "yes"})
    assert set(SuppressionRemoval.objects.values_list("email", flat=True)) == {
        "gone@example.org",
        "left@example.org",
    }


def write(tmp_path, text: str, name: str = "bounces.csv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.django_db
def test_import_bounces_reads_a_providers_csv_and_keeps_existing_reasons(tmp_path):
    Suppression.objects.create(email="left@example.org", reason="unsubscribed")
    path = write(
        tmp_path,
        "EmailAddress,Reason,LastUpdateTime\n"
        "Ann@Example.org,BOUNCE,2026-11-30T10:00:00Z\n"
        "left@example.org,BOUNCE,2026-11-30T10:00:00Z\n"
        "\n"
        "bob@example.org,COMPLAINT,2026-11-30T11:00:00Z\n",
    )
    out = StringIO()

    call_command("import_bounces", str(path), stdout=out)

    assert out.getvalue().strip() == (
        "3 address(es) read, 2 newly suppressed, 1 already on the list"
    )
    rows = {s.email: (s.reason, s.detail) for s in Suppression.objects.all()}
    assert rows == {
        "ann@example.org": ("imported", "bounces.csv line 2: BOUNCE"),
        "bob@example.org": ("imported", "bounces.csv line 5: COMPLAINT"),
        "left@example.org": ("unsubscribed", ""),  # its first reason stays
    }
    call_command("import_bounces", str(path), stdout=StringIO())  # again: nothing new
    assert Suppression.objects.count() == 3


@pytest.mark.django_db
def test_import_bounces_refuses_bad_files_with_a_clear_error_and_imports_nothing(tmp_path):
    bad_lines = write(tmp_path, "address,error\nok@example.org,550\nnot-an-address,550\nx@,550\n")
    with pytest.raises(CommandError, match=r"2 bad line\(s\), nothing imported"):
        call_command("import_bounces", str(bad_lines), stdout=StringIO(), stderr=StringIO())
    assert not Suppression.objects.exists()

    errors = StringIO()
    call_command(
        "import_bounces", str(bad_lines), "--skip-invalid", stdout=StringIO(), stderr=errors
    )
    assert "bounces.csv line 3: invalid email address: 'not-an-address'" in errors.getvalue()
    assert list(Suppression.objects.values_list("email", flat=True)) == ["ok@example.org"]

    no_column = write(tmp_path, "who,when\nann@example.org,today\n", "export.csv")
    with pytest.raises(CommandError, match=r"export.csv: no address column .*--email-column"):
        call_command("import_bounces", str(no_column))
    call_command("import_bounces", str(no_column), "--email-column", "Who", stdout=StringIO())
    assert Suppression.objects.filter(email="ann@example.org").exists()

    with pytest.raises(CommandError, match=r"cannot read .*missing\.csv"):
        call_command("import_bounces", str(tmp_path / "missing.csv"))
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"email\n\xff\xfe\x00bad\n")
    with pytest.raises(CommandError, match=r"binary\.csv is not a UTF-8 CSV file"):
        call_command("import_bounces", str(binary))
