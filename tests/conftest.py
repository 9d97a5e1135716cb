"""Fixtures and helpers: a throwaway redsky installation driven through its CLI.

How the CLI runs. ``rs.run(...)`` (and ``cli(...)``) call redsky.main() in
this process, with what a fresh process would have of its own swapped in and
put back afterwards: stdin, stdout and stderr, the environment, umask and
cwd, redsky's log handlers, the filter registry plugins add to and the
Public Suffix List cache; the SQLite connections a run leaves open are
closed as an exit would close them, and SIGALRM enforces ``timeout``.
``subprocess=True`` runs a real python3 instead; ask for it only where the
process is the point: a server (`web --listen`, `lmtp`), a process killed,
limited (rlimit) or run in parallel with others, a pipe that closes, the
switch to the list user as root and the fork for it (an in-process run
refuses both). Tests of the entry point run redsky.py as a script (CGI, the
README's commands); real MTAs run it themselves; the sendmail stand-in is a
program of its own.

Where a new test goes:
- the queue chain end to end (headers, tag, footer, who gets a copy):
  test_queue.py; message helpers called directly: test_message.py;
- odd or malformed mail: test_badinput.py; attacks by an outsider:
  test_security.py; the parsers' CPU on hostile input: test_hostile.py;
- `send`, transports, VERP, the ledger, retries: test_send.py; crashes,
  locks, full disks, concurrency: test_reliability.py, test_faults.py;
- command mail, confirmations, moderation, owner mail: test_commands.py;
  owners and moderators by email (owner commands, one-tap links, the daily
  summary) with their forgeries: test_owners.py;
  member options and list settings: test_options.py; archive and digests:
  test_archive_digest.py; bounces: test_bounces.py (recognition rates:
  test_bounce_corpus.py, test_bounce_realworld.py); DMARC and the DNS
  client: test_dmarc.py; filter mode: test_filter.py; plugins:
  test_plugins.py; --explain and trace: test_trace.py;
- admin commands, configuration, the parser, the README's promises:
  test_admin.py; doctor: test_doctor.py; root's set-up and postfix-config
  --apply: test_setup.py; import, export, whois, forget: test_move.py; the
  rules of redsky.py's layout: test_layout.py;
- servers: test_lmtp.py, test_web.py (with CGI, WSGI, Chromium, nginx,
  Apache); the web's sign-in, the owner's and the member's pages, their
  forgeries and the accessibility audit in Chromium: test_webadmin.py
  (Chromium over the DevTools protocol: cdp.py); real MTAs: test_postfix.py,
  test_exim.py, test_opensmtpd.py.
A helper that a second file needs moves here.

Markers: ``mta`` (a real Postfix, Exim, OpenSMTPD, mlmmj or Mailman 3),
``browser`` (Chromium), ``webserver`` (nginx, Apache), ``server`` (redsky's
own servers in a subprocess); each also marks the test ``real``, so
``python3 -m pytest -m "not real"`` is the quick subset.  CI runs them all.
"""

import email
import io
import json
import os
import re
import shlex
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import traceback
import urllib.error
import urllib.request
from email import policy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import redsky  # noqa: E402  (after the path above)

REDSKY = str(ROOT / "redsky.py")
# A subprocess run is `python3 -c "import redsky; redsky.main(argv)"`: the
# same main() in a fresh process, but the module's bytecode is cached (a
# script is compiled afresh on every run, 0.1 s each).  Tests of the entry
# point itself run REDSKY as a script.  The interpreter is the system's
# python3 when it is one redsky runs on (what the README has the MTA's pipe
# and cron use, and it starts in 0.03 s where a pyenv or venv python3 may
# take 0.07 s), else the one running the tests.
PYTHON = sys.executable
if os.path.exists("/usr/bin/python3") and subprocess.run(
        ["/usr/bin/python3", "-c", "import sys; sys.exit(sys.version_info < (3, 7))"]).returncode == 0:
    PYTHON = "/usr/bin/python3"
REDSKY_MAIN = [PYTHON, "-c",
               f"import sys; sys.path.insert(0, {str(ROOT)!r}); import redsky; sys.exit(redsky.main(sys.argv[1:]))"]
