"""Fixtures: a throwaway redsky installation driven through the real CLI."""

import email
import json
import os
import re
import subprocess
import sys
import textwrap
from email import policy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

REDSKY = str(ROOT / "redsky.py")
# Most tests run the CLI as `python3 -c "import redsky; redsky.main(argv)"`:
# the same main() in a fresh process, but the module's bytecode is cached
# (a script is compiled afresh on every run, 0.1 s each, thousands of times
# per suite).  Tests of the entry point itself run REDSKY as a script.
# The interpreter is the system's python3 when it is one redsky runs on (what
# the README has the MTA's pipe and cron use, and it starts in 0.03 s where a
# pyenv or venv python3 may take 0.07 s: thousands of runs per suite), else the
# one running the tests.
PYTHON = sys.executable
if os.path.exists("/usr/bin/python3") and subprocess.run(
        ["/usr/bin/python3", "-c", "import sys; sys.exit(sys.version_info < (3, 7))"]).returncode == 0:
    PYTHON = "/usr/bin/python3"
REDSKY_MAIN = [PYTHON, "-c",
               f"import sys; sys.path.insert(0, {str(ROOT)!r}); import redsky; sys.exit(redsky.main(sys.argv[1:]))"]

# A sendmail stand-in: records argv and the message; a file "fail_once" in
# its directory makes the next call exit 75, a file "permanent" lists
# recipients that get exit 67, "slow" names a recipient to hang on.
CAPTURE_SENDMAIL = textwrap.dedent("""\
    #!{python}
    import json, os, sys, time
    here = {here!r}
    argv = sys.argv[1:]
    rcpt = argv[-1]
    data = sys.stdin.buffer.read()
    def flag(name):
        return os.path.join(here, name)
    if os.path.exists(flag("fail_once")):
        os.unlink(flag("fail_once"))
        sys.stderr.write("stand-in: try again later\\n")
        sys.exit(75)
    if os.path.exists(flag("permanent")) and rcpt in open(flag("permanent")).read().split():
        sys.stderr.write("stand-in: 5.1.1 user unknown\\n")
        sys.exit(67)
    if os.path.exists(flag("slow")) and rcpt == open(flag("slow")).read().strip():
        open(flag("slow_started"), "w").close()
        time.sleep(60)
    name = "%f.%d.json" % (time.time(), os.getpid())
    with open(os.path.join(here, "out", name + ".tmp"), "w") as fh:
        json.dump({{"argv": argv, "data": data.decode("utf-8", "surrogateescape")}}, fh)
    os.rename(os.path.join(here, "out", name + ".tmp"), os.path.join(here, "out", name))
""")


_DNS = None


def fake_dns():
    """One loopback DNS responder for the whole test session."""
    global _DNS
    if _DNS is None:
        from fakedns import FakeDNS
        _DNS = FakeDNS()
    return _DNS


