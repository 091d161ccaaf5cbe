/*
 * test_buf.c: unit tests of zn_buf_t, one behaviour per test. Socket tests
 * use an AF_UNIX socketpair; the whole program runs under an alarm, so a
 * hang is a failure.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cmocka.h>

#include "internal.h"
#include "znet/buf.h"

#define TEST_TIMEOUT_S 30


/* A pattern byte for position i, so misplaced bytes are caught. */
static char
pat(size_t i)
{
    return (char)('a' + i % 23);
}


static void
fill_pat(char *p, size_t n, size_t from)
{
    for (size_t i = 0; i < n; i++)
        p[i] = pat(from + i);
}


static void
check_pat(const char *p, size_t n, size_t from)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != pat(from + i))
            fail_msg("byte %zu is %d, want %d", from + i, p[i], pat(from + i));
}


static void
make_pair(int sv[2])
{
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv),
                     0);
}


static void
close_pair(int sv[2])
{
    close(sv[0]);
    close(sv[1]);
}


/* Writes n pattern bytes starting at `from` into a socket. */
static void
send_pat(int fd, size_t n, size_t from)
{
    char *p = malloc(n);

    assert_non_null(p);
    fill_pat(p, n, from);
    assert_int_equal(send(fd, p, n, 0), (ssize_t)n);
    free(p);
}


static void
init_is_empty_without_storage(void **state)
{
    zn_buf_t b;

    zn_buf_init(&b);
    assert_int_equal(zn_buf_len(&b), 0);
    assert_int_equal(zn_buf_writable(&b), 0);
    assert_null(b.data);
    assert_null(zn_buf_peek(&b));
    assert_null(zn_buf_tail(&b));
    assert_int_equal(b.max, 0);
    zn_buf_free(&b);
}


static void
free_releases_and_keeps_cap(void **state)
{
    zn_buf_t b;

    zn_buf_init(&b);
    zn_buf_set_max(&b, 1000);
    assert_int_equal(zn_buf_append(&b, "hello", 5), 0);
    zn_buf_free(&b);
    assert_null(b.data);
    assert_int_equal(b.cap, 0);
    assert_int_equal(zn_buf_len(&b), 0);
    assert_int_equal(b.max, 1000);
    assert_int_equal(zn_buf_append(&b, "again", 5), 0);
    assert_memory_equal(zn_buf_peek(&b), "again", 5);
    zn_buf_free(&b);
    zn_buf_free(&b);
}


static void
append_consume_read(void **state)
{
    zn_buf_t b;
    char out[16];

    zn_buf_init(&b);
    assert_int_equal(zn_buf_append(&b, "hello ", 6), 0);
    assert_int_equal(zn_buf_append(&b, "world", 5), 0);
    assert_int_equal(zn_buf_append(&b, NULL, 0), 0);
    assert_int_equal(zn_buf_len(&b), 11);
    assert_memory_equal(zn_buf_peek(&b), "hello world", 11);
    zn_buf_consume(&b, 6);
    assert_int_equal(zn_buf_len(&b), 5);
    assert_memory_equal(zn_buf_peek(&b), "world", 5);
    assert_int_equal(zn_buf_read(&b, out, 3), 3);
    assert_memory_equal(out, "wor", 3);
    assert_int_equal(zn_buf_read(&b, out, sizeof(out)), 2);
    assert_memory_equal(out, "ld", 2);
    assert_int_equal(zn_buf_read(&b, out, sizeof(out)), 0);
    zn_buf_free(&b);
}


static void
consume_all_resets_offsets(void **state)
{
    zn_buf_t b;
    size_t cap;

    zn_buf_init(&b);
    assert_int_equal(zn_buf_append(&b, "abcdef", 6), 0);
    cap = b.cap;
    zn_buf_consume(&b, 2);
    assert_int_equal(b.rpos, 2);
    zn_buf_consume(&b, 100);
    assert_int_equal(b.rpos, 0);
    assert_int_equal(b.wpos, 0);
    assert_int_equal(zn_buf_writable(&b), cap);
    assert_int_equal(zn_buf_append(&b, "xy", 2), 0);
    zn_buf_reset(&b);
    assert_int_equal(zn_buf_len(&b), 0);
    assert_int_equal(b.cap, cap);
    zn_buf_free(&b);
}


static void
prepend_into_consumed_space(void **state)
{
    zn_buf_t b;
    char *data;

    zn_buf_init(&b);
    assert_int_equal(zn_buf_append(&b, "0123body", 8), 0);
    zn_buf_consume(&b, 4);
    data = b.data;
    assert_int_equal(zn_buf_prepend(&b, "HD", 2), 0);
    assert_ptr_equal(b.data, data);
    assert_int_equal(b.rpos, 2);
    assert_int_equal(zn_buf_len(&b), 6);
    assert_memory_equal(zn_buf_peek(&b), "HDbody", 6);
    assert_int_equal(zn_buf_prepend(&b, NULL, 0), 0);
    zn_buf_free(&b);
}


