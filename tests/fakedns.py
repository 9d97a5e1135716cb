"""A DNS responder on 127.0.0.1 for the tests: TXT answers from ``records``,
A answers from ``a_records``, NXDOMAIN for every other name, so no test
ever asks a real resolver."""

import socket
import struct
import threading


class FakeDNS:
    def __init__(self):
        self.records = {}           # name (lower case) -> [TXT strings]
        self.a_records = {}         # name (lower case) -> ["127.0.0.2", ...]
        self.queries = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                data, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            qid = data[:2]
            labels, pos = [], 12
            while data[pos]:
                labels.append(data[pos + 1:pos + 1 + data[pos]].decode())
                pos += 1 + data[pos]
            question = data[12:pos + 5]
            qtype = struct.unpack(">H", data[pos + 1:pos + 3])[0]
            name = ".".join(labels).lower()
            self.queries.append(name)
            answers = (self.a_records if qtype == 1 else self.records).get(name)
            if answers is None:
                self.sock.sendto(qid + struct.pack(">HHHHH", 0x8183, 1, 0, 0, 0) + question, peer)
                continue
            body = b""
            if qtype == 1:
                for address in answers:
                    body += b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + bytes(int(o) for o in address.split("."))
                self.sock.sendto(qid + struct.pack(">HHHHH", 0x8180, 1, len(answers), 0, 0) + question + body, peer)
                continue
            for text in answers:
                raw = text.encode()
                rdata = b"".join(bytes([len(raw[i:i + 255])]) + raw[i:i + 255] for i in range(0, len(raw), 255))
                body += b"\xc0\x0c" + struct.pack(">HHIH", 16, 1, 60, len(rdata)) + rdata
            self.sock.sendto(qid + struct.pack(">HHHHH", 0x8180, 1, len(answers), 0, 0) + question + body, peer)
