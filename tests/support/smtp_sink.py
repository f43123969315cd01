"""An SMTP server for the end-to-end tests, on aiosmtpd (PyPI).

Usage: smtp_sink.py PORT OUTDIR. Listens on 127.0.0.1:PORT, writes each message it accepts to
OUTDIR/NNNN.eml (atomically: written as .tmp, then renamed) with its envelope as two leading
X-Envelope-From/X-Envelope-To lines, and prints "ready" once it accepts connections. Recipients
whose local part starts with "refuse" are refused for good (550), "later" for now (451).
"""

import pathlib
import sys
import time

from aiosmtpd.controller import Controller


class Sink:
    def __init__(self, out: pathlib.Path):
        self.out = out
        self.count = 0

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.startswith("refuse"):
            return "550 5.1.1 <%s>: no such user here" % address
        if address.startswith("later"):
            return "451 4.3.0 try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.count += 1
        path = self.out / ("%04d.eml" % self.count)
        head = "X-Envelope-From: %s\r\nX-Envelope-To: %s\r\n" % (
            envelope.mail_from,
            ",".join(envelope.rcpt_tos),
        )
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(head.encode() + envelope.content)
        tmp.rename(path)
        return "250 2.0.0 queued as sink-%d" % self.count


def main() -> None:
    port, out = int(sys.argv[1]), pathlib.Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    controller = Controller(Sink(out), hostname="127.0.0.1", port=port)
    controller.start()
    print("ready", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