static void
prepend_by_moving_in_place(void **state)
{
    zn_buf_t b;
    char *data;

    zn_buf_init(&b);
    assert_int_equal(zn_buf_append(&b, "body", 4), 0);
    data = b.data;
    assert_true(b.cap >= 4 + 4);
    assert_int_equal(zn_buf_prepend(&b, "head", 4), 0);
    assert_ptr_equal(b.data, data);
    assert_int_equal(zn_buf_len(&b), 8);
    assert_memory_equal(zn_buf_peek(&b), "headbody", 8);
    zn_buf_free(&b);
}


static void
prepend_into_new_storage(void **state)
{
    zn_buf_t b;
    char body[300], head[100];

    zn_buf_init(&b);
    fill_pat(body, sizeof(body), sizeof(head));
    fill_pat(head, sizeof(head), 0);
    assert_int_equal(zn_buf_append(&b, body, sizeof(body)), 0);
    assert_true(b.cap - zn_buf_len(&b) < sizeof(head));
    assert_int_equal(zn_buf_prepend(&b, head, sizeof(head)), 0);
    assert_int_equal(zn_buf_len(&b), 400);
    check_pat(zn_buf_peek(&b), 400, 0);
    zn_buf_free(&b);

    /* Into an empty buffer without storage. */
    zn_buf_init(&b);
    assert_int_equal(zn_buf_prepend(&b, "x", 1), 0);
    assert_memory_equal(zn_buf_peek(&b), "x", 1);
    zn_buf_free(&b);
}


static void
reserve_commit(void **state)
{
    zn_buf_t b;

    zn_buf_init(&b);
    assert_int_equal(zn_buf_reserve(&b, 0), 0);
    assert_null(b.data);
    assert_int_equal(zn_buf_reserve(&b, 1000), 0);
    assert_true(zn_buf_writable(&b) >= 1000);
    fill_pat(zn_buf_tail(&b), 600, 0);
    zn_buf_commit(&b, 600);
    assert_int_equal(zn_buf_len(&b), 600);
    assert_int_equal(zn_buf_reserve(&b, 5000), 0);
    assert_true(zn_buf_writable(&b) >= 5000);
    fill_pat(zn_buf_tail(&b), 5000, 600);
    zn_buf_commit(&b, 5000);
    check_pat(zn_buf_peek(&b), 5600, 0);
    zn_buf_free(&b);
}


static void
growth_doubles(void **state)
{
    zn_buf_t b;
    char chunk[100];
    size_t cap;

    zn_buf_init(&b);
    fill_pat(chunk, sizeof(chunk), 0);
    assert_int_equal(zn_buf_append(&b, chunk, 1), 0);
    cap = b.cap;
    assert_true(cap >= 1 && cap <= 4096);
    while (zn_buf_writable(&b) > 0)
        assert_int_equal(zn_buf_append(&b, chunk, 1), 0);
    assert_int_equal(zn_buf_append(&b, chunk, 1), 0);
    assert_int_equal(b.cap, 2 * cap);

    /* A request larger than double gets exactly what it needs. */
    assert_int_equal(zn_buf_reserve(&b, 10 * b.cap), 0);
    assert_int_equal(b.cap, zn_buf_len(&b) + 10 * 2 * cap);
    zn_buf_free(&b);
}


static void
growth_keeps_large_data(void **state)
{
    zn_buf_t b;
    char chunk[4099];
    size_t total = 0;

    zn_buf_init(&b);
    while (total < (4u << 20)) {
        fill_pat(chunk, sizeof(chunk), total);
        assert_int_equal(zn_buf_append(&b, chunk, sizeof(chunk)), 0);
        total += sizeof(chunk);
    }
    assert_int_equal(zn_buf_len(&b), total);
    assert_true(b.cap < 2 * total);
    check_pat(zn_buf_peek(&b), total, 0);
    zn_buf_free(&b);
}


static void
compacts_instead_of_growing(void **state)
{
    zn_buf_t b;
    char chunk[200];
    char *data;
    size_t cap;

    zn_buf_init(&b);
    fill_pat(chunk, sizeof(chunk), 0);
    assert_int_equal(zn_buf_append(&b, chunk, 200), 0);
    cap = b.cap;
    data = b.data;
    zn_buf_consume(&b, 150);
    fill_pat(chunk, sizeof(chunk), 200);
    assert_true(zn_buf_writable(&b) < cap - 100);
    assert_int_equal(zn_buf_append(&b, chunk, cap - 100), 0);
    assert_int_equal(b.cap, cap);
    assert_ptr_equal(b.data, data);
    assert_int_equal(b.rpos, 0);
    check_pat(zn_buf_peek(&b), zn_buf_len(&b), 150);
    zn_buf_free(&b);
}


