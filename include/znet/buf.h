/*
 * znet/buf.h: a growable byte buffer.
 *
 * One contiguous area with a read offset and a write offset:
 *
 *     data                rpos                wpos               cap
 *     | consumed (free)   | readable bytes    | writable space    |
 *
 * Consuming moves rpos (no memmove); when the buffer empties both offsets go
 * back to 0. When more room is needed, the readable bytes are moved to the
 * front instead of growing if that makes enough room and moves no more
 * bytes than have been consumed since the last move (so moving costs O(1)
 * per byte consumed); otherwise the storage doubles. Storage is allocated
 * on first use and can be given back with zn_buf_shrink() (connections do
 * this when a buffer empties), so an idle buffer costs only this struct.
 *
 * Hard cap: a buffer with max != 0 never holds more than `max` readable
 * bytes, and its storage is never grown past `max` bytes. An operation that
 * would pass the cap fails with ZN_ENOBUFS and changes nothing, except
 * a read (zn_buf_read_begin), which takes only what fits (see there).
 *
 * Borrowed storage: zn_buf_init_borrowed() makes a buffer whose `data` is
 * memory it does not own (a connection hands its loop's read scratch area
 * to on_data this way, without copying). Such a buffer reads, consumes and
 * writes in place; when it must grow it allocates owned storage and copies
 * the readable bytes there (the borrowed area is left alone). zn_buf_free()
 * and zn_buf_shrink() never free borrowed memory: they detach from it
 * (shrink keeps the readable bytes by copying them into owned storage).
 * The owner of the area must end the borrowing (zn_buf_shrink() or
 * zn_buf_free()) before reusing the area.
 *
 * Operations with a `p` argument copy from it; `p` must not point into the
 * buffer's own storage (growing may move or free it).
 *
 * A buffer is not thread-safe; the buffers a connection hands to callbacks
 * belong to its loop thread.
 */
#ifndef ZNET_BUF_H
#define ZNET_BUF_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/uio.h>
#include <stdint.h>
#include <sys/types.h>

#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct zn_buf_s {
    char *data; /* NULL when the buffer has no storage */
    size_t rpos;
    size_t wpos;
    size_t cap;
    size_t max;            /* hard cap on readable bytes and storage; 0: none */
    unsigned borrowed : 1; /* data is not ours (a loop's scratch area) */
} zn_buf_t;

/* Initialises an empty buffer with no storage and no cap. */
ZN_EXTERN void zn_buf_init(zn_buf_t *b);

/*
 * Initialises a buffer over `cap` bytes of caller memory at `data`, of
 * which the first `len` are readable. The memory is borrowed: the buffer
 * never frees it. No cap. Requires len <= cap.
 */
ZN_EXTERN void zn_buf_init_borrowed(zn_buf_t *b, char *data, size_t len,
                                    size_t cap);

/* Frees owned storage (forgets borrowed storage); the buffer is empty, has
 * no storage, keeps its cap, and is usable again. */
ZN_EXTERN void zn_buf_free(zn_buf_t *b);

/* Sets the hard cap (0: none). Drops nothing: a buffer already holding more
 * than `max` bytes keeps them, and only refuses to take more. */
ZN_EXTERN void zn_buf_set_max(zn_buf_t *b, size_t max);

static inline size_t
zn_buf_len(const zn_buf_t *b)
{
    return b->wpos - b->rpos;
}

/* The readable bytes (NULL if the buffer has no storage). */
static inline char *
zn_buf_peek(const zn_buf_t *b)
{
    return b->data != NULL ? b->data + b->rpos : NULL;
}

static inline size_t
zn_buf_writable(const zn_buf_t *b)
{
    return b->cap - b->wpos;
}

/* Makes room for at least `n` more bytes after wpos. Returns 0, ZN_ENOMEM,
 * or ZN_ENOBUFS if the buffer would then hold more than its cap; on error
 * the buffer is unchanged. */
ZN_EXTERN int zn_buf_reserve(zn_buf_t *b, size_t n);

/* The writable area (zn_buf_writable() bytes; NULL if the buffer has no
 * storage), e.g. after a successful zn_buf_reserve(); commit what was
 * written with zn_buf_commit(). */
