/*
 * test_frame.c: the protocol v1 frame codec. Every row of DESIGN.md's
 * bad-input table that the codec sees, each stream fed whole, split at
 * every byte boundary, byte by byte and in random chunks, with the same
 * frames and the same error, reported at the earliest byte.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "demo.pb-c.h"
#include "znet/frame.h"
#include "znet/znet.pb-c.h"

#define SMALL_MAX 64u       /* the body limit used by the stream tests */
#define MAX_FRAMES 16
#define STREAM_CAP 1024

/* What a receiver saw after being fed a stream in some chunking. */
typedef struct {
    size_t nframes;
    zn_frame_header_t hdr[MAX_FRAMES];
    size_t at[MAX_FRAMES];  /* stream offset of each frame */
    int err;                /* 0, or the error that stopped the stream */
    zn_frame_reason_t reason;
    size_t err_fed;         /* bytes fed when the error was reported */
    size_t pending;         /* bytes left unconsumed at the end */
} feed_result_t;

/* A stream under construction. */
typedef struct {
    uint8_t b[STREAM_CAP];
    size_t len;
} stream_t;


static void
put_frame(stream_t *s, uint8_t flags, uint32_t cmd, uint32_t seq,
          const void *body, uint32_t len)
{
    zn_frame_header_t h = {.length = len, .cmd = cmd, .seq = seq,
                           .flags = flags};

    assert_true(s->len + ZN_FRAME_HEADER_SIZE + len <= STREAM_CAP);
    assert_int_equal(zn_frame_encode_header(s->b + s->len, &h), 0);
    s->len += ZN_FRAME_HEADER_SIZE;
    if (len > 0)
        memcpy(s->b + s->len, body, len);
    s->len += len;
}


/* Appends the valid frames of every kind that the stream tests replay. */
static void
put_valid_frames(stream_t *s)
{
    static const uint8_t hi[] = {0x0a, 0x02, 'h', 'i'};
    uint8_t full[SMALL_MAX];

    memset(full, 0xA5, sizeof(full));
    put_frame(s, 0, 1, 7, hi, sizeof(hi));
    put_frame(s, ZN_FRAME_F_RESPONSE, 1, 7, hi, sizeof(hi));
    put_frame(s, ZN_FRAME_F_RESPONSE | ZN_FRAME_F_ERROR, 9, 8, "\x08\x01", 2);
    put_frame(s, ZN_FRAME_F_ONEWAY, 2, 0, NULL, 0);
    put_frame(s, 0, UINT32_MAX, UINT32_MAX, full, SMALL_MAX);
    put_frame(s, ZN_FRAME_F_MASK, 0, 0, "x", 1);
}


/*
 * Plays a receiver: appends each chunk to a buffer, then takes every
 * complete frame with zn_frame_next(), as a dispatcher does after a read.
 * chunks[] gives the chunk sizes; they add up to the stream's length.
 */
static void
feed(const stream_t *s, const size_t *chunks, size_t nchunks,
     feed_result_t *r)
{
    uint8_t *acc = malloc(s->len + 1);
    size_t fed = 0, used = 0, i;
    zn_frame_t f;
    int rc;

    assert_non_null(acc);
    memset(r, 0, sizeof(*r));
    for (i = 0; i < nchunks && r->err == 0; i++) {
        memcpy(acc + fed, s->b + fed, chunks[i]);
        fed += chunks[i];
        while ((rc = zn_frame_next(acc + used, fed - used, SMALL_MAX, &f,
                                   &r->reason)) == 0) {
            assert_true(r->nframes < MAX_FRAMES);
            assert_ptr_equal(f.body, acc + used + ZN_FRAME_HEADER_SIZE);
            assert_int_equal(f.size, ZN_FRAME_HEADER_SIZE + f.hdr.length);
            assert_memory_equal(f.body, s->b + used + ZN_FRAME_HEADER_SIZE,
                                f.hdr.length);
            r->hdr[r->nframes] = f.hdr;
            r->at[r->nframes++] = used;
            used += f.size;
        }
        if (rc != ZN_EAGAIN) {
            r->err = rc;
            r->err_fed = fed;
        }
    }
    r->pending = fed - used;
    free(acc);
}