static void
grows_when_compacting_would_move_more_than_consumed(void **state)
{
    zn_buf_t b;
    char chunk[256];
    size_t cap;

    zn_buf_init(&b);
    fill_pat(chunk, sizeof(chunk), 0);
    assert_int_equal(zn_buf_reserve(&b, 1), 0);
    cap = b.cap;
    assert_true(cap <= sizeof(chunk));
    assert_int_equal(zn_buf_append(&b, chunk, cap), 0);
    zn_buf_consume(&b, 10);
    assert_int_equal(zn_buf_append(&b, chunk, 10), 0);
    assert_int_equal(b.cap, 2 * cap);
    check_pat(zn_buf_peek(&b), cap - 10, 10);
    zn_buf_free(&b);
}


static void
shrink_frees_when_empty(void **state)
{
    zn_buf_t b;

    zn_buf_init(&b);
    assert_int_equal(zn_buf_reserve(&b, 1 << 20), 0);
    assert_int_equal(zn_buf_append(&b, "abc", 3), 0);
    zn_buf_consume(&b, 3);
    assert_int_equal(zn_buf_shrink(&b, 4096), 0);
    assert_null(b.data);
    assert_int_equal(b.cap, 0);
    assert_int_equal(zn_buf_shrink(&b, 0), 0);
    zn_buf_free(&b);
}


static void
shrink_when_mostly_empty(void **state)
{
    zn_buf_t b;
    char *chunk = malloc(1 << 20);

    assert_non_null(chunk);
    fill_pat(chunk, 1 << 20, 0);
    zn_buf_init(&b);
    assert_int_equal(zn_buf_append(&b, chunk, 1 << 20), 0);
    zn_buf_consume(&b, (1 << 20) - 100);
    assert_int_equal(zn_buf_shrink(&b, 412), 0);
    assert_int_equal(b.cap, 512);
    assert_int_equal(b.rpos, 0);
    check_pat(zn_buf_peek(&b), 100, (1 << 20) - 100);

    /* Nothing consumed: shrinks in place with realloc. */
    assert_int_equal(zn_buf_shrink(&b, 0), 0);
    assert_int_equal(b.cap, 100);
    check_pat(zn_buf_peek(&b), 100, (1 << 20) - 100);
    zn_buf_free(&b);
    free(chunk);
}


static void
shrink_keeps_storage_not_mostly_empty(void **state)
{
    zn_buf_t b;
    char *data;
    char chunk[200];
    size_t cap;

    zn_buf_init(&b);
    fill_pat(chunk, sizeof(chunk), 0);
    assert_int_equal(zn_buf_append(&b, chunk, 200), 0);
    cap = b.cap;
    data = b.data;
    assert_true(cap <= 400);
    assert_int_equal(zn_buf_shrink(&b, 0), 0);
    assert_int_equal(b.cap, cap);
    assert_ptr_equal(b.data, data);
    assert_int_equal(zn_buf_shrink(&b, SIZE_MAX), 0);
    assert_int_equal(b.cap, cap);
    zn_buf_free(&b);
}


static void
cap_append(void **state)
{
    zn_buf_t b;
    char chunk[100];

    zn_buf_init(&b);
    zn_buf_set_max(&b, 100);
    fill_pat(chunk, sizeof(chunk), 0);
    assert_int_equal(zn_buf_append(&b, chunk, 60), 0);
    assert_int_equal(zn_buf_append(&b, chunk, 41), ZN_ENOBUFS);
    assert_int_equal(zn_buf_len(&b), 60);
    assert_int_equal(zn_buf_append(&b, chunk + 60, 40), 0);
    assert_int_equal(zn_buf_len(&b), 100);
    assert_true(b.cap <= 100);
    assert_int_equal(zn_buf_append(&b, chunk, 1), ZN_ENOBUFS);
    check_pat(zn_buf_peek(&b), 100, 0);

    /* Consuming makes room again, by compaction (growth is forbidden). */
    zn_buf_consume(&b, 10);
    assert_int_equal(zn_buf_append(&b, chunk, 10), 0);
    assert_int_equal(b.cap, 100);
    check_pat(zn_buf_peek(&b), 90, 10);
    zn_buf_free(&b);
}


static void
cap_prepend(void **state)
{
    zn_buf_t b;

    zn_buf_init(&b);
    zn_buf_set_max(&b, 10);
    assert_int_equal(zn_buf_append(&b, "5678", 4), 0);
    assert_int_equal(zn_buf_prepend(&b, "1234567", 7), ZN_ENOBUFS);
    assert_int_equal(zn_buf_len(&b), 4);
    assert_int_equal(zn_buf_prepend(&b, "abcdef", 6), 0);
    assert_memory_equal(zn_buf_peek(&b), "abcdef5678", 10);
    assert_int_equal(zn_buf_prepend(&b, "z", 1), ZN_ENOBUFS);
    zn_buf_free(&b);
}


