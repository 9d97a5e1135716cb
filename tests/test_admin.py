"""Admin commands, configuration, the runner's checks, and the schema."""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

import redsky
from conftest import REDSKY, ROOT, cli, post, readme_block


def test_schema_sql_is_what_redsky_creates(rs):
    assert (ROOT / "schema.sql").read_text() == redsky.SCHEMA
    rs.run("init", check=0)
    tables = {r[0] for r in rs.db().execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")}
    assert tables == {"lists", "members", "acl", "messages", "deliveries", "bounces", "held", "pending", "events", "meta", "dmarc_cache",
                      "digest_posts", "dnsbl_cache", "autoreplies", "recent_posts", "failures", "probes", "bans",
                      "archived_posts", "archive_texts",
                      "leave_tokens", "web_budgets", "web_sessions", "allowances"}
    assert rs.db().execute("PRAGMA auto_vacuum").fetchone()[0] == 2          # incremental
    assert rs.db().execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert rs.db().execute("PRAGMA user_version").fetchone()[0] == redsky.SCHEMA_VERSION


def _shape(db):
    """Every table's columns (name, type, not null, default) and every index."""
    shape = {}
    for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"):
        shape[name] = sorted(tuple(r)[1:5] for r in db.execute(f"PRAGMA table_info({name})"))
    shape["indexes"] = sorted(r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'"
                                                       " AND name NOT LIKE 'sqlite_%'"))
    return shape


def test_a_version_1_database_is_upgraded_in_place_and_keeps_its_data(rs, tmp_path):
    """A database made by the first release (tests/schema_v1.sql is its
    schema.sql) gets the new tables and columns on first use; lists and
    members stay, new columns take their defaults, constraints still hold."""
    import sqlite3
    old = sqlite3.connect(rs.home / "redsky.db")
    old.executescript((ROOT / "tests" / "schema_v1.sql").read_text())
    old.execute("INSERT INTO meta VALUES ('verp_key', '00')")
    old.execute("INSERT INTO lists (name, domain, access, created) VALUES ('test', 'lists.example.org', 'open', 0)")
    old.execute("INSERT INTO members (list_id, address, subscribed) VALUES (1, 'bob@example.net', 0)")
    old.commit()
    old.close()
    members = rs.members()                  # any command upgrades
    assert members["bob@example.net"]["status"] == "enabled" and members["bob@example.net"]["digest"] is False
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    rs2 = type(rs)(fresh)
    rs2.run("init", check=0)
    assert _shape(rs.db()) == _shape(rs2.db())
    assert rs.db().execute("PRAGMA user_version").fetchone()[0] == redsky.SCHEMA_VERSION
    with pytest.raises(sqlite3.IntegrityError):     # the CHECK came along with the column
        with rs.db() as db:
            db.execute("UPDATE lists SET archive = 'everyone'")
    rs.queue(post(), check=0)
    rs.run("send", check=0)
    assert rs.sent_to() == ["bob@example.net"]


def test_a_database_from_a_newer_redsky_is_refused(rs):
    rs.run("init", check=0)
    with rs.db() as db:
        db.execute(f"PRAGMA user_version = {redsky.SCHEMA_VERSION + 1}")
    r = rs.run("lists")
    assert r.returncode == 78 and "schema version" in r.err


@pytest.mark.parametrize("log", ["redsky.log", "logs/redsky.log"])
def test_init_makes_data_dir_even_when_the_log_file_is_to_be_inside_it(tmp_path, log):
    """`[redsky] log = redsky.log` names a file in data_dir, which init is about to make."""
    config = tmp_path / "redsky.ini"
    config.write_text(f"[redsky]\ndata_dir = data\nlog = {log}\n[send]\ntransport = maildir\n")
    r = cli(["-c", str(config), "init"])
    assert r.returncode == 0, r.err
    assert (tmp_path / "data" / "redsky.db").exists()
    if "/" not in log:                          # from now on the log is that file
        cli(["-c", str(config), "queue", "--recipient", "nosuch@lists.example.org"], input=post())
        assert "nosuch@lists.example.org" in (tmp_path / "data" / log).read_text()
    else:                                       # a directory that does not exist is still an error
        r = cli(["-c", str(config), "lists"])
        assert r.returncode == 78 and "cannot open log file logs/redsky.log" in r.err


