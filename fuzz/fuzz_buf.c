/*
 * fuzz_buf.c: the byte buffer against a plain model. The input is a
 * program of operations (append, consume, prepend, reserve and commit,
 * shrink, read, set a cap, a transport's read); after each one the buffer
 * must hold exactly the model's bytes, and an operation refused for the
 * cap must change nothing.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

#include "znet/buf.h"

#define MODEL_MAX (1u << 20)

typedef struct {
    uint8_t *v;
    size_t n;
} model_t;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


static void
check(const zn_buf_t *b, const model_t *m)
{
    if (zn_buf_len(b) != m->n ||
        (m->n > 0 && memcmp(zn_buf_peek(b), m->v, m->n) != 0))
        abort();
}


static size_t
arg(const uint8_t *data, size_t size, size_t *i)
{
    size_t v = 0;

    if (*i + 1 < size)
        v = (size_t)data[*i] << 8 | data[*i + 1];
    *i += 2;
    return v * 17 % 70000;
}


static void
fill(uint8_t *p, size_t n, size_t seed)
{
    size_t k;

    for (k = 0; k < n; k++)
        p[k] = (uint8_t)(seed + k * 31);
}


/* A transport's read: up to n bytes into the pieces zn_buf_read_begin()
 * gives (the buffer's free space, then a scratch area of n % 8192 bytes),
 * then zn_buf_read_end(). */
static int
read_step(zn_buf_t *b, model_t *m, size_t n, uint8_t *tmp)
{
    static char extra[8192];
    struct iovec iov[2];
    size_t total = 0, k, off = 0;
    int cnt, i;

    cnt = zn_buf_read_begin(b, iov, extra, n % sizeof(extra));
    if (cnt == ZN_ENOBUFS && b->max != 0 && m->n >= b->max)
        return 0;
    if (cnt <= 0 || cnt > 2)
        abort();
    for (i = 0; i < cnt; i++)
        total += iov[i].iov_len;
    k = n % (total + 1);
    if (m->n + k > MODEL_MAX)
        return -1;
    fill(tmp, k, m->n);
    for (i = 0; i < cnt && off < k; i++) {
        size_t part = k - off < iov[i].iov_len ? k - off : iov[i].iov_len;

        memcpy(iov[i].iov_base, tmp + off, part);
        off += part;
    }
    if (zn_buf_read_end(b, iov, cnt, k) != 0)
        abort();
    memcpy(m->v + m->n, tmp, k);
    m->n += k;
    return 0;
}


/* One operation on both; returns 0, or -1 when the model would grow
 * past MODEL_MAX (the program stops there). */
static int
step(zn_buf_t *b, model_t *m, uint8_t op, size_t n, uint8_t *tmp)
{
    int rc;

    switch (op % 8) {
    case 0: /* append */
    case 2: /* prepend */
        if (m->n + n > MODEL_MAX)
            return -1;
        fill(tmp, n, m->n);
        rc = op % 8 == 0 ? zn_buf_append(b, tmp, n) : zn_buf_prepend(b, tmp, n);
        if (rc == 0 && op % 8 == 0)
            memcpy(m->v + m->n, tmp, n);
        if (rc == 0 && op % 8 == 2) {
            memmove(m->v + n, m->v, m->n);
            memcpy(m->v, tmp, n);
        }
        if (rc == 0)
            m->n += n;
        else if (rc != ZN_ENOBUFS || b->max == 0)
            abort();
        break;
    case 1: /* consume */
        n = n > m->n ? m->n : n;
        zn_buf_consume(b, n);
        memmove(m->v, m->v + n, m->n - n);
        m->n -= n;
        break;
    case 3: /* reserve and commit half */
        if (m->n + n > MODEL_MAX)
            return -1;
        if (zn_buf_reserve(b, n) == 0 && n > 0) {
            fill(tmp, n / 2, m->n);
            memcpy(zn_buf_tail(b), tmp, n / 2);
            zn_buf_commit(b, n / 2);
            memcpy(m->v + m->n, tmp, n / 2);
            m->n += n / 2;
        }
        break;
    case 4: /* shrink */
        if (zn_buf_shrink(b, n % 4096) != 0)
            abort();
        break;
    case 5: /* read */
        n = zn_buf_read(b, tmp, n);
        if (n > m->n || memcmp(tmp, m->v, n) != 0)
            abort();
        memmove(m->v, m->v + n, m->n - n);
        m->n -= n;
        break;
    case 7: /* a transport's read */
        return read_step(b, m, n, tmp);
    default: /* a cap at or above what is held, or none */
        zn_buf_set_max(b, n % 3 == 0 ? 0 : m->n + n);
        break;
    }
    return 0;
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* Static: a fresh megabyte per input would cost more than the test. */
    static uint8_t model_bytes[MODEL_MAX + 70000], tmp[70000];
    model_t m = {model_bytes, 0};
    zn_buf_t b;
    size_t i = 0;
    uint8_t op;

    zn_buf_init(&b);
    while (i < size) {
        op = data[i++];
        if (step(&b, &m, op, arg(data, size, &i), tmp) != 0)
            break;
        check(&b, &m);
    }
    zn_buf_free(&b);
    return 0;
}