static void
cap_reserve(void **state)
{
    zn_buf_t b;

    zn_buf_init(&b);
    zn_buf_set_max(&b, 1000);
    assert_int_equal(zn_buf_reserve(&b, 1001), ZN_ENOBUFS);
    assert_null(b.data);
    assert_int_equal(zn_buf_reserve(&b, 1000), 0);
    assert_int_equal(b.cap, 1000);
    zn_buf_commit(&b, 1000);
    assert_int_equal(zn_buf_reserve(&b, 0), 0);
    assert_int_equal(zn_buf_reserve(&b, 1), ZN_ENOBUFS);
    zn_buf_free(&b);
}


static void
cap_lowered_below_len_keeps_bytes(void **state)
{
    zn_buf_t b;

    zn_buf_init(&b);
    assert_int_equal(zn_buf_append(&b, "0123456789", 10), 0);
    zn_buf_set_max(&b, 4);
    assert_int_equal(zn_buf_len(&b), 10);
    assert_int_equal(zn_buf_append(&b, "x", 1), ZN_ENOBUFS);
    assert_int_equal(zn_buf_prepend(&b, "x", 1), ZN_ENOBUFS);
    assert_int_equal(zn_buf_reserve(&b, 1), ZN_ENOBUFS);
    zn_buf_consume(&b, 7);
    assert_int_equal(zn_buf_append(&b, "x", 1), 0);
    assert_memory_equal(zn_buf_peek(&b), "789x", 4);
    zn_buf_free(&b);
}


static void
sizes_that_would_overflow_are_refused(void **state)
{
    zn_buf_t b;

    zn_buf_init(&b);
    assert_int_equal(zn_buf_append(&b, "abc", 3), 0);
    assert_int_equal(zn_buf_reserve(&b, SIZE_MAX), ZN_ENOMEM);
    assert_int_equal(zn_buf_reserve(&b, SIZE_MAX - 2), ZN_ENOMEM);
    assert_int_equal(zn_buf_prepend(&b, "x", SIZE_MAX), ZN_ENOMEM);
    assert_int_equal(zn_buf_len(&b), 3);
    zn_buf_set_max(&b, 100);
    assert_int_equal(zn_buf_reserve(&b, SIZE_MAX), ZN_ENOBUFS);
    assert_int_equal(zn_buf_len(&b), 3);
    zn_buf_free(&b);
}


/*
 * A read of a socket through zn_buf_read_begin() and zn_buf_read_end(),
 * as a connection's transport makes it: one readv() into the pieces.
 */
static ssize_t
read_fd(zn_buf_t *b, int fd, char *extra, size_t extra_len)
{
    struct iovec iov[2];
    ssize_t n;
    int cnt, rc;

    if ((cnt = zn_buf_read_begin(b, iov, extra, extra_len)) < 0)
        return cnt;
    if ((n = readv(fd, iov, cnt)) < 0)
        return errno == EAGAIN ? ZN_EAGAIN : -errno;
    if ((rc = zn_buf_read_end(b, iov, cnt, (size_t)n)) != 0)
        return rc;
    return n;
}


/* A write of the readable bytes, consumed as far as written. */
static ssize_t
write_fd(zn_buf_t *b, int fd)
{
    ssize_t n;

    if (zn_buf_len(b) == 0)
        return 0;
    if ((n = send(fd, zn_buf_peek(b), zn_buf_len(b), MSG_NOSIGNAL)) < 0)
        return errno == EAGAIN ? ZN_EAGAIN : -errno;
    zn_buf_consume(b, (size_t)n);
    return n;
}


static void
read_fd_reads_into_free_space(void **state)
{
    zn_buf_t b;
    char extra[64];
    int sv[2];
    char *data;

    make_pair(sv);
    zn_buf_init(&b);
    assert_int_equal(zn_buf_reserve(&b, 100), 0);
    data = b.data;
    send_pat(sv[1], 50, 0);
    assert_int_equal(read_fd(&b, sv[0], extra, sizeof(extra)), 50);
    assert_ptr_equal(b.data, data);
    check_pat(zn_buf_peek(&b), 50, 0);
    zn_buf_free(&b);
    close_pair(sv);
}


static void
read_fd_eof_returns_zero(void **state)
{
    zn_buf_t b;
    char extra[64];
    int sv[2];

    make_pair(sv);
    zn_buf_init(&b);
    send_pat(sv[1], 5, 0);
    assert_int_equal(shutdown(sv[1], SHUT_WR), 0);
    assert_int_equal(read_fd(&b, sv[0], extra, sizeof(extra)), 5);
    assert_int_equal(read_fd(&b, sv[0], extra, sizeof(extra)), 0);
    assert_int_equal(zn_buf_len(&b), 5);
    zn_buf_free(&b);
    close_pair(sv);
}


static void
read_fd_eagain(void **state)
{
    zn_buf_t b;
    char extra[64];
    int sv[2];

    make_pair(sv);
    zn_buf_init(&b);
    assert_int_equal(read_fd(&b, sv[0], extra, sizeof(extra)),
                     ZN_EAGAIN);
    assert_int_equal(zn_buf_len(&b), 0);
    assert_null(b.data);
    zn_buf_free(&b);
    close_pair(sv);
}


