/*
 * buf.c: the growable byte buffer. The contract is in znet/buf.h; why it is
 * one contiguous area read (by a transport) into it and a spare area, and the
 * measurement behind that choice, are in docs/buffers.md.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memmem() */
#endif

#include <assert.h>
#include <errno.h>
#include <string.h>
#include <sys/uio.h>

#include "internal.h"
#include "znet/buf.h"

/* The smallest storage ever allocated, so that a few small appends (a
 * header, then a short body) do not each reallocate. */
#define ZN__BUF_MIN_CAP 256

/* What a read reserves when the buffer has no free space and no extra. */
#define ZN__BUF_READ_MIN 4096


void
zn_buf_init(zn_buf_t *b)
{
    memset(b, 0, sizeof(*b));
}


void
zn_buf_init_borrowed(zn_buf_t *b, char *data, size_t len, size_t cap)
{
    assert(len <= cap);
    zn_buf_init(b);
    b->data = data;
    b->wpos = len;
    b->cap = cap;
    b->borrowed = 1;
}


void
zn_buf_free(zn_buf_t *b)
{
    if (!b->borrowed)
        zn__free(b->data);
    b->data = NULL;
    b->rpos = 0;
    b->wpos = 0;
    b->cap = 0;
    b->borrowed = 0;
}


void
zn_buf_set_max(zn_buf_t *b, size_t max)
{
    b->max = max;
}


/*
 * How many more readable bytes the buffer may take. Without a cap this is
 * what keeps len + n from overflowing, so every size computed from it is
 * representable.
 */
static size_t
zn__buf_room(const zn_buf_t *b)
{
    size_t len = zn_buf_len(b);

    if (b->max == 0)
        return SIZE_MAX - len;
    return len < b->max ? b->max - len : 0;
}


/* Whether `n` more readable bytes are allowed: past the cap is ZN_ENOBUFS,
 * past what a size_t can count is ZN_ENOMEM. */
static int
zn__buf_check(const zn_buf_t *b, size_t n)
{
    if (n <= zn__buf_room(b))
        return 0;
    return b->max != 0 ? ZN_ENOBUFS : ZN_ENOMEM;
}


/*
 * The storage size to grow to when `need` bytes must fit: double the
 * current size, so n appends cost O(n) copying in all, but at least `need`
 * and the minimum, and never more than the cap. Callers have checked that
 * need <= max, so the result always holds `need`.
 */
static size_t
zn__buf_next_cap(const zn_buf_t *b, size_t need)
{
    size_t c = b->cap <= SIZE_MAX / 2 ? b->cap * 2 : SIZE_MAX;

    if (c < need)
        c = need;
    if (c < ZN__BUF_MIN_CAP)
        c = ZN__BUF_MIN_CAP;
    if (b->max != 0 && c > b->max)
        c = b->max;
    return c;
}


/*
 * Moves the readable bytes into new owned storage of `cap` bytes, starting
 * at offset `at` (room left in front for a prepend). realloc() is used only
 * when it would copy nothing useless: owned storage with nothing consumed.
 * Otherwise a fresh allocation receives just the readable bytes, which is
 * also how a borrowed buffer becomes owned. On failure nothing changes.
 */
static int
zn__buf_move(zn_buf_t *b, size_t cap, size_t at)
{
    size_t len = zn_buf_len(b);
    char *p;

    if (!b->borrowed && b->rpos == 0 && at == 0) {
        p = zn__realloc(b->data, cap);
        if (p == NULL)
            return ZN_ENOMEM;
    } else {
        p = zn__malloc(cap);
        if (p == NULL)
            return ZN_ENOMEM;
        if (len > 0)
            zn__copy(p + at, b->data + b->rpos, len);
        if (!b->borrowed)
            zn__free(b->data);
    }
    b->data = p;
    b->cap = cap;
    b->rpos = at;
    b->wpos = at + len;
    b->borrowed = 0;
    return 0;
}


/*
 * Makes zn_buf_writable() >= n, once the caller has checked that n more
 * bytes are allowed. Sliding the readable bytes to the front is preferred
 * to growing when that makes room and moves no more bytes than have been
 * consumed since the last slide: each byte moved is then paid for by a byte
 * consumed, so a buffer used as a window over a long stream never copies
 * more than it passes through (always sliding, as muduo does, can move a
 * nearly full buffer for every small append). When the cap forbids growing,
 * sliding is the only way and always fits.
 */
static int
zn__buf_make_room(zn_buf_t *b, size_t n)
{
    size_t len = zn_buf_len(b);
    size_t need = len + n;
    size_t cap;

    if (zn_buf_writable(b) >= n)
        return 0;
    cap = zn__buf_next_cap(b, need);
    if (need <= b->cap && (b->rpos >= len || cap <= b->cap)) {
        zn__copy(b->data, b->data + b->rpos, len);
        b->rpos = 0;
        b->wpos = len;
        return 0;
    }
    return zn__buf_move(b, cap, 0);
}


int
zn_buf_reserve(zn_buf_t *b, size_t n)
{
    int rc = zn__buf_check(b, n);

    if (rc != 0)
        return rc;
    return zn__buf_make_room(b, n);
}


void
zn_buf_commit(zn_buf_t *b, size_t n)
{
    assert(n <= zn_buf_writable(b));
    b->wpos += n;
}


