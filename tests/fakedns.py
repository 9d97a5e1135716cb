"""A DNS responder on 127.0.0.1 for the tests: TXT answers from ``records``,
A answers from ``a_records``, NXDOMAIN for every other name, so no test
ever asks a real resolver."""

import socket
import struct
import threading
import time


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


def txt_answer(query, texts, flags=0x8180, qid=None, question=None):
    """The reply to ``query`` carrying TXT ``texts`` (question echoed)."""
    pos = 12
    while query[pos]:
        pos += 1 + query[pos]
    question = question if question is not None else query[12:pos + 5]
    body = b""
    for text in texts:
        raw = text.encode()
        rdata = bytes([len(raw)]) + raw
        body += b"\xc0\x0c" + struct.pack(">HHIH", 16, 1, 60, len(rdata)) + rdata
    return (qid if qid is not None else query[:2]) + struct.pack(">HHHHH", flags, 1, len(texts), 0, 0) + question + body


class HostileDNS:
    """A DNS server on 127.0.0.1 (UDP and TCP, one port) that misbehaves as
    ``mode`` says, to prove what the client believes:
    other-port (the answer comes from another port), wrong-question,
    not-a-reply (QR=0), truncated (cut mid-record), flood (wrong IDs every
    0.2 s, never the answer), tc (UDP answer truncated; the full one over TCP)."""

    def __init__(self, mode, texts=("v=DMARC1; p=reject",)):
        self.mode, self.texts = mode, list(texts)
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.port = self.udp.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.tcp.bind(("127.0.0.1", self.port))
        self.tcp.listen(4)
        self.tcp_queries = 0
        threading.Thread(target=self.serve_udp, daemon=True).start()
        threading.Thread(target=self.serve_tcp, daemon=True).start()

    def serve_udp(self):
        while True:
            try:
                query, peer = self.udp.recvfrom(4096)
            except OSError:
                return
            good = txt_answer(query, self.texts)
            if self.mode == "other-port":
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
                    other.sendto(good, peer)
            elif self.mode == "wrong-question":
                self.udp.sendto(txt_answer(query, self.texts, question=b"\x04evil\x07example\x00\x00\x10\x00\x01"),
                                peer)
            elif self.mode == "not-a-reply":
                self.udp.sendto(txt_answer(query, self.texts, flags=0x0100), peer)
            elif self.mode == "truncated":
                self.udp.sendto(good[:len(good) - 12], peer)
            elif self.mode == "flood":
                for _ in range(25):
                    wrong = bytes([query[0] ^ 0xFF, query[1]])
                    try:
                        self.udp.sendto(txt_answer(query, self.texts, qid=wrong), peer)
                    except OSError:
                        break
                    time.sleep(0.2)
            elif self.mode == "tc":
                self.udp.sendto(txt_answer(query, [], flags=0x8380), peer)

    def serve_tcp(self):
        while True:
            try:
                conn, _ = self.tcp.accept()
            except OSError:
                return
            with conn:
                size = struct.unpack(">H", conn.recv(2))[0]
                query = b""
                while len(query) < size:
                    query += conn.recv(size - len(query))
                self.tcp_queries += 1
                answer = txt_answer(query, self.texts)
                conn.sendall(struct.pack(">H", len(answer)) + answer)

    def close(self):
        self.udp.close()
        self.tcp.close()