static void
read_fd_bad_fd(void **state)
{
    zn_buf_t b;
    char extra[64];

    zn_buf_init(&b);
    assert_int_equal(read_fd(&b, -1, extra, sizeof(extra)), ZN_EBADF);
    zn_buf_free(&b);
}


static void
read_fd_spills_into_extra(void **state)
{
    zn_buf_t b;
    static char extra[65536];
    int sv[2];

    make_pair(sv);
    zn_buf_init(&b);
    assert_int_equal(zn_buf_append(&b, "", 0), 0);
    assert_int_equal(zn_buf_reserve(&b, 10), 0);
    fill_pat(zn_buf_tail(&b), 3, 0);
    zn_buf_commit(&b, 3);
    assert_true(zn_buf_writable(&b) < 10000);
    send_pat(sv[1], 10000, 3);
    assert_int_equal(read_fd(&b, sv[0], extra, sizeof(extra)), 10000);
    assert_int_equal(zn_buf_len(&b), 10003);
    check_pat(zn_buf_peek(&b), 10003, 0);
    zn_buf_free(&b);

    /* A buffer with no storage allocates only what arrived. */
    zn_buf_init(&b);
    send_pat(sv[1], 1000, 0);
    assert_int_equal(read_fd(&b, sv[0], extra, sizeof(extra)), 1000);
    assert_int_equal(b.cap, 1000);
    check_pat(zn_buf_peek(&b), 1000, 0);
    zn_buf_free(&b);
    close_pair(sv);
}


static void
read_fd_skips_extra_when_tail_is_larger(void **state)
{
    zn_buf_t b;
    char extra[1024];
    int sv[2];
    size_t cap, tail;

    make_pair(sv);
    zn_buf_init(&b);
    assert_int_equal(zn_buf_reserve(&b, 8192), 0);
    cap = b.cap;
    tail = zn_buf_writable(&b);
    send_pat(sv[1], 20000, 0);
    assert_int_equal(read_fd(&b, sv[0], extra, sizeof(extra)),
                     (ssize_t)tail);
    assert_int_equal(b.cap, cap);
    check_pat(zn_buf_peek(&b), tail, 0);
    zn_buf_free(&b);
    close_pair(sv);
}


static void
read_fd_without_extra(void **state)
{
    zn_buf_t b;
    int sv[2];
    size_t got = 0;
    ssize_t n;

    make_pair(sv);
    zn_buf_init(&b);
    send_pat(sv[1], 20000, 0);
    while ((n = read_fd(&b, sv[0], NULL, 0)) > 0)
        got += (size_t)n;
    assert_int_equal(n, ZN_EAGAIN);
    assert_int_equal(got, 20000);
    check_pat(zn_buf_peek(&b), 20000, 0);
    zn_buf_free(&b);
    close_pair(sv);
}


static void
read_fd_at_cap(void **state)
{
    zn_buf_t b;
    char extra[4096];
    char rest[300];
    int sv[2];

    make_pair(sv);
    zn_buf_init(&b);
    zn_buf_set_max(&b, 100);
    send_pat(sv[1], 300, 0);
    assert_int_equal(read_fd(&b, sv[0], extra, sizeof(extra)), 100);
    assert_true(b.cap <= 100);
    assert_int_equal(read_fd(&b, sv[0], extra, sizeof(extra)),
                     ZN_ENOBUFS);
    assert_int_equal(zn_buf_len(&b), 100);
    check_pat(zn_buf_peek(&b), 100, 0);

    /* Consuming 40 lets exactly 40 more in; the rest stays in the socket. */
    zn_buf_consume(&b, 40);
    assert_int_equal(read_fd(&b, sv[0], extra, sizeof(extra)), 40);
    check_pat(zn_buf_peek(&b), 100, 40);
    assert_int_equal(recv(sv[0], rest, sizeof(rest), 0), 160);
    check_pat(rest, 160, 140);
    zn_buf_free(&b);
    close_pair(sv);
}


static void
write_fd_sends_and_consumes(void **state)
{
    zn_buf_t b;
    char out[64];
    int sv[2];

    make_pair(sv);
    zn_buf_init(&b);
    assert_int_equal(write_fd(&b, -1), 0);
    assert_int_equal(zn_buf_append(&b, "ping pong", 9), 0);
    zn_buf_consume(&b, 5);
    assert_int_equal(write_fd(&b, sv[0]), 4);
    assert_int_equal(zn_buf_len(&b), 0);
    assert_int_equal(recv(sv[1], out, sizeof(out), 0), 4);
    assert_memory_equal(out, "pong", 4);
    zn_buf_free(&b);
    close_pair(sv);
}