def test_init_reports_paths_and_is_idempotent(rs):
    r = rs.run("init", check=0)
    assert str(rs.home / "redsky.db") in r.out and str(rs.home / "spool") in r.out
    rs.run("init", check=0)


def test_queue_and_send_refuse_a_missing_database(rs):
    r = rs.queue(post())
    assert r.returncode == 78 and "redsky.py init" in r.err
    assert rs.run("send").returncode == 78


def test_newlist_lists_set_dellist(rs):
    rs.run("newlist", "Team@Example.ORG", "--access", "open", "--subject-tag", "[team]",
           "--footer", "bye\\n$list", "--owner", "boss@example.org", check=0)
    (row,) = json.loads(rs.run("lists", "--json", check=0).out)
    assert row == {"list": "Team@example.org", "access": "open", "subject_tag": "[team]",
                   "footer": "bye\n$list", "owners": "boss@example.org", "moderators": "",
                   "subscribe_policy": "confirm",
                   "members": 0, "archive": "private", "archive_url": "", "digest_format": "mime",
                   "digest_size_threshold": 30, "digest_interval": 86400.0, "welcome": "", "goodbye": "",
                   "dmarc": "auto", "dmarc_action": "munge_from", "reply_to": "none", "reply_to_strip": 0,
                   "max_size": 0, "nonmember_action": "hold", "emergency": 0, "max_posts_per_day": 0,
                   "notify_owners": 0, "dmarc_addresses": "", "filter_content": 0, "pass_types": "",
                   "filter_types": "", "pass_extensions": "", "filter_extensions": "",
                   "convert_html_to_plaintext": 0, "collapse_alternatives": 0, "signed_posts": "pass",
                   "description": "", "subscribe_question": "", "subscribe_answers": "", "advertised": 0}
    assert rs.run("newlist", "team@example.org").returncode == 65       # exists (case-insensitive)
    rs.run("set", "team@example.org", "access", "moderated", check=0)
    assert "moderated" in rs.run("lists", check=0).out
    assert rs.run("set", "team@example.org", "access", "nonsense").returncode == 64
    assert rs.run("set", "nosuch@example.org", "access", "open").returncode == 67
    assert rs.run("set", "team@example.org", "owners", "not an address").returncode == 65
    rs.run("dellist", "team@example.org", check=0)
    assert rs.run("lists", check=0).out == ""


@pytest.mark.parametrize("address", ["nodomain", "x-bounces@example.org", "-x@example.org", "a+b@example.org"])
def test_newlist_refuses_bad_list_addresses(rs, address):
    r = rs.run("newlist", address)
    assert r.returncode == 64 and r.err.count("\n") == 1


def test_passphrase_access_needs_a_passphrase(rs):
    assert rs.run("newlist", "p@example.org", "--access", "passphrase").returncode == 64
    rs.run("newlist", "p@example.org", "--access", "passphrase", "--passphrase", "x", check=0)


def test_subscribe_validates_and_keeps_the_valid_ones(rs):
    rs.newlist("l@example.org")
    r = rs.run("subscribe", "l@example.org", "good@Example.NET", "bad address", "-oQ@x.org", "other@example.com")
    assert r.returncode == 65
    assert "'bad address'" in r.err and "'-oQ@x.org'" in r.err and "Traceback" not in r.err
    assert sorted(rs.members("l@example.org")) == ["good@example.net", "other@example.com"]
    rs.run("subscribe", "l@example.org", "GOOD@example.net", check=0)          # no duplicate
    assert len(rs.members("l@example.org")) == 2


def test_subscribe_from_stdin_and_unsubscribe(rs):
    rs.newlist("l@example.org")
    rs.run("subscribe", "l@example.org", "-", input="a@example.org\n# comment\n\nb@example.org\n", check=0)
    assert sorted(rs.members("l@example.org")) == ["a@example.org", "b@example.org"]
    rs.run("unsubscribe", "l@example.org", "A@example.org", check=0)
    assert list(rs.members("l@example.org")) == ["b@example.org"]