static void
feed_whole(const stream_t *s, feed_result_t *r)
{
    size_t n = s->len;

    feed(s, &n, 1, r);
}


static void
assert_same_result(const feed_result_t *a, const feed_result_t *b)
{
    size_t i;

    assert_int_equal(a->nframes, b->nframes);
    for (i = 0; i < a->nframes; i++) {
        assert_int_equal(a->at[i], b->at[i]);
        assert_int_equal(a->hdr[i].length, b->hdr[i].length);
        assert_int_equal(a->hdr[i].cmd, b->hdr[i].cmd);
        assert_int_equal(a->hdr[i].seq, b->hdr[i].seq);
        assert_int_equal(a->hdr[i].flags, b->hdr[i].flags);
    }
    assert_int_equal(a->err, b->err);
    assert_int_equal(a->reason, b->reason);
    if (a->err == 0)
        assert_int_equal(a->pending, b->pending);
}


/*
 * Feeds s split at every byte boundary, byte by byte and in random chunks,
 * and checks each gives the result of feeding it whole. If the stream is
 * bad at byte err_pos (1-based: the error is decidable once err_pos bytes
 * are in), the error must come with the first chunk that reaches it.
 */
static void
check_all_splits(const stream_t *s, size_t err_pos)
{
    size_t chunks[STREAM_CAP], k, i, left;
    feed_result_t whole, r;

    feed_whole(s, &whole);
    for (k = 0; k <= s->len; k++) {
        chunks[0] = k;
        chunks[1] = s->len - k;
        feed(s, chunks, 2, &r);
        assert_same_result(&whole, &r);
        if (whole.err != 0)
            assert_int_equal(r.err_fed, k >= err_pos ? k : s->len);
    }
    for (i = 0; i < s->len; i++)
        chunks[i] = 1;
    feed(s, chunks, s->len, &r);
    assert_same_result(&whole, &r);
    if (whole.err != 0)
        assert_int_equal(r.err_fed, err_pos);
    srand(12345);
    for (k = 0; k < 500; k++) {
        for (i = 0, left = s->len; left > 0; i++) {
            chunks[i] = 1 + (size_t)rand() % (left < 40 ? left : 40);
            left -= chunks[i];
        }
        feed(s, chunks, i, &r);
        assert_same_result(&whole, &r);
    }
}


static void
test_encode_decode_round_trip(void **state)
{
    static const zn_frame_header_t cases[] = {
        {0, 0, 0, 0},
        {4, 1, 7, 0},
        {19, 1, 7, ZN_FRAME_F_RESPONSE},
        {5, 9, 3, ZN_FRAME_F_RESPONSE | ZN_FRAME_F_ERROR},
        {0, 2, 0, ZN_FRAME_F_ONEWAY},
        {ZN_FRAME_MAX_BODY_DEFAULT, UINT32_MAX, UINT32_MAX, ZN_FRAME_F_MASK},
        {0x01020304, 0x05060708, 0x090A0B0C, 0},
    };
    uint8_t b[ZN_FRAME_HEADER_SIZE];
    zn_frame_header_t h;
    zn_frame_reason_t why;
    size_t i;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        assert_int_equal(zn_frame_encode_header(b, &cases[i]), 0);
        assert_int_equal(zn_frame_decode_header(b, sizeof(b), UINT32_MAX,
                                                &h, &why), 0);
        assert_int_equal(why, ZN_FRAME_OK);
        assert_int_equal(h.length, cases[i].length);
        assert_int_equal(h.cmd, cases[i].cmd);
        assert_int_equal(h.seq, cases[i].seq);
        assert_int_equal(h.flags, cases[i].flags);
    }
}


