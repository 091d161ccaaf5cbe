/*
 * buf_bench.c: how should a connection read its input? Compares, on one
 * stream of fixed-size messages (docs/buffers.md gives the results):
 *
 *   contig     znet's choice: one contiguous zn_buf_t, one readv() per
 *              wake-up into its free tail plus a 64 KiB per-loop scratch
 *              area. An empty buffer reads straight into the scratch area
 *              (borrowed, as the connection does) and keeps only leftovers;
 *              storage is freed whenever the buffer empties.
 *   contig-kp  the same, but storage is kept when the buffer empties.
 *   contig-nb  the same without borrowing: every read lands in the buffer,
 *              which is freed whenever it empties.
 *   fixed      read() into a 16 KiB per-connection array until EAGAIN;
 *              whole messages are used in place, a partial one is carried
 *              over in an assembly buffer.
 *   chain-4k   a chunk chain like libevent's evbuffer: FIONREAD, then one
 *              readv() of at most 4096 bytes (libevent's EVBUFFER_MAX_READ)
 *              into the last chunk's room and a new power-of-two chunk;
 *              drained chunks are freed; a message that straddles chunks is
 *              copied out to be contiguous (evbuffer_pullup).
 *   chain-64k  the same with reads of up to 64 KiB.
 *
 * A writer thread streams the messages over loopback TCP (or an AF_UNIX
 * socketpair) with blocking send()s of 64 KiB or one message; the reader
 * waits in epoll (level-triggered), reads by one method and checksums each
 * whole message. Counted per MiB: read-path syscalls (read, readv, ioctl),
 * epoll_wait calls and allocations; and the buffer memory of the
 * connection at its peak and once the stream is over (idle).
 *
 * Build: gcc -O2 -I include -I src src/common.c src/buf.c bench/buf_bench.c
 * Run:   ./a.out [tcp|unix] [MiB per run, default 256]
 */
#define _GNU_SOURCE

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "znet/buf.h"

enum {
    M_CONTIG,
    M_CONTIG_KEEP,
    M_CONTIG_NB,
    M_FIXED,
    M_CHAIN4K,
    M_CHAIN64K,
    M_COUNT
};

static const char *method_names[M_COUNT] = {"contig", "contig-kp", "contig-nb",
                                            "fixed",  "chain-4k",  "chain-64k"};

#define SCRATCH_LEN 65536
#define FIXED_LEN 16384
#define REPEATS 5

struct chunk {
    struct chunk *next;
    size_t cap, off, len; /* data[off, off + len) is readable */
    char data[];
};

/* One connection's reading state, for every method. */
struct reader {
    int fd;
    size_t msg;
    zn_buf_t in;                /* contig*, fixed (assembly) */
    char *fixed;                /* fixed: the per-connection array */
    struct chunk *first, *last; /* chain */
    size_t chain_len, max_read;
    char *tmp; /* chain: pull-up area, msg bytes */
    uint64_t sum, reads;
    size_t used; /* bytes of whole messages used so far */
};

struct result {
    double mib_s;
    uint64_t reads, waits, allocs;
    size_t peak, idle;
};

static char scratch[SCRATCH_LEN];


/* Counting allocator: every buffer byte any method holds goes through it. */
static size_t mem_now, mem_peak;
static uint64_t mem_allocs;

static void *
count_malloc(size_t n)
{
    max_align_t *h = malloc(sizeof(*h) + n);

    if (h == NULL)
        return NULL;
    *(size_t *)h = n;
    mem_now += n;
    mem_allocs++;
    if (mem_now > mem_peak)
        mem_peak = mem_now;
    return h + 1;
}


static void
count_free(void *p)
{
    max_align_t *h = p;

    if (p == NULL)
        return;
    mem_now -= *(size_t *)(h - 1);
    free(h - 1);
}


/* Grows in place when libc can (as large blocks do, with mremap), so the
 * peak is not inflated by a copy that would not happen. */
static void *
count_realloc(void *p, size_t n)
{
    max_align_t *h;
    size_t old;

    if (p == NULL)
        return count_malloc(n);
    h = (max_align_t *)p - 1;
    old = *(size_t *)h;
    h = realloc(h, sizeof(*h) + n);
    if (h == NULL)
        return NULL;
    *(size_t *)h = n;
    mem_now = mem_now - old + n;
    mem_allocs++;
    if (mem_now > mem_peak)
        mem_peak = mem_now;
    return h + 1;
}