def test_subscribe_keeps_display_names_and_welcomes_on_request(rs):
    """`subscribe LIST -` takes "Name <addr>" lines (quoted names, RFC 2047
    words, bare <addr>) and keeps the names; --welcome (before or after the
    list) sends the welcome text to the new members only."""
    rs.newlist("l@example.org", members=("old@example.org",))
    lines = ('Ann Example <ann@example.org>\n"Doe, John" <john@example.org>\nplain@example.org\n'
             "<angle@example.org>\n=?utf-8?q?Zo=C3=AB?= <zoe@example.org>\nNo Address <>\n")
    r = rs.run("subscribe", "l@example.org", "-", input=lines)
    assert r.returncode == 65 and r.err.count("not a valid address") == 1
    names = {m["address"]: m["name"] for m in json.loads(rs.run("members", "l@example.org", "--json").out)}
    assert names == {"ann@example.org": "Ann Example", "john@example.org": "Doe, John", "plain@example.org": "",
                     "angle@example.org": "", "zoe@example.org": "Zoë", "old@example.org": ""}
    rs.run("subscribe", "--welcome", "l@example.org", "new1@example.org", "old@example.org", check=0)
    rs.run("subscribe", "l@example.org", "--welcome", "new2@example.org", check=0)
    rs.run("send", check=0)
    welcomed = sorted(argv[-1] for argv, data in rs.sent() if b"Welcome to the l@example.org" in data)
    assert welcomed == ["new1@example.org", "new2@example.org"]
    assert "--welcome" not in names and len(rs.members("l@example.org")) == 8


def test_members_json_fields(rs):
    rs.newlist("l@example.org", members=("a@example.org",))
    assert json.loads(rs.run("members", "l@example.org", "--json", check=0).out) == [
        {"address": "a@example.org", "status": "enabled", "bounce_score": 0.0, "digest": False, "name": "",
         "nomail": False, "nomail_until": None, "notmetoo": False, "ack": False, "moderate": False}]
    assert rs.run("members", "nosuch@example.org").returncode == 67


def test_status_counts(rs):
    rs.newlist("l@example.org", "--access", "open", members=("a@example.org", "b@example.org"))
    rs.queue(post(), recipient="l@example.org", check=0)
    assert rs.status() == {"queued_posts": 1, "pending": 2, "deferred": 0, "sent": 0, "bounced": 0, "failed": 0,
                           "expired": 0, "held": 0, "digest_posts": 0, "unreadable": 0}


def test_usage_errors_exit_64_in_one_line(rs):
    for args in ([], ["nosuchcommand"], ["approve", "notanumber"], ["queue", "--bogus"]):
        r = rs.run(*args)
        assert r.returncode == 64, args
        assert r.err.startswith("redsky: ") and r.err.count("\n") == 1


@pytest.mark.parametrize("argv", [
    ["queue", "--recipient", "l@x", "--sender", ""], ["-c", "queue", "send"], ["--config", "x.ini", "-v", "lists"],
    ["subscribe", "l@x", "-", "a@b"], ["import", "mlmmj", "/d", "--config", "c"], ["set", "l@x", "footer", "f"]])
def test_the_parser_built_for_one_command_parses_as_the_whole_one(argv):
    """main() builds only the subparser of the command named (the MTA runs
    `queue` per message); what it parses must not differ."""
    import redsky
    wanted = redsky.command_named(argv)
    assert wanted == next(w for w in argv[argv.index(wanted):] if not w.startswith("-"))
    whole, one = redsky.make_parser().parse_args(argv), redsky.make_parser(wanted).parse_args(argv)
    assert vars(whole) == vars(one)
    assert len(redsky.make_parser(wanted)._subparsers._group_actions[0].choices) == 1
    assert len(redsky.make_parser("no-such-command")._subparsers._group_actions[0].choices) >= 27


def test_help_lists_every_command_and_each_has_its_own_help():
    """--help names every command with its summary (a line of its own), the
    module docstring shows each, and COMMAND --help works for each."""
    import redsky
    r = cli(["--help"])
    assert r.returncode == 0 and r.err == ""
    out = r.out
    listed = set(re.findall(r"(?m)^    ([a-z][a-z-]*)\s{2,}\S", out))
    parser = redsky.make_parser()
    commands = set(parser._subparsers._group_actions[0].choices)
    assert len(commands) >= 27 and listed == commands
    for command in sorted(commands):
        assert re.search(rf"redsky\.py {re.escape(command)}\b|\| {re.escape(command)}\b", redsky.__doc__), command
        r = cli([command, "--help"])
        assert r.returncode == 0 and f"redsky.py {command}" in r.out, command


# -- configuration ---------------------------------------------------------------