/* The bytes of docs/protocol.md's first example: TestReq, cmd 1, seq 7. */
static void
test_encode_is_big_endian(void **state)
{
    static const uint8_t want[] = {0x7a, 0x6e, 0x01, 0x00, 0x00, 0x00,
                                   0x00, 0x04, 0x00, 0x00, 0x00, 0x01,
                                   0x00, 0x00, 0x00, 0x07};
    zn_frame_header_t h = {.length = 4, .cmd = 1, .seq = 7};
    uint8_t b[ZN_FRAME_HEADER_SIZE];

    assert_int_equal(zn_frame_encode_header(b, &h), 0);
    assert_memory_equal(b, want, sizeof(want));
}


static void
test_encode_refuses_reserved_flags(void **state)
{
    zn_frame_header_t h = {.flags = 0x08};
    uint8_t b[ZN_FRAME_HEADER_SIZE] = {0};
    uint8_t zero[ZN_FRAME_HEADER_SIZE] = {0};

    assert_int_equal(zn_frame_encode_header(b, &h), ZN_EINVAL);
    assert_memory_equal(b, zero, sizeof(b));
    h.flags = 0x80;
    assert_int_equal(zn_frame_encode_header(b, &h), ZN_EINVAL);
}


/* A valid header, cut anywhere, is never an error: only "need more". */
static void
test_incomplete_header_needs_more(void **state)
{
    zn_frame_header_t h = {.length = SMALL_MAX, .cmd = 1, .seq = 2,
                           .flags = ZN_FRAME_F_MASK};
    zn_frame_header_t out = {0};
    uint8_t b[ZN_FRAME_HEADER_SIZE];
    zn_frame_reason_t why = ZN_FRAME_TOO_LONG;
    size_t n;

    assert_int_equal(zn_frame_encode_header(b, &h), 0);
    assert_int_equal(zn_frame_decode_header(NULL, 0, SMALL_MAX, &out, &why),
                     ZN_EAGAIN);
    for (n = 0; n < ZN_FRAME_HEADER_SIZE; n++) {
        assert_int_equal(zn_frame_decode_header(b, n, SMALL_MAX, &out, &why),
                         ZN_EAGAIN);
        assert_int_equal(why, ZN_FRAME_OK);
        assert_int_equal(out.cmd, 0);  /* untouched until complete */
    }
    assert_int_equal(zn_frame_decode_header(b, n, SMALL_MAX, &out, NULL), 0);
}


/* One row of the bad-input table: how to spoil a header, and what for. */
typedef struct {
    const char *name;
    size_t off;      /* first byte to overwrite */
    uint8_t val[4];  /* new bytes */
    size_t nval;
    int err;
    zn_frame_reason_t reason;
    size_t pos;      /* bytes needed to see the error (1-based) */
} bad_row_t;

static const bad_row_t bad_rows[] = {
    {"magic byte 0", 0, {'Z'}, 1, ZN_EPROTO, ZN_FRAME_BAD_MAGIC, 1},
    {"magic byte 1", 1, {'N'}, 1, ZN_EPROTO, ZN_FRAME_BAD_MAGIC, 2},
    {"magic swapped", 0, {0x6e, 0x7a}, 2, ZN_EPROTO, ZN_FRAME_BAD_MAGIC, 1},
    {"magic zero", 0, {0, 0}, 2, ZN_EPROTO, ZN_FRAME_BAD_MAGIC, 1},
    {"http", 0, {'G', 'E', 'T', ' '}, 4, ZN_EPROTO, ZN_FRAME_BAD_MAGIC, 1},
    {"version 0", 2, {0}, 1, ZN_EPROTO, ZN_FRAME_BAD_VERSION, 3},
    {"version 2", 2, {2}, 1, ZN_EPROTO, ZN_FRAME_BAD_VERSION, 3},
    {"version 255", 2, {255}, 1, ZN_EPROTO, ZN_FRAME_BAD_VERSION, 3},
    {"flag 0x08", 3, {0x08}, 1, ZN_EPROTO, ZN_FRAME_BAD_FLAGS, 4},
    {"flag 0x80", 3, {0x81}, 1, ZN_EPROTO, ZN_FRAME_BAD_FLAGS, 4},
    {"flags 0xff", 3, {0xff}, 1, ZN_EPROTO, ZN_FRAME_BAD_FLAGS, 4},
    {"length max+1", 4, {0, 0, 0, SMALL_MAX + 1}, 4, ZN_EMSGSIZE,
     ZN_FRAME_TOO_LONG, 8},
    {"length 2^24", 4, {1, 0, 0, 0}, 4, ZN_EMSGSIZE, ZN_FRAME_TOO_LONG, 8},
    {"length 2^32-1", 4, {0xff, 0xff, 0xff, 0xff}, 4, ZN_EMSGSIZE,
     ZN_FRAME_TOO_LONG, 8},
};


