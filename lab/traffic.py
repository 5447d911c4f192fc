"""Traffic between lab namespaces, checked end to end (byte count and SHA-256 on both sides)."""
from __future__ import annotations

import subprocess
from typing import Any, Dict

from .netns import Lab
from .proc import LabError, program, run

PORT = 5201


def tcp_transfer(lab: Lab, src_ns: str, dst_ns: str, dst_ip: str, nbytes: int, port: int = PORT,
                 timeout: float = 30.0) -> Dict[str, Any]:
    """Send `nbytes` of seeded random data over TCP and compare SHA-256 on both ends.

    Returns {"ok", "bytes", "seconds", "mbit_s"} (and "error" on a failed send); both sides are
    bounded by `timeout` seconds.
    """
    sink = subprocess.Popen(lab.ns_cmd(dst_ns, *program("tcp_sink", dst_ip, str(port), str(timeout))),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert sink.stdout is not None and sink.stderr is not None
        if "listening" not in sink.stdout.readline():
            raise LabError(f"sink did not start: {sink.stderr.read()}")
        src = run(lab.ns_cmd(src_ns, *program("tcp_source", dst_ip, str(port), str(nbytes), str(timeout))),
                  check=False, timeout=timeout + 5)
        out, _ = sink.communicate(timeout=timeout + 5)
    finally:
        if sink.poll() is None:
            sink.kill()
            sink.wait()
    if src.returncode != 0:
        return {"ok": False, "error": src.stderr.strip()[-300:], "bytes": 0, "seconds": 0.0, "mbit_s": 0.0}
    sent_n, sent_h, secs = src.stdout.split()
    got = out.split()
    secs_f = float(secs)
    return {"ok": got == [sent_n, sent_h], "bytes": int(sent_n), "seconds": secs_f,
            "mbit_s": int(sent_n) * 8 / 1e6 / secs_f if secs_f > 0 else 0.0}