static void
write_fd_partial_then_eagain(void **state)
{
    zn_buf_t b;
    int sv[2];
    size_t total = 8 << 20, sent = 0;
    char *p = malloc(total);
    ssize_t n;

    assert_non_null(p);
    make_pair(sv);
    zn_buf_init(&b);
    fill_pat(p, total, 0);
    assert_int_equal(zn_buf_append(&b, p, total), 0);
    while ((n = write_fd(&b, sv[0])) > 0)
        sent += (size_t)n;
    assert_int_equal(n, ZN_EAGAIN);
    assert_true(sent > 0 && sent < total);
    assert_int_equal(zn_buf_len(&b), total - sent);
    check_pat(zn_buf_peek(&b), total - sent, sent);
    zn_buf_free(&b);
    close_pair(sv);
    free(p);
}


static void
write_fd_closed_peer_is_epipe_not_sigpipe(void **state)
{
    zn_buf_t b;
    int sv[2];

    make_pair(sv);
    close(sv[1]);
    zn_buf_init(&b);
    assert_int_equal(zn_buf_append(&b, "lost", 4), 0);
    assert_int_equal(write_fd(&b, sv[0]), ZN_EPIPE);
    assert_int_equal(zn_buf_len(&b), 4);
    zn_buf_free(&b);
    close(sv[0]);
}


static void
borrowed_works_in_place(void **state)
{
    zn_buf_t b;
    char area[64] = "hello";
    char extra[16];
    int sv[2];

    make_pair(sv);
    zn_buf_init_borrowed(&b, area, 5, sizeof(area));
    assert_true(b.borrowed);
    assert_int_equal(zn_buf_append(&b, " you", 4), 0);
    send_pat(sv[1], 20, 0);
    assert_int_equal(read_fd(&b, sv[0], extra, sizeof(extra)), 20);
    assert_ptr_equal(b.data, area);
    assert_memory_equal(zn_buf_peek(&b), "hello you", 9);
    check_pat(zn_buf_peek(&b) + 9, 20, 0);
    zn_buf_consume(&b, 6);
    assert_int_equal(write_fd(&b, sv[0]), 23);
    zn_buf_free(&b);
    assert_null(b.data);
    assert_false(b.borrowed);
    close_pair(sv);
}


static void
borrowed_grows_into_owned_storage(void **state)
{
    zn_buf_t b;
    char area[32];
    char chunk[100];

    fill_pat(area, sizeof(area), 0);
    fill_pat(chunk, sizeof(chunk), 32);
    zn_buf_init_borrowed(&b, area, sizeof(area), sizeof(area));
    zn_buf_consume(&b, 2);
    assert_int_equal(zn_buf_append(&b, chunk, sizeof(chunk)), 0);
    assert_false(b.borrowed);
    assert_true(b.data != area);
    check_pat(zn_buf_peek(&b), 130, 2);
    check_pat(area, sizeof(area), 0);
    zn_buf_free(&b);

    /* Prepend that does not fit also moves to owned storage. */
    zn_buf_init_borrowed(&b, area + 1, 31, 31);
    assert_int_equal(zn_buf_prepend(&b, area, 1), 0);
    assert_false(b.borrowed);
    check_pat(zn_buf_peek(&b), 32, 0);
    zn_buf_free(&b);
}


static void
borrowed_shrink_detaches(void **state)
{
    zn_buf_t b;
    char area[4096];

    fill_pat(area, sizeof(area), 0);
    zn_buf_init_borrowed(&b, area, sizeof(area), sizeof(area));
    zn_buf_consume(&b, 4000);
    assert_int_equal(zn_buf_shrink(&b, 10), 0);
    assert_false(b.borrowed);
    assert_true(b.data != area);
    assert_int_equal(b.cap, 106);
    check_pat(zn_buf_peek(&b), 96, 4000);
    memset(area, 0, sizeof(area));
    check_pat(zn_buf_peek(&b), 96, 4000);
    zn_buf_free(&b);

    zn_buf_init_borrowed(&b, area, 0, sizeof(area));
    assert_int_equal(zn_buf_shrink(&b, 10), 0);
    assert_null(b.data);
    assert_false(b.borrowed);
    zn_buf_free(&b);
}


static void
find_locates_needle(void **state)
{
    zn_buf_t b;

    zn_buf_init(&b);
    assert_int_equal(zn_buf_find(&b, "x", 1), -1);
    assert_int_equal(zn_buf_append(&b, "GET / HTTP/1.1\r\n\r\nbody", 22), 0);
    zn_buf_consume(&b, 4);
    assert_int_equal(zn_buf_find(&b, "\r\n\r\n", 4), 10);
    assert_int_equal(zn_buf_find(&b, "GET", 3), -1);
    assert_int_equal(zn_buf_find(&b, "body", 4), 14);
    assert_int_equal(zn_buf_find(&b, "", 0), 0);
    assert_int_equal(zn_buf_find(&b, "body!", 5), -1);
    zn_buf_free(&b);
}