/* Appends a header spoiled as row says, then body bytes that must never
 * be needed to reach the verdict. */
static void
put_bad_frame(stream_t *s, const bad_row_t *row)
{
    uint8_t junk[SMALL_MAX];

    memset(junk, 0x7a, sizeof(junk));
    put_frame(s, ZN_FRAME_F_ONEWAY, 3, 4, junk, 8);
    memcpy(s->b + s->len - 8 - ZN_FRAME_HEADER_SIZE + row->off, row->val,
           row->nval);
}


static void
test_bad_header_rejected_at_earliest_byte(void **state)
{
    zn_frame_header_t h;
    zn_frame_reason_t why;
    stream_t s;
    size_t i, n;
    int rc;

    for (i = 0; i < sizeof(bad_rows) / sizeof(bad_rows[0]); i++) {
        s.len = 0;
        put_bad_frame(&s, &bad_rows[i]);
        for (n = 0; n <= s.len; n++) {
            rc = zn_frame_decode_header(s.b, n, SMALL_MAX, &h, &why);
            if (n < bad_rows[i].pos) {
                assert_int_equal(rc, ZN_EAGAIN);
                assert_int_equal(why, ZN_FRAME_OK);
            } else {
                assert_int_equal(rc, bad_rows[i].err);
                assert_int_equal(why, bad_rows[i].reason);
            }
        }
    }
}


static void
test_valid_stream_same_result_at_every_split(void **state)
{
    feed_result_t r;
    stream_t s = {.len = 0};

    put_valid_frames(&s);
    feed_whole(&s, &r);
    assert_int_equal(r.nframes, 6);
    assert_int_equal(r.err, 0);
    assert_int_equal(r.pending, 0);
    assert_int_equal(r.hdr[4].length, SMALL_MAX);  /* at the limit: OK */
    assert_int_equal(r.hdr[2].flags, ZN_FRAME_F_RESPONSE | ZN_FRAME_F_ERROR);
    assert_int_equal(r.hdr[3].flags, ZN_FRAME_F_ONEWAY);
    check_all_splits(&s, 0);
}


/* A stream that ends mid-frame is waiting, not wrong, at every split. */
static void
test_truncated_stream_waits(void **state)
{
    feed_result_t r;
    stream_t s = {.len = 0};

    put_valid_frames(&s);
    s.len -= 1;
    feed_whole(&s, &r);
    assert_int_equal(r.nframes, 5);
    assert_int_equal(r.err, 0);
    assert_int_equal(r.pending, ZN_FRAME_HEADER_SIZE);
    check_all_splits(&s, 0);
}


/*
 * Each bad row, after valid frames that must all be delivered, at every
 * split: the same error and reason, as soon as the offending byte is in.
 */
static void
test_bad_rows_same_result_at_every_split(void **state)
{
    feed_result_t r;
    stream_t s;
    size_t i, good_len;

    for (i = 0; i < sizeof(bad_rows) / sizeof(bad_rows[0]); i++) {
        s.len = 0;
        put_valid_frames(&s);
        good_len = s.len;
        put_bad_frame(&s, &bad_rows[i]);
        put_frame(&s, 0, 1, 1, NULL, 0);  /* never reached */
        feed_whole(&s, &r);
        assert_int_equal(r.nframes, 6);
        assert_int_equal(r.err, bad_rows[i].err);
        assert_int_equal(r.reason, bad_rows[i].reason);
        check_all_splits(&s, good_len + bad_rows[i].pos);
    }
}


