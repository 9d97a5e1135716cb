"""A fast SMTP sink for tests/bench.py: stdlib asyncio, one or more processes
on one port (SO_REUSEPORT).  It offers PIPELINING and XVERP, answers a
whole pipelined group in one write, and counts the recipients of every
accepted message in a shared counter, so the benchmark can tell when the
Nth recipient has arrived and check that none was lost."""

import asyncio
import multiprocessing
import os
import socket


class SinkProtocol(asyncio.Protocol):
    def __init__(self, counter):
        self.counter = counter
        self.buffer = b""
        self.in_data = False
        self.rcpts = 0

    def connection_made(self, transport):
        self.transport = transport
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport.write(b"220 sink ESMTP\r\n")

    def data_received(self, data):
        self.buffer += data
        out = []
        while True:
            if self.in_data:
                end = self.buffer.find(b"\r\n.\r\n")
                if end < 0:
                    if self.buffer.startswith(b".\r\n"):
                        end = -2
                    else:
                        break
                self.buffer = self.buffer[end + 5:]
                self.in_data = False
                with self.counter.get_lock():
                    self.counter.value += self.rcpts
                self.rcpts = 0
                out.append(b"250 2.0.0 queued\r\n")
                continue
            nl = self.buffer.find(b"\n")
            if nl < 0:
                break
            line, self.buffer = self.buffer[:nl + 1], self.buffer[nl + 1:]
            verb = line[:4].upper()
            if verb == b"EHLO":
                out.append(b"250-sink\r\n250-PIPELINING\r\n250-XVERP\r\n250 8BITMIME\r\n")
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
            elif verb == b"RSET":
                self.rcpts = 0
                out.append(b"250 ok\r\n")
            elif verb == b"QUIT":
                out.append(b"221 bye\r\n")
                self.transport.write(b"".join(out))
                self.transport.close()
                return
            else:
                out.append(b"250 ok\r\n")
        if out:
            self.transport.write(b"".join(out))


def _serve(port, counter, ready):
    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: SinkProtocol(counter), "127.0.0.1", port,
                                          reuse_port=True, backlog=512)
        ready.set()
        await server.serve_forever()
    asyncio.run(main())


class Sink:
    """``with Sink(processes=2) as sink:`` … ``sink.port``, ``sink.received``, ``sink.cpu()``."""

    def __init__(self, processes=1):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        self.counter = multiprocessing.Value("q", 0)
        self.procs = []
        for _ in range(processes):
            ready = multiprocessing.Event()
            p = multiprocessing.Process(target=_serve, args=(self.port, self.counter, ready), daemon=True)
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
