/*
 * znet/frame.h: the frame codec of protocol v1 (docs/protocol.md).
 *
 * Every message is one frame: a 16-byte header, then a body. All integers
 * are big-endian.
 *
 *   offset size field    meaning
 *   0      2    magic    0x7A6E, the bytes 'z' 'n'
 *   2      1    version  1
 *   3      1    flags    RESPONSE 1, ERROR 2, ONEWAY 4; other bits are 0
 *   4      4    length   body length in bytes (the header is not counted)
 *   8      4    cmd      command id
 *   12     4    seq      request id; a response carries its request's seq
 *
 * The decoder is pure: it reads bytes the caller holds and never allocates,
 * blocks or keeps state, so a stream may be fed to it in pieces of any size
 * (call it again with the longer buffer) and it can be fuzzed on its own.
 * It rejects a bad stream as early as the bytes allow: a wrong magic at the
 * first wrong byte, a wrong version at byte 3, reserved flag bits at byte 4,
 * an over-long length as soon as the length field is complete (byte 8), so
 * no body is ever buffered for a frame that will be refused.
 *
 * Thread-safety: every function here is pure. Any thread.
 */
#ifndef ZNET_FRAME_H
#define ZNET_FRAME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "znet/common.h"

#ifdef __cplusplus
extern "C" {
#endif

#define ZN_FRAME_HEADER_SIZE 16
#define ZN_FRAME_MAGIC 0x7A6Eu
#define ZN_FRAME_VERSION 1u

/* Flag bits (header byte 3). Any other bit set makes the frame invalid. */
#define ZN_FRAME_F_RESPONSE 0x01u
#define ZN_FRAME_F_ERROR 0x02u
#define ZN_FRAME_F_ONEWAY 0x04u
#define ZN_FRAME_F_MASK                                                       \
    (ZN_FRAME_F_RESPONSE | ZN_FRAME_F_ERROR | ZN_FRAME_F_ONEWAY)

/* The default largest body a peer may send: 4 MiB. */
#define ZN_FRAME_MAX_BODY_DEFAULT (4u * 1024u * 1024u)

/*
 * Codes carried in the body of an error response (znet.Error.code), sent
 * with flags RESPONSE | ERROR. Not to be confused with the ZN_E* return
 * codes of functions.
 */
typedef enum {
    ZN_CODE_UNKNOWN_CMD = 1,    /* no handler is registered for cmd */
    ZN_CODE_BAD_REQUEST = 2,    /* the body does not decode as cmd's type */
    ZN_CODE_OVERLOADED = 3,     /* the worker queue is full */
    ZN_CODE_INTERNAL = 4,       /* the server failed (out of memory, ...) */
    ZN_CODE_SHUTTING_DOWN = 5,  /* the server no longer takes requests */
    ZN_CODE_APP_BASE = 1000     /* this code and above: the application's */
} zn_frame_err_t;

/*
 * Which row of the bad-input table a rejected header falls in. Indexes a
 * counter array of ZN_FRAME_REASON_COUNT entries; zn_frame_reason_name()
 * gives the text for a log line.
 */
typedef enum {
    ZN_FRAME_OK = 0,
    ZN_FRAME_BAD_MAGIC,    /* bytes 0-1 are not 'z' 'n' (ZN_EPROTO) */
    ZN_FRAME_BAD_VERSION,  /* byte 2 is not 1 (ZN_EPROTO) */
    ZN_FRAME_BAD_FLAGS,    /* a reserved flag bit is set (ZN_EPROTO) */
    ZN_FRAME_TOO_LONG,     /* length is over the limit (ZN_EMSGSIZE) */
    ZN_FRAME_REASON_COUNT
} zn_frame_reason_t;

/* A decoded header. Magic and version are implied (v1 only). */
typedef struct zn_frame_header_s {
    uint32_t length;  /* body length in bytes */
    uint32_t cmd;
    uint32_t seq;
    uint8_t flags;    /* ZN_FRAME_F_* bits */
} zn_frame_header_t;

/* A complete frame found in a caller's buffer by zn_frame_next(). */
typedef struct zn_frame_s {
    zn_frame_header_t hdr;
    const uint8_t *body;  /* hdr.length bytes inside the caller's buffer */
    size_t size;          /* ZN_FRAME_HEADER_SIZE + hdr.length */
} zn_frame_t;

/*
 * Writes the 16 header bytes for h (magic, version 1, h's fields) to out,
 * which must have room for ZN_FRAME_HEADER_SIZE bytes.
 * Returns 0, or ZN_EINVAL (out untouched) if h->flags has a reserved bit
 * set: the peer would close the connection on such a frame.
 */
ZN_EXTERN int zn_frame_encode_header(uint8_t *out,
                                     const zn_frame_header_t *h);

/* Rewrites the seq field of an encoded header (a request packed before its
 * seq was known). */
ZN_EXTERN void zn_frame_set_seq(uint8_t *hdr, uint32_t seq);

/*
 * Decodes the header at the start of data, of which len bytes are present
 * (len may be smaller than a header: the start of a stream).
 *
 * max_body is the largest body accepted, in bytes; a length equal to it is
 * accepted. Pass ZN_FRAME_MAX_BODY_DEFAULT unless configured otherwise.
 *
 * Returns:
 *   0            a full, valid header: *h is filled in. The body may still
 *                be incomplete: the frame needs h->length more bytes.
 *   ZN_EAGAIN    the bytes present are a valid beginning of a header but
 *                not all of it: call again with more. Never an error.
 *   ZN_EPROTO    wrong magic, version or reserved flags (see *reason).
 *   ZN_EMSGSIZE  the length field is over max_body (*reason TOO_LONG).
 * An error is reported as soon as the offending byte is present, whatever
 * follows. *h is written only on success. reason may be NULL; otherwise
 * *reason is set on every return (ZN_FRAME_OK unless an error).
 * data may be NULL when len is 0.
 */
ZN_EXTERN int zn_frame_decode_header(const void *data, size_t len,
                                     uint32_t max_body, zn_frame_header_t *h,
                                     zn_frame_reason_t *reason);

/*
 * Finds the complete frame at the start of data (len bytes): the loop of a
 * dispatcher that has read a batch of bytes calls it until it stops
 * returning 0, advancing by f->size each time.
 *
 * Returns 0 and fills *f (f->body points into data: valid while the caller
 * keeps the buffer) when the header and the whole body are present;
 * ZN_EAGAIN when the header or the body is still incomplete (use
 * zn_frame_decode_header() to learn how many bytes the frame needs); or the
 * errors of zn_frame_decode_header(), with *reason as documented there.
 * *f is written only on success.
 */
ZN_EXTERN int zn_frame_next(const void *data, size_t len, uint32_t max_body,
                            zn_frame_t *f, zn_frame_reason_t *reason);

/* "bad magic", "bad version", ...: for log lines. "ok" for ZN_FRAME_OK. */
ZN_EXTERN const char *zn_frame_reason_name(zn_frame_reason_t reason);

/*
 * The name of an error response code: "UNKNOWN_CMD", ..., "APP" for
 * 1000 and above, "UNKNOWN" otherwise.
 */
ZN_EXTERN const char *zn_frame_err_name(uint32_t code);

/* The whole frame size, header included; computed in 64 bits: no wrap. */
static inline uint64_t
zn_frame_total_size(const zn_frame_header_t *h)
{
    return (uint64_t)ZN_FRAME_HEADER_SIZE + h->length;
}

static inline bool
zn_frame_is_response(const zn_frame_header_t *h)
{
    return (h->flags & ZN_FRAME_F_RESPONSE) != 0;
}

static inline bool
zn_frame_is_error(const zn_frame_header_t *h)
{
    return (h->flags & ZN_FRAME_F_ERROR) != 0;
}

static inline bool
zn_frame_is_oneway(const zn_frame_header_t *h)
{
    return (h->flags & ZN_FRAME_F_ONEWAY) != 0;
}

#ifdef __cplusplus
}
#endif
#endif /* ZNET_FRAME_H */