static void
test_several_frames_in_one_buffer(void **state)
{
    stream_t s = {.len = 0};
    uint32_t seq;
    size_t off = 0;
    zn_frame_t f;
    char body[8];

    for (seq = 0; seq < 40; seq++) {
        memset(body, (int)seq, sizeof(body));
        put_frame(&s, 0, 2, seq, body, seq % 8);
    }
    for (seq = 0; off < s.len; seq++) {
        assert_int_equal(zn_frame_next(s.b + off, s.len - off, SMALL_MAX, &f,
                                       NULL), 0);
        assert_int_equal(f.hdr.seq, seq);
        assert_int_equal(f.hdr.length, seq % 8);
        assert_int_equal(f.size, ZN_FRAME_HEADER_SIZE + seq % 8);
        if (f.hdr.length > 0)
            assert_int_equal(f.body[0], (uint8_t)seq);
        off += f.size;
    }
    assert_int_equal(seq, 40);
    assert_int_equal(zn_frame_next(s.b + off, 0, SMALL_MAX, &f, NULL),
                     ZN_EAGAIN);
}


/* The default limit: 4 MiB exactly is a frame, one byte more is not. */
static void
test_default_limit_boundary(void **state)
{
    const uint32_t max = ZN_FRAME_MAX_BODY_DEFAULT;
    zn_frame_header_t h = {.length = max, .cmd = 2, .seq = 1};
    size_t total = ZN_FRAME_HEADER_SIZE + (size_t)max;
    uint8_t *b = calloc(1, total);
    zn_frame_reason_t why;
    zn_frame_t f;

    assert_non_null(b);
    assert_int_equal(zn_frame_encode_header(b, &h), 0);
    assert_int_equal(zn_frame_next(b, total - 1, max, &f, &why), ZN_EAGAIN);
    assert_int_equal(zn_frame_next(b, total, max, &f, &why), 0);
    assert_int_equal(f.size, total);
    assert_int_equal(zn_frame_total_size(&f.hdr), total);
    h.length = max + 1;
    assert_int_equal(zn_frame_encode_header(b, &h), 0);
    assert_int_equal(zn_frame_next(b, 8, max, &f, &why), ZN_EMSGSIZE);
    assert_int_equal(why, ZN_FRAME_TOO_LONG);
    h.length = UINT32_MAX;
    assert_int_equal(zn_frame_encode_header(b, &h), 0);
    assert_int_equal(zn_frame_total_size(&h), (uint64_t)UINT32_MAX + 16);
    assert_int_equal(zn_frame_next(b, total, UINT32_MAX, &f, &why),
                     ZN_EAGAIN);
    free(b);
}


/* Encodes a header and a message into b; returns the frame's size. */
static size_t
build_frame(uint8_t *b, uint8_t flags, uint32_t cmd, uint32_t seq,
            const ProtobufCMessage *m)
{
    zn_frame_header_t h = {.cmd = cmd, .seq = seq, .flags = flags};

    h.length = (uint32_t)protobuf_c_message_get_packed_size(m);
    assert_true(h.length <= 64);
    assert_int_equal(zn_frame_encode_header(b, &h), 0);
    protobuf_c_message_pack(m, b + ZN_FRAME_HEADER_SIZE);
    return ZN_FRAME_HEADER_SIZE + h.length;
}


