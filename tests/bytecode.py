"""Proof that a run used redsky.py's cached bytecode: a marked .pyc.

mark() replaces the .pyc that `init` or `postfix-config` compiled beside an
installed redsky.py by the same code plus one statement at its end, which
appends the uid of the process to a marker file, and keeps the .pyc's header
(the hash of redsky.py that Python checks on import).  So the marker grows
exactly when a run loads that .pyc; a run that compiles redsky.py (no .pyc, a
stale one) does not write it.  The marked code is compiled and written by the
python the pipe runs, whose bytecode format it must be.
"""

import os
import subprocess
from pathlib import Path

PIPE_PYTHON = "/usr/bin/python3"

MARK = """\
import marshal, sys
source, pyc, marker = sys.argv[1:]
with open(pyc, "rb") as fh:
    head = fh.read(16)
assert int.from_bytes(head[4:8], "little") == 3, "not a checked-hash .pyc"
with open(source, encoding="utf-8") as fh:
    text = fh.read()
text += "\\nwith open(%r, 'a') as _marker:\\n    _marker.write('%%d\\\\n' %% __import__('os').getuid())\\n" % marker
with open(pyc, "wb") as fh:
    fh.write(head + marshal.dumps(compile(text, source, "exec")))
"""


def pyc_of(redsky_py, python=PIPE_PYTHON):
    """Where ``python`` keeps the bytecode of ``redsky_py``."""
    out = subprocess.run([python, "-c", "import importlib.util, sys; print(importlib.util.cache_from_source(sys.argv[1]))",
                          str(redsky_py)], capture_output=True, text=True, check=True).stdout.strip()
    return Path(out)


def mark(redsky_py, marker, python=PIPE_PYTHON):
    """Mark the .pyc of ``redsky_py`` (see above); ``marker`` is made
    writable by anyone.  Returns the original .pyc's bytes."""
    pyc = pyc_of(redsky_py, python)
    original = pyc.read_bytes()
    Path(marker).write_text("")
    os.chmod(marker, 0o666)
    subprocess.run([python, "-c", MARK, str(redsky_py), str(pyc), str(marker)], check=True)
    return original


def runs(marker):
    """The uids of the runs that loaded the marked .pyc."""
    return [int(line) for line in Path(marker).read_text().split()]


def snapshot(directory):
    """{name: (size, mtime)} of a __pycache__ directory: what a compile would change."""
    directory = Path(directory)
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in directory.iterdir()} if directory.is_dir() else {}