int
zn_buf_append(zn_buf_t *b, const void *p, size_t n)
{
    int rc;

    if (n == 0)
        return 0;
    rc = zn_buf_reserve(b, n);
    if (rc != 0)
        return rc;
    zn__copy(b->data + b->wpos, p, n);
    b->wpos += n;
    return 0;
}


/*
 * Prepending puts a frame header in front of a body that was built first.
 * Consumed space in front is used when there is enough. Otherwise the
 * readable bytes slide right inside the storage if it has room, or go to
 * new storage with the new bytes in front of them: either way they are
 * copied once.
 */
int
zn_buf_prepend(zn_buf_t *b, const void *p, size_t n)
{
    size_t len = zn_buf_len(b);
    int rc;

    if (n == 0)
        return 0;
    rc = zn__buf_check(b, n);
    if (rc != 0)
        return rc;
    if (b->rpos < n) {
        if (b->cap - len >= n) {
            memmove(b->data + n, b->data + b->rpos, len);
            b->rpos = n;
            b->wpos = n + len;
        } else {
            rc = zn__buf_move(b, zn__buf_next_cap(b, len + n), n);
            if (rc != 0)
                return rc;
        }
    }
    b->rpos -= n;
    memcpy(b->data + b->rpos, p, n);
    return 0;
}


void
zn_buf_consume(zn_buf_t *b, size_t n)
{
    if (n >= zn_buf_len(b))
        zn_buf_reset(b);
    else
        b->rpos += n;
}


size_t
zn_buf_read(zn_buf_t *b, void *p, size_t n)
{
    size_t len = zn_buf_len(b);

    if (n > len)
        n = len;
    if (n > 0)
        zn__copy(p, zn_buf_peek(b), n);
    zn_buf_consume(b, n);
    return n;
}


void
zn_buf_reset(zn_buf_t *b)
{
    b->rpos = 0;
    b->wpos = 0;
}


/*
 * Connections call this whenever a buffer empties, so the memory taken by
 * a large message goes back at once and an idle connection holds none.
 * Storage at most twice what is wanted is kept as it is: it will likely be
 * reused, and reallocating it would gain little.
 */
int
zn_buf_shrink(zn_buf_t *b, size_t keep)
{
    size_t len = zn_buf_len(b);
    size_t want;

    if (len == 0) {
        zn_buf_free(b);
        return 0;
    }
    want = keep <= SIZE_MAX - len ? len + keep : SIZE_MAX;
    if (b->max != 0 && want > b->max)
        want = b->max > len ? b->max : len;
    if (!b->borrowed) {
        if (want > b->cap)
            want = b->cap;
        if (b->cap - want <= want)
            return 0;
    }
    return zn__buf_move(b, want, 0);
}


/*
 * The free tail first and then `extra`, as muduo does: the buffer needs
 * no spare room to make a large read, and what lands in `extra` is
 * appended at its real size, so the storage a connection holds follows
 * what it has received. `extra` is skipped when the tail alone is at least
 * as large: otherwise every full read would be larger than the storage and
 * double it, until the buffer held the whole socket queue. The read is
 * limited to what the cap lets the buffer keep: a full buffer leaves the
 * data in the socket, where TCP flow control pushes back on the peer,
 * rather than dropping any.
 */
int
zn_buf_read_begin(zn_buf_t *b, struct iovec iov[2], char *extra,
                  size_t extra_len)
{
    size_t room = zn__buf_room(b);
    size_t tail, ext;
    int cnt = 0, rc;

    if (room == 0)
        return ZN_ENOBUFS;
    if (extra == NULL || zn_buf_writable(b) >= extra_len)
        extra_len = 0;
    if (zn_buf_writable(b) == 0 && extra_len == 0) {
        rc = zn_buf_reserve(b,
                            room < ZN__BUF_READ_MIN ? room : ZN__BUF_READ_MIN);
        if (rc != 0)
            return rc;
    }
    tail = zn_buf_writable(b) < room ? zn_buf_writable(b) : room;
    ext = extra_len < room - tail ? extra_len : room - tail;
    if (tail > 0)
        iov[cnt++] =
            (struct iovec){.iov_base = zn_buf_tail(b), .iov_len = tail};
    if (ext > 0)
        iov[cnt++] = (struct iovec){.iov_base = extra, .iov_len = ext};
    return cnt;
}


int
zn_buf_read_end(zn_buf_t *b, const struct iovec *iov, int iovcnt, size_t n)
{
    size_t tail = iovcnt > 0 && iov[0].iov_base == zn_buf_tail(b)
                      ? iov[0].iov_len
                      : 0;
    int rc;

    if (n <= tail) {
        b->wpos += n;
        return 0;
    }
    b->wpos += tail;
    rc = zn_buf_append(b, iov[iovcnt - 1].iov_base, n - tail);
    if (rc != 0)
        b->wpos -= tail; /* the buffer stays as it was (see the header) */
    return rc;
}


ssize_t
zn_buf_find(const zn_buf_t *b, const void *needle, size_t n)
{
    const char *p;

    if (n == 0)
        return 0;
    if (zn_buf_len(b) < n)
        return -1;
    p = memmem(zn_buf_peek(b), zn_buf_len(b), needle, n);
    return p != NULL ? p - zn_buf_peek(b) : -1;
}
