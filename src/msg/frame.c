/*
 * frame.c: the frame codec of protocol v1. Pure functions: no allocation,
 * no state, no I/O.
 */
#include <stddef.h>
#include <stdint.h>

#include "znet/frame.h"

#define FRAME_MAGIC_0 ((uint8_t)(ZN_FRAME_MAGIC >> 8))    /* 'z' */
#define FRAME_MAGIC_1 ((uint8_t)(ZN_FRAME_MAGIC & 0xFF))  /* 'n' */

/* Offsets of the header fields. */
#define FRAME_OFF_VERSION 2
#define FRAME_OFF_FLAGS 3
#define FRAME_OFF_LENGTH 4
#define FRAME_OFF_CMD 8
#define FRAME_OFF_SEQ 12


static uint32_t
load_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
           (uint32_t)p[2] << 8 | (uint32_t)p[3];
}


static void
store_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}


/*
 * Refuses reserved flag bits rather than masking them: a frame with them
 * set would make the peer close the connection, and silently dropping a
 * bit the caller asked for would hide the bug.
 */
int
zn_frame_encode_header(uint8_t *out, const zn_frame_header_t *h)
{
    if ((h->flags & ~ZN_FRAME_F_MASK) != 0)
        return ZN_EINVAL;
    out[0] = FRAME_MAGIC_0;
    out[1] = FRAME_MAGIC_1;
    out[FRAME_OFF_VERSION] = (uint8_t)ZN_FRAME_VERSION;
    out[FRAME_OFF_FLAGS] = h->flags;
    store_be32(out + FRAME_OFF_LENGTH, h->length);
    store_be32(out + FRAME_OFF_CMD, h->cmd);
    store_be32(out + FRAME_OFF_SEQ, h->seq);
    return 0;
}


void
zn_frame_set_seq(uint8_t *hdr, uint32_t seq)
{
    store_be32(hdr + FRAME_OFF_SEQ, seq);
}


/*
 * Checks each field as soon as its last byte is present, in wire order, so
 * that a stream is refused at the earliest byte that makes it invalid: a
 * peer sending garbage is cut off after one byte, and an over-long length
 * is refused before the caller buffers any of the body. Only when nothing is
 * wrong and the header is still short does it ask for more.
 */
static zn_frame_reason_t
frame_check_prefix(const uint8_t *p, size_t len, uint32_t max_body)
{
    if (len >= 1 && p[0] != FRAME_MAGIC_0)
        return ZN_FRAME_BAD_MAGIC;
    if (len >= 2 && p[1] != FRAME_MAGIC_1)
        return ZN_FRAME_BAD_MAGIC;
    if (len > FRAME_OFF_VERSION && p[FRAME_OFF_VERSION] != ZN_FRAME_VERSION)
        return ZN_FRAME_BAD_VERSION;
    if (len > FRAME_OFF_FLAGS && (p[FRAME_OFF_FLAGS] & ~ZN_FRAME_F_MASK) != 0)
        return ZN_FRAME_BAD_FLAGS;
    if (len >= FRAME_OFF_LENGTH + 4 &&
        load_be32(p + FRAME_OFF_LENGTH) > max_body)
        return ZN_FRAME_TOO_LONG;
    return ZN_FRAME_OK;
}


int
zn_frame_decode_header(const void *data, size_t len, uint32_t max_body,
                       zn_frame_header_t *h, zn_frame_reason_t *reason)
{
    const uint8_t *p = data;
    zn_frame_reason_t why = frame_check_prefix(p, len, max_body);

    if (reason != NULL)
        *reason = why;
    switch (why) {
    case ZN_FRAME_OK:
        break;
    case ZN_FRAME_TOO_LONG:
        return ZN_EMSGSIZE;
    default:
        return ZN_EPROTO;
    }
    if (len < ZN_FRAME_HEADER_SIZE)
        return ZN_EAGAIN;
    h->flags = p[FRAME_OFF_FLAGS];
    h->length = load_be32(p + FRAME_OFF_LENGTH);
    h->cmd = load_be32(p + FRAME_OFF_CMD);
    h->seq = load_be32(p + FRAME_OFF_SEQ);
    return 0;
}


/*
 * Stateless on purpose: the caller keeps the bytes, and re-reading a
 * 16-byte header when more data arrives costs less than the branches a
 * resumable parser would need. It also means the result cannot depend on
 * how the stream was cut into reads, which the tests check at every split.
 */
int
zn_frame_next(const void *data, size_t len, uint32_t max_body, zn_frame_t *f,
              zn_frame_reason_t *reason)
{
    zn_frame_header_t h;
    int rc = zn_frame_decode_header(data, len, max_body, &h, reason);

    if (rc != 0)
        return rc;
    /* 64-bit sizes: 16 + a 32-bit length cannot wrap, even where size_t is
     * 32 bits; once the frame fits in len, its size fits in size_t. */
    if (zn_frame_total_size(&h) > (uint64_t)len)
        return ZN_EAGAIN;
    f->hdr = h;
    f->body = (const uint8_t *)data + ZN_FRAME_HEADER_SIZE;
    f->size = (size_t)zn_frame_total_size(&h);
    return 0;
}


const char *
zn_frame_reason_name(zn_frame_reason_t reason)
{
    switch (reason) {
    case ZN_FRAME_OK:
        return "ok";
    case ZN_FRAME_BAD_MAGIC:
        return "bad magic";
    case ZN_FRAME_BAD_VERSION:
        return "unknown version";
    case ZN_FRAME_BAD_FLAGS:
        return "reserved flag bits set";
    case ZN_FRAME_TOO_LONG:
        return "length over the limit";
    default:
        return "unknown reason";
    }
}


const char *
zn_frame_err_name(uint32_t code)
{
    switch (code) {
    case ZN_CODE_UNKNOWN_CMD:
        return "UNKNOWN_CMD";
    case ZN_CODE_BAD_REQUEST:
        return "BAD_REQUEST";
    case ZN_CODE_OVERLOADED:
        return "OVERLOADED";
    case ZN_CODE_INTERNAL:
        return "INTERNAL";
    case ZN_CODE_SHUTTING_DOWN:
        return "SHUTTING_DOWN";
    default:
        return code >= ZN_CODE_APP_BASE ? "APP" : "UNKNOWN";
    }
}
