"""bouncehandler: bounces to LIST-bounces[+verp]@DOMAIN are consumed and scored."""

import json


from conftest import dsn, post

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


def probes(rs):
    """(recipient, envelope sender) of the probes queued."""
    return [(r[0], r[1]) for r in rs.db().execute(
        "SELECT d.address, m.sender FROM messages m JOIN deliveries d ON d.message = m.id"
        " WHERE m.sender != '' ORDER BY m.id")]


def test_plain_dsn_raises_nothing_and_probes_the_member(lst):
    lst.queue(dsn(recipient="carol@example.com"), recipient="test-bounces@lists.example.org", sender="", check=0)
    assert lst.members()["carol@example.com"]["bounce_score"] == 0
    ((to, sender),) = probes(lst)
    assert to == "carol@example.com" and sender.startswith("test-bounces+p")
    assert sender.endswith("+carol=example.com@lists.example.org")
    (b,) = bounces(lst)
    assert (b["source"], b["counted"], b["cause"]) == ("plain", 0, "userunknown")
    assert b["why"].endswith("probe sent")


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


def test_unsigned_or_wrongly_signed_verp_never_counts_but_probes(lst):
    lst.queue(dsn(), recipient="test-bounces+bob=example.net@lists.example.org", sender="", check=0)
    lst.queue(dsn(), recipient="test-bounces+0badf00d+bob=example.net@lists.example.org", sender="", check=0)
    assert lst.members()["bob@example.net"]["bounce_score"] == 0
    unsigned, wrong = bounces(lst)[:2]
    assert unsigned["source"] == "unsigned" and unsigned["why"].endswith("probe sent")
    # the wrong signature is not decoded as bob; the DSN names bob, whose probe was just sent
    assert wrong["address"] == "0badf00d+bob@example.net" and not wrong["counted"]
    assert [to for to, _ in probes(lst)] == ["bob@example.net"]


def test_verp_signature_is_bound_to_list_and_member(lst):
    signed = lst.verp("bob@example.net")
    forged = signed.replace("bob=example.net", "carol=example.com")
    lst.queue(dsn(recipient="carol@example.com"), recipient=forged, sender="", check=0)
    assert lst.members()["carol@example.com"]["bounce_score"] == 0


def test_signed_verp_counts_without_the_post(lst):
    """Real reports often return nothing: the signed address is the proof."""
    bounce(lst, message_id="")
    (b,) = bounces(lst)
    assert lst.members()["bob@example.net"]["bounce_score"] == 1
    assert (b["source"], b["counted"], b["weight"]) == ("verp", 1, 1)
    assert b["message_id"] == "<post1@example.org>"       # the last post sent to bob


def test_signed_verp_counts_whatever_address_or_post_the_report_names(lst):
    bounce(lst, member="carol@example.com", message_id="<never-sent@example.org>")
    assert lst.members()["carol@example.com"]["bounce_score"] == 1
    lst.queue(dsn(recipient="someone@forwarder.example", message_id=""),
              recipient=lst.verp("bob@example.net"), sender="", check=0)
    assert lst.members()["bob@example.net"]["bounce_score"] == 1


FORGED = b"""From: MAILER-DAEMON@evil.example
Subject: Undelivered Mail Returned to Sender
Content-Type: multipart/report; report-type=delivery-status; boundary="BB"

--BB
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.evil.example

Final-Recipient: rfc822; bob@example.net
Action: failed
Status: 5.1.1

Final-Recipient: rfc822; carol@example.com
Action: failed
Status: 5.1.1

--BB
Content-Type: text/rfc822-headers

Message-ID: <post1@example.org>

--BB--
"""


def test_forged_plain_report_raises_nothing_and_sends_one_probe_per_member(lst):
    """The forgery of issue 12, five times on five days: it disabled the list."""
    for day in range(5):
        assert lst.queue(FORGED, recipient="test-bounces@lists.example.org", sender="").returncode == 0
        with lst.db() as db:
            db.execute("UPDATE members SET last_bounce = last_bounce - 86401")
            db.execute("UPDATE probes SET sent = sent - 86401")
    members = lst.members()
    assert [members[m]["bounce_score"] for m in MEMBERS] == [0, 0]
    assert {m["status"] for m in members.values()} == {"enabled"}
    # one probe each per probe_interval (7 days): five days, one probe
    assert sorted(to for to, _ in probes(lst)) == sorted(MEMBERS)
    assert sum("already sent" in b["why"] for b in bounces(lst)) == 8


