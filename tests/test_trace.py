"""`queue --dry-run --explain` and `trace MESSAGE-ID`: every decision explainable."""

import json

import pytest

from conftest import dsn, post


LIST_OPTIONS = ("--owner", "owner@example.org")
MEMBERS = ("bob@example.net", "ann@example.org")


def test_dry_run_explains_and_stores_nothing(lst):
    before = lst.db().execute("SELECT count(*) FROM events").fetchone()[0]
    r = lst.queue(post(sender="bob@example.net"), "test@lists.example.org", "bob@example.net", check=None)
    assert r.returncode == 0
    r = lst.run("queue", "--recipient", "test@lists.example.org", "--sender", "bob@example.net", "--dry-run",
                input=post(sender="bob@example.net", subject="dry"))
    assert r.returncode == 0
    lines = r.out.splitlines()
    assert [line.split()[0] for line in lines[:-1]] == ["read", "getinfo", "loopdetect", "bouncehandler",
                                                        "commands", "ownermail", "getsubscribers", "access",
                                                        "contentfilter", "replyto", "dmarc", "subjecttag", "addfooter", "queuer", "archive"]
    assert "2 enabled of 2 members" in r.out
    assert lines[-1].startswith("=> exit 0") and "queued: for 2 recipients" in lines[-1] and "dry run" in lines[-1]
    st = lst.status()
    assert st["queued_posts"] == 1 and st["pending"] == 2
    assert lst.db().execute("SELECT count(*) FROM events").fetchone()[0] == before + 1
    archived = lst.run("archive", "test@lists.example.org", check=0).out
    assert len(archived.splitlines()) == 1 and "dry" not in archived      # the real post only


@pytest.mark.parametrize("kwargs,outcome,code", [
    (dict(recipient="nosuch@lists.example.org"), "unknown-list: no list at nosuch@lists.example.org", 67),
    (dict(sender="stranger@evil.example"), "hold: stranger@evil.example is not a member", 0),
    (dict(recipient="test-join@lists.example.org", sender="new@example.com"), "consumed: subscribe new@example.com", 0),
])
def test_dry_run_of_other_outcomes(lst, kwargs, outcome, code):
    sender = kwargs.get("sender", "bob@example.net")
    r = lst.run("queue", "--recipient", kwargs.get("recipient", "test@lists.example.org"), "--sender", sender,
                "--dry-run", input=post(sender=sender))
    assert r.returncode == code and outcome in r.out
    st = lst.status()
    assert st["held"] == 0 and st["queued_posts"] == 0
    assert lst.run("pending", check=0).out == ""


def test_dry_run_of_a_bounce_scores_nobody(lst):
    lst.queue(post(sender="bob@example.net", msgid="<post1@example.org>"), sender="bob@example.net", check=0)
    lst.run("send", check=0)
    r = lst.run("queue", "--recipient", lst.verp("bob@example.net"), "--sender", "",
                "--dry-run", input=dsn())
    assert "scored: bob@example.net (would be scored)" in r.out
    assert lst.members()["bob@example.net"]["bounce_score"] == 0
    assert lst.db().execute("SELECT count(*) FROM bounces").fetchone()[0] == 0


def test_explain_with_a_real_run(lst):
    r = lst.run("queue", "--recipient", "test@lists.example.org", "--sender", "bob@example.net", "--explain",
                input=post(sender="bob@example.net"))
    assert "queued: for 2 recipients" in r.out and "dry run" not in r.out
    assert lst.status()["queued_posts"] == 1


def test_trace_answers_did_x_get_y_and_why_not(lst):
    (lst.sendmail_dir / "permanent").write_text("ann@example.org\n")
    lst.queue(post(sender="bob@example.net", msgid="<traced@example.org>"), sender="bob@example.net", check=0)
    lst.run("send", check=0)
    r = lst.run("trace", "traced@example.org", check=0)
    assert "=> queued" in r.out and "getsubscribers  2 enabled of 2 members" in r.out
    assert "bob@example.net" in r.out and "sent" in r.out
    assert "ann@example.org" in r.out and "failed" in r.out and "exit 67" in r.out
    data = json.loads(lst.run("trace", "<traced@example.org>", "--json", "--address", "ann@example.org", check=0).out)
    assert [d["state"] for d in data["deliveries"]] == ["failed"]
    assert data["events"][0]["trace"][0][0] == "read"


def test_trace_of_refused_and_held_messages(lst):
    lst.queue(post(msgid="<lost@example.org>"), recipient="nosuch@lists.example.org")
    r = lst.run("trace", "lost@example.org", check=0)
    assert "unknown-list" in r.out and "no list at nosuch@lists.example.org" in r.out
    lst.queue(post(sender="x@y.org", msgid="<held@example.org>"), sender="x@y.org", check=0)
    assert "=> hold" in lst.run("trace", "held@example.org", check=0).out


