"""A post through the MTA's pipe costs little (issue 28): the pipe's command
line imports redsky, so Python runs it from the bytecode that `init` and
`postfix-config` compile as root, where the pipe's user cannot write; a stale
or missing .pyc is noticed; `queue` for a plain post builds no argparse parser
and imports nothing it does not use.  The Postfix and Exim pipes are proved
end to end in test_postfix.py and test_exim.py; here the README's OpenSMTPD
and .forward command lines run through /bin/sh as the pipe's user, as those
MTAs run them."""

import email.utils
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import bytecode
import redsky
from conftest import ROOT, post

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="running as the pipe's user needs root")
needs_pipe_python = pytest.mark.skipif(not os.access(bytecode.PIPE_PYTHON, os.X_OK),
                                       reason=f"{bytecode.PIPE_PYTHON} (the pipe's python) is missing")
LIST = "team@lists.example.org"


# --- queue's command line without argparse -----------------------------------

QUEUE_LINES = [
    ["queue"],
    ["-c", "/x.ini", "queue", "--recipient=a@b.example", "--sender="],
    ["queue", "-c", "x", "--recipient", "a@b.example", "--sender", ""],
    ["-v", "queue", "--dry-run", "--explain", "--client-address", "192.0.2.1"],
    ["--config=/y", "queue", "-v", "--recipient=-x@y.example"],
    ["-c", "a", "queue", "-c", "b"],
    ["queue", "--recipient", "a", "--recipient", "b", "--verbose"],
]
# what queue_args leaves to argparse: its errors, abbreviations, help, other commands
OTHER_LINES = [
    ["queue", "--recipient", "-x"], ["queue", "--recip", "x"], ["queue", "extra"], ["--recipient=x", "queue"],
    ["queue", "--dry-run=1"], ["-cfoo", "queue"], ["send"], ["queue", "--"], ["queue", "-h"], ["-c"],
    ["queue", "--sender"], ["--version"], ["queue", "queue"], [], ["status", "queue"],
]


@pytest.mark.parametrize("argv", QUEUE_LINES)
def test_queue_args_reads_a_queue_line_as_argparse_does(argv):
    fast = redsky.queue_args(argv)
    assert fast is not None
    assert vars(fast) == vars(redsky.make_parser().parse_args(argv))


@pytest.mark.parametrize("argv", OTHER_LINES)
def test_queue_args_leaves_everything_else_to_argparse(argv):
    assert redsky.queue_args(argv) is None


def test_date_and_message_id_are_what_email_utils_writes():
    for when in (0, 1e9, 1_790_000_000.7, time.time()):
        assert redsky.date_field(when) == email.utils.formatdate(when, localtime=True)
    mine, theirs = redsky.new_message_id("lists.example.org"), email.utils.make_msgid(domain="lists.example.org")
    assert re.fullmatch(r"<\d+\.\d+\.\d+@lists\.example\.org>", mine)
    assert mine.split(".")[:2] == theirs.split(".")[:2] or abs(int(mine[1:].split(".")[0]) -
                                                               int(theirs[1:].split(".")[0])) < 100


def test_syslog_handler_tags_and_levels_as_the_c_library_wants(monkeypatch):
    calls = []
    import syslog
    monkeypatch.setattr(syslog, "openlog", lambda *a: calls.append(("openlog",) + a))
    monkeypatch.setattr(syslog, "syslog", lambda *a: calls.append(("syslog",) + a))
    handler = redsky.SyslogHandler()
    import logging
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("redsky-test-syslog")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.warning("a %s", "problem")
    logger.info("queued")
    assert calls == [("openlog", "redsky", syslog.LOG_PID, syslog.LOG_MAIL),
                     ("syslog", syslog.LOG_WARNING, "WARNING a problem"), ("syslog", syslog.LOG_INFO, "INFO queued")]


# --- the bytecode the pipe runs --------------------------------------------

@pytest.fixture
def site():
    """redsky installed as the README does, in a root-owned directory the
    pipe's user (nobody) can read but not write; data_dir is nobody's."""
    top = Path(tempfile.mkdtemp(prefix="redsky-pipe-", dir="/tmp"))
    top.chmod(0o755)
    shutil.copy(ROOT / "redsky.py", top / "redsky.py")
    (top / "redsky.py").chmod(0o755)
    (top / "redsky.ini").write_text("[redsky]\ndata_dir = data\nlog = redsky.log\n[postfix]\nuser = nobody\n")
    yield top
    shutil.rmtree(top, ignore_errors=True)


def as_root(site, *args, umask=0o022):
    def prepare():
        os.umask(umask)
    r = subprocess.run([bytecode.PIPE_PYTHON, str(site / "redsky.py"), "-c", str(site / "redsky.ini"), *args],
                       capture_output=True, text=True, timeout=120, preexec_fn=prepare)
    assert r.returncode in (0, 78), r.stderr
    return r


def as_nobody():
    nobody = pwd.getpwnam("nobody")

    def drop():
        os.setgroups([])
        os.setgid(nobody.pw_gid)
        os.setuid(nobody.pw_uid)
    return drop


def pipe_post(site, subject, shell=None):
    """A post through the pipe's command line as nobody (through /bin/sh when ``shell`` is a command string)."""
    data = post(subject=subject, to=LIST, sender="ann@example.org")
    argv = ["/bin/sh", "-c", shell] if shell else \
        [bytecode.PIPE_PYTHON, "-I", "-c", redsky.PIPE_CODE, str(site), "-c", str(site / "redsky.ini"), "queue",
         f"--recipient={LIST}", "--sender=ann@example.org"]
    return subprocess.run(argv, input=data, capture_output=True, timeout=60, preexec_fn=as_nobody(),
                          cwd="/", env={"PATH": "/usr/bin:/bin"})