def test_unknown_filter_is_refused_before_reading(rs):
    rs.newlist("l@example.org", "--access", "open", members=("a@example.org",))
    rs.write_config(queue={"filters": "read getinfo spamassassin queuer"})
    r = rs.queue(post(), recipient="l@example.org")
    assert r.returncode == 78 and "unknown filter 'spamassassin'" in r.err
    assert r.err.count("\n") == 1


@pytest.mark.parametrize("chain,complaint", [
    ("read getinfo access getsubscribers queuer", "'access' needs 'getsubscribers'"),
    ("getinfo read getsubscribers queuer", "'getinfo' needs 'read'"),
    ("read getinfo queuebuilder queuer", "'queuebuilder' is a send filter"),
    ("", "empty"),
])
def test_impossible_chains_are_refused(rs, chain, complaint):
    rs.run("init", check=0)
    rs.write_config(queue={"filters": chain})
    r = rs.queue(post())
    assert r.returncode == 78 and complaint in r.err


def test_send_chain_order_is_checked(rs):
    rs.run("init", check=0)
    rs.write_config(send={"filters": "queuerunner singleinstance queuebuilder"})
    r = rs.run("send")
    assert r.returncode == 78 and "needs 'singleinstance'" in r.err


def test_configured_chain_without_tag_filter(rs):
    rs.newlist("l@example.org", "--access", "open", "--subject-tag", "[l]", members=("a@example.org",))
    rs.write_config(queue={"filters": "read getinfo loopdetect getsubscribers access queuer"})
    rs.queue(post(), recipient="l@example.org", check=0)
    spool = next((rs.home / "spool").glob("*.eml")).read_bytes()
    assert b"Subject: Hello\n" in spool


def test_bad_config_values_exit_78(rs):
    rs.run("init", check=0)
    rs.config.write_text("[queue]\nmax_received = lots\n")
    r = rs.queue(post())
    assert r.returncode == 78 and "max_received" in r.err and r.err.count("\n") == 1
    rs.config.write_text("[send]\nretry_delay = soon\n")
    assert rs.run("send").returncode == 78
    rs.config.write_text("not an ini file\n")
    assert rs.run("status").returncode == 78


def test_missing_config_file_exits_78(rs):
    r = cli(["-c", str(rs.home / "nope.ini"), "status"])
    assert r.returncode == 78 and "nope.ini" in r.err


def test_config_search_order(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "REDSKY_CONFIG"}
    env["XDG_DATA_HOME"] = str(tmp_path / "xdg")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    run = lambda: cli(["init"], cwd=cwd, env=env)
    # no config anywhere: the per-user data directory
    if not os.path.exists("/etc/redsky/redsky.ini"):
        assert str(tmp_path / "xdg" / "redsky" / "redsky.db") in run().out
    # ./redsky.ini is never read: whoever can write the current directory
    # would choose the plugins that run (as root, if root runs redsky there)
    (cwd / "redsky.ini").write_text("[redsky]\nlog = stderr\nplugins = evil.py\n")
    (cwd / "evil.py").write_text("open('pwned', 'w').close()\n")
    assert str(cwd / "redsky.db") not in run().out and not (cwd / "pwned").exists()
    # $REDSKY_CONFIG is read
    other = tmp_path / "other"
    other.mkdir()
    (other / "r.ini").write_text("[redsky]\ndata_dir = data\nlog = stderr\n")
    env["REDSKY_CONFIG"] = str(other / "r.ini")
    assert str(other / "data" / "redsky.db") in run().out


def test_log_to_file(rs):
    rs.write_config(redsky={"log": "redsky.log"})
    rs.newlist("l@example.org", "--access", "open", members=("a@example.org",))
    rs.queue(post(), recipient="nosuch@example.org")
    assert "no list at nosuch@example.org" in (rs.home / "redsky.log").read_text()


def test_verbose_logs_to_stderr(rs):
    rs.write_config(redsky={"log": "redsky.log"})
    rs.newlist("l@example.org", "--access", "open", members=("a@example.org",))
    r = rs.run("queue", "--recipient", "l@example.org", "--verbose", input=post())
    assert r.returncode == 0 and "queued message-id=" in r.err


def test_demo_runs_every_filter():
    r = cli(["demo"], timeout=60)
    assert r.returncode == 0, r.err
    for name in redsky.QUEUE_CHAIN.split() + redsky.SEND_CHAIN.split():
        assert f"   {name}" in r.out
    assert "sent 3" in r.out and "Subject: [demo] Hello" in r.out
    assert re.search(r"Return-Path: <demo-bounces\+[0-9a-f]{8}\+bob=example.net@lists.example.org>", r.out)