def test_trace_of_unknown_message(lst):
    r = lst.run("trace", "never@example.org")
    assert r.returncode == 65 and "no record" in r.err


def test_trace_shows_the_hold_then_the_approval_and_release(lst):
    lst.queue(post(sender="x@y.org", msgid="<later@example.org>"), sender="x@y.org", check=0)
    lst.run("approve", "1", check=0)
    lst.run("send", check=0)
    out = lst.run("trace", "later@example.org", check=0).out
    assert out.index("=> hold") < out.index("approve") < out.index("=> released")
    assert "held post 1 (x@y.org is not a member of the list) approved" in out
    assert "bob@example.net" in out and "sent" in out
    events = json.loads(lst.run("trace", "later@example.org", "--json", check=0).out)["events"]
    assert [e["outcome"] for e in events] == ["hold", "released"]


def test_bounces_text_shows_which_post_came_back(lst):
    lst.queue(post(msgid="<post1@example.org>", sender="bob@example.net"), sender="bob@example.net", check=0)
    lst.run("send", check=0)
    lst.queue(dsn(), recipient=lst.verp("bob@example.net"), sender="", check=0)
    out = lst.run("bounces", "test@lists.example.org", check=0).out
    assert "post <post1@example.org>" in out


def test_trace_and_status_show_a_delivery_that_bounced_later(lst):
    """The MTA accepted it (sendmail exit 0), then the member's server bounced it."""
    lst.queue(post(msgid="<later-bounce@example.org>", sender="bob@example.net"), sender="bob@example.net",
              check=0)
    lst.run("send", check=0)
    assert lst.status()["bounced"] == 0
    lst.queue(dsn(message_id=""), recipient=lst.verp("bob@example.net"), sender="", check=0)
    out = lst.run("trace", "later-bounce@example.org", check=0).out
    deliveries = out[out.index("deliveries:"):].splitlines()
    bob = next(line for line in deliveries if "bob@example.net" in line)
    assert "bounced" in bob and "5.1.1 userunknown (verp report)" in bob
    assert "sent" in next(line for line in deliveries if "ann@example.org" in line)
    data = json.loads(lst.run("trace", "later-bounce@example.org", "--json", check=0).out)
    states = {d["address"]: d["state"] for d in data["deliveries"]}
    assert states == {"bob@example.net": "bounced", "ann@example.org": "sent"}
    assert lst.status()["bounced"] == 1
    # a forged plain report is no evidence: it marks nothing
    lst.queue(dsn(recipient="ann@example.org"), recipient="test-bounces@lists.example.org", sender="",
              check=0)
    assert lst.status()["bounced"] == 1


@pytest.mark.parametrize("how", ["unsubscribe", "nomail", "bounce-disabled", "digest"])
def test_trace_and_whois_keep_deliveries_to_a_member_who_later_stopped(lst, how):
    """A post to the members has no row per member; trace used to work out 'sent' from today's
    members, so bob's delivery vanished once he left or turned on nomail."""
    before = post(sender="ann@example.org", subject="before")
    lst.queue(before, sender="ann@example.org", check=0)
    msgid = before.msgid
    lst.run("send", check=0)
    assert "bob@example.net" in lst.sent_to()
    if how == "unsubscribe":
        lst.run("unsubscribe", "test@lists.example.org", "bob@example.net", check=0)
    elif how == "nomail":
        lst.run("set-member", "test@lists.example.org", "bob@example.net", "nomail", "on", check=0)
    elif how == "digest":
        lst.run("set-member", "test@lists.example.org", "bob@example.net", "digest", "on", check=0)
    else:
        with lst.db() as db:
            db.execute("UPDATE members SET status = 'disabled', disabled_reason = 'bounce'"
                       " WHERE address = 'bob@example.net'")
    trace = json.loads(lst.run("trace", msgid, "--json", check=0).out)
    states = {d["address"]: d["state"] for d in trace["deliveries"]}
    assert states == {"bob@example.net": "sent", "ann@example.org": "sent"}, trace
    who = json.loads(lst.run("whois", "bob@example.net", "--json", check=0).out)
    assert len(who["deliveries"]) == 1
    # a later post does not reach bob, and forget still forgets everything
    lst.queue(post(sender="ann@example.org", subject="after"), sender="ann@example.org", check=0)
    lst.run("send", check=0)
    assert not [data for argv, data in lst.sent() if argv[-1] == "bob@example.net" and b"Subject: after" in data]
    lst.run("forget", "bob@example.net", check=0)
    assert json.loads(lst.run("whois", "bob@example.net", "--json", check=0).out)["deliveries"] == []
