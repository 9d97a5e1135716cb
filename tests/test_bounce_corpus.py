"""Bounce recognition measured on tests/bounce_corpus.py (44 messages after
the formats of Postfix, Exim, Sendmail, Exchange/Office 365, Gmail, Yahoo,
qmail, Lotus Domino, GroupWise, and auto-replies)."""

import email
from collections import Counter
from email import policy

import pytest

import redsky
from bounce_corpus import CORPUS
from conftest import post

OWN = [f"test{s}@lists.example.org" for s in redsky.LIST_SUFFIXES]


def verdict(raw):
    reports = redsky.find_failures(email.message_from_bytes(raw.encode("utf-8"), policy=policy.compat32), OWN)
    failed = sorted({r["recipient"].lower() for r in reports if r["action"] == "failed"})
    return reports, failed


def test_corpus_detection_figures(capsys):
    assert len(CORPUS) >= 40
    table = Counter()
    wrong = []
    for name, expected, recipient, raw in CORPUS:
        reports, failed = verdict(raw)
        if expected == "failed":
            ok = failed == [recipient.lower()]
        else:
            ok = not failed                      # a warning or auto-reply must never be a failure
        table[(expected, ok)] += 1
        if not ok:
            wrong.append((name, expected, recipient, [(r["recipient"], r["action"]) for r in reports]))
    with capsys.disabled():
        kinds = sorted({e for e, _ in table})
        print("\nbounce corpus: " + ", ".join(f"{k} {table[(k, True)]}/{table[(k, True)] + table[(k, False)]}"
                                              for k in kinds))
    assert wrong == []


@pytest.mark.parametrize("name,expected,recipient,raw", CORPUS, ids=[c[0] for c in CORPUS])
def test_auto_replies_and_warnings_are_labelled(name, expected, recipient, raw):
    reports, failed = verdict(raw)
    if expected == "auto-reply":
        assert [r["action"] for r in reports] == ["auto-reply"]
    elif expected == "delayed":
        assert reports and {r["action"] for r in reports} == {"delayed"}


# full mailboxes, a forwarding loop, an unexplained failure: soft (weight 0.5)
SOFT = {"ben@example.net", "ida@contoso.example", "gil@host.example", "tom@example.org", "abe@corp.example"}


def test_corpus_end_to_end_scores_only_permanent_failures(rs):
    """Every corpus message through `queue` to the member's VERP address."""
    members = sorted({c[2] for c in CORPUS if c[2]} | {"victim@example.org"})
    rs.newlist("test@lists.example.org", "--access", "open", members=members)
    rs.queue(post(msgid="<post1@example.org>"), check=0)
    rs.run("send", check=0)
    expected_scores = {}
    for name, expected, recipient, raw in CORPUS:
        member = recipient or "victim@example.org"
        r = rs.queue(raw.encode(), recipient=rs.verp(member), sender="")
        assert r.returncode == 0 and "Traceback" not in r.err, (name, r.err)
        if expected == "failed" and not name.startswith("dsn-policy"):
            expected_scores[member] = 0.5 if member in SOFT else 1
    scores = {a: m["bounce_score"] for a, m in rs.members().items() if m["bounce_score"]}
    assert scores == expected_scores