# The same for a copy of redsky.py elsewhere (an admin's site, an MTA's
# instance): `python3 -c FILE_MAIN PATH ARGS` is `python3 PATH ARGS` from
# cached bytecode; the bytecode is written only without PYTHONDONTWRITEBYTECODE.
FILE_MAIN = ("import importlib.util, sys; spec = importlib.util.spec_from_file_location('redsky', sys.argv.pop(1)); "
             "redsky = sys.modules['redsky'] = importlib.util.module_from_spec(spec); spec.loader.exec_module(redsky); "
             "sys.exit(redsky.main(sys.argv[1:]))")

# What the environment of a run leaves out: the MTA's pipe variables and a
# config named by the caller's environment would change what redsky reads.
SCRUBBED = ("ORIGINAL_RECIPIENT", "RECIPIENT", "SENDER", "REDSKY_CONFIG", "PYTHONDONTWRITEBYTECODE")


def pytest_configure(config):
    for name, text in (("real", "needs real programs or servers beyond python3: -m 'not real' skips them"),
                       ("mta", "a real MTA or list manager (Postfix, Exim, OpenSMTPD, mlmmj, Mailman 3)"),
                       ("browser", "a real browser (headless Chromium)"),
                       ("webserver", "a real web server (nginx with fcgiwrap, Apache)"),
                       ("server", "redsky's own server (web --listen, lmtp) in a subprocess")):
        config.addinivalue_line("markers", f"{name}: {text}")


def pytest_collection_modifyitems(items):
    for item in items:
        if any(item.get_closest_marker(name) for name in ("mta", "browser", "webserver", "server")):
            item.add_marker(pytest.mark.real)


def readme_block(marker, lang=""):
    """The README's code block between <!-- marker --> and <!-- /marker -->."""
    text = (ROOT / "README.md").read_text()
    return text.split(f"<!-- {marker} -->\n```{lang}\n")[1].split(f"```\n<!-- /{marker} -->")[0]


def require(reason, variable):
    """Skip with ``reason`` when something a test needs is missing, unless
    $``variable`` is set (as .ci/run sets it): then the test fails."""
    if reason:
        if os.environ.get(variable):
            pytest.fail(f"{variable} is set but: {reason}")
        pytest.skip(reason)


# -- running the CLI -------------------------------------------------------------------------

def cli(argv, input=b"", env=None, timeout=120, cwd=None, subprocess=False, **popen):
    """Run ``redsky.py ARGV``: in this process (see the module docstring), or
    with ``subprocess=True`` in a fresh python3 (``popen`` goes to
    subprocess.run, e.g. preexec_fn).  ``env`` is the whole environment
    (default: this one without SCRUBBED).  Returns a CompletedProcess with
    stdout and stderr as bytes and .out, .err as text."""
    if env is None:
        env = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
    if isinstance(input, str):
        input = input.encode()
    input = b"" if input is None else input
    if subprocess:
        import subprocess as sp
        proc = sp.run([*REDSKY_MAIN, *argv], input=input, capture_output=True, env=env, timeout=timeout,
                      cwd=cwd, **popen)
    else:
        if popen:
            raise TypeError(f"{sorted(popen)} only apply to a subprocess: pass subprocess=True")
        proc = _in_process(list(argv), input, env, timeout, cwd)
    proc.out = proc.stdout.decode("utf-8", "replace")
    proc.err = proc.stderr.decode("utf-8", "replace")
    return proc


class _Timeout(BaseException):
    """An in-process run outlived its timeout (raised by SIGALRM in the main thread)."""


class UserSwitch(BaseException):
    """An in-process run tried to switch users (become_list_user as root) or
    to fork (as_list_user as root): either needs a process of its own."""


def _stdio(stream, default_errors):
    return (getattr(stream, "encoding", None) or "utf-8", getattr(stream, "errors", None) or default_errors)


# what a fresh python3 here would give its stdin, stdout and stderr
_STDIN, _STDOUT, _STDERR = (_stdio(sys.__stdin__, "strict"), _stdio(sys.__stdout__, "strict"),
                            _stdio(sys.__stderr__, "backslashreplace"))
# what an in-process run may not do: a child forked from here would be a
# copy of pytest with its threads, and a switch of users would be this process's
_USER_CALLS = ("fork", "setuid", "setgid", "setgroups", "initgroups", "seteuid", "setegid", "setreuid",
               "setregid", "setresuid", "setresgid")
_running = threading.Lock()


def _output_file(encoding, errors):
    """A stream like a process's stdout: text over a real file (it has a descriptor)."""
    return io.TextIOWrapper(tempfile.TemporaryFile(buffering=0), encoding=encoding, errors=errors,
                            write_through=True)