/* The byte-level examples of docs/protocol.md, exactly. */
static void
test_doc_examples(void **state)
{
    static const uint8_t req[] = {
        0x7a, 0x6e, 0x01, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00,
        0x01, 0x00, 0x00, 0x00, 0x07, 0x0a, 0x02, 0x68, 0x69};
    static const uint8_t rsp[] = {
        0x7a, 0x6e, 0x01, 0x01, 0x00, 0x00, 0x00, 0x13, 0x00, 0x00, 0x00,
        0x01, 0x00, 0x00, 0x00, 0x07, 0x0a, 0x11, 'h', 'e', 'l', 'l', 'o',
        ',', ' ', 'i', '\'', 'm', ' ', 's', 'e', 'r', 'v', 'e', 'r'};
    static const uint8_t err[] = {
        0x7a, 0x6e, 0x01, 0x03, 0x00, 0x00, 0x00, 0x11, 0x00, 0x00, 0x00,
        0x09, 0x00, 0x00, 0x00, 0x08, 0x08, 0x01, 0x12, 0x0d, 'u', 'n', 'k',
        'n', 'o', 'w', 'n', ' ', 'c', 'm', 'd', ' ', '9'};
    static const uint8_t oneway[] = {
        0x7a, 0x6e, 0x01, 0x04, 0x00, 0x00, 0x00, 0x05, 0x00, 0x00, 0x00,
        0x02, 0x00, 0x00, 0x00, 0x00, 0x0a, 0x03, 0x01, 0x02, 0x03};
    static const uint8_t empty[] = {
        0x7a, 0x6e, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x01, 0x00, 0x00, 0x00, 0x09};
    static uint8_t payload[] = {1, 2, 3};
    Demo__TestReq treq = DEMO__TEST_REQ__INIT;
    Demo__TestRsp trsp = DEMO__TEST_RSP__INIT;
    Demo__EchoReq echo = DEMO__ECHO_REQ__INIT;
    Znet__Error e = ZNET__ERROR__INIT;
    uint8_t b[ZN_FRAME_HEADER_SIZE + 64];

    treq.msg = "hi";
    assert_int_equal(build_frame(b, 0, 1, 7, &treq.base), sizeof(req));
    assert_memory_equal(b, req, sizeof(req));
    trsp.res = "hello, i'm server";
    assert_int_equal(build_frame(b, ZN_FRAME_F_RESPONSE, 1, 7, &trsp.base),
                     sizeof(rsp));
    assert_memory_equal(b, rsp, sizeof(rsp));
    e.code = ZN_CODE_UNKNOWN_CMD;
    e.message = "unknown cmd 9";
    assert_int_equal(build_frame(b, ZN_FRAME_F_RESPONSE | ZN_FRAME_F_ERROR, 9,
                                 8, &e.base), sizeof(err));
    assert_memory_equal(b, err, sizeof(err));
    echo.payload.data = payload;
    echo.payload.len = sizeof(payload);
    assert_int_equal(build_frame(b, ZN_FRAME_F_ONEWAY, 2, 0, &echo.base),
                     sizeof(oneway));
    assert_memory_equal(b, oneway, sizeof(oneway));
    treq.msg = "";
    assert_int_equal(build_frame(b, 0, 1, 9, &treq.base), sizeof(empty));
    assert_memory_equal(b, empty, sizeof(empty));
}


static void
test_names(void **state)
{
    int r;

    for (r = 0; r < ZN_FRAME_REASON_COUNT; r++)
        assert_string_not_equal(zn_frame_reason_name(r), "unknown reason");
    assert_string_equal(zn_frame_reason_name(ZN_FRAME_BAD_MAGIC),
                        "bad magic");
    assert_string_equal(zn_frame_err_name(ZN_CODE_UNKNOWN_CMD), "UNKNOWN_CMD");
    assert_string_equal(zn_frame_err_name(ZN_CODE_BAD_REQUEST), "BAD_REQUEST");
    assert_string_equal(zn_frame_err_name(ZN_CODE_SHUTTING_DOWN),
                        "SHUTTING_DOWN");
    assert_string_equal(zn_frame_err_name(1000), "APP");
    assert_string_equal(zn_frame_err_name(0), "UNKNOWN");
    assert_string_equal(zn_frame_err_name(6), "UNKNOWN");
}


int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_encode_decode_round_trip),
        cmocka_unit_test(test_encode_is_big_endian),
        cmocka_unit_test(test_encode_refuses_reserved_flags),
        cmocka_unit_test(test_incomplete_header_needs_more),
        cmocka_unit_test(test_bad_header_rejected_at_earliest_byte),
        cmocka_unit_test(test_valid_stream_same_result_at_every_split),
        cmocka_unit_test(test_truncated_stream_waits),
        cmocka_unit_test(test_bad_rows_same_result_at_every_split),
        cmocka_unit_test(test_several_frames_in_one_buffer),
        cmocka_unit_test(test_default_limit_boundary),
        cmocka_unit_test(test_doc_examples),
        cmocka_unit_test(test_names),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