def test_the_bounce_of_a_probe_counts_and_a_delivered_probe_costs_nothing(lst):
    lst.queue(FORGED, recipient="test-bounces@lists.example.org", sender="", check=0)
    lst.run("send", check=0)
    from conftest import parse
    probe = {argv[-1]: (argv, parse(d)) for argv, d in lst.sent() if "delivery check" in parse(d)["Subject"]}
    argv, message = probe["bob@example.net"]
    envelope = argv[argv.index("-f") + 1]
    assert envelope.startswith("test-bounces+p") and "if you can read it" in message.get_content()
    assert message["Auto-Submitted"] == "auto-replied"
    # bob's mailbox is gone: the probe bounces, without returning anything
    lst.queue(dsn(recipient="bob@example.net", message_id=""), recipient=envelope, sender="", check=0)
    assert lst.members()["bob@example.net"]["bounce_score"] == 1
    assert bounces(lst)[-1]["source"] == "probe" and bounces(lst)[-1]["counted"] == 1
    assert lst.members()["carol@example.com"]["bounce_score"] == 0     # delivered: nothing
    # a probe address is bound to its member
    forged = envelope.replace("bob=example.net", "carol=example.com")
    lst.queue(dsn(recipient="carol@example.com"), recipient=forged, sender="", check=0)
    assert lst.members()["carol@example.com"]["bounce_score"] == 0


def test_probes_go_out_signed_whatever_the_verp_setting(lst):
    lst.write_config(send={"verp": "off"})
    lst.queue(FORGED, recipient="test-bounces@lists.example.org", sender="", check=0)
    lst.run("send", check=0)
    senders = {argv[-1]: argv[argv.index("-f") + 1] for argv, d in lst.sent() if b"delivery check" in d}
    assert set(senders) == set(MEMBERS) and all(s.startswith("test-bounces+p") for s in senders.values())


def test_weights_by_cause(lst):
    bounce(lst, status="5.2.2", diagnostic="smtp; 552 5.2.2 Mailbox full")
    bounce(lst, member="carol@example.com", status="4.2.2", diagnostic="smtp; 452 4.2.2 over quota")
    members = lst.members()
    assert members["bob@example.net"]["bounce_score"] == 0.5      # soft
    assert members["carol@example.com"]["bounce_score"] == 0.5    # failed after retrying a 4.x: soft
    assert [(b["cause"], b["weight"]) for b in bounces(lst)] == [("mailboxfull", 0.5), ("mailboxfull", 0.5)]


def test_unrecognised_report_at_a_signed_address_goes_to_the_owners_daily(lst):
    lst.run("set", "test@lists.example.org", "owners", "owner@example.org", check=0)
    odd = b"From: someone@example.net\nSubject: hello\n\nI am not a bounce report at all.\n"
    for member in MEMBERS:
        lst.queue(odd, recipient=lst.verp(member), sender="", check=0)
    assert [b["action"] for b in bounces(lst)] == ["unrecognised", "unrecognised"]
    assert all(m["bounce_score"] == 0 for m in lst.members().values())
    # the same at an unsigned or a plain address: anyone's claim, not even summarised
    for recipient in ("test-bounces+bob=example.net@lists.example.org", "test-bounces@lists.example.org"):
        assert lst.queue(odd, recipient=recipient, sender="").returncode == 0
    lst.run("send", check=0)
    lst.run("send", check=0)
    from conftest import parse
    summaries = [parse(d) for argv, d in lst.sent() if argv[-1] == "owner@example.org"]
    assert len(summaries) == 1 and "2 unrecognised bounce reports" in summaries[0]["Subject"]
    assert "bob@example.net" in summaries[0].get_content() and "carol@example.com" in summaries[0].get_content()


