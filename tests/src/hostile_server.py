"""A byte-level HTTP/1.x server that takes whatever it is sent, for observer's hostile-traffic tests.

Usage: python3 hostile_server.py ADDR PORT BANNER_PORT

On PORT each connection is read as heads ending in an empty line (CRLF or bare LF; at most 2 MiB, else `431` and
close), each followed by the body its `Content-Length` gives (digits only). Every head gets `200 OK` with a 2-byte
body, except:
  * a connection whose first byte cannot start an HTTP/1 request (TLS, HTTP/2 preface `PRI`, binary) is closed;
  * a declared body that never arrives gets `400` and the connection closes; a `Transfer-Encoding` head gets its
    answer and the connection closes (the body is not read);
  * `/noanswer` closes the connection without answering;
  * `Expect: 100-continue` gets `100 Continue` before the body is read;
  * `/upgrade` gets `101 Switching Protocols` and from then on every byte is echoed back until the client closes.
On BANNER_PORT every connection gets an HTTP response before sending anything, then is closed.
"""
import re
import socket
import sys
import threading

HEAD_END = re.compile(rb"\r?\n\r?\n")
LENGTH = re.compile(rb"(?im)^content-length:[ \t]*([0-9]+)[ \t]*\r?$")
MAX_HEAD = 2 << 20
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def serve(conn):
    buf = b""
    with conn:
        while True:
            m = HEAD_END.search(buf)
            while m is None:
                if len(buf) > MAX_HEAD:
                    conn.sendall(b"HTTP/1.1 431 Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    return
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
                first = buf.lstrip(b"\r\n")[:4]
                if first and (not first[:1].isalpha() or first == b"PRI "):
                    return
                m = HEAD_END.search(buf)
            head, buf = buf[: m.end()], buf[m.end():]
            line = head.lstrip(b"\r\n").split(b"\n", 1)[0]
            if b" /noanswer" in line:
                return
            if b" /upgrade" in line:
                conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
                if buf:
                    conn.sendall(buf)
                while True:
                    data = conn.recv(65536)
                    if not data:
                        return
                    conn.sendall(data)
            if re.search(rb"(?im)^transfer-encoding:", head):
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
                return
            if re.search(rb"(?im)^expect:[ \t]*100-continue", head):
                conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            n = LENGTH.search(head)
            need = int(n.group(1)) if n else 0
            while len(buf) < need:
                data = conn.recv(65536)
                if not data:
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    return
                buf += data
            buf = buf[need:]
            conn.sendall(OK)


def banner(conn):
    with conn:
        conn.sendall(OK)


def listen(addr, port, handler):
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((addr, port))
    srv.listen(256)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=handler, args=(conn,), daemon=True).start()


def main():
    addr = sys.argv[1]
    threading.Thread(target=listen, args=(addr, int(sys.argv[3]), banner), daemon=True).start()
    listen(addr, int(sys.argv[2]), serve)


if __name__ == "__main__":
    main()
