"""Campaign throughput and memory: ``fastsmtplib send`` against the project's sink.

A script (the figures) and one pytest-benchmark smoke function (CI runs it
once with ``--benchmark-disable``).  Nothing asserts a timing.

Each script run writes a CSV of N recipients (``email,first_name,city,id``)
and a ~20 KB HTML newsletter with placeholders in its greeting, body and
unsubscribe link, starts ``fastsmtplib sink`` as its own process pinned to
CPU 1 and runs ``fastsmtplib send`` (journal on, as always) as another
process pinned to CPU 0, then reports:

* ``msgs/s``: messages recorded by the run / the send phase's time (from the
  command's ``--json`` summary: import of the CSV excluded), and the wall
  time of the whole command (interpreter start, import, checks included);
* peak RSS of the sender (``ru_maxrss`` from ``wait4``).

Commands (the closing note of issue 10 quotes their output)::

    python bench/bench_campaign.py --recipients 100000 --dkim none
    python bench/bench_campaign.py --recipients 100000 --dkim rsa
    python bench/bench_campaign.py --recipients 100000 --dkim ed25519
    python bench/bench_campaign.py --recipients 1000000 --dkim none     # peak RSS (<= 150 MB)

``--size BYTES`` changes the HTML size, ``--connections N`` the pool size,
``--src DIR`` runs another checkout's ``src``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(HERE), "src")

_NAMES = ("Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Margaret", "Ken")
_CITIES = ("Lyon", "Porto", "Tartu", "Ghent", "Bergen", "Kraków", "Turku", "Girona")


def write_csv(path: str, n: int) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["email", "first_name", "city", "id"])
        for i in range(1, n + 1):
            w.writerow(["reader%d@example.net" % i, _NAMES[i % 8], _CITIES[i % 8], i])


def newsletter_html(size: int) -> str:
    """About ``size`` bytes of newsletter HTML with a few placeholders."""
    head = ('<!doctype html><html><head><style>\n.body { font-family: sans-serif }\n</style></head>\n'
            '<body>\n<h1>Hello {{first_name}}!</h1>\n<p>News from {{city}} this month.</p>\n')
    para = ('<p class="body">Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod '
            'tempor incididunt ut labore et dolore magna aliqua. Ut enim ad minim veniam.</p>\n')
    tail = '<p><a href="https://news.example.org/u?id={{id}}">Unsubscribe</a></p>\n</body></html>\n'
    body = [head]
    while sum(map(len, body)) + len(tail) < size:
        body.append(para)
    body.append(tail)
    return "".join(body)


def _env(src: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _pin(cpu: int) -> list:
    if shutil.which("taskset") and (os.cpu_count() or 1) > cpu:
        return ["taskset", "-c", str(cpu)]
    return []


def start_sink(src: str) -> tuple:
    proc = subprocess.Popen(_pin(1) + [sys.executable, "-m", "fastsmtplib", "sink", "--port", "0"],
                            stdout=subprocess.PIPE, text=True, env=_env(src))
    line = proc.stdout.readline()  # "fastsmtplib sink: SMTP on 127.0.0.1:PORT"
    port = int(line.rsplit(":", 1)[1])
    return proc, port


def run_send(src: str, tmp: str, n: int, size: int, dkim: str, connections: int, port: int) -> dict:
    csv_path = os.path.join(tmp, "list.csv")
    html_path = os.path.join(tmp, "news.html")
    with open(html_path, "w", encoding="utf-8") as f:
        f.write(newsletter_html(size))
    if not os.path.exists(csv_path) or getattr(run_send, "_n", None) != n:
        write_csv(csv_path, n)
        run_send._n = n  # type: ignore[attr-defined]
    journal = os.path.join(tmp, "j-%s.db" % dkim)
    for suffix in ("", "-wal", "-shm", ".lock"):
        if os.path.exists(journal + suffix):
            os.unlink(journal + suffix)
    argv = [sys.executable, "-m", "fastsmtplib", "send", "--recipients", csv_path,
            "--subject", "{{first_name}}, your {{city}} digest", "--html", html_path,
            "--from", "news@example.org", "--server", "127.0.0.1:%d" % port, "--journal", journal,
            "--connections", str(connections), "--unsubscribe-url", "https://news.example.org/u?id={{id}}",
            "--quiet", "--json"]
    if dkim != "none":
        sys.path.insert(0, src)
        from fastsmtplib.dkim_sign import generate_key

        pem, _record = generate_key(dkim)
        key_path = os.path.join(tmp, "dkim-%s.pem" % dkim)
        with open(key_path, "wb") as f:
            f.write(pem)
        argv += ["--dkim-key", key_path, "--dkim-selector", "bench", "--dkim-domain", "example.org"]
    t0 = time.monotonic()
    proc = subprocess.Popen(_pin(0) + argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(src))
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - t0
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit("send exited %d: %s" % (code, err.decode(errors="replace")))
    summary = json.loads(out)
    return {
        "recipients": n,
        "html_bytes": os.path.getsize(html_path),
        "dkim": dkim,
        "connections": connections,
        "delivered": summary["states"]["delivered"],
        "send_seconds": summary["elapsed"],
        "msgs_per_s": round(summary["sent_this_run"] / summary["elapsed"], 1),
        "wall_seconds": round(wall, 2),
        "wall_msgs_per_s": round(n / wall, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024.0, 1),  # Linux: KiB
        "journal_mb": round(os.path.getsize(journal) / 1e6, 1),
    }


def main(argv: list | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipients", type=int, default=100_000)
    ap.add_argument("--size", type=int, default=20_000, help="HTML bytes (default 20000)")
    ap.add_argument("--dkim", choices=("none", "rsa", "ed25519"), action="append",
                    help="repeat for several runs (default: none and rsa)")
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--src", default=SRC, help="the fastsmtplib src directory to run")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    kinds = args.dkim or ["none", "rsa"]
    tmp = tempfile.mkdtemp(prefix="bench-campaign-")
    sink, port = start_sink(args.src)
    rows = []
    try:
        for kind in kinds:
            row = run_send(args.src, tmp, args.recipients, args.size, kind, args.connections, port)
            rows.append(row)
            if not args.json:
                print("%(recipients)d recipients x %(html_bytes)d B HTML, DKIM %(dkim)s, %(connections)d connections: "
                      "%(msgs_per_s).0f msgs/s (send phase %(send_seconds).1f s; whole command %(wall_seconds).1f s, "
                      "%(wall_msgs_per_s).0f msgs/s), peak RSS %(peak_rss_mb).1f MB, journal %(journal_mb).1f MB"
                      % row, flush=True)
    finally:
        sink.terminate()
        sink.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(rows, indent=2))
    return 0


# -- pytest-benchmark smoke (CI: --benchmark-disable runs it once) ------------------------


def test_campaign_send_1000(benchmark, tmp_path):
    """One campaign of 1,000 recipients x 20 KB HTML, journal on, to an in-process sink."""
    sys.path.insert(0, SRC)
    from fastsmtplib.campaign import Campaign
    from fastsmtplib.merge import Template
    from fastsmtplib.sink import Sink

    write_csv(str(tmp_path / "list.csv"), 1000)
    template = Template.from_parts("{{first_name}}, your digest", html=newsletter_html(20_000),
                                   from_addr="news@example.org")
    runs = []

    def once():
        journal = tmp_path / ("j%d.db" % len(runs))
        with Sink(port=0) as sink:
            c = Campaign(tmp_path / "list.csv", template, "news@example.org", journal=journal,
                         host=sink.host, port=sink.port, connections=4)
            s = c.run()
        runs.append(s)
        return s

    summary = benchmark.pedantic(once, rounds=1, iterations=1)
    assert summary.states["delivered"] == 1000
    benchmark.extra_info["msgs_per_s"] = round(summary.rate, 1)


if __name__ == "__main__":
    sys.exit(main())