def _open_fds():
    try:
        return set(os.listdir("/proc/self/fd"))
    except OSError:
        return set()


def _left_open(before):
    """Files opened during a run and still open after it, but for sockets
    (this process's test servers) and SQLite's files (their closing waits
    while a test's own connection holds a lock on the same database)."""
    left = []
    for fd in _open_fds() - before:
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if not (path.startswith(("socket:", "pipe:", "anon_inode:")) or path.endswith((".db", "-wal", "-shm"))):
            left.append(path)
    return left


def _in_process(argv, input, env, timeout, cwd):
    """redsky.main(argv) here, with what a process would have of its own swapped in."""
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("in-process runs happen in the main thread; pass subprocess=True")
    if not _running.acquire(blocking=False):
        raise RuntimeError("an in-process run is already under way; pass subprocess=True")
    try:
        return _main_here(argv, input, env, timeout, cwd)
    finally:
        _running.release()


def _main_here(argv, input, env, timeout, cwd):
    log = redsky.log
    saved = {"streams": (sys.stdin, sys.stdout, sys.stderr, sys.__stdin__, sys.__stdout__, sys.__stderr__),
             "environ": dict(os.environ), "cwd": os.getcwd(),
             "handlers": list(log.handlers), "level": log.level, "propagate": log.propagate,
             "log_on_stderr": redsky._log_on_stderr, "filters": dict(redsky.FILTERS),
             "suffixes": dict(redsky._PUBLIC_SUFFIXES), "connect": sqlite3.connect,
             "user_calls": {name: getattr(os, name) for name in _USER_CALLS if hasattr(os, name)},
             "signals": {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP,
                                                         signal.SIGALRM)}}
    umask = os.umask(0o022)
    os.umask(umask)
    fds = _open_fds()
    stdin = io.TextIOWrapper(io.BytesIO(input), encoding=_STDIN[0], errors=_STDIN[1])
    stdout, stderr = _output_file(*_STDOUT), _output_file(*_STDERR)
    opened, state = [], {"running": True}

    def connect(*args, **kwargs):           # redsky's own connections, closed as an exit would
        conn = saved["connect"](*args, **kwargs)
        if sys._getframe(1).f_globals.get("__name__") == "redsky":
            opened.append(conn)
        return conn

    def refuse(name):
        def call(*args):
            raise UserSwitch(f"os.{name}{args} in an in-process run: working as the list user needs "
                             "a process of its own (pass subprocess=True)")
        return call

    def alarm(signum, frame):
        if state["running"]:
            raise _Timeout()

    code, timed_out, outer_timer, started = None, False, (0, 0), time.monotonic()
    try:
        # sys.__stdout__ too: argparse's help is as wide as the terminal there (a pipe: 80 columns)
        sys.stdin, sys.stdout, sys.stderr = sys.__stdin__, sys.__stdout__, sys.__stderr__ = stdin, stdout, stderr
        _set_environ(env)
        if cwd is not None:
            os.chdir(cwd)
        redsky._PUBLIC_SUFFIXES.clear()
        sqlite3.connect = connect
        for name, real in saved["user_calls"].items():
            setattr(os, name, refuse(name))
        if timeout:
            signal.signal(signal.SIGALRM, alarm)
            outer_timer = signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            code = redsky.main(argv)
        except SystemExit as e:             # argparse: usage errors, --help, --version
            code = e.code
            if code is not None and not isinstance(code, int):
                print(code, file=sys.stderr)
                code = 1
        except _Timeout:
            timed_out = True
        except (UserSwitch, KeyboardInterrupt):
            raise
        except Exception:                   # as python3 reports an uncaught exception
            traceback.print_exc(file=sys.stderr)
            code = 1
        finally:
            state["running"] = False
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for conn in opened:
            conn.close()
        sqlite3.connect = saved["connect"]
        for name, real in saved["user_calls"].items():
            setattr(os, name, real)
        for s, handler in saved["signals"].items():
            signal.signal(s, handler)
        if outer_timer[0]:                  # someone else's alarm (pytest-timeout): what is left of it
            signal.setitimer(signal.ITIMER_REAL, max(outer_timer[0] - (time.monotonic() - started), 0.001),
                             outer_timer[1])
        for handler in log.handlers:
            if handler not in saved["handlers"]:
                handler.close()
        log.handlers[:] = saved["handlers"]
        log.setLevel(saved["level"])
        log.propagate = saved["propagate"]
        redsky._log_on_stderr = saved["log_on_stderr"]
        redsky.FILTERS.clear()
        redsky.FILTERS.update(saved["filters"])
        redsky._PUBLIC_SUFFIXES.clear()
        redsky._PUBLIC_SUFFIXES.update(saved["suffixes"])
        os.umask(umask)
        os.chdir(saved["cwd"])
        _set_environ(saved["environ"])
        sys.stdin, sys.stdout, sys.stderr, sys.__stdin__, sys.__stdout__, sys.__stderr__ = saved["streams"]
    out, err = (_drained(stream) for stream in (stdout, stderr))
    if _left_open(fds):          # a file or lock left to the garbage collector: an exit closes it
        import gc
        gc.collect()
    if timed_out:
        raise subprocess.TimeoutExpired(["redsky.py", *argv], timeout, output=out, stderr=err)
    return subprocess.CompletedProcess(["redsky.py", *argv], 0 if code is None else code, out, err)


