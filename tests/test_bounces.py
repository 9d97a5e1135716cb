"""bouncehandler: bounces to LIST-bounces[+verp]@DOMAIN are consumed and scored."""

import json


from conftest import post
from test_message import dsn

MEMBERS = ("bob@example.net", "carol@example.com")


LIST_OPTIONS = ("--access", "open")


def prepare_list(rs):
    """The members really got <post1@example.org> (the ledger's evidence)."""
    rs.queue(post(msgid="<post1@example.org>"), check=0)
    rs.run("send", check=0)


def bounces(rs):
    return [dict(r) for r in rs.db().execute("SELECT * FROM bounces ORDER BY id")]


def test_verp_dsn_failed_scores_the_member(lst):
    r = lst.queue(dsn(recipient="bob@example.net"), recipient=lst.verp("bob@example.net"),
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
    lst.queue(dsn(recipient="bob@forward.example"), recipient=lst.verp("bob@example.net"), sender="", check=0)
    assert lst.members()["bob@example.net"]["bounce_score"] == 1


def test_plain_dsn_to_bounce_address_uses_final_recipient(lst):
    lst.queue(dsn(recipient="carol@example.com"), recipient="test-bounces@lists.example.org", sender="", check=0)
    assert lst.members()["carol@example.com"]["bounce_score"] == 1


def test_delayed_report_is_recorded_not_counted(lst):
    lst.queue(dsn("delayed", "4.4.1", "bob@example.net"), recipient=lst.verp("bob@example.net"), sender="", check=0)
    assert lst.members()["bob@example.net"]["bounce_score"] == 0
    assert bounces(lst)[0]["action"] == "delayed" and bounces(lst)[0]["counted"] == 0


def test_auto_reply_to_bounce_address_never_counts(lst):
    reply = post(subject="Out of office", extra="Auto-Submitted: auto-replied\n")
    lst.queue(reply, recipient=lst.verp("bob@example.net"), sender="", check=0)
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


def bounce(rs, member="bob@example.net", **kw):
    return rs.queue(dsn(recipient=member, **kw), recipient=rs.verp(member), sender="", check=0)


def test_unsigned_or_wrongly_signed_verp_never_counts(lst):
    lst.queue(dsn(), recipient="test-bounces+bob=example.net@lists.example.org", sender="", check=0)
    lst.queue(dsn(), recipient="test-bounces+0badf00d+bob=example.net@lists.example.org", sender="", check=0)
    assert lst.members()["bob@example.net"]["bounce_score"] == 0
    unsigned, wrong = bounces(lst)
    assert unsigned["why"] == "unsigned VERP address: redsky signs the ones it writes"
    assert wrong["address"] == "0badf00d+bob@example.net" and not wrong["counted"]   # not decoded as bob
    lst.write_config(bounces={"require_signed_verp": "no"})     # e.g. an MTA doing XVERP
    lst.queue(dsn(), recipient="test-bounces+bob=example.net@lists.example.org", sender="", check=0)
    assert lst.members()["bob@example.net"]["bounce_score"] == 1


def test_verp_signature_is_bound_to_list_and_member(lst):
    signed = lst.verp("bob@example.net")
    forged = signed.replace("bob=example.net", "carol=example.com")
    lst.queue(dsn(recipient="carol@example.com"), recipient=forged, sender="", check=0)
    assert lst.members()["carol@example.com"]["bounce_score"] == 0


def test_forged_report_without_a_delivery_never_counts(lst):
    bounce(lst, message_id="<never-sent@example.org>")
    bounce(lst, message_id="")
    assert lst.members()["bob@example.net"]["bounce_score"] == 0
    assert {b["why"] for b in bounces(lst)} == {
        "no matching delivery in the ledger (the report does not return a post we sent)"}


def test_report_for_a_post_to_someone_else_never_counts(lst):
    lst.run("subscribe", "test@lists.example.org", "late@example.org", check=0)
    bounce(lst, member="late@example.org")            # post1 was sent before late@ joined
    assert lst.members()["late@example.org"]["bounce_score"] == 0


def test_policy_rejections_do_not_count_unless_configured(lst):
    bounce(lst, status="5.7.1")
    assert lst.members()["bob@example.net"]["bounce_score"] == 0
    assert "policy rejection 5.7.1 at example.net" in bounces(lst)[0]["why"]
    lst.write_config(bounces={"count_policy_rejections": "yes"})
    bounce(lst, status="5.7.1")
    assert lst.members()["bob@example.net"]["bounce_score"] == 1


def test_score_rises_at_most_once_a_day(lst):
    bounce(lst)
    bounce(lst)
    assert lst.members()["bob@example.net"]["bounce_score"] == 1
    assert bounces(lst)[1]["why"] == "already scored today"


def age_bounces(rs, seconds):
    with rs.db() as db:
        db.execute("UPDATE members SET last_bounce = last_bounce - ?", (seconds,))


def test_threshold_disables_and_stale_scores_reset(lst):
    lst.write_config(bounces={"score_threshold": "3"})
    for day in range(2):
        bounce(lst)
        age_bounces(lst, 86400 + 1)
    assert lst.members()["bob@example.net"]["bounce_score"] == 2
    age_bounces(lst, 8 * 86400)                       # a week without bounces: start again
    bounce(lst)
    assert lst.members()["bob@example.net"]["bounce_score"] == 1
    for day in range(2):
        age_bounces(lst, 86400 + 1)
        bounce(lst)
    member = lst.members()["bob@example.net"]
    assert member["bounce_score"] == 3 and member["status"] == "disabled"
    assert "disabled at the threshold 3" in bounces(lst)[-1]["why"]
    lst.queue(post(msgid="<post2@example.org>"), check=0)
    assert "bob@example.net" not in {r[0] for r in lst.db().execute(
        "SELECT d.address FROM deliveries d JOIN messages m ON m.id = d.message WHERE m.message_id = '<post2@example.org>'")}


def disable_bob(rs):
    rs.write_config(bounces={"score_threshold": "1"})
    bounce(rs)
    assert rs.members()["bob@example.net"]["status"] == "disabled"


def sent_to(rs, address):
    from conftest import parse
    return [parse(d) for argv, d in rs.sent() if argv[-1] == address]


def test_disabled_member_is_warned_owner_told_and_can_reenable_by_reply(lst):
    lst.run("set", "test@lists.example.org", "owners", "owner@example.org", check=0)
    disable_bob(lst)
    lst.run("send", check=0)
    (warning,) = sent_to(lst, "bob@example.net")[1:]          # [0] is post1
    assert "bounced repeatedly" in warning.get_content() and warning["Auto-Submitted"] == "auto-generated"
    (notice,) = sent_to(lst, "owner@example.org")
    assert "disabled by bounces" in notice["Subject"]
    lst.run("send", check=0)
    assert len(sent_to(lst, "bob@example.net")) == 2           # one warning per interval
    token = warning["Reply-To"].split("+")[1].split("@")[0]
    lst.queue(b"From: bob@example.net\nSubject: Re: confirm\n\nyes\n",
              recipient=f"test-confirm+{token}@lists.example.org", sender="bob@example.net", check=0)
    member = lst.members()["bob@example.net"]
    assert member["status"] == "enabled" and member["bounce_score"] == 0


def test_unanswered_warnings_remove_when_the_list_says_so(lst):
    lst.write_config(bounces={"you_are_disabled_warnings": "2", "warning_interval": "1d"})
    disable_bob(lst)
    for _ in range(3):
        lst.run("send", check=0)
        with lst.db() as db:
            db.execute("UPDATE members SET last_warning = last_warning - 2 * 86400")
    assert len(sent_to(lst, "bob@example.net")) == 1 + 2        # post1 + 2 warnings
    assert lst.members()["bob@example.net"]["status"] == "disabled"   # kept: remove_after_warnings = no
    lst.write_config(bounces={"remove_after_warnings": "yes"})
    lst.run("send", check=0)
    assert "bob@example.net" not in lst.members()


def test_enable_command_resets_the_score(lst):
    disable_bob(lst)
    r = lst.run("enable", "test@lists.example.org", "BOB@example.net", check=0)
    assert "score reset" in r.out
    assert lst.members()["bob@example.net"] == {"address": "bob@example.net", "status": "enabled", "bounce_score": 0,
                                                   "digest": False}
    assert lst.run("enable", "test@lists.example.org", "nobody@example.net").returncode == 65


def test_bounces_command_shows_the_evidence(lst):
    bounce(lst)
    bounce(lst, message_id="<forged@example.org>")
    text = lst.run("bounces", "test@lists.example.org", check=0).out
    assert "bob@example.net  enabled  score 1" in text
    assert "COUNTED: score 1" in text and "ignored: no matching delivery in the ledger" in text
    assert "mx.example.net smtp; 550 5.1.1" in text
    (entry,) = json.loads(lst.run("bounces", "test@lists.example.org", "--json", check=0).out)
    assert [b["message_id"] for b in entry["bounces"]] == ["<post1@example.org>", ""]


def test_permanent_delivery_failures_are_scored_the_same_way(rs):
    rs.newlist("test@lists.example.org", "--access", "open", members=MEMBERS)
    (rs.sendmail_dir / "permanent").write_text("carol@example.com\n")
    rs.write_config(bounces={"score_threshold": "1"})
    rs.queue(post(), check=0)
    rs.run("send", check=0)
    assert rs.members()["carol@example.com"]["status"] == "disabled"
    (b,) = bounces(rs)
    assert (b["source"], b["counted"], b["why"]) == ("delivery", 1, "score 1: disabled at the threshold 1")


def test_old_raw_bounces_are_pruned(lst):
    bounce(lst)
    with lst.db() as db:
        db.execute("UPDATE bounces SET received = received - 31 * 86400")
    lst.run("send", check=0)
    assert bounces(lst)[0]["raw"] is None and bounces(lst)[0]["why"] == "score 1"


def test_policy_rejections_burst_alerts_the_owners_once_a_day(rs):
    members = [f"m{i}@strict.example" for i in range(6)]
    rs.newlist("test@lists.example.org", "--access", "open", "--owner", "owner@example.org", members=members)
    from smtpsink import SMTPSink
    with SMTPSink({m: "550 5.7.1 rejected by DMARC policy" for m in members}) as sink:
        rs.write_config(send={"transport": "smtp", "smtp_host": "127.0.0.1", "smtp_port": sink.port},
                        bounces={"policy_alert_threshold": "5"})
        rs.queue(post(), check=0)
        rs.run("send", check=0)                      # six 5.7.1 rejections, nobody scored
        assert all(m["bounce_score"] == 0 for m in rs.members().values())
        assert {b["why"] for b in bounces(rs)} == {"policy rejection 5.7.1 at strict.example: caused by the post"}
        rs.run("send", check=0)                      # housekeeping sees the burst
        rs.run("send", check=0)
        alerts = [m for m in sink.messages if m[1] == ["owner@example.org"]]
    assert len(alerts) == 1
    assert b"strict.example: 6 rejections" in alerts[0][2]


def test_the_raw_report_is_kept_once_cut_short_and_only_when_it_names_a_member(lst):
    """A 215 KB report naming 200 strangers stored 43 MB: one raw copy per row."""
    blocks = "".join(f"Final-Recipient: rfc822; stranger{i}@example.org\nAction: failed\nStatus: 5.1.1\n\n"
                     for i in range(200))
    padding = "x" * 200_000
    report = dsn().decode().replace("Final-Recipient: rfc822; bob@example.net",
                                    blocks + "Final-Recipient: rfc822; nobody@x.org")
    report = report.replace("could not be delivered.", "could not be delivered.\n" + padding).encode()
    lst.queue(report, recipient="test-bounces@lists.example.org", sender="", check=0)
    with lst.db() as db:
        rows, kept = db.execute("SELECT count(*), count(raw) FROM bounces").fetchone()
    assert rows == 100 and kept == 0
    lst.queue(dsn().replace(b"could not be delivered.", b"could not be delivered.\n" + padding.encode()),
              recipient="test-bounces@lists.example.org", sender="", check=0)
    with lst.db() as db:
        sizes = [r[0] for r in db.execute("SELECT length(raw) FROM bounces WHERE raw IS NOT NULL")]
    assert sizes == [65536]
