"""Code run in a fresh Python that compiles for real: the test process may have imported Triton under its CPU
interpreter (``TRITON_INTERPRET=1``), which a compile for sm_90, or a check of what happens without it, must not
inherit."""
import json
import os
import subprocess
import sys


def python(*args: str, timeout: int = 300, **kwargs) -> subprocess.CompletedProcess:
    """``python args...`` in a fresh process without ``TRITON_INTERPRET``, its output captured as text."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=timeout, **kwargs)


def json_of(code: str, *args, timeout: int = 600):
    """The JSON that ``code`` (run with ``args`` as sys.argv[1:]) prints on its last line; a failure is the
    assertion, with the end of its stderr."""
    proc = python("-c", code, *map(str, args), timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
