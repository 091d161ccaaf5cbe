#!/usr/bin/python3
"""Interoperability test: protocol v1 spoken to znet's demo commands by an
independent implementation.

The frames are built by hand with struct (docs/protocol.md), the bodies by
Google's protobuf runtime (Debian python3-protobuf) from classes that
protoc --python_out generated at build time. Every reply is checked byte
for byte: the whole frame the server sent must equal the header we expect
followed by the bytes Google's runtime serializes for the expected message.

    test_interop.py --gen DIR SERVER [SERVER FLAGS...]

DIR holds demo_pb2.py and znet_pb2.py. The script starts SERVER on a free
port of 127.0.0.1 with the extra flags (for example --io-threads 2
--workers 4), runs every case on fresh connections, then stops the server
with SIGTERM and requires exit status 0 (a sanitizer report makes it
non-zero). Prints one line per case and "N passed, M failed"; exits 0 only
if every case passed. Every socket operation has a time-out and the whole
run is bounded by an alarm.
"""

import argparse
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

MAGIC = 0x7A6E
VERSION = 1
F_RESPONSE = 0x01
F_ERROR = 0x02
F_ONEWAY = 0x04
HEADER = struct.Struct(">HBBIII")  # magic, version, flags, length, cmd, seq
MAX_BODY = 4 * 1024 * 1024

ERR_UNKNOWN_CMD = 1
ERR_BAD_REQUEST = 2

IO_TIMEOUT = 10.0      # every socket operation
START_TIMEOUT = 20.0   # until the server listens (slow under sanitizers)
STOP_TIMEOUT = 15.0    # from SIGTERM to exit (the server drains up to 5 s)
RUN_BUDGET = 55        # the whole script, in seconds

HELLO = "hello, i'm server"

# Filled in by load_messages(): the generated modules.
demo_pb2 = None
znet_pb2 = None


class CaseFailed(Exception):
    """A check of a case did not hold."""


class RunTimeout(BaseException):
    """The whole run passed its budget (raised by SIGALRM)."""


def load_messages(gen_dir):
    global demo_pb2, znet_pb2
    sys.path.insert(0, gen_dir)
    import demo_pb2 as demo  # noqa: E402 (generated at build time)
    import znet_pb2 as znet  # noqa: E402
    demo_pb2, znet_pb2 = demo, znet


# ---- frames ---------------------------------------------------------------

def frame(cmd, seq, body=b"", flags=0, magic=MAGIC, version=VERSION,
          length=None):
    """One frame; magic, version and length may be forged for bad input."""
    if length is None:
        length = len(body)
    return HEADER.pack(magic, version, flags, length, cmd, seq) + body


def request(cmd, seq, msg, flags=0):
    return frame(cmd, seq, msg.SerializeToString(), flags)


def response(cmd, seq, msg):
    """The exact bytes of the response znet must send for msg."""
    return frame(cmd, seq, msg.SerializeToString(), F_RESPONSE)


def error_response(cmd, seq, code, message):
    err = znet_pb2.Error(code=code, message=message)
    return frame(cmd, seq, err.SerializeToString(), F_RESPONSE | F_ERROR)


def test_req(text="hi"):
    return demo_pb2.TestReq(msg=text)


def test_rsp():
    return demo_pb2.TestRsp(res=HELLO)


def echo_req(payload):
    return demo_pb2.EchoReq(payload=payload)


def echo_rsp(payload):
    return demo_pb2.EchoRsp(payload=payload)