static inline char *
zn_buf_tail(const zn_buf_t *b)
{
    return b->data != NULL ? b->data + b->wpos : NULL;
}

/* Makes `n` bytes written at zn_buf_tail() readable. Requires
 * n <= zn_buf_writable(). */
ZN_EXTERN void zn_buf_commit(zn_buf_t *b, size_t n);

/* Appends `n` bytes. Returns 0, ZN_ENOMEM or ZN_ENOBUFS (nothing appended). */
ZN_EXTERN int zn_buf_append(zn_buf_t *b, const void *p, size_t n);

/* Inserts `n` bytes in front of the readable bytes, into consumed space if
 * there is enough, else by moving the data. Returns 0, ZN_ENOMEM or
 * ZN_ENOBUFS (nothing inserted). */
ZN_EXTERN int zn_buf_prepend(zn_buf_t *b, const void *p, size_t n);

/* Drops `n` readable bytes from the front (all of them if n >= len). */
ZN_EXTERN void zn_buf_consume(zn_buf_t *b, size_t n);

/* Copies up to `n` bytes out and consumes them; returns how many. */
ZN_EXTERN size_t zn_buf_read(zn_buf_t *b, void *p, size_t n);

/* Drops every byte (keeps the storage). */
ZN_EXTERN void zn_buf_reset(zn_buf_t *b);

/*
 * Gives memory back. An owned buffer: frees the storage if the buffer is
 * empty, or, if the storage is more than twice the readable bytes plus
 * `keep`, moves them into storage of exactly that size (readable + keep,
 * at most the cap or the current size). A borrowed buffer always ends the
 * borrowing: if empty it just drops the area, else the readable bytes are
 * copied into owned storage of readable + `keep` bytes.
 * Returns 0 or ZN_ENOMEM (the buffer is then unchanged).
 */
ZN_EXTERN int zn_buf_shrink(zn_buf_t *b, size_t keep);

/*
 * One read into a buffer, in two steps around the caller's own read call
 * (a connection's transport): zn_buf_read_begin() describes where the
 * bytes may go, the caller reads into those pieces, zn_buf_read_end()
 * makes what arrived readable.
 *
 * The pieces are the buffer's free space and, past it, `extra` (a caller's
 * stack or scratch area of `extra_len` bytes, which must not overlap the
 * buffer's storage); what lands in `extra` is then appended. A large read
 * thus costs one call whatever the buffer's free space, and an empty
 * buffer allocates only as much as actually arrived. `extra` is used only
 * while the free space is smaller than it, so one read is at most free
 * space + extra_len bytes and the storage settles near twice extra_len for
 * a stream of small messages. `extra` may be NULL; if the buffer has no
 * free space and no `extra` is used, 4 KiB of room (at most up to the cap)
 * is reserved first. The pieces never hold more than the cap lets the
 * buffer keep (max - len bytes), so no byte read is ever dropped because
 * of the cap.
 *
 * zn_buf_read_begin() fills iov[0..1] and returns the number of pieces (1
 * or 2), ZN_ENOBUFS (the buffer already holds `max` bytes: do not read),
 * or ZN_ENOMEM. zn_buf_read_end() takes the same pieces and the number of
 * bytes read into them; it returns 0, or ZN_ENOMEM when storage for the
 * bytes that landed in `extra` could not be allocated: the buffer is then
 * unchanged and those bytes are lost, so the stream is broken and should
 * be closed. Nothing may touch the buffer between the two calls.
 */
ZN_EXTERN int zn_buf_read_begin(zn_buf_t *b, struct iovec iov[2],
                                char *extra, size_t extra_len);
ZN_EXTERN int zn_buf_read_end(zn_buf_t *b, const struct iovec *iov,
                              int iovcnt, size_t n);

/* Finds `needle` of `n` bytes in the readable bytes; returns its offset
 * from zn_buf_peek() or -1. An empty needle is found at offset 0. */
ZN_EXTERN ssize_t zn_buf_find(const zn_buf_t *b, const void *needle, size_t n);

#ifdef __cplusplus
}
#endif
#endif /* ZNET_BUF_H */