def _set_environ(env):
    """Make os.environ ``env``, touching only what differs (each change is a putenv)."""
    for key in [k for k in os.environ if k not in env]:
        del os.environ[key]
    for key, value in env.items():
        if os.environ.get(key) != value:
            os.environ[key] = value


def _drained(stream):
    raw = stream.buffer
    raw.seek(0)
    data = raw.read()
    stream.close()
    return data


# A sendmail stand-in (bash: a delivery costs 3 ms of CPU where a python3
# costs 18, and the suite makes a thousand): records argv (NUL-separated, in
# NAME.argv) and the message (NAME.msg, renamed into place last); a file
# "fail_once" in its directory makes the next call exit 75, a file
# "permanent" lists recipients that get exit 67, "slow" names a recipient to
# hang on.  NAME is the time it ends, in microseconds: names sort in order.
CAPTURE_SENDMAIL = textwrap.dedent("""\
    #!/bin/bash
    here={here}
    rcpt=${{@: -1}}
    tmp="$here/out/$$.tmp"
    cat > "$tmp"
    if [ -e "$here/fail_once" ]; then
        rm -f "$here/fail_once" "$tmp"
        echo "stand-in: try again later" >&2
        exit 75
    fi
    if [ -e "$here/permanent" ]; then
        set -f
        for word in $(< "$here/permanent"); do
            if [ "$word" = "$rcpt" ]; then
                rm -f "$tmp"
                echo "stand-in: 5.1.1 user unknown" >&2
                exit 67
            fi
        done
    fi
    if [ -e "$here/slow" ]; then
        read -r slow < "$here/slow"         # false without a final newline, but read
        if [ "$rcpt" = "$slow" ]; then
            : > "$here/slow_started"
            sleep 60
        fi
    fi
    name=${{EPOCHREALTIME:-$(date +%s.%6N)}}
    name=${{name/,/.}}.$$
    printf '%s\\0' "$@" > "$here/out/$name.argv"
    mv "$tmp" "$here/out/$name.msg"
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
        self.sendmail.write_text(CAPTURE_SENDMAIL.format(here=shlex.quote(str(self.sendmail_dir))))
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

    def run(self, *args, input=None, env=None, check=None, timeout=120, subprocess=False, **popen):
        """`redsky.py -c CONFIG ARGS`, in this process unless ``subprocess``
        (see cli()); ``env`` adds to the environment; ``check`` is the exit
        code it must have."""
        full_env = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
        full_env.update(env or {})
        proc = cli(["-c", str(self.config), *args], input=input, env=full_env, timeout=timeout,
                   subprocess=subprocess, **popen)
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
        for f in sorted((self.sendmail_dir / "out").glob("*.msg")):
            argv = f.with_suffix(".argv").read_bytes().split(b"\0")[:-1]
            out.append(([a.decode("utf-8", "surrogateescape") for a in argv], f.read_bytes()))
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
        name, domain = list_address.split("@")
        return redsky.verp_encode({"name": name, "domain": domain, "verp_key": self.verp_key()}, address)

    def verp_key(self):
        return self.db().execute("SELECT value FROM meta WHERE key = 'verp_key'").fetchone()[0]

    def db(self):
        """A connection to the database, closed when the test ends."""
        db = sqlite3.connect(self.home / "redsky.db")
        db.row_factory = sqlite3.Row
        self.connections.append(db)
        return db

    def close(self):
        for db in self.connections:
            db.close()
        self.connections = []


@pytest.fixture(autouse=True)
def _umask_put_back():
    """redsky sets [redsky] umask whenever it opens its store (open_store),
    in any process: a test that calls redsky's functions in this process
    gets this process's umask back afterwards, as rs.run does."""
    mask = os.umask(0o022)
    os.umask(mask)
    yield
    os.umask(mask)


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


@pytest.fixture
def team(lst, request):
    """The module's list (as lst) with DMARC rewriting off: no DNS, From as written."""
    lst.run("set", getattr(request.module, "LIST", "test@lists.example.org"), "dmarc", "never", check=0)
    return lst


def pytest_make_parametrize_id(config, val, argname):
    """Readable test ids: a message or a long text is named by the start of
    its first line and its length, not spelled out byte by byte."""
    if isinstance(val, (bytes, str)):
        text = val.decode("latin-1") if isinstance(val, bytes) else val
        first = re.sub(r"[^\w@.:+=<>-]+", "_", text.strip().split("\n", 1)[0])[:32].strip("_")
        if len(text) > 32 or first != text:
            return f"{first or 'blank'}~{len(text)}"
    return None


# -- redsky's web server --------------------------------------------------------------------

class Web:
    """A running `redsky.py web` for the test's installation."""

    def __init__(self, rs, prefix="/redsky"):
        """``prefix``: the path of base_url, as behind a proxy that takes it off (a browser, which
        follows base_url's paths and cookies, needs "")."""
        from smtpsink import free_port
        self.rs, self.port = rs, free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        rs.write_config(web={"base_url": self.base + prefix})
        self.proc = subprocess.Popen([*REDSKY_MAIN, "-c", str(rs.config), "web", "--listen",
                                      f"127.0.0.1:{self.port}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(self.base + "/", timeout=2).read()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"web did not start: {self.proc.stderr.read1(4000)}")

    def request(self, path, data=None, headers=None, method=None):
        """(status, headers, body text); the app is mounted at / here, /redsky behind a proxy."""
        url = path if path.startswith("http") else self.base + path
        url = url.replace(self.base + "/redsky", self.base)
        req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, r.headers, r.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read().decode("utf-8", "replace")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


def wsgi(rs, path, method="GET", fields=None, remote="192.0.2.10", script="", headers=None, query=""):
    """(status, headers, body) of one request to a new WebApp (as the CGI script makes one per
    request), with PATH_INFO as the server decoded it."""
    import urllib.parse
    body = urllib.parse.urlencode(fields, doseq=True).encode() if isinstance(fields, dict) else (fields or b"")
    environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "SCRIPT_NAME": script, "QUERY_STRING": query,
               "REMOTE_ADDR": remote, "CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body),
               "CONTENT_TYPE": "application/x-www-form-urlencoded", **(headers or {})}
    seen = {}

    def start_response(status, response_headers):
        seen["status"], seen["headers"] = int(status[:3]), dict(response_headers)
    result = redsky.WebApp(redsky.Config(str(rs.config)))(environ, start_response)
    data = b"".join(result)
    if hasattr(result, "close"):        # as a WSGI server does once it has sent the answer
        result.close()
    return seen["status"], seen["headers"], data.decode()


# -- messages ------------------------------------------------------------------------------

class Post(bytes):
    """A message's bytes, with its Message-ID as ``.msgid`` (for trace)."""

    def __new__(cls, data, msgid):
        self = super().__new__(cls, data)
        self.msgid = msgid
        return self


def parse(data):
    return email.message_from_bytes(data, policy=policy.default)


def post(subject="Hello", body="Hello list.\n", sender="alice@example.org", extra="",
         to="test@lists.example.org", msgid=None, headers_only=False):
    """A post from Alice; the same arguments give the same Message-ID (a
    retry), different ones a different one.  Returns Post bytes (.msgid)."""
    msgid = msgid or f"<{abs(hash((subject, body, extra)))}@example.org>"
    text = (f"From: Alice <{sender}>\nTo: {to}\nSubject: {subject}\nMessage-ID: {msgid}\n"
            f"Date: Wed, 25 Nov 2026 10:00:00 +0000\n{extra}")
    return Post((text + "\n" + body).encode(), msgid)


def mta_post(to, subject, sender, body):
    """A post from Carl with a Message-ID of its own, for a real MTA to carry."""
    msgid = f"<{time.time_ns()}@users.test>"
    return Post(f"From: Carl <{sender}>\nTo: {to}\nSubject: {subject}\nMessage-ID: {msgid}\n\n{body}".encode(),
                msgid)


def dsn(action="failed", status="5.1.1", recipient="bob@example.net", message_id="<post1@example.org>",
        diagnostic=None):
    """A Postfix-style delivery status notification to test-bounces."""
    diagnostic = diagnostic or f"smtp; 550 5.1.1 <{recipient}>: Recipient address\n    rejected: User unknown"
    return f"""\
From: MAILER-DAEMON@mx.example.net
To: test-bounces@lists.example.org
Subject: Undelivered Mail Returned to Sender
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="R"

--R
Content-Type: text/plain

I'm sorry to have to inform you that your message could not be delivered.
--R
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.net
Arrival-Date: Wed, 25 Nov 2026 10:00:00 +0000

Final-Recipient: rfc822; {recipient}
Original-Recipient: rfc822;{recipient}
Action: {action}
Status: {status}
Diagnostic-Code: {diagnostic}

--R
Content-Type: message/rfc822

From: alice@example.org
Subject: the post
Message-ID: {message_id}

body
--R--
""".encode()


# -- acting through the CLI ------------------------------------------------------------------

def mail(rs, to, sender, subject="", body="", extra="", envelope=None, check=0):
    """Mail ``to`` (any list address) from ``sender`` (also the envelope
    sender unless ``envelope``), with a Message-ID of its own; the queue's result."""
    data = post(subject=subject, body=body, sender=sender, extra=extra, to=to,
                msgid=f"<{time.time_ns()}@example.org>")
    return rs.queue(data, recipient=to, sender=sender if envelope is None else envelope, check=check)


def inbox(rs, address):
    """Messages delivered to ``address`` by `send`, oldest first (parsed)."""
    rs.run("send", check=0)
    return [parse(data) for argv, data in rs.sent() if argv[-1] == address]


def request(rs, body, sender, list_address="test@lists.example.org"):
    """Mail ``body`` (its first line is the Subject) to the list's -request
    address; the queue's result, with the mail's Message-ID as .msgid."""
    local, domain = list_address.split("@")
    msgid = f"<{abs(hash((body, sender)))}@x>"
    r = rs.queue(f"From: {sender}\nTo: {local}-request@{domain}\nSubject: {body.splitlines()[0]}\n"
                 f"Message-ID: {msgid}\n\n{body}\n".encode(), recipient=f"{local}-request@{domain}", sender=sender)
    r.msgid = msgid
    return r


def deliver(rs, message, sender="alice@example.org"):
    """Queue ``message``, run send; {recipient: [Subject, ...]} of what went out since."""
    before = len(rs.sent())
    rs.queue(message, sender=sender, check=0)
    rs.run("send", check=0)
    got = {}
    for argv, data in rs.sent()[before:]:
        got.setdefault(argv[-1], []).append(parse(data)["Subject"])
    return got


def ledger(rs):
    """{address: row} of the deliveries table."""
    return {r["address"]: dict(r) for r in rs.db().execute("SELECT * FROM deliveries")}


def as_nobody(code, *args, timeout=60):
    """`python3 -c CODE ARGS` run by the user nobody: on loopback, a client
    of redsky's servers that is another peer than this process (the servers
    tell local users apart).  Skips unless root, who alone can switch."""
    import pwd
    if os.geteuid() != 0:
        pytest.skip("needs root to run a client as another local user")
    nobody = pwd.getpwnam("nobody")

    def become():
        os.setgroups([])
        os.setgid(nobody.pw_gid)
        os.setuid(nobody.pw_uid)
    return subprocess.run([PYTHON, "-c", code, *args], capture_output=True, text=True, timeout=timeout,
                          preexec_fn=become, cwd="/")


def ledger_view(db):
    """[(address, state)] of every queued recipient, sorted: the deliveries
    rows, and for a post to the members (no row per member) each member it
    is for, "pending" until the post's cursor passes them, then "sent".
    ``db`` is a connection, or the database's path (opened and closed here)."""
    if isinstance(db, (str, Path)):
        conn = sqlite3.connect(db)
        try:
            return ledger_view(conn)
        finally:
            conn.close()
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