def test_example_config_and_readme_are_the_settings_table(rs):
    """One table (SETTINGS) makes DEFAULTS, the checks, the example file and the README's table."""
    assert (ROOT / "redsky.ini.example").read_text() == rs.run("config", "--defaults", check=0).out
    readme = (ROOT / "README.md").read_text()
    rows = re.findall(r"(?m)^\| `\[(\w+)\] (\w+)` \| `?([^|`]*)`? \| (.*) \|$", readme)
    assert [(s, k, d, h) for s, k, d, _, h in redsky.SETTINGS] == rows
    assert {s: set(o) for s, o in redsky.DEFAULTS.items()} == \
        {s: {k for s2, k, *_ in redsky.SETTINGS if s2 == s} for s, *_ in redsky.SETTINGS}
    redsky.Config(str(ROOT / "redsky.ini.example"))      # it loads
    # every choice the table names is one the code knows, and only those
    assert set(next(k for s, key, _, k, _ in redsky.SETTINGS if key == "transport").split("|")) == \
        set(redsky.TRANSPORTS)
    rs.write_config(send={"transport": "pigeon"})
    bad = rs.run("status")
    assert bad.returncode == 78 and "use one of sendmail, smtp, maildir" in bad.err


def test_config_shows_what_the_installation_reads(rs):
    rs.write_config(send={"retry_delay": "5m"})
    changed = rs.run("config", "--changed", check=0).out
    assert re.search(r"\[send\]\n(sendmail = .*\n)?retry_delay = 5m\n", changed)
    assert "[web]" not in changed and ";" not in changed
    full = rs.run("config", check=0).out
    assert "retry_delay = 5m" in full and "max_age = 5d" in full and "; the cap of the doubling delay" in full


def test_readme_documents_every_command_and_filter():
    readme = (ROOT / "README.md").read_text()
    for name in redsky.FILTERS:
        assert f"`{name}`" in readme, name
    parser = redsky.make_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    for command in commands:
        assert f"`{command}" in readme, command


def test_readme_postfix_section_is_what_postfix_config_prints(tmp_path):
    block = readme_block("postfix-config")
    ini = tmp_path / "redsky.ini"
    ini.write_text("[postfix]\nuser = redsky\n")
    # as root it writes the list map in a child process (as_list_user): a process of its own
    r = cli(["-c", str(ini), "postfix-config", "--python", "/usr/bin/python3"], subprocess=True)
    assert r.returncode == 0, r.err
    out = (r.out.replace(str(ini), "/etc/redsky/redsky.ini").replace(str(tmp_path), "/var/lib/redsky")
           .replace(f" {os.path.dirname(os.path.realpath(REDSKY))} -c ", " /opt/redsky -c "))
    assert out == block
    assert "{import sys; sys.path.insert(0, sys.argv.pop(1)); import redsky; sys.exit(redsky.main())}" in block


def test_postfix_map_lists_every_address_and_follows_list_changes(rs):
    import sqlite3
    rs.newlist("Team@Lists.Example.org")
    db_path = rs.home / "postfix-map.db"
    assert oct(db_path.stat().st_mode & 0o777) == "0o644"
    addresses = {r[0] for r in sqlite3.connect(db_path).execute("SELECT address FROM addresses")}
    assert addresses == {f"team{s}@lists.example.org" for s in redsky.LIST_SUFFIXES}
    assert sqlite3.connect(db_path).execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    rs.run("dellist", "team@lists.example.org", check=0)
    assert sqlite3.connect(db_path).execute("SELECT count(*) FROM addresses").fetchone()[0] == 0


def test_without_syslog_send_prints_only_problems_and_logs_to_a_file(tmp_path):
    """Under cron every line on stderr is a mail to the admin."""
    if os.path.exists("/dev/log"):
        pytest.skip("this host has /dev/log: the default there is syslog")
    ini = tmp_path / "redsky.ini"
    ini.write_text("[send]\ntransport = maildir\n[postfix]\nmap =\n")

    def run(*args, data=b""):
        return cli(["-c", str(ini), *args], input=data)
    for args in (["init"], ["newlist", "q@lists.example.org", "--access", "open"],
                 ["subscribe", "q@lists.example.org", "bob@example.net"]):
        assert run(*args).returncode == 0
    assert run("queue", "--recipient", "q@lists.example.org", data=post(to="q@lists.example.org")).stderr == b""
    r = run("send")
    assert r.returncode == 0 and r.stderr == b""
    logged = (tmp_path / "redsky.log").read_text()
    assert "INFO queued" in logged and "INFO send: sent 1" in logged
    r = run("set", "nosuch@lists.example.org", "footer", "x")         # a problem is still said
    assert r.returncode == 67 and r.stderr.decode().startswith("redsky: no such list")


