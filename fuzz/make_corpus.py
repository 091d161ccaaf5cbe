#!/usr/bin/python3
"""Writes the seed corpus of the fuzz targets: fuzz/corpus/frame/ and
fuzz/corpus/dispatch/.

Each seed is one byte stream a peer could send (docs/protocol.md): valid
requests for the demo commands and the hostile test types, pipelined
frames, partial frames, and every kind of bad header. Bodies are encoded
here by hand (stdlib only), so the script runs anywhere. The output is
deterministic and committed; run it again after changing it:

    fuzz/make_corpus.py            (writes next to this script)
    fuzz/make_corpus.py OUT_DIR    (writes OUT_DIR/frame, OUT_DIR/dispatch)

Files the script no longer makes are removed from the two directories.
"""

import os
import struct
import sys

MAGIC = 0x7A6E
F_RESPONSE, F_ERROR, F_ONEWAY = 0x01, 0x02, 0x04
MAX_BODY = 4 * 1024 * 1024
HEADER = struct.Struct(">HBBIII")  # magic, version, flags, length, cmd, seq

# The command table of fuzz/fuzz_dispatch.c.
CMD_TEST, CMD_ECHO, CMD_NODE, CMD_BOMB, CMD_MERGE, CMD_SHAPES = range(1, 7)


# ---- protobuf wire format, by hand -----------------------------------------

def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def f_varint(field, n):
    return varint(field << 3) + varint(n)


def f_bytes(field, data):
    return varint(field << 3 | 2) + varint(len(data)) + data


def test_req(text):
    return f_bytes(1, text.encode())


def echo_req(payload):
    return f_bytes(1, payload)


def node(depth, pad=b""):
    """zntest.Node nested `depth` levels (the top is level 1)."""
    body = f_bytes(2, pad) if pad else b""
    for _ in range(depth - 1):
        body = f_bytes(1, body)
    return body


def bomb(tiny, fat=0):
    fat_body = f_varint(1, 1) + f_varint(8, 8) + f_bytes(9, b"s")
    return f_bytes(1, b"") * tiny + f_bytes(2, fat_body) * fat


def merge(times, values):
    packed = b"".join(varint(v) for v in values)
    return f_bytes(1, f_bytes(1, packed)) * times


def shapes():
    point = f_varint(1, 3) + f_varint(2, 4)
    body = f_bytes(1, point) * 3 + f_bytes(2, b"ab") + f_bytes(2, b"")
    body += f_bytes(3, b"".join(varint(v) for v in (1, 300, 70000)))
    body += f_bytes(4, f_bytes(1, b"k") + f_bytes(2, point))
    return body


# ---- frames ----------------------------------------------------------------

def frame(cmd, seq, body=b"", flags=0, magic=MAGIC, version=1, length=None):
    if length is None:
        length = len(body)
    return HEADER.pack(magic, version, flags, length, cmd, seq) + body


def common_seeds():
    """Streams that both targets start from."""
    req1 = frame(CMD_TEST, 7, test_req("hi"))
    echo = frame(CMD_ECHO, 8, echo_req(bytes(range(256))))
    err = frame(9, 8, f_varint(1, 1) + f_bytes(2, b"unknown cmd 9"),
                F_RESPONSE | F_ERROR)
    seeds = {
        "empty": b"",
        "req-test": req1,
        "req-test-empty-body": frame(CMD_TEST, 9),
        "req-echo-256": echo,
        "req-echo-oneway": frame(CMD_ECHO, 0, echo_req(b"\x01\x02\x03"),
                                 F_ONEWAY),
        "rsp-test": frame(CMD_TEST, 7, f_bytes(1, b"hello, i'm server"),
                          F_RESPONSE),
        "rsp-error": err,
        "req-max-cmd-seq": frame(0xFFFFFFFF, 0xFFFFFFFF, test_req("x")),
        "pipeline-3": req1 + echo + frame(CMD_TEST, 10, test_req("again")),
        "pipeline-mixed-flags": (req1 + frame(CMD_ECHO, 1, b"", F_ONEWAY) +
                                 err + frame(CMD_TEST, 2)),
        "partial-header-1": req1[:1],
        "partial-header-8": req1[:8],
        "partial-header-15": req1[:15],
        "partial-body": echo[:40],
        "frame-then-partial": req1 + echo[:20],
        "bad-magic-0": b"\x00" + req1[1:],
        "bad-magic-1": b"z\x00" + req1[2:],
        "bad-version": frame(CMD_TEST, 1, version=2),
        "bad-flags": frame(CMD_TEST, 1, flags=0x08),
        "bad-flags-all": frame(CMD_TEST, 1, flags=0xFF),
        "too-long": frame(CMD_ECHO, 1, length=MAX_BODY + 1),
        "too-long-max": frame(CMD_ECHO, 1, length=0xFFFFFFFF),
        "at-limit-header-only": frame(CMD_ECHO, 1, length=MAX_BODY),
        "frame-then-bad-magic": req1 + b"GET / HTTP/1.1\r\n\r\n",
        "http-get": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        "tls-hello": bytes.fromhex("160301002e0100002a0303") + bytes(32),
    }
    return seeds


