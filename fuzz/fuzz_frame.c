/*
 * fuzz_frame.c: libFuzzer target for the pure frame decoder of protocol v1
 * (zn_frame_next, zn_frame_decode_header, zn_frame_encode_header).
 *
 * The input is a byte stream as a peer would send it. The target walks it
 * frame by frame, the way the dispatcher does, and checks the decoder's
 * contract (include/znet/frame.h) on every step:
 *
 *  - a frame it returns has size 16 + length, fits in the bytes given,
 *    has its body right after its header, no reserved flag bit and a
 *    length within the limit, and its header re-encodes to the same bytes;
 *  - where the walk stops, every prefix of the remaining header agrees:
 *    "need more" until the first offending byte, the same error from there
 *    on, success only with all 16 bytes;
 *  - feeding the stream in two pieces, cut at a point chosen from the
 *    input, gives the same frames and the same end as feeding it whole.
 *    Each piece lives in a heap block of its exact size, so that a read
 *    past the bytes given is caught by AddressSanitizer.
 *
 * All of it runs twice: with the default 4 MiB limit and with a small one
 * taken from the input, so that both sides of the length check are hit.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "znet/frame.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FZ_CHECK(cond)                                                         \
    do {                                                                       \
        if (!(cond))                                                           \
            fz_fail(#cond, __LINE__);                                          \
    } while (0)

/* What a walk over a stream saw: enough to compare two walks. */
typedef struct {
    size_t frames;   /* complete frames returned */
    size_t consumed; /* bytes in those frames */
    uint64_t digest; /* of every frame's header fields and offset */
    int rc;          /* the return that ended the walk */
    zn_frame_reason_t reason;
} fz_walk_t;


static void
fz_fail(const char *what, int line)
{
    fprintf(stderr, "fuzz_frame.c:%d: check failed: %s\n", line, what);
    abort();
}


static uint64_t
fz_mix(uint64_t h, uint64_t v)
{
    h ^= v + 0x9e3779b97f4a7c15u + (h << 6) + (h >> 2);
    return h;
}


/* A complete frame at p (len bytes available) obeys the contract. */
static void
fz_check_frame(const uint8_t *p, size_t len, uint32_t max_body,
               const zn_frame_t *f)
{
    uint8_t again[ZN_FRAME_HEADER_SIZE];
    zn_frame_header_t h;

    FZ_CHECK(f->size == ZN_FRAME_HEADER_SIZE + (uint64_t)f->hdr.length);
    FZ_CHECK(f->size <= len);
    FZ_CHECK(f->body == p + ZN_FRAME_HEADER_SIZE);
    FZ_CHECK((f->hdr.flags & ~ZN_FRAME_F_MASK) == 0);
    FZ_CHECK(f->hdr.length <= max_body);
    FZ_CHECK(zn_frame_decode_header(p, len, max_body, &h, NULL) == 0);
    FZ_CHECK(h.length == f->hdr.length && h.cmd == f->hdr.cmd &&
             h.seq == f->hdr.seq && h.flags == f->hdr.flags);
    FZ_CHECK(zn_frame_encode_header(again, &f->hdr) == 0);
    FZ_CHECK(memcmp(again, p, sizeof(again)) == 0);
}


/*
 * Where a walk stopped (rc, reason for the len bytes at p), each prefix of
 * the header must tell the same story: the error appears at one byte and
 * stays, and before it the decoder only asks for more.
 */
static void
fz_check_prefixes(const uint8_t *p, size_t len, uint32_t max_body, int rc,
                  zn_frame_reason_t reason)
{
    size_t k, n = len < ZN_FRAME_HEADER_SIZE ? len : ZN_FRAME_HEADER_SIZE;
    bool seen_error = false;
    zn_frame_reason_t why;
    zn_frame_header_t h;
    int r;

    for (k = 0; k <= n; k++) {
        r = zn_frame_decode_header(k > 0 ? p : NULL, k, max_body, &h, &why);
        if (r == ZN_EAGAIN) {
            FZ_CHECK(!seen_error && k < ZN_FRAME_HEADER_SIZE);
            FZ_CHECK(why == ZN_FRAME_OK);
        } else if (r == 0) {
            FZ_CHECK(k == ZN_FRAME_HEADER_SIZE && rc == ZN_EAGAIN);
        } else {
            FZ_CHECK(r == rc && why == reason);
            FZ_CHECK((r == ZN_EMSGSIZE) == (why == ZN_FRAME_TOO_LONG));
            FZ_CHECK(why != ZN_FRAME_OK);
            FZ_CHECK(zn_frame_reason_name(why) != NULL);
            seen_error = true;
        }
    }
    if (rc != ZN_EAGAIN)
        FZ_CHECK(seen_error);
}