def test_policy_rejections_do_not_count_unless_configured(lst):
    bounce(lst, status="5.7.1", diagnostic="smtp; 550 5.7.1 Unauthenticated mail rejected by DMARC policy")
    bounce(lst, member="carol@example.com", status="5.0.0",
           diagnostic="smtp; 554 Message rejected: your IP is listed on a blocklist")
    assert [m["bounce_score"] for m in lst.members().values()] == [0, 0]
    assert "policy rejection 5.7.1 at example.net" in bounces(lst)[0]["why"]
    assert [b["cause"] for b in bounces(lst)] == ["policy", "policy"]
    lst.write_config(bounces={"count_policy_rejections": "yes"})
    bounce(lst, status="5.7.1", diagnostic="smtp; 550 5.7.1 Unauthenticated mail rejected by DMARC policy")
    assert lst.members()["bob@example.net"]["bounce_score"] == 1


def test_a_refused_sender_address_is_the_posts_problem(lst):
    bounce(lst, status="5.1.8", diagnostic="smtp; 553 5.1.8 Domain of sender address does not exist")
    bounce(lst, member="carol@example.com", status="5.1.0",
           diagnostic="smtp; 550 5.1.0 <test-bounces@lists.example.org> sender rejected")
    assert [m["bounce_score"] for m in lst.members().values()] == [0, 0]
    assert [b["cause"] for b in bounces(lst)] == ["rejected", "rejected"]


def test_a_security_status_that_plainly_names_an_unknown_user_counts(lst):
    """Some servers answer 5.7.1 for a mailbox that does not exist (or 5.7.13:
    a disabled account, RFC 7372)."""
    bounce(lst, status="5.7.1", diagnostic="smtp; 553 Invalid recipient bob@example.net")
    bounce(lst, member="carol@example.com", status="5.7.13", diagnostic="smtp; 525 5.7.13 Disabled recipient")
    assert [m["bounce_score"] for m in lst.members().values()] == [1, 1]
    assert [b["cause"] for b in bounces(lst)] == ["userunknown", "suspend"]


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


def test_owners_get_one_notice_per_list_and_run_naming_who_was_disabled_and_who_removed(lst):
    lst.run("set", "test@lists.example.org", "owners", "owner@example.org", check=0)
    lst.write_config(bounces={"score_threshold": "1", "you_are_disabled_warnings": "1", "warning_interval": "1d",
                              "remove_after_warnings": "yes"})
    bounce(lst)
    bounce(lst, "carol@example.com")
    lst.run("send", check=0)
    (disabled,) = sent_to(lst, "owner@example.org")
    assert disabled["Subject"].strip() == "test@lists.example.org: bob@example.net and 1 more disabled by bounces"
    text = disabled.get_content()
    assert "bob@example.net: disabled (bounce score 1)" in text and "carol@example.com: disabled" in text
    assert "Send 'bounces' to test-request@lists.example.org" in text and "redsky.py" not in text
    with lst.db() as db:
        db.execute("UPDATE members SET last_warning = last_warning - 2 * 86400")
    lst.run("send", check=0)
    assert lst.members() == {}
    (removed,) = sent_to(lst, "owner@example.org")[1:]
    assert removed["Subject"].strip() == "test@lists.example.org: bob@example.net and 1 more removed after bounces"
    assert "carol@example.com: removed after 1 unanswered warnings" in removed.get_content()
    lst.run("send", check=0)
    assert len(sent_to(lst, "owner@example.org")) == 2


def test_enable_command_resets_the_score(lst):
    disable_bob(lst)
    r = lst.run("enable", "test@lists.example.org", "BOB@example.net", check=0)
    assert "score reset" in r.out
    assert lst.members()["bob@example.net"] == {"address": "bob@example.net", "status": "enabled", "bounce_score": 0,
                                                   "digest": False, "name": "", "nomail": False,
                                                   "nomail_until": None, "notmetoo": False, "ack": False,
                                                   "moderate": False}
    assert lst.run("enable", "test@lists.example.org", "nobody@example.net").returncode == 65


