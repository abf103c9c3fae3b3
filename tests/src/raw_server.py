"""Byte-level HTTP/1.x test server for observer's end-to-end tests: answers whatever request lines it is sent.

Usage: python3 raw_server.py ADDR PORT

Each connection is read as heads ending in an empty line (CRLF or bare LF), each followed by the body its
`Content-Length` gives (digits only; no other framing). Every head gets `200 OK` with a 2-byte body; a head whose
request line holds `crlf-first` gets its response after an empty line. When the client stops sending in the middle of
a body, it gets a `400` and the connection closes.
"""
import re
import socket
import sys
import threading

HEAD_END = re.compile(rb"\r?\n\r?\n")
LENGTH = re.compile(rb"(?im)^content-length:[ \t]*([0-9]+)[ \t]*\r?$")


def serve(conn):
    buf = b""
    with conn:
        while True:
            m = HEAD_END.search(buf)
            while m is None:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
                m = HEAD_END.search(buf)
            head, buf = buf[: m.end()], buf[m.end():]
            n = LENGTH.search(head)
            need = int(n.group(1)) if n else 0
            while len(buf) < need:
                data = conn.recv(65536)
                if not data:
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    return
                buf += data
            buf = buf[need:]
            first = head.lstrip(b"\r\n").split(b"\n", 1)[0]
            lead = b"\r\n" if b"crlf-first" in first else b""
            conn.sendall(lead + b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


def main():
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((sys.argv[1], int(sys.argv[2])))
    srv.listen(64)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
