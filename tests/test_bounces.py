"""bouncehandler: bounces to LIST-bounces[+verp]@DOMAIN are consumed and scored."""

import pytest

from conftest import post
from test_message import dsn

MEMBERS = ("bob@example.net", "carol@example.com")


@pytest.fixture
def lst(rs):
    rs.newlist("test@lists.example.org", members=MEMBERS)
    return rs


def bounces(rs):
    return [dict(r) for r in rs.db().execute("SELECT * FROM bounces ORDER BY id")]


def test_verp_dsn_failed_scores_the_member(lst):
    r = lst.queue(dsn(recipient="bob@example.net"), recipient="test-bounces+bob=example.net@lists.example.org",
                  sender="")
    assert r.returncode == 0
    assert lst.members()["bob@example.net"]["bounce_score"] == 1
    assert lst.members()["carol@example.com"]["bounce_score"] == 0
    (b,) = bounces(lst)
    assert (b["address"], b["source"], b["action"], b["status"], b["counted"]) == \
        ("bob@example.net", "verp", "failed", "5.1.1", 1)
    assert b["reporting_mta"] == "mx.example.net" and "User unknown" in b["diagnostic"]
    assert b["raw"].startswith(b"From: MAILER-DAEMON")
    assert lst.status()["queued_posts"] == 0          # never distributed


def test_verp_wins_over_the_reported_address(lst):
    # the member forwards to another mailbox, which fails: VERP still names the member
    lst.queue(dsn(recipient="bob@forward.example"),
              recipient="test-bounces+bob=example.net@lists.example.org", sender="", check=0)
    assert lst.members()["bob@example.net"]["bounce_score"] == 1


def test_plain_dsn_to_bounce_address_uses_final_recipient(lst):
    lst.queue(dsn(recipient="carol@example.com"), recipient="test-bounces@lists.example.org", sender="", check=0)
    assert lst.members()["carol@example.com"]["bounce_score"] == 1


def test_delayed_report_is_recorded_not_counted(lst):
    lst.queue(dsn("delayed", "4.4.1", "bob@example.net"),
              recipient="test-bounces+bob=example.net@lists.example.org", sender="", check=0)
    assert lst.members()["bob@example.net"]["bounce_score"] == 0
    assert bounces(lst)[0]["action"] == "delayed" and bounces(lst)[0]["counted"] == 0


def test_auto_reply_to_bounce_address_never_counts(lst):
    reply = post(subject="Out of office", extra="Auto-Submitted: auto-replied\n")
    lst.queue(reply, recipient="test-bounces+bob=example.net@lists.example.org", sender="", check=0)
    assert lst.members()["bob@example.net"]["bounce_score"] == 0


def test_bounce_for_non_member_does_not_create_one(lst):
    lst.queue(dsn(recipient="stranger@example.org"), recipient="test-bounces@lists.example.org", sender="", check=0)
    assert "stranger@example.org" not in lst.members()
    assert bounces(lst)[0]["counted"] == 0


def test_bounce_address_of_unknown_list_is_67(lst):
    assert lst.queue(dsn(), recipient="nosuch-bounces@lists.example.org", sender="").returncode == 67


def test_dsn_to_post_address_is_discarded(lst):
    lst.queue(dsn(), recipient="test@lists.example.org", sender="", check=0)
    assert lst.status()["queued_posts"] == 0
    assert lst.members()["bob@example.net"]["bounce_score"] == 0