class Redsky:
    """A redsky home: config, database, spool, a capture sendmail."""

    def __init__(self, home):
        self.home = Path(home)
        self.connections = []
        self.sendmail_dir = self.home / "sendmail"
        (self.sendmail_dir / "out").mkdir(parents=True)
        self.sendmail = self.sendmail_dir / "sendmail"
        self.sendmail.write_text(CAPTURE_SENDMAIL.format(python=PYTHON, here=str(self.sendmail_dir)))
        self.sendmail.chmod(0o755)
        self.config = self.home / "redsky.ini"
        self.dns = fake_dns()
        self.settings = {"redsky": {"log": "stderr"},
                         "send": {"transport": "sendmail", "sendmail": str(self.sendmail)},
                         "dmarc": {"nameserver": self.dns.address, "timeout": "1s"},
                         "dnsbl": {"nameserver": self.dns.address, "timeout": "1s"}}
        self.write_config()

    def write_config(self, **sections):
        for section, values in sections.items():
            self.settings.setdefault(section, {}).update(values)
        lines = []
        for section, values in self.settings.items():
            lines.append(f"[{section}]")
            lines.extend(f"{k} = {v}" for k, v in values.items())
        self.config.write_text("\n".join(lines) + "\n")

    def run(self, *args, input=None, env=None, check=None, timeout=120, **kw):
        full_env = {k: v for k, v in os.environ.items()
                    if k not in ("ORIGINAL_RECIPIENT", "RECIPIENT", "SENDER", "REDSKY_CONFIG",
                                 "PYTHONDONTWRITEBYTECODE")}
        full_env.update(env or {})
        if isinstance(input, str):
            input = input.encode()
        proc = subprocess.run([*REDSKY_MAIN, "-c", str(self.config), *args],
                              input=input if input is not None else b"", capture_output=True,
                              env=full_env, timeout=timeout, **kw)
        proc.out = proc.stdout.decode("utf-8", "replace")
        proc.err = proc.stderr.decode("utf-8", "replace")
        if check is not None:
            assert proc.returncode == check, f"exit {proc.returncode}, stderr: {proc.err}"
        return proc

    def queue(self, message, recipient="test@lists.example.org", sender="alice@example.org", **kw):
        args = ["queue"]
        if recipient is not None:
            args += ["--recipient", recipient]
        if sender is not None:
            args += ["--sender", sender]
        return self.run(*args, input=message, **kw)

    def newlist(self, address="test@lists.example.org", *opts, members=()):
        self.run("newlist", address, *opts, check=0)
        if members:
            self.run("subscribe", address, *members, check=0)

    def sent(self):
        """What the capture sendmail received, oldest first: (argv, data bytes)."""
        out = []
        for f in sorted((self.sendmail_dir / "out").glob("*.json")):
            d = json.loads(f.read_text())
            out.append((d["argv"], d["data"].encode("utf-8", "surrogateescape")))
        return out

    def sent_to(self):
        """Recipient of each captured delivery."""
        return [argv[-1] for argv, _ in self.sent()]

    def status(self):
        return json.loads(self.run("status", "--json", check=0).out)

    def members(self, address="test@lists.example.org"):
        return {m["address"]: m for m in json.loads(self.run("members", address, "--json", check=0).out)}

    def verp(self, address, list_address="test@lists.example.org"):
        """The signed bounce address redsky writes for ``address``."""
        import redsky
        name, domain = list_address.split("@")
        return redsky.verp_encode({"name": name, "domain": domain, "verp_key": self.verp_key()}, address)

    def verp_key(self):
        return self.db().execute("SELECT value FROM meta WHERE key = 'verp_key'").fetchone()[0]

    def db(self):
        """A connection to the database, closed when the test ends."""
        import sqlite3
        db = sqlite3.connect(self.home / "redsky.db")
        db.row_factory = sqlite3.Row
        self.connections.append(db)
        return db

    def close(self):
        for db in self.connections:
            db.close()
        self.connections = []


@pytest.fixture
def rs(tmp_path):
    home = Redsky(tmp_path)
    yield home
    home.close()


@pytest.fixture
def lst(rs, request):
    """The test module's list: LIST (default test@lists.example.org) made
    with LIST_OPTIONS, MEMBERS subscribed (default bob@example.net), then
    the module's prepare_list(rs) when it has one."""
    module = request.module
    rs.newlist(getattr(module, "LIST", "test@lists.example.org"), *getattr(module, "LIST_OPTIONS", ()),
               members=getattr(module, "MEMBERS", ("bob@example.net",)))
    prepare = getattr(module, "prepare_list", None)
    if prepare is not None:
        prepare(rs)
    return rs


def pytest_make_parametrize_id(config, val, argname):
    """Readable test ids: a message or a long text is named by the start of
    its first line and its length, not spelled out byte by byte."""
    if isinstance(val, (bytes, str)):
        text = val.decode("latin-1") if isinstance(val, bytes) else val
        first = re.sub(r"[^\w@.:+=<>-]+", "_", text.strip().split("\n", 1)[0])[:32].strip("_")
        if len(text) > 32 or first != text:
            return f"{first or 'blank'}~{len(text)}"
    return None


def parse(data):
    return email.message_from_bytes(data, policy=policy.default)


def post(subject="Hello", body="Hello list.\n", sender="alice@example.org", extra="",
         to="test@lists.example.org", msgid=None, headers_only=False):
    msgid = msgid or f"<{abs(hash((subject, body, extra)))}@example.org>"
    text = (f"From: Alice <{sender}>\nTo: {to}\nSubject: {subject}\nMessage-ID: {msgid}\n"
            f"Date: Wed, 25 Nov 2026 10:00:00 +0000\n{extra}")
    return (text + "\n" + body).encode()


def ledger_view(db):
    """[(address, state)] of every queued recipient, sorted: the deliveries
    rows, and for a post to the members (no row per member) each member it
    is for, "pending" until the post's cursor passes them, then "sent"."""
    rows = db.execute("SELECT message, address, state FROM deliveries").fetchall()
    view = [(address, state) for _, address, state in rows]
    for post, cursor, created in db.execute("SELECT id, member_cursor, created FROM messages WHERE to_members"):
        have = {address.lower() for message, address, _ in rows if message == post}
        for (address,) in db.execute("SELECT address FROM members WHERE status = 'enabled' AND subscribed <= ?"
                                     " AND (digest = 0) = (digest_changed <= ?)", (created, created)):
            if address.lower() not in have:
                reached = cursor is None or address.lower() <= cursor.lower()
                view.append((address, "sent" if reached else "pending"))
    return sorted(view)