def test_bounces_command_shows_the_evidence(lst):
    bounce(lst)
    lst.queue(FORGED, recipient="test-bounces@lists.example.org", sender="", check=0)
    text = lst.run("bounces", "test@lists.example.org", check=0).out
    assert "bob@example.net  enabled  score 1" in text
    assert "verp     failed   5.1.1  userunknown (weight 1) COUNTED: score 1" in text
    assert "plain    failed   5.1.1  userunknown (weight 1) ignored: a claim anyone could write" in text
    assert "mx.example.net smtp; 550 5.1.1" in text
    entries = json.loads(lst.run("bounces", "test@lists.example.org", "--json", check=0).out)
    bob = next(e for e in entries if e["address"] == "bob@example.net")
    assert [(b["source"], b["cause"], b["weight"], b["counted"]) for b in bob["bounces"]] == \
        [("verp", "userunknown", 1, 1), ("plain", "userunknown", 1, 0)]
    assert [b["message_id"] for b in bob["bounces"]] == ["<post1@example.org>", "<post1@example.org>"]


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


def arf(return_path, feedback_type="abuse"):
    """An RFC 5965 feedback report, as a mailbox provider sends it when a
    member presses "this is spam": the returned post keeps its envelope
    sender in Return-Path."""
    return f"""\
From: feedback@fbl.example.net
To: test-bounces@lists.example.org
Subject: FW: the post
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="F"

--F
Content-Type: text/plain

This is an email abuse report for an email message received from IP 192.0.2.1.
--F
Content-Type: message/feedback-report

Feedback-Type: {feedback_type}
User-Agent: ExampleFBL/1.0
Version: 1
Original-Mail-From: <{return_path}>

--F
Content-Type: message/rfc822

Return-Path: <{return_path}>
From: alice@example.org
To: test@lists.example.org
Subject: the post
Message-ID: <post1@example.org>

body
--F--
""".encode()


def test_feedback_report_identified_by_signed_verp_unsubscribes_with_a_goodbye(lst):
    lst.run("set", "test@lists.example.org", "owners", "owner@example.org", check=0)
    r = lst.queue(arf(lst.verp("bob@example.net")), recipient="test-bounces@lists.example.org", sender="")
    assert r.returncode == 0
    assert "bob@example.net" not in lst.members()
    (b,) = bounces(lst)
    assert (b["source"], b["action"], b["address"]) == ("feedback", "abuse", "bob@example.net")
    assert "unsubscribe" in b["why"]
    lst.run("send", check=0)
    from conftest import parse
    (goodbye,) = [parse(d) for argv, d in lst.sent() if argv[-1] == "bob@example.net" and b"as spam" in d]
    assert "marked a post" in goodbye.get_content() and "unsubscribed" in goodbye.get_content()
    (owner,) = [parse(d) for argv, d in lst.sent() if argv[-1] == "owner@example.org"]
    assert "reported a post as spam" in owner["Subject"] and "unsubscribe" in owner.get_content()


def test_feedback_report_actions_disable_and_none(lst):
    lst.write_config(bounces={"feedback_action": "disable"})
    lst.queue(arf(lst.verp("bob@example.net")), recipient="test-bounces@lists.example.org", sender="", check=0)
    assert lst.members()["bob@example.net"]["status"] == "disabled"
    lst.write_config(bounces={"feedback_action": "none"})
    lst.queue(arf(lst.verp("carol@example.com")), recipient="test-bounces@lists.example.org", sender="", check=0)
    assert lst.members()["carol@example.com"]["status"] == "enabled"
    assert lst.write_config(bounces={"feedback_action": "delete-everyone"}) is None
    assert lst.run("send").returncode == 78


def test_feedback_report_without_a_signed_address_is_recorded_only(lst):
    """Anyone can write an ARF report naming an unsigned address."""
    for path in ("test-bounces+bob=example.net@lists.example.org", "test-bounces@lists.example.org",
                 lst.verp("bob@example.net").replace("bob=example.net", "carol=example.com"),
                 lst.verp("bob@example.net", "other@lists.example.org")):
        lst.queue(arf(path), recipient="test-bounces@lists.example.org", sender="", check=0)
    assert set(lst.members()) == set(MEMBERS)
    assert {m["status"] for m in lst.members().values()} == {"enabled"}
    assert {(b["source"], b["address"], b["counted"]) for b in bounces(lst)} == {("feedback", "", 0)}
    assert all("recorded only" in b["why"] for b in bounces(lst))
    # the report sent to bob's own signed address identifies him too
    lst.queue(arf("unknown@elsewhere.example"), recipient=lst.verp("carol@example.com"), sender="", check=0)
    assert "carol@example.com" not in lst.members()
