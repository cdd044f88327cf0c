"""``python -m fastsmtplib demo``: send a few messages through an embedded aiosmtpd server."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from aiosmtpd.controller import Controller

    import fastsmtplib

    received = []

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            received.append((envelope.mail_from, list(envelope.rcpt_tos), len(envelope.content)))
            return "250 OK"

    class _Ctl(Controller):
        def _trigger_server(self):
            self.port = self.server.sockets[0].getsockname()[1]
            super()._trigger_server()

    ctl = _Ctl(Handler(), hostname="127.0.0.1", port=0)
    ctl.start()
    try:
        print("compiled kernels:", fastsmtplib.HAS_EXTENSIONS)
        with fastsmtplib.SMTP("127.0.0.1", ctl.port, local_hostname="demo.local") as s:
            print("sendmail ->", s.sendmail("me@example.org", ["you@example.org"], "Subject: hi\r\n\r\nhello\r\n"))
            msgs = [("me@example.org", ["r%d@example.org" % i], "Subject: %d\r\n\r\nbody\r\n" % i) for i in range(5)]
            for r in s.send_many(msgs):
                print("send_many #%d -> %s %r" % (r.index, r.status, r.reply))
    finally:
        ctl.stop()
    print("server received %d messages" % len(received))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