/* Takes every complete frame from the front of p, like a dispatcher; adds
 * to w, whose counters carry over from an earlier piece of the stream. */
static void
fz_walk(const uint8_t *p, size_t len, uint32_t max_body, fz_walk_t *w)
{
    zn_frame_reason_t reason;
    size_t off = 0;
    zn_frame_t f;
    int rc;

    for (;;) {
        rc = zn_frame_next(len > off ? p + off : NULL, len - off, max_body, &f,
                           &reason);
        if (rc != 0)
            break;
        fz_check_frame(p + off, len - off, max_body, &f);
        w->digest = fz_mix(w->digest, w->consumed);
        w->digest = fz_mix(w->digest, ((uint64_t)f.hdr.cmd << 32) | f.hdr.seq);
        w->digest =
            fz_mix(w->digest, ((uint64_t)f.hdr.length << 8) | f.hdr.flags);
        w->frames++;
        w->consumed += f.size;
        off += f.size;
    }
    FZ_CHECK(rc == ZN_EAGAIN || rc == ZN_EPROTO || rc == ZN_EMSGSIZE);
    w->rc = rc;
    w->reason = reason;
}


/* A copy of n bytes in a block of exactly n bytes (n may be 0). */
static uint8_t *
fz_exact_copy(const uint8_t *p, size_t n)
{
    uint8_t *q = malloc(n > 0 ? n : 1);

    FZ_CHECK(q != NULL);
    if (n > 0)
        memcpy(q, p, n);
    return q;
}


/*
 * The stream in two reads, cut at `cut`: the first piece is walked alone,
 * then what it left (a partial frame) is joined with the second piece, as
 * a receiver's buffer would be. A walk that stopped on an error in the
 * first piece does not go on: the connection would be closed.
 */
static void
fz_walk_split(const uint8_t *data, size_t size, size_t cut, uint32_t max_body,
              fz_walk_t *w)
{
    uint8_t *piece = fz_exact_copy(data, cut);

    fz_walk(piece, cut, max_body, w);
    free(piece);
    if (w->rc != ZN_EAGAIN)
        return;
    piece = fz_exact_copy(data + w->consumed, size - w->consumed);
    {
        fz_walk_t rest = {0};

        rest.digest = w->digest;
        rest.consumed = w->consumed;
        fz_walk(piece, size - w->consumed, max_body, &rest);
        rest.frames += w->frames;
        *w = rest;
    }
    free(piece);
}


/*
 * The whole stream, then the stream in two pieces: the same frames and the
 * same end. (Frames before the stop are valid, and no prefix of a valid
 * header is an error, so even an error in the first piece must be the
 * one the whole walk ends on.)
 */
static void
fz_check_stream(const uint8_t *data, size_t size, uint32_t max_body)
{
    fz_walk_t whole = {0}, split = {0};
    size_t cut;

    fz_walk(data, size, max_body, &whole);
    fz_check_prefixes(data + whole.consumed, size - whole.consumed, max_body,
                      whole.rc, whole.reason);
    cut = size > 0 ? (size_t)(fz_mix(size, data[size - 1]) % (size + 1)) : 0;
    fz_walk_split(data, size, cut, max_body, &split);
    FZ_CHECK(split.frames == whole.frames);
    FZ_CHECK(split.consumed == whole.consumed);
    FZ_CHECK(split.digest == whole.digest);
    FZ_CHECK(split.rc == whole.rc);
    FZ_CHECK(split.reason == whole.reason);
}


/* encode -> decode gives back the header, for header fields taken from the
 * input; reserved flag bits are refused by the encoder. */
static void
fz_check_round_trip(const uint8_t *data, size_t size)
{
    uint8_t out[ZN_FRAME_HEADER_SIZE];
    zn_frame_header_t h, back;

    if (size < 13)
        return;
    memcpy(&h.length, data, 4);
    memcpy(&h.cmd, data + 4, 4);
    memcpy(&h.seq, data + 8, 4);
    h.flags = data[12];
    if ((h.flags & ~ZN_FRAME_F_MASK) != 0) {
        FZ_CHECK(zn_frame_encode_header(out, &h) == ZN_EINVAL);
        return;
    }
    FZ_CHECK(zn_frame_encode_header(out, &h) == 0);
    FZ_CHECK(
        zn_frame_decode_header(out, sizeof(out), UINT32_MAX, &back, NULL) == 0);
    FZ_CHECK(back.length == h.length && back.cmd == h.cmd &&
             back.seq == h.seq && back.flags == h.flags);
    FZ_CHECK(zn_frame_err_name(h.cmd) != NULL);
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint32_t small = size > 0 ? data[0] : 0;

    fz_check_stream(data, size, ZN_FRAME_MAX_BODY_DEFAULT);
    fz_check_stream(data, size, small);
    fz_check_round_trip(data, size);
    return 0;
}