def install(site):
    r = as_root(site, "init", umask=0o077)           # a root umask that would hide the .pyc from the pipe
    assert "bytecode: " in r.stdout, r.stderr
    as_root(site, "newlist", LIST, "--access", "open")
    as_root(site, "subscribe", LIST, "bob@example.net")
    as_root(site, "set", LIST, "dmarc", "never")


def queued(site):
    return len(list((site / "data" / "spool").glob("*.eml")))


def doctor_line(site):
    out = as_root(site, "doctor").stdout
    return next(line for line in out.splitlines() if "bytecode" in line)


@needs_root
@needs_pipe_python
def test_init_compiles_the_bytecode_that_the_pipe_user_runs_and_cannot_write(site):
    install(site)
    pyc = bytecode.pyc_of(site / "redsky.py")
    assert stat.S_IMODE(pyc.stat().st_mode) == 0o644 and stat.S_IMODE(pyc.parent.stat().st_mode) == 0o755
    assert not redsky.user_can(str(site), "nobody", write=True)
    assert not redsky.user_can(str(pyc.parent), "nobody", write=True)
    assert doctor_line(site).startswith(f"OK    the MTA's pipe runs redsky from its bytecode {pyc}")
    marker = site / "marker"           # where nobody can reach it
    bytecode.mark(site / "redsky.py", marker)
    before = bytecode.snapshot(pyc.parent)
    r = pipe_post(site, "From the bytecode")
    assert r.returncode == 0, r.stderr
    assert bytecode.runs(marker) == [pwd.getpwnam("nobody").pw_uid]      # nobody ran the .pyc init made
    assert bytecode.snapshot(pyc.parent) == before and queued(site) == 1   # nothing compiled, the post queued
    assert "WARNING" not in (site / "data" / "redsky.log").read_text()


@needs_root
@needs_pipe_python
def test_after_an_upgrade_an_old_pyc_never_runs_and_init_makes_it_fresh(site):
    install(site)
    marker = site / "marker"           # where nobody can reach it
    bytecode.mark(site / "redsky.py", marker)
    source = site / "redsky.py"
    st = source.stat()
    # a new redsky.py of the same size and time: a timestamp check would take the old .pyc
    text = source.read_text()
    source.write_text(text.replace('__version__ = "0', '__version__ = "9', 1))
    assert source.stat().st_size == st.st_size
    os.utime(source, ns=(st.st_atime_ns, st.st_mtime_ns))
    r = pipe_post(site, "After an upgrade")
    assert r.returncode == 0, r.stderr
    assert bytecode.runs(marker) == [] and queued(site) == 1               # the new code ran, not the old
    assert "is stale" in doctor_line(site) and doctor_line(site).startswith("WARN")
    as_root(site, "init")
    assert doctor_line(site).startswith("OK ")
    bytecode.mark(site / "redsky.py", marker)
    assert pipe_post(site, "Fresh again").returncode == 0 and len(bytecode.runs(marker)) == 1


@needs_root
@needs_pipe_python
def test_a_missing_pyc_is_logged_by_queue_and_named_by_doctor(site):
    install(site)
    shutil.rmtree(bytecode.pyc_of(site / "redsky.py").parent)
    r = pipe_post(site, "Compiled again")
    assert r.returncode == 0 and queued(site) == 1, r.stderr
    assert not bytecode.pyc_of(site / "redsky.py").exists()               # nobody could not write it
    assert "WARNING no bytecode of" in (site / "data" / "redsky.log").read_text()
    line = doctor_line(site)
    assert line.startswith("WARN") and "is missing" in line
    assert f"{site}/redsky.py -c {site}/redsky.ini init" in as_root(site, "doctor").stdout
    as_root(site, "init")
    assert doctor_line(site).startswith("OK ")


def readme():
    return (ROOT / "README.md").read_text()


def readme_pipe_line(text, site):
    return (text.replace("/usr/bin/python3", bytecode.PIPE_PYTHON).replace(" /opt/redsky ", f" {site} ")
            .replace("/etc/redsky/redsky.ini", str(site / "redsky.ini")))


@needs_root
@needs_pipe_python
def test_the_readme_opensmtpd_and_forward_command_lines_run_the_bytecode(site):
    """OpenSMTPD's mda and a .forward or aliases pipe hand the command to
    /bin/sh (OpenSMTPD after expanding %{rcpt} and %{sender})."""
    install(site)
    marker = site / "marker"           # where nobody can reach it
    bytecode.mark(site / "redsky.py", marker)
    smtpd = readme().split("<!-- opensmtpd -->\n```\n")[1].split("```")[0]
    mda = re.search(r'mda "([^"]+)"', smtpd).group(1)
    assert "import redsky" in mda
    mda = readme_pipe_line(mda, site).replace("%{rcpt}", LIST).replace("%{sender}", "ann@example.org")
    aliases = readme()[readme().index("# /etc/aliases\n"):]
    aliases = aliases[:aliases.index("```")]
    commands = dict(re.findall(r'(?m)^(team[\w-]*):\s+"\|([^"]+)"$', aliases))
    assert len(commands) == 7 and all("import redsky" in c for c in commands.values())
    forward = readme_pipe_line(commands["team"], site)
    for n, shell in enumerate((mda, forward)):
        r = pipe_post(site, f"Through the shell {n}", shell=shell)
        assert r.returncode == 0, (shell, r.stderr)
    assert bytecode.runs(marker) == [pwd.getpwnam("nobody").pw_uid] * 2 and queued(site) == 2
