#!/usr/bin/python3
"""Log format under systemd: when stderr is the stream JOURNAL_STREAM names,
every line is "<N>message" (syslog priority, no timestamp of our own);
otherwise lines carry a timestamp and no prefix."""
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import qnbd_harness as h  # noqa: E402

JOURNAL_LINE = re.compile(r"^<[2-7]>[^\[<]")
PLAIN_LINE = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}\] \[")


def serve_once(tmp, journal_stream):
    """Start and stop a server whose stderr is its log file; returns the lines."""
    image = h.make_sparse_image(os.path.join(tmp, "d.raw"), h.MiB, [])
    srv = h.Server(tmp, image)
    open(srv.log, "wb").close()
    st = os.stat(srv.log)
    env = {"matching": f"{st.st_dev}:{st.st_ino}", "other": f"{st.st_dev}:{st.st_ino + 1}",
           None: None}[journal_stream]
    saved = os.environ.pop("JOURNAL_STREAM", None)
    try:
        if env:
            os.environ["JOURNAL_STREAM"] = env
        with srv:
            pass
    finally:
        os.environ.pop("JOURNAL_STREAM", None)
        if saved is not None:
            os.environ["JOURNAL_STREAM"] = saved
    with open(srv.log) as f:
        lines = f.read().splitlines()
    assert len(lines) >= 3, lines  # export, serving, signal, stopped
    return lines


def test_journal_lines_have_priority_and_no_timestamp(tmp):
    lines = serve_once(tmp, "matching")
    bad = [l for l in lines if not JOURNAL_LINE.match(l)]
    assert not bad, f"lines not in journald form: {bad}"
    assert any(l.startswith("<6>qnbd ") and "serving" in l for l in lines), lines


def test_plain_stderr_keeps_timestamps(tmp):
    for stream in (None, "other"):  # unset, or naming another file (stderr redirected)
        lines = serve_once(tmp, stream)
        bad = [l for l in lines if not PLAIN_LINE.match(l)]
        assert not bad, f"JOURNAL_STREAM={stream}: lines without a timestamp: {bad}"


if __name__ == "__main__":
    h.main([test_journal_lines_have_priority_and_no_timestamp, test_plain_stderr_keeps_timestamps])