def dispatch_seeds():
    """Streams for the dispatcher: bodies for every registered type, bad
    bodies, and the hostile shapes (small versions; the fuzzer grows
    them)."""
    seeds = {
        "unknown-cmd": frame(99, 3, test_req("?")),
        "unknown-cmd-oneway": frame(99, 3, test_req("?"), F_ONEWAY),
        "bad-body-truncated": frame(CMD_TEST, 4, b"\x0a\x05ab"),
        "bad-body-varint": frame(CMD_TEST, 5, b"\x08" + b"\xff" * 11),
        "bad-body-field0": frame(CMD_ECHO, 6, b"\x00\x01"),
        "bad-body-group": frame(CMD_ECHO, 7, b"\x0b\x0c"),
        "bad-body-wiretype": frame(CMD_ECHO, 8, b"\x0e\x00"),
        "bad-body-utf8": frame(CMD_TEST, 9, f_bytes(1, b"\xff\xfe")),
        "bad-body-then-good": (frame(CMD_TEST, 1, b"\x0a") +
                               frame(CMD_TEST, 2, test_req("ok"))),
        "node-3": frame(CMD_NODE, 10, node(3, b"pad")),
        "node-64": frame(CMD_NODE, 11, node(64)),
        "node-65": frame(CMD_NODE, 12, node(65)),
        "node-200": frame(CMD_NODE, 13, node(200)),
        "bomb-tiny-500": frame(CMD_BOMB, 14, bomb(500)),
        "bomb-fat-100": frame(CMD_BOMB, 15, bomb(0, 100)),
        "bomb-mixed": frame(CMD_BOMB, 16, bomb(50, 50)),
        "merge-200": frame(CMD_MERGE, 17, merge(200, range(20))),
        "merge-oneway": frame(CMD_MERGE, 18, merge(2, [1]), F_ONEWAY),
        "shapes": frame(CMD_SHAPES, 19, shapes()),
        "shapes-twice": (frame(CMD_SHAPES, 20, shapes()) +
                         frame(CMD_SHAPES, 21, b"")),
        "deferred-then-close": (frame(CMD_SHAPES, 22, shapes()) +
                                frame(CMD_TEST, 23, flags=0x10)),
        "all-commands": b"".join(
            frame(cmd, 100 + cmd, body) for cmd, body in (
                (CMD_TEST, test_req("a")), (CMD_ECHO, echo_req(b"b")),
                (CMD_NODE, node(2)), (CMD_BOMB, bomb(2)),
                (CMD_MERGE, merge(1, [5])), (CMD_SHAPES, shapes()))),
        "pipeline-100": b"".join(
            frame(CMD_TEST if i % 2 else CMD_ECHO, i,
                  test_req("n") if i % 2 else echo_req(bytes([i])))
            for i in range(100)),
    }
    return seeds


def write_dir(path, seeds):
    os.makedirs(path, exist_ok=True)
    for name in os.listdir(path):
        if not name.startswith(".") and name not in seeds:
            os.remove(os.path.join(path, name))
    total = 0
    for name, data in sorted(seeds.items()):
        with open(os.path.join(path, name), "wb") as f:
            f.write(data)
        total += len(data)
    print("%s: %d files, %d bytes" % (path, len(seeds), total))


def main():
    out = (sys.argv[1] if len(sys.argv) > 1 else
           os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus"))
    common = common_seeds()
    write_dir(os.path.join(out, "frame"), common)
    write_dir(os.path.join(out, "dispatch"), {**common, **dispatch_seeds()})


if __name__ == "__main__":
    main()