static void *
count_calloc(size_t c, size_t n)
{
    void *p = count_malloc(c * n);

    if (p != NULL)
        memset(p, 0, c * n);
    return p;
}


static void
die(const char *what)
{
    perror(what);
    exit(1);
}


/* The "work" on a message: touch every byte once. */
static uint64_t
checksum(const char *p, size_t n)
{
    uint64_t s = 0;

    for (size_t i = 0; i < n; i++)
        s += (unsigned char)p[i];
    return s;
}


/* The "work" on one whole, contiguous message. */
static void
use_msg(struct reader *r, const char *p)
{
    r->sum += checksum(p, r->msg);
    r->used += r->msg;
}


/* Uses every whole message in a contiguous buffer. */
static void
use_buf(struct reader *r, zn_buf_t *b)
{
    while (zn_buf_len(b) >= r->msg) {
        use_msg(r, zn_buf_peek(b));
        zn_buf_consume(b, r->msg);
    }
}


/* znet's read: one readv() per wake-up into the buffer's free space and
 * the scratch area (zn_buf_read_begin/_end), as a connection makes it. */
static ssize_t
contig_read(zn_buf_t *b, int fd, char *extra, size_t extra_len)
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


static int
contig_readable(struct reader *r, int borrow, int keep)
{
    ssize_t n;

    if (borrow && r->in.data == NULL) {
        zn_buf_init_borrowed(&r->in, scratch, 0, sizeof(scratch));
        n = contig_read(&r->in, r->fd, NULL, 0);
    } else {
        n = contig_read(&r->in, r->fd, scratch, sizeof(scratch));
    }
    r->reads++;
    if (n == 0)
        return 1;
    if (n < 0 && n != ZN_EAGAIN) {
        fprintf(stderr, "read_fd: %s\n", zn_strerror((int)n));
        exit(1);
    }
    use_buf(r, &r->in);
    if (r->in.borrowed || (zn_buf_len(&r->in) == 0 && !keep))
        zn_buf_shrink(&r->in, 0);
    return 0;
}


/* Uses what one read() put in the fixed array. */
static void
fixed_use(struct reader *r, size_t n)
{
    const char *p = r->fixed;

    if (zn_buf_len(&r->in) > 0) {
        if (zn_buf_append(&r->in, p, n) != 0)
            die("append");
        use_buf(r, &r->in);
        if (zn_buf_len(&r->in) == 0)
            zn_buf_shrink(&r->in, 0);
        return;
    }
    for (; n >= r->msg; p += r->msg, n -= r->msg)
        use_msg(r, p);
    if (n > 0 && zn_buf_append(&r->in, p, n) != 0)
        die("append");
}


/* Plain read() into a fixed array, repeated until EAGAIN. */
static int
fixed_readable(struct reader *r)
{
    ssize_t n;

    for (;;) {
        n = read(r->fd, r->fixed, FIXED_LEN);
        r->reads++;
        if (n == 0)
            return 1;
        if (n < 0) {
            if (errno == EAGAIN)
                return 0;
            die("read");
        }
        fixed_use(r, (size_t)n);
    }
}


static struct chunk *
chunk_new(size_t need)
{
    size_t size = 1024;
    struct chunk *c;

    while (size < need + sizeof(*c))
        size <<= 1;
    c = count_malloc(size);
    if (c == NULL)
        die("malloc");
    c->next = NULL;
    c->cap = size - sizeof(*c);
    c->off = 0;
    c->len = 0;
    return c;
}


/* Drops n bytes from the front of the chain, freeing drained chunks. */
static void
chain_drain(struct reader *r, size_t n)
{
    struct chunk *c;

    r->chain_len -= n;
    while (n > 0) {
        c = r->first;
        if (n < c->len) {
            c->off += n;
            c->len -= n;
            return;
        }
        n -= c->len;
        r->first = c->next;
        if (r->last == c)
            r->last = NULL;
        count_free(c);
    }
}


/* Uses whole messages: in place if contiguous, else copied out first. */
static void
chain_use(struct reader *r)
{
    size_t got, k;
    struct chunk *c;

    while (r->chain_len >= r->msg) {
        c = r->first;
        if (c->len >= r->msg) {
            use_msg(r, c->data + c->off);
        } else {
            for (got = 0; got < r->msg; got += k, c = c->next) {
                k = c->len < r->msg - got ? c->len : r->msg - got;
                memcpy(r->tmp + got, c->data + c->off, k);
            }
            use_msg(r, r->tmp);
        }
        chain_drain(r, r->msg);
    }
}