/* The failing allocator: every request fails, frees go to libc. */
static void *
fail_malloc(size_t size)
{
    return NULL;
}


static void *
fail_realloc(void *p, size_t size)
{
    return NULL;
}


static void *
fail_calloc(size_t count, size_t size)
{
    return NULL;
}


static void
fail_allocations(void)
{
    assert_int_equal(
        zn_set_allocator(fail_malloc, fail_realloc, fail_calloc, free), 0);
}


/* Teardown of the out-of-memory tests: runs even when an assert fails. */
static int
restore_allocator(void **state)
{
    return zn_set_allocator(malloc, realloc, calloc, free);
}


/* Asserts the buffer is field for field and byte for byte what it was. */
static void
assert_same(const zn_buf_t *b, const zn_buf_t *was, const char *bytes)
{
    assert_ptr_equal(b->data, was->data);
    assert_int_equal(b->rpos, was->rpos);
    assert_int_equal(b->wpos, was->wpos);
    assert_int_equal(b->cap, was->cap);
    assert_int_equal(b->max, was->max);
    assert_int_equal(b->borrowed, was->borrowed);
    if (zn_buf_len(b) > 0)
        assert_memory_equal(zn_buf_peek(b), bytes, zn_buf_len(b));
}


static void
enomem_first_storage(void **state)
{
    zn_buf_t b, was;
    char extra[64];
    int sv[2];

    make_pair(sv);
    zn_buf_init(&b);
    was = b;
    fail_allocations();
    assert_int_equal(zn_buf_append(&b, "x", 1), ZN_ENOMEM);
    assert_int_equal(zn_buf_prepend(&b, "x", 1), ZN_ENOMEM);
    assert_int_equal(zn_buf_reserve(&b, 1), ZN_ENOMEM);
    assert_int_equal(read_fd(&b, sv[0], NULL, 0), ZN_ENOMEM);
    send_pat(sv[1], 10, 0);
    assert_int_equal(read_fd(&b, sv[0], extra, sizeof(extra)),
                     ZN_ENOMEM);
    assert_same(&b, &was, NULL);
    close_pair(sv);
}


static void
enomem_growth(void **state)
{
    zn_buf_t b, was;
    char chunk[1024], saved[1024];

    fill_pat(chunk, sizeof(chunk), 0);
    zn_buf_init(&b);
    assert_int_equal(zn_buf_reserve(&b, 1), 0);
    assert_int_equal(zn_buf_append(&b, chunk, b.cap), 0);
    memcpy(saved, zn_buf_peek(&b), zn_buf_len(&b));
    was = b;
    fail_allocations();
    assert_int_equal(zn_buf_append(&b, chunk, 1), ZN_ENOMEM);
    assert_int_equal(zn_buf_prepend(&b, chunk, 1), ZN_ENOMEM);
    assert_int_equal(zn_buf_reserve(&b, 1), ZN_ENOMEM);
    assert_same(&b, &was, saved);
    zn_buf_free(&b);
}


static void
enomem_read_fd_partly_in_tail(void **state)
{
    zn_buf_t b, was;
    char extra[2048], saved[1024];
    int sv[2];

    make_pair(sv);
    zn_buf_init(&b);
    fill_pat(saved, sizeof(saved), 0);
    assert_int_equal(zn_buf_append(&b, saved, 100), 0);
    zn_buf_consume(&b, 1);
    memcpy(saved, zn_buf_peek(&b), zn_buf_len(&b));
    was = b;
    send_pat(sv[1], zn_buf_writable(&b) + 10, 0);
    fail_allocations();
    assert_int_equal(read_fd(&b, sv[0], extra, sizeof(extra)),
                     ZN_ENOMEM);
    assert_same(&b, &was, saved);
    zn_buf_free(&b);
    close_pair(sv);
}


static void
enomem_shrink(void **state)
{
    zn_buf_t b, was;
    char chunk[1000];

    fill_pat(chunk, sizeof(chunk), 0);
    zn_buf_init(&b);
    assert_int_equal(zn_buf_append(&b, chunk, sizeof(chunk)), 0);
    zn_buf_consume(&b, 900);
    was = b;
    fail_allocations();
    assert_int_equal(zn_buf_shrink(&b, 0), ZN_ENOMEM);
    assert_same(&b, &was, chunk + 900);
    zn_buf_free(&b);
}


static void
enomem_borrowed(void **state)
{
    zn_buf_t b, was;
    char area[16] = "borrowed bytes!";

    zn_buf_init_borrowed(&b, area, sizeof(area), sizeof(area));
    was = b;
    fail_allocations();
    assert_int_equal(zn_buf_append(&b, "x", 1), ZN_ENOMEM);
    assert_int_equal(zn_buf_prepend(&b, "x", 1), ZN_ENOMEM);
    assert_int_equal(zn_buf_reserve(&b, 1), ZN_ENOMEM);
    assert_int_equal(zn_buf_shrink(&b, 0), ZN_ENOMEM);
    assert_same(&b, &was, "borrowed bytes!");
    assert_int_equal(restore_allocator(NULL), 0);
    assert_int_equal(zn_buf_append(&b, "x", 1), 0);
    assert_false(b.borrowed);
    assert_memory_equal(zn_buf_peek(&b), "borrowed bytes!\0x", 17);
    zn_buf_free(&b);
}