def test_readme_try_it_block_runs_as_written(tmp_path):
    """The README's shell example, line by line, in a scratch place: every
    command succeeds, nothing reads a config it did not name, and each
    member's copy lands in the maildir."""
    block = readme_block("try-it", "sh")
    assert "post.eml" not in block and block.count(" -c /tmp/redsky-try.ini") == 6
    script = block.replace("/tmp/redsky-try", str(tmp_path / "try")).replace("python3 redsky.py",
                                                                                f"{sys.executable} {REDSKY}")
    env = {k: v for k, v in os.environ.items() if k != "REDSKY_CONFIG"}
    r = subprocess.run(["bash", "-e"], input=script, capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "sent          2" in r.stdout
    assert sorted(p.name for p in (tmp_path / "try" / "maildir").iterdir()) == ["alice@example.org",
                                                                                "bob@example.net"]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    line = next(line for line in readme.splitlines() if line.endswith("# the test suite"))
    assert "python3 -m pytest" in line
    ci = (ROOT / ".ci" / "run").read_text()
    assert "# the test suite" in ci and "python3 -m pip install --quiet pytest" not in ci


def test_dellist_dry_run_says_what_would_go_and_keeps_it(rs):
    rs.newlist("team@lists.example.org", "--owner", "owner@example.org",
               members=("a@example.org", "b@example.org", "c@example.org"))
    rs.queue(post(to="team@lists.example.org"), recipient="team@lists.example.org", sender="a@example.org", check=0)
    rs.queue(post(subject="from outside", to="team@lists.example.org"), recipient="team@lists.example.org",
             sender="x@example.org", check=0)
    out = rs.run("dellist", "team@lists.example.org", "--dry-run", check=0).out
    assert out.startswith("would delete list team@lists.example.org: 3 members, ")
    assert " 1 held posts, " in out and "archive" in out
    assert len(rs.members("team@lists.example.org")) == 3            # nothing went
    assert rs.run("dellist", "team@lists.example.org", check=0).out.startswith("deleted list")
    assert rs.run("members", "team@lists.example.org").returncode == 67


def test_the_readmes_exit_code_tables_name_the_codes_redsky_uses():
    """Admins write MTA and proxsmtpd rules from these tables (a renumbering once shifted them all)."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Exit codes (sysexits)")[1].split("\n## ")[0]
    codes = [int(c) for c in re.findall(r"(?m)^\| (\d+) \|", section)]
    assert {redsky.EX_OK, redsky.EX_USAGE, redsky.EX_DATAERR, redsky.EX_NOUSER, redsky.EX_TEMPFAIL,
            redsky.EX_NOPERM, redsky.EX_CONFIG, redsky.EX_DISCARDED} <= set(codes) | {0}
    assert set(codes) <= {0, 64, 65, 67, 75, 77, 78, 99, 128 + 13}, codes


def test_the_readmes_systemd_units_run_what_the_set_up_installs_as_its_user(tmp_path):
    """Issue 30: the hints said /usr/local/lib/redsky/redsky.py and User=list where the set-up
    installs /opt/redsky/redsky.py for the user redsky, and `web` had no unit.  Every unit of the
    README (`# /etc/systemd/system/NAME`) runs the set-up's python, program and config, as its
    user, a command redsky's parser takes, listening where the README's MTA and web server
    blocks send; every path to redsky.py and every user named anywhere is the set-up's."""
    import configparser
    import shlex
    readme = (ROOT / "README.md").read_text()
    setup = readme_block("setup", "sh")
    user = re.search(r"useradd .* (\S+)$", setup, re.M).group(1)
    program = re.search(r"install -m 755 redsky\.py (\S+)$", setup, re.M).group(1)
    config = re.search(r"> (\S+\.ini)$", setup, re.M).group(1)
    assert (user, program, config) == ("redsky", "/opt/redsky/redsky.py", "/etc/redsky/redsky.ini")
    assert f"[postfix]\\nuser = {user}\\n" in setup
    units = {m.group(1): m.group(2) for m in re.finditer(r"```ini\n# /etc/systemd/system/(\S+)\n(.*?)```", readme, re.S)}
    assert set(units) == {"redsky-lmtp.service", "redsky-web.service", "redsky-send.service", "redsky-send.timer"}
    # the timer for a host without cron: send as the user, every minute, found by doctor
    send, timer = units.pop("redsky-send.service"), units.pop("redsky-send.timer")
    (tmp_path / "systemd").mkdir()
    for name, text in (("redsky-send.service", send), ("redsky-send.timer", timer)):
        (tmp_path / "systemd" / name).write_text(text)
    unit = configparser.ConfigParser(interpolation=None, strict=True)
    unit.optionxform = str
    unit.read_string(send)
    assert unit["Service"]["User"] == user and unit["Service"]["Type"] == "oneshot"
    assert shlex.split(unit["Service"]["ExecStart"]) == ["/usr/bin/python3", program, "-c", config, "send"]
    assert "OnCalendar=minutely" in timer and "WantedBy=timers.target" in timer
    found, _ = redsky.find_send_schedule([str(tmp_path / "systemd")])
    assert found.endswith("redsky-send.service") and redsky.schedule_user(found) == user
    verify = shutil.which("systemd-analyze")
    if verify:
        r = subprocess.run([verify, "verify", "--man=no", str(tmp_path / "systemd" / "redsky-send.timer"),
                            str(tmp_path / "systemd" / "redsky-send.service")], capture_output=True, text=True)
        assert r.returncode == 0 and "Unknown" not in r.stderr and "Invalid" not in r.stderr, r.stderr
    listen = {}
    for name, text in units.items():
        unit = configparser.ConfigParser(interpolation=None, strict=True)
        unit.optionxform = str
        unit.read_string(text)
        assert unit["Service"]["User"] == user, name
        argv = shlex.split(unit["Service"]["ExecStart"])
        assert argv[:4] == ["/usr/bin/python3", program, "-c", config], name
        args = redsky.make_parser(argv[4]).parse_args(argv[4:])
        assert args.command == name.split("-")[1].split(".")[0] and args.listen, name
        listen[args.command] = args.listen
        assert unit["Install"]["WantedBy"] == "multi-user.target" and "network.target" in unit["Unit"]["After"]
        # confined, yet free to write the set-up's data_dir (all a server writes there)
        data_dir = re.search(r"data_dir = (\S+?)\\n", setup).group(1)
        assert unit["Service"]["ProtectSystem"] == "strict" and unit["Service"]["NoNewPrivileges"] == "yes"
        assert data_dir in unit["Service"]["ReadWritePaths"].split(), name
        verify = shutil.which("systemd-analyze")
        if verify:                                          # systemd's own reading of it
            (tmp_path / name).write_text(text)
            r = subprocess.run([verify, "verify", "--man=no", str(tmp_path / name)], capture_output=True, text=True)
            assert r.returncode == 0 and "Unknown" not in r.stderr and "Invalid" not in r.stderr, r.stderr
    # where the MTA and the web server blocks send, the units listen
    assert f"postfix-config --lmtp inet:{listen['lmtp']} --apply" in readme
    assert "port = " + listen["lmtp"].rsplit(":", 1)[1] in readme.split("redsky_lmtp:")[1].split("```")[0]
    assert f"proxy_pass http://{listen['web']}/;" in readme and f"ProxyPass        /redsky/ http://{listen['web']}/" in readme
    restart = re.search(r"`systemctl restart ([\w -]+)`", readme.split("### Upgrading")[1]).group(1)
    assert set(restart.split()) == {n.split(".")[0] for n in units}     # what Upgrading restarts
    # every path to redsky.py and every user the README names for running it
    paths = set(re.findall(r"(/[\w./-]+)/redsky\.py\b", readme))
    assert paths == {program.rsplit("/", 1)[0]}, paths
    assert set(re.findall(r"(?m)^User=(\S+)", readme)) == {user}
    assert set(re.findall(r"(?m)^\* \* \* \* \* +(\S+) ", readme)) == {user}
    assert set(re.findall(r"flags=\w+ user=(\w+)", readme)) == {user}    # Postfix's pipes
    assert set(re.findall(r"(?m)^  user = (\S+)", readme)) == {user}      # Exim's transport
    assert "/usr/local/lib/redsky" not in readme and "User=list" not in readme