/* Appends n read bytes: first into the old last chunk's room, then `c`. */
static void
chain_commit(struct reader *r, struct chunk *c, size_t room, size_t n)
{
    size_t k = n < room ? n : room;

    if (k > 0)
        r->last->len += k;
    r->chain_len += n;
    if (c == NULL)
        return;
    c->len = n - k;
    if (c->len == 0) {
        count_free(c);
        return;
    }
    if (r->last != NULL)
        r->last->next = c;
    else
        r->first = c;
    r->last = c;
}


/* libevent's evbuffer_read(): FIONREAD, then one readv() of at most
 * max_read bytes into the last chunk's room and one new chunk. */
static int
chain_readable(struct reader *r)
{
    struct iovec iov[2];
    struct chunk *c = NULL;
    size_t want, room = 0;
    int avail, cnt = 0;
    ssize_t n;

    if (ioctl(r->fd, FIONREAD, &avail) < 0)
        die("ioctl");
    want =
        avail <= 0 || (size_t)avail > r->max_read ? r->max_read : (size_t)avail;
    if (r->last != NULL)
        room = r->last->cap - r->last->off - r->last->len;
    if (room > 0)
        iov[cnt++] =
            (struct iovec){r->last->data + r->last->off + r->last->len, room};
    if (room < want) {
        c = chunk_new(want - room);
        iov[cnt++] = (struct iovec){c->data, c->cap};
    }
    n = readv(r->fd, iov, cnt);
    r->reads += 2;
    if (n <= 0) {
        count_free(c);
        if (n < 0 && errno != EAGAIN)
            die("readv");
        return n == 0;
    }
    chain_commit(r, c, room, (size_t)n);
    chain_use(r);
    return 0;
}


static int
on_readable(struct reader *r, int method)
{
    switch (method) {
    case M_CONTIG:
        return contig_readable(r, 1, 0);
    case M_CONTIG_KEEP:
        return contig_readable(r, 1, 1);
    case M_CONTIG_NB:
        return contig_readable(r, 0, 0);
    case M_FIXED:
        return fixed_readable(r);
    default:
        return chain_readable(r);
    }
}


/* Pins the calling thread to one CPU, if there are two: the reader on 0,
 * the writer on 1, so the scheduler does not add its own noise. */
static void
pin(int cpu)
{
    cpu_set_t set;

    if (sysconf(_SC_NPROCESSORS_ONLN) < 2)
        return;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    (void)pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}


/* The writer thread: `total` bytes of messages, then end of stream. */
struct writer {
    int fd;
    size_t msg, total;
    uint64_t sum;
};

static void *
writer_main(void *arg)
{
    struct writer *w = arg;
    size_t block = w->msg > SCRATCH_LEN ? w->msg : SCRATCH_LEN;
    char *p = malloc(block);
    size_t sent = 0;
    ssize_t n;

    if (p == NULL)
        die("malloc");
    pin(1);
    for (size_t i = 0; i < block; i++)
        p[i] = (char)(i * 7 + i / w->msg);
    w->sum = checksum(p, block) * (w->total / block);
    while (sent < w->total) {
        n = send(w->fd, p + sent % block, block - sent % block, 0);
        if (n < 0)
            die("send");
        sent += (size_t)n;
    }
    shutdown(w->fd, SHUT_WR);
    free(p);
    return NULL;
}


/* A connected pair: sv[0] reads (non-blocking), sv[1] writes. */
static void
make_stream(int tcp, int sv[2])
{
    struct sockaddr_in a = {.sin_family = AF_INET};
    socklen_t alen = sizeof(a);
    int l;

    if (!tcp) {
        if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0)
            die("socketpair");
    } else {
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        l = socket(AF_INET, SOCK_STREAM, 0);
        if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof(a)) < 0 ||
            listen(l, 1) < 0 ||
            getsockname(l, (struct sockaddr *)&a, &alen) < 0)
            die("listen");
        sv[1] = socket(AF_INET, SOCK_STREAM, 0);
        if (sv[1] < 0 || connect(sv[1], (struct sockaddr *)&a, alen) < 0)
            die("connect");
        sv[0] = accept(l, NULL, NULL);
        if (sv[0] < 0)
            die("accept");
        close(l);
    }
    if (fcntl(sv[0], F_SETFL, O_NONBLOCK) < 0)
        die("fcntl");
}


