"""A fast SMTP sink for tests/bench.py: stdlib asyncio, one or more processes
on one port (SO_REUSEPORT).  It offers PIPELINING, XVERP and CHUNKING (unless
told not to), answers a
whole pipelined group in one write, and counts the recipients of every
accepted message in a shared counter, so the benchmark can tell when the
Nth recipient has arrived and check that none was lost.  It reads into
one buffer per connection (asyncio.BufferedProtocol): a plain Protocol
gets a fresh 256 KiB bytes object per read, whose allocation cost more
than the SMTP work and skewed every client's rate."""

import asyncio
import multiprocessing
import os
import socket


class SinkProtocol(asyncio.BufferedProtocol):
    def __init__(self, counter, chunking=True):
        self.counter, self.chunking = counter, chunking
        self.bdat = 0                          # bytes of a BDAT chunk still to come
        self.buffer = b""
        self.chunk = bytearray(65536)
        self.in_data = False
        self.rcpts = 0

    def connection_made(self, transport):
        self.transport = transport
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport.write(b"220 sink ESMTP\r\n")

    def get_buffer(self, sizehint):
        return self.chunk

    def buffer_updated(self, nbytes):
        self.data_received(bytes(self.chunk[:nbytes]))

    def data_received(self, data):
        buf = self.buffer + data if self.buffer else data
        pos, out, accepted = 0, [], 0          # an offset, not slices: linear in what arrives
        while True:
            if self.bdat:
                take = min(self.bdat, len(buf) - pos)
                pos, self.bdat = pos + take, self.bdat - take
                if self.bdat:
                    break
                if self.in_data:               # the LAST chunk is in
                    accepted += self.rcpts
                    self.rcpts, self.in_data = 0, False
                    out.append(b"250 2.0.0 queued\r\n")
                else:
                    out.append(b"250 2.0.0 chunk\r\n")
                continue
            if self.in_data:
                end = buf.find(b"\r\n.\r\n", pos - 2 if pos >= 2 else pos)
                if end < 0:
                    break
                pos, self.in_data = end + 5, False
                accepted += self.rcpts
                self.rcpts = 0
                out.append(b"250 2.0.0 queued\r\n")
                continue
            nl = buf.find(b"\n", pos)
            if nl < 0:
                break
            begin, verb, pos = pos, buf[pos:pos + 4].upper(), nl + 1
            if verb == b"EHLO":
                out.append(b"250-sink\r\n250-PIPELINING\r\n250-XVERP\r\n"
                           + b"250-CHUNKING\r\n" * self.chunking + b"250 8BITMIME\r\n")
            elif verb == b"HELO":
                out.append(b"250 sink\r\n")
            elif verb == b"MAIL":
                self.rcpts = 0
                out.append(b"250 2.1.0 ok\r\n")
            elif verb == b"RCPT":
                self.rcpts += 1
                out.append(b"250 2.1.5 ok\r\n")
            elif verb == b"DATA":
                if self.rcpts:
                    self.in_data = True
                    out.append(b"354 go ahead\r\n")
                else:
                    out.append(b"554 no valid recipients\r\n")
            elif verb == b"BDAT" and self.chunking:
                line = buf[begin:nl].split()
                self.bdat = int(line[1])
                self.in_data = line[-1].upper() == b"LAST"
                if not self.bdat and self.in_data:
                    accepted += self.rcpts
                    self.rcpts, self.in_data = 0, False
                    out.append(b"250 2.0.0 queued\r\n")
            elif verb == b"RSET":
                self.rcpts = 0
                out.append(b"250 ok\r\n")
            elif verb == b"QUIT":
                out.append(b"221 bye\r\n")
                self.transport.write(b"".join(out))
                self.transport.close()
                break
            else:
                out.append(b"250 ok\r\n")
        # in a message, keep the line end before it: the final dot may be the next read's first byte
        self.buffer = buf[pos - 2:] if self.in_data and not self.bdat and pos >= 2 else buf[pos:]
        if accepted:
            with self.counter.get_lock():
                self.counter.value += accepted
        if out and not self.transport.is_closing():
            self.transport.write(b"".join(out))


def _serve(port, counter, ready, chunking):
    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: SinkProtocol(counter, chunking), "127.0.0.1", port,
                                          reuse_port=True, backlog=512)
        ready.set()
        await server.serve_forever()
    asyncio.run(main())


class Sink:
    """``with Sink(processes=2) as sink:`` … ``sink.port``, ``sink.received``, ``sink.cpu()``."""

    def __init__(self, processes=1, chunking=True):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        self.counter = multiprocessing.Value("q", 0)
        self.procs = []
        for _ in range(processes):
            ready = multiprocessing.Event()
            p = multiprocessing.Process(target=_serve, args=(self.port, self.counter, ready, chunking), daemon=True)
            p.start()
            ready.wait(10)
            self.procs.append(p)

    @property
    def received(self):
        return self.counter.value

    def reset(self):
        with self.counter.get_lock():
            self.counter.value = 0

    def cpu(self):
        """CPU seconds the sink processes have used so far."""
        total = 0.0
        for p in self.procs:
            with open(f"/proc/{p.pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            p.terminate()
            p.join(5)