def pattern(n, seed):
    """n bytes that differ with the seed, so that mixed-up replies show."""
    block = bytes((seed * 31 + i * 7) & 0xFF for i in range(256))
    return (block * (n // 256 + 1))[:n]


# ---- sockets --------------------------------------------------------------

def connect(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT)
    s.settimeout(IO_TIMEOUT)
    return s


def recv_exact(sock, n):
    """n bytes, or CaseFailed on EOF, reset or time-out."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        try:
            k = sock.recv_into(view[got:], n - got)
        except socket.timeout:
            raise CaseFailed("time-out after %d of %d bytes" % (got, n))
        except ConnectionError as e:
            raise CaseFailed("connection error after %d of %d bytes: %s"
                             % (got, n, e))
        if k == 0:
            raise CaseFailed("EOF after %d of %d bytes" % (got, n))
        got += k
    return bytes(buf)


def read_frame(sock):
    """The next whole frame as (header fields, raw bytes)."""
    head = recv_exact(sock, HEADER.size)
    magic, version, flags, length, cmd, seq = HEADER.unpack(head)
    if magic != MAGIC or version != VERSION:
        raise CaseFailed("bad header from server: %s" % head.hex())
    if length > MAX_BODY + 64:
        raise CaseFailed("server sent length %d" % length)
    body = recv_exact(sock, length)
    return (flags, cmd, seq, body), head + body


def describe(raw):
    flags, length, cmd, seq = HEADER.unpack(raw[:16])[2:]
    return ("flags 0x%02x length %d cmd %d seq %d body %s%s"
            % (flags, length, cmd, seq, raw[16:48].hex(),
               "..." if len(raw) > 48 else ""))


def expect_frame(sock, want, what):
    _, got = read_frame(sock)
    if got != want:
        raise CaseFailed("%s: got [%s], want [%s]"
                         % (what, describe(got), describe(want)))


def expect_error(sock, cmd, seq, code):
    """An error response with code; the text is the server's choice, so
    the expected bytes use the text received, re-serialized by Google."""
    (flags, rcmd, rseq, body), raw = read_frame(sock)
    err = znet_pb2.Error()
    err.ParseFromString(body)
    if err.code != code:
        raise CaseFailed("error code %d, want %d (%r)"
                         % (err.code, code, err.message))
    want = error_response(cmd, seq, code, err.message)
    if raw != want:
        raise CaseFailed("error response: got [%s], want [%s]"
                         % (describe(raw), describe(want)))


def expect_closed(sock):
    """The server closes: EOF or a reset, with no byte before it."""
    try:
        data = sock.recv(1)
    except socket.timeout:
        raise CaseFailed("connection still open after %.0f s" % IO_TIMEOUT)
    except ConnectionError:
        return
    if data:
        raise CaseFailed("got data %r, want the connection closed" % data)


def exchange(sock, data, nframes):
    """Writes data from a thread while reading nframes replies here, so
    that neither side blocks on a full socket buffer. Returns the replies
    by seq (each seq must appear once)."""
    errors = []

    def send():
        try:
            sock.sendall(data)
        except OSError as e:
            errors.append(e)

    t = threading.Thread(target=send, daemon=True)
    t.start()
    replies = {}
    try:
        for _ in range(nframes):
            (_, _, seq, _), raw = read_frame(sock)
            if seq in replies:
                raise CaseFailed("two replies for seq %d" % seq)
            replies[seq] = raw
    finally:
        t.join(IO_TIMEOUT)
    if errors:
        raise CaseFailed("send failed: %s" % errors[0])
    return replies


def check_replies(replies, expected):
    for seq, want in expected.items():
        got = replies.get(seq)
        if got is None:
            raise CaseFailed("no reply for seq %d" % seq)
        if got != want:
            raise CaseFailed("seq %d: got [%s], want [%s]"
                             % (seq, describe(got), describe(want)))


# ---- cases ----------------------------------------------------------------

def case_doc_example(port):
    """The request and response bytes of docs/protocol.md, literally."""
    req = bytes.fromhex("7a6e0100000000040000000100000007" "0a026869")
    if request(1, 7, test_req("hi")) != req:
        raise CaseFailed("our encoder disagrees with docs/protocol.md")
    want = bytes.fromhex("7a6e0101000000130000000100000007"
                         "0a1168656c6c6f2c2069276d20736572766572")
    with connect(port) as s:
        s.sendall(req)
        expect_frame(s, want, "cmd 1 response")


def case_test_req(port):
    """cmd 1 TestReq -> TestRsp, with and without a body."""
    with connect(port) as s:
        s.sendall(request(1, 7, test_req("hello")))
        expect_frame(s, response(1, 7, test_rsp()), "cmd 1 seq 7")
        s.sendall(frame(1, 0xFFFFFFFF))  # TestReq {}: the header alone
        expect_frame(s, response(1, 0xFFFFFFFF, test_rsp()), "empty body")


def make_echo_case(size):
    def case(port):
        payload = pattern(size, size & 0xFF)
        req = request(2, 1000 + size, echo_req(payload))
        if len(req) - HEADER.size > MAX_BODY:
            raise CaseFailed("test bug: body over the limit")
        with connect(port) as s:
            replies = exchange(s, req, 1)
            check_replies(replies,
                          {1000 + size: response(2, 1000 + size,
                                                 echo_rsp(payload))})
    return case


def case_pipeline(port):
    """1000 requests of both commands in one write, matched by seq (a
    server with workers may answer out of order)."""
    data = bytearray()
    expected = {}
    for seq in range(1, 1001):
        if seq % 3 == 0:
            data += request(1, seq, test_req("n%d" % seq))
            expected[seq] = response(1, seq, test_rsp())
        else:
            payload = pattern(seq % 200, seq)
            data += request(2, seq, echo_req(payload))
            expected[seq] = response(2, seq, echo_rsp(payload))
    with connect(port) as s:
        replies = exchange(s, bytes(data), len(expected))
        check_replies(replies, expected)


def case_unknown_cmd(port):
    """UNKNOWN_CMD, and the connection stays open."""
    with connect(port) as s:
        s.sendall(request(9, 8, test_req()))
        expect_error(s, 9, 8, ERR_UNKNOWN_CMD)
        s.sendall(request(1, 9, test_req()))
        expect_frame(s, response(1, 9, test_rsp()), "request after error")


def case_bad_body(port):
    """Undecodable bodies get BAD_REQUEST; the connection stays open."""
    bodies = [
        b"\x0a\x05ab",         # string field longer than the body
        b"\x0a",               # tag without its length
        b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",  # varint too long
        b"\x00\x01",           # field number 0
        b"\x0b\x0c",           # a group (wire types 3, 4)
    ]
    with connect(port) as s:
        for i, body in enumerate(bodies):
            s.sendall(frame(1, 100 + i, body))
            expect_error(s, 1, 100 + i, ERR_BAD_REQUEST)
        s.sendall(frame(2, 200, b"\x0a\x10short"))
        expect_error(s, 2, 200, ERR_BAD_REQUEST)
        s.sendall(request(2, 201, echo_req(b"still here")))
        expect_frame(s, response(2, 201, echo_rsp(b"still here")),
                     "request after BAD_REQUEST")


def case_oneway(port):
    """ONEWAY requests get nothing back, not even an error: the next frame
    is the answer to the normal request that follows them."""
    data = (request(2, 1, echo_req(b"quiet"), F_ONEWAY) +
            request(1, 2, test_req(), F_ONEWAY) +
            request(9, 3, test_req(), F_ONEWAY) +      # unknown cmd
            frame(1, 4, b"\x0a\x05ab", F_ONEWAY) +     # bad body
            request(1, 5, test_req()))
    with connect(port) as s:
        s.sendall(data)
        expect_frame(s, response(1, 5, test_rsp()), "reply after ONEWAY")


def case_stray_response(port):
    """A RESPONSE frame sent to a server is dropped; nothing closes."""
    with connect(port) as s:
        s.sendall(frame(1, 1, test_rsp().SerializeToString(), F_RESPONSE) +
                  request(1, 2, test_req()))
        expect_frame(s, response(1, 2, test_rsp()), "reply after stray")


def make_closed_case(bad):
    def case(port):
        with connect(port) as s:
            s.sendall(bad)
            expect_closed(s)
    return case


def case_too_long(port):
    """Length over the limit: closed right after the header, before any
    of the body is sent."""
    with connect(port) as s:
        s.sendall(frame(2, 1, length=MAX_BODY + 1))
        expect_closed(s)


def case_half_close(port):
    """Requests sent before shutdown(SHUT_WR) are all answered, then the
    server closes (a clean EOF)."""
    data = bytearray()
    expected = {}
    for seq in range(1, 51):
        payload = pattern(seq * 100, seq)
        data += request(2, seq, echo_req(payload))
        expected[seq] = response(2, seq, echo_rsp(payload))
    with connect(port) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        replies = {}
        for _ in expected:
            (_, _, seq, _), raw = read_frame(s)
            replies[seq] = raw
        check_replies(replies, expected)
        try:
            rest = s.recv(1)
        except ConnectionError as e:
            raise CaseFailed("reset instead of EOF: %s" % e)
        if rest:
            raise CaseFailed("data after the replies: %r" % rest)


def cases():
    limit_payload = MAX_BODY - 1 - 4  # tag, 4-byte length: body = 4 MiB
    echo_sizes = [0, 1, 1000, 100000, limit_payload]
    out = [("docs/protocol.md example bytes", case_doc_example),
           ("cmd 1 TestReq -> TestRsp", case_test_req)]
    out += [("cmd 2 echo %d bytes" % n, make_echo_case(n))
            for n in echo_sizes]
    out += [
        ("pipeline 1000 requests in one write", case_pipeline),
        ("unknown cmd -> UNKNOWN_CMD, stays open", case_unknown_cmd),
        ("undecodable body -> BAD_REQUEST, stays open", case_bad_body),
        ("ONEWAY -> no response", case_oneway),
        ("stray RESPONSE frame dropped", case_stray_response),
        ("wrong magic -> closed",
         make_closed_case(frame(1, 1, magic=0x7A6F))),
        ("bad version -> closed", make_closed_case(frame(1, 1, version=2))),
        ("reserved flag -> closed", make_closed_case(frame(1, 1, flags=8))),
        ("length over 4 MiB -> closed before the body", case_too_long),
        ("half-close: all answered, then EOF", case_half_close),
    ]
    return out


# ---- the server -----------------------------------------------------------

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(proc, port):
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def start_server(argv):
    """Starts the server on a free port; retries if another process took
    the port between our probe and the server's bind."""
    for _ in range(3):
        port = free_port()
        proc = subprocess.Popen(argv + ["--host", "127.0.0.1",
                                        "--port", str(port)])
        if wait_listening(proc, port):
            return proc, port
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    raise SystemExit("interop: %s did not start listening" % argv[0])


def stop_server(proc):
    """SIGTERM; the graceful shutdown must end with status 0."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None


def run_cases(port):
    passed = failed = 0
    for name, fn in cases():
        t0 = time.monotonic()
        try:
            fn(port)
        except (CaseFailed, OSError) as e:
            failed += 1
            print("FAIL %s: %s" % (name, e), flush=True)
            continue
        passed += 1
        print("ok   %s (%.0f ms)" % (name, (time.monotonic() - t0) * 1000),
              flush=True)
    return passed, failed


def on_alarm(signum, frm):
    raise RunTimeout()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gen", required=True,
                    help="directory of demo_pb2.py and znet_pb2.py")
    ap.add_argument("server", help="the server program (znet-test-server; "
                    "examples/rpc_server answers the same)")
    ap.add_argument("server_args", nargs=argparse.REMAINDER,
                    help="extra server flags")
    args = ap.parse_args()
    load_messages(args.gen)

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(RUN_BUDGET)
    proc = None
    try:
        proc, port = start_server([os.path.abspath(args.server)] +
                                  args.server_args)
        passed, failed = run_cases(port)
        status = stop_server(proc)
        signal.alarm(0)
    except RunTimeout:
        if proc is not None:
            proc.kill()
            proc.wait()
        print("FAIL the run passed its %d s budget" % RUN_BUDGET)
        return 1
    if status == 0:
        passed += 1
        print("ok   server exits 0 after SIGTERM", flush=True)
    else:
        failed += 1
        print("FAIL server exit status %s after SIGTERM" % status, flush=True)
    print("%d passed, %d failed" % (passed, failed), flush=True)
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