static void
reader_init(struct reader *r, int fd, size_t msg, int method)
{
    memset(r, 0, sizeof(*r));
    r->fd = fd;
    r->msg = msg;
    zn_buf_init(&r->in);
    r->max_read = method == M_CHAIN4K ? 4096 : SCRATCH_LEN;
    if (method == M_FIXED && (r->fixed = count_malloc(FIXED_LEN)) == NULL)
        die("malloc");
    if (method >= M_CHAIN4K && (r->tmp = malloc(msg)) == NULL)
        die("malloc");
}


static void
reader_free(struct reader *r)
{
    zn_buf_free(&r->in);
    count_free(r->fixed);
    chain_drain(r, r->chain_len);
    free(r->tmp);
}


/* One run: streams `total` bytes of `msg`-byte messages through `method`. */
static void
run(int tcp, int method, size_t msg, size_t total, struct result *res)
{
    struct writer w = {.msg = msg, .total = total};
    struct epoll_event ev = {.events = EPOLLIN};
    struct reader r;
    pthread_t t;
    int sv[2], ep;
    uint64_t t0;

    make_stream(tcp, sv);
    reader_init(&r, sv[0], msg, method);
    w.fd = sv[1];
    ep = epoll_create1(0);
    if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, sv[0], &ev) < 0)
        die("epoll");
    mem_peak = mem_now;
    mem_allocs = 0;
    memset(res, 0, sizeof(*res));
    t0 = zn_now_ns();
    if (pthread_create(&t, NULL, writer_main, &w) != 0)
        die("pthread_create");
    while (r.used < total) {
        if (epoll_wait(ep, &ev, 1, -1) < 0 && errno != EINTR)
            die("epoll_wait");
        res->waits++;
        if (on_readable(&r, method) && r.used < total)
            die("early end of stream");
    }
    res->mib_s = (double)total / (1 << 20) / ((zn_now_ns() - t0) / 1e9);
    res->idle = mem_now;
    pthread_join(t, NULL);
    if (r.sum != w.sum) {
        fprintf(stderr, "%s: checksum mismatch\n", method_names[method]);
        exit(1);
    }
    res->reads = r.reads;
    res->allocs = mem_allocs;
    res->peak = mem_peak;
    reader_free(&r);
    close(ep);
    close(sv[0]);
    close(sv[1]);
}


static int
by_speed(const void *a, const void *b)
{
    double x = ((const struct result *)a)->mib_s;
    double y = ((const struct result *)b)->mib_s;

    return (x > y) - (x < y);
}


int
main(int argc, char **argv)
{
    static const size_t sizes[] = {64, 16384, 1 << 20};
    int tcp = !(argc > 1 && strcmp(argv[1], "unix") == 0);
    size_t mib = argc > 2 ? strtoul(argv[2], NULL, 10) : 256;
    struct result rs[REPEATS], *m;
    double per;

    zn_set_allocator(count_malloc, count_realloc, count_calloc, count_free);
    pin(0);
    printf("%s, %zu MiB per run, median of %d runs\n",
           tcp ? "loopback TCP" : "AF_UNIX socketpair", mib, REPEATS);
    printf("%-10s %7s %6s %11s %9s %9s %10s %8s %7s\n", "method", "msg",
           "MiB/s", "(min-max)", "reads/MiB", "waits/MiB", "allocs/MiB",
           "peak KiB", "idle B");
    for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
        for (int k = 0; k < M_COUNT; k++) {
            for (int i = 0; i < REPEATS; i++)
                run(tcp, k, sizes[s], mib << 20, &rs[i]);
            qsort(rs, REPEATS, sizeof(rs[0]), by_speed);
            m = &rs[REPEATS / 2];
            per = (double)mib;
            printf("%-10s %7zu %6.0f %5.0f-%-5.0f %9.1f %9.1f %10.2f %8.0f "
                   "%7zu\n",
                   method_names[k], sizes[s], m->mib_s, rs[0].mib_s,
                   rs[REPEATS - 1].mib_s, m->reads / per, m->waits / per,
                   m->allocs / per, m->peak / 1024.0, m->idle);
        }
    }
    return 0;
}