/*
 * zn__copy() splits copies whose destination is 1..63 bytes after the
 * source modulo 4096 into pieces: every size around the piece length,
 * every distance that splits and some that do not, disjoint and moving
 * down inside one area, must give memmove()'s result.
 */
static void
copy_pieces_match_memmove(void **state)
{
    static const size_t sizes[] = {1, 2047, 2048, 2049, 4096 + 17, 16384,
                                   65536 + 5};
    size_t si, dist, i, n;
    char *src = aligned_alloc(4096, 3 * 65536);
    char *dst = aligned_alloc(4096, 3 * 65536);
    char *ref = malloc(3 * 65536);

    (void)state;
    assert_non_null(src);
    assert_non_null(dst);
    assert_non_null(ref);
    for (i = 0; i < 3 * 65536; i++)
        src[i] = pat(i);
    for (si = 0; si < sizeof(sizes) / sizeof(sizes[0]); si++) {
        n = sizes[si];
        for (dist = 0; dist < 70; dist++) {
            /* Disjoint: dst sits `dist` bytes after src modulo 4096. */
            memset(dst, 0, 2 * 65536 + 4096);
            zn__copy(dst + 4096 + dist, src + 4096, n);
            assert_memory_equal(dst + 4096 + dist, src + 4096, n);
            assert_int_equal(dst[4096 + dist - 1], 0);
            assert_int_equal(dst[4096 + dist + n], 0);
            /* Moving down by 4096 - dist: the same distance modulo 4096,
             * overlapping when n is larger than the move. */
            memcpy(ref, src, 3 * 65536);
            memcpy(dst, src, 3 * 65536);
            memmove(ref + dist, ref + 4096, n);
            zn__copy(dst + dist, dst + 4096, n);
            assert_memory_equal(dst, ref, 3 * 65536);
        }
    }
    free(src);
    free(dst);
    free(ref);
}


int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(init_is_empty_without_storage),
        cmocka_unit_test(free_releases_and_keeps_cap),
        cmocka_unit_test(append_consume_read),
        cmocka_unit_test(consume_all_resets_offsets),
        cmocka_unit_test(prepend_into_consumed_space),
        cmocka_unit_test(prepend_by_moving_in_place),
        cmocka_unit_test(prepend_into_new_storage),
        cmocka_unit_test(reserve_commit),
        cmocka_unit_test(growth_doubles),
        cmocka_unit_test(growth_keeps_large_data),
        cmocka_unit_test(compacts_instead_of_growing),
        cmocka_unit_test(grows_when_compacting_would_move_more_than_consumed),
        cmocka_unit_test(shrink_frees_when_empty),
        cmocka_unit_test(shrink_when_mostly_empty),
        cmocka_unit_test(shrink_keeps_storage_not_mostly_empty),
        cmocka_unit_test(cap_append),
        cmocka_unit_test(cap_prepend),
        cmocka_unit_test(cap_reserve),
        cmocka_unit_test(cap_lowered_below_len_keeps_bytes),
        cmocka_unit_test(sizes_that_would_overflow_are_refused),
        cmocka_unit_test(read_fd_reads_into_free_space),
        cmocka_unit_test(read_fd_eof_returns_zero),
        cmocka_unit_test(read_fd_eagain),
        cmocka_unit_test(read_fd_bad_fd),
        cmocka_unit_test(read_fd_spills_into_extra),
        cmocka_unit_test(read_fd_skips_extra_when_tail_is_larger),
        cmocka_unit_test(read_fd_without_extra),
        cmocka_unit_test(read_fd_at_cap),
        cmocka_unit_test(write_fd_sends_and_consumes),
        cmocka_unit_test(write_fd_partial_then_eagain),
        cmocka_unit_test(write_fd_closed_peer_is_epipe_not_sigpipe),
        cmocka_unit_test(borrowed_works_in_place),
        cmocka_unit_test(copy_pieces_match_memmove),
        cmocka_unit_test(borrowed_grows_into_owned_storage),
        cmocka_unit_test(borrowed_shrink_detaches),
        cmocka_unit_test(find_locates_needle),
        cmocka_unit_test_teardown(enomem_first_storage, restore_allocator),
        cmocka_unit_test_teardown(enomem_growth, restore_allocator),
        cmocka_unit_test_teardown(enomem_read_fd_partly_in_tail,
                                  restore_allocator),
        cmocka_unit_test_teardown(enomem_shrink, restore_allocator),
        cmocka_unit_test_teardown(enomem_borrowed, restore_allocator),
    };

    alarm(TEST_TIMEOUT_S);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
