/*
 * znet-bench: a load generator for echo servers and for protocol v1 servers.
 *
 * It is one thread on one epoll, written directly on the system calls and on
 * nothing else, so that it cannot flatter znet (nor any other library it is
 * pointed at). Modes:
 *
 *   pingpong  every connection sends one block, then echoes what it receives;
 *             the figure is MiB/s read by the client (muduo's method).
 *   rr        every connection keeps P requests of S bytes outstanding against
 *             an echo server; requests/s and a latency histogram.
 *   rpc       the same in protocol v1 frames, cmd 2 (demo.EchoReq/EchoRsp).
 *   idle      opens N connections (optionally one round trip each) and holds
 *             them, for memory measurements by an outside observer.
 *
 * Every byte that comes back is checked against what was sent; a refused
 * connection, a wrong reply or a server that closes ends the run with a
 * message and exit status 1. Usage errors exit with status 2.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* Largest read or write done by one system call. */
#define CHUNK (64 * 1024)

/* Period of the byte pattern of rr and rpc: a prime, so that consecutive
 * requests differ. */
#define PERIOD 4093

/* Connections being set up at once: a burst of 10,000 SYNs would overflow
 * the server's accept queue and stall on SYN retransmits. */
#define MAX_CONNECTING 256
#define CONNECT_TIMEOUT_NS (15 * NS_PER_S)
#define ROUND_TRIP_TIMEOUT_NS (15 * NS_PER_S)
#define DRAIN_TIMEOUT_NS (2 * NS_PER_S)
#define MAX_EVENTS 256
#define NS_PER_S 1000000000ULL

/* Protocol v1 (docs: DESIGN.md, "Wire protocol"). */
#define FRAME_HEADER 16
#define FRAME_MAGIC 0x7A6E
#define FRAME_VERSION 1
#define FLAG_RESPONSE 0x01
#define FLAG_ERROR 0x02
#define FLAG_ONEWAY 0x04
#define CMD_ECHO 2
#define MAX_BODY (4u * 1024 * 1024)
#define SLOT_BITS 16

/* Log-linear histogram: 2^7 linear sub-buckets per power of two, so every
 * value is kept within 1/128 (0.8 %) of itself, in fixed memory. */
#define HIST_SUB_BITS 7
#define HIST_SUB (1u << HIST_SUB_BITS)
#define HIST_BUCKETS ((64 - HIST_SUB_BITS + 1) * HIST_SUB)

enum mode { MODE_PINGPONG, MODE_RR, MODE_RPC, MODE_IDLE };

static const char *const mode_names[] = { "pingpong", "rr", "rpc", "idle" };

struct options {
    const char *host;
    int port;
    enum mode mode;
    long conns;
    long pipeline;
    long size;
    double duration;
    double warmup;
    bool json;
};

struct histogram {
    uint64_t count;
    uint64_t min;
    uint64_t max;
    double sum;
    uint64_t buckets[HIST_BUCKETS];
};

/* One outstanding rpc request. */
struct rpc_slot {
    uint32_t seq;
    bool busy;
    uint64_t stamp;
};

/* Frame buffers and request table of one rpc connection. */
struct rpc_conn {
    unsigned char *out;
    size_t out_off;
    size_t out_len;
    unsigned char *in;
    size_t in_len;
    struct rpc_slot *slots;
    uint32_t *free_slots;
    uint32_t nfree;
    uint32_t gen;
};

/*
 * A connection. pingpong, rr and idle see the connection as two byte
 * streams: `queued` bytes are meant to be written, `sent` were written,
 * `received` came back and matched. The bytes at stream offset o are always
 * pattern[o % period], so no per-connection output buffer is needed.
 */
struct conn {
    int fd;
    int id;
    bool connected;
    bool want_out;
    uint64_t queued;
    uint64_t sent;
    uint64_t received;
    uint64_t *stamps;
    uint32_t head;
    uint32_t count;
    struct rpc_conn *rpc;
};

struct bench {
    struct options opt;
    int epfd;
    struct sockaddr_storage addr;
    socklen_t addrlen;
    struct conn *conns;
    unsigned char *pattern;
    size_t period;
    size_t frame_len;
    size_t in_cap;
    sigset_t waitmask;
    bool measuring;
    bool draining;
    uint64_t measure_at;
    uint64_t measure_start;
    uint64_t now;
    uint64_t bytes;
    uint64_t requests;
    long round_trips_left;
    struct histogram hist;
    unsigned char rbuf[CHUNK];
};

static volatile sig_atomic_t stop_requested;


static void
die(const char *fmt, ...)
{
    va_list ap;

    fflush(stdout);
    fputs("znet-bench: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}


static void *
xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);

    if (p == NULL)
        die("out of memory (%zu x %zu bytes)", n, size);
    return p;
}


static uint64_t
now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * NS_PER_S + (uint64_t)ts.tv_nsec;
}


static void
on_signal(int sig)
{
    (void)sig;
    stop_requested = 1;
}


/* ---- histogram ---------------------------------------------------------- */

/*
 * Values below 2 * HIST_SUB get a bucket each. Above, a value whose highest
 * set bit is `msb` keeps its top HIST_SUB_BITS + 1 bits: shifted right by
 * `shift`, it lands in [HIST_SUB, 2 * HIST_SUB), and the buckets of each
 * power of two follow those of the one below without a gap.
 */
static unsigned
hist_index(uint64_t v)
{
    unsigned msb = 63u - (unsigned)__builtin_clzll(v | 1);
    unsigned shift;

    if (msb <= HIST_SUB_BITS)
        return (unsigned)v;
    shift = msb - HIST_SUB_BITS;
    return shift * HIST_SUB + (unsigned)(v >> shift);
}


/* The middle of the range of values that share bucket `i`. */
static uint64_t
hist_value(unsigned i)
{
    unsigned shift;
    uint64_t top;

    if (i < 2 * HIST_SUB)
        return i;
    shift = i / HIST_SUB - 1;
    top = i - (uint64_t)shift * HIST_SUB;
    return (top << shift) + ((1ULL << shift) >> 1);
}


/* The exact minimum, maximum and mean are kept beside the buckets, so that
 * the extremes are reported without the bucket rounding. */
static void
hist_record(struct histogram *h, uint64_t v)
{
    if (h->count == 0 || v < h->min)
        h->min = v;
    if (v > h->max)
        h->max = v;
    h->count++;
    h->sum += (double)v;
    h->buckets[hist_index(v)]++;
}


/* The smallest recorded value such that a fraction q of all values are at
 * most it (within the bucket precision), clamped to the exact extremes. */
static uint64_t
hist_percentile(const struct histogram *h, double q)
{
    uint64_t want, seen = 0, v;
    unsigned i;

    if (h->count == 0)
        return 0;
    want = (uint64_t)(q * (double)h->count + 0.999999);
    if (want < 1)
        want = 1;
    for (i = 0; i < HIST_BUCKETS; i++) {
        seen += h->buckets[i];
        if (seen >= want)
            break;
    }
    v = hist_value(i < HIST_BUCKETS ? i : HIST_BUCKETS - 1);
    if (v < h->min)
        v = h->min;
    if (v > h->max)
        v = h->max;
    return v;
}


/* ---- protobuf, by hand -------------------------------------------------- */

struct pb_field {
    uint32_t num;
    unsigned type;
    uint64_t varint;
    const unsigned char *data;
    size_t len;
};


/* Reads a base-128 varint at p[*pos]; false if it is truncated or longer
 * than ten bytes. */
static bool
pb_varint(const unsigned char *p, size_t n, size_t *pos, uint64_t *v)
{
    unsigned shift;

    *v = 0;
    for (shift = 0; shift < 70 && *pos < n; shift += 7) {
        unsigned char b = p[(*pos)++];

        *v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80))
            return true;
    }
    return false;
}


/* Writes v as a base-128 varint, low group first; returns its length. */
static size_t
pb_put_varint(unsigned char *p, uint64_t v)
{
    size_t n = 0;

    while (v >= 0x80) {
        p[n++] = (unsigned char)(v | 0x80);
        v >>= 7;
    }
    p[n++] = (unsigned char)v;
    return n;
}


/*
 * Decodes the field at msg[*pos]. Returns 1 when a field was read, 0 at the
 * end of the message and -1 when the message is malformed. Unknown fields
 * of every wire type but the deprecated groups are skipped by the caller.
 */
static int
pb_next(const unsigned char *msg, size_t n, size_t *pos, struct pb_field *f)
{
    uint64_t key, len;

    if (*pos == n)
        return 0;
    if (!pb_varint(msg, n, pos, &key) || (key >> 3) == 0 || key >> 35)
        return -1;
    f->num = (uint32_t)(key >> 3);
    f->type = (unsigned)(key & 7);
    f->data = NULL;
    f->len = 0;
    switch (f->type) {
    case 0:
        return pb_varint(msg, n, pos, &f->varint) ? 1 : -1;
    case 1:
    case 5:
        len = f->type == 1 ? 8 : 4;
        break;
    case 2:
        if (!pb_varint(msg, n, pos, &len))
            return -1;
        break;
    default:
        return -1;
    }
    if (len > n - *pos)
        return -1;
    f->data = msg + *pos;
    f->len = (size_t)len;
    *pos += (size_t)len;
    return 1;
}


/* Finds the last occurrence of length-delimited field `num` (protobuf's
 * rule for repeated scalars); absent means empty. False if malformed. */
static bool
pb_get_bytes(const unsigned char *msg, size_t n, uint32_t num,
             const unsigned char **data, size_t *len)
{
    struct pb_field f;
    size_t pos = 0;
    int rc;

    *data = NULL;
    *len = 0;
    while ((rc = pb_next(msg, n, &pos, &f)) == 1) {
        if (f.num != num)
            continue;
        if (f.type != 2)
            return false;
        *data = f.data;
        *len = f.len;
    }
    return rc == 0;
}


/* Prints a znet.Error { uint32 code = 1; string message = 2; } body. */
static void
die_error_frame(const struct conn *c, uint32_t seq, const unsigned char *body,
                size_t n)
{
    struct pb_field f;
    size_t pos = 0;
    uint64_t code = 0;
    const unsigned char *msg = NULL;
    size_t len = 0;
    int rc;

    while ((rc = pb_next(body, n, &pos, &f)) == 1) {
        if (f.num == 1 && f.type == 0)
            code = f.varint;
        else if (f.num == 2 && f.type == 2) {
            msg = f.data;
            len = f.len;
        }
    }
    if (rc < 0)
        die("connection %d: error response to seq %" PRIu32
            " with a malformed znet.Error body", c->id, seq);
    die("connection %d: error response to seq %" PRIu32 ": code %" PRIu64
        " \"%.*s\"", c->id, seq, code, (int)len, msg ? (const char *)msg : "");
}


/* ---- options ------------------------------------------------------------ */

static void
usage(FILE *f)
{
    fputs("usage: znet-bench --mode pingpong|rr|rpc|idle [options]\n"
          "  --host ADDR        server address (default 127.0.0.1)\n"
          "  --port N           server port (default 11111)\n"
          "  --mode MODE        pingpong, rr, rpc or idle (default rr)\n"
          "  -c, --conns N      connections (default 10)\n"
          "  -p, --pipeline N   requests outstanding per connection, rr and\n"
          "                     rpc (default 1)\n"
          "  -s, --size N       block (pingpong, default 16384) or request\n"
          "                     (rr and rpc, default 64) size in bytes; in\n"
          "                     idle mode, one round trip of N bytes per\n"
          "                     connection before holding (default 0)\n"
          "  -d, --duration S   measured seconds; idle: seconds held\n"
          "                     (default 5)\n"
          "  --warmup S         seconds before measuring (default 1)\n"
          "  --json             print one JSON object on stdout\n"
          "A signal (SIGINT, SIGTERM) ends the run early and reports it.\n",
          f);
}


static long
parse_long(const char *s, const char *name, long lo, long hi)
{
    char *end;
    long v;

    errno = 0;
    v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) {
        fprintf(stderr, "znet-bench: %s must be an integer in [%ld, %ld]\n",
                name, lo, hi);
        exit(2);
    }
    return v;
}


static double
parse_seconds(const char *s, const char *name, double lo)
{
    char *end;
    double v;

    errno = 0;
    v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= 86400.0)) {
        fprintf(stderr, "znet-bench: %s must be seconds in [%g, 86400]\n",
                name, lo);
        exit(2);
    }
    return v;
}


static enum mode
parse_mode(const char *s)
{
    unsigned i;

    for (i = 0; i < sizeof(mode_names) / sizeof(mode_names[0]); i++)
        if (strcmp(s, mode_names[i]) == 0)
            return (enum mode)i;
    fprintf(stderr, "znet-bench: unknown mode '%s'\n", s);
    usage(stderr);
    exit(2);
}


/* Sizes that are not given default by mode; then the limits of each mode:
 * a request must fit a protocol v1 body, a pingpong block must not be
 * empty. */
static void
check_options(struct options *o, bool size_set)
{
    if (!size_set)
        o->size = o->mode == MODE_PINGPONG ? 16384
                  : o->mode == MODE_IDLE   ? 0
                                           : 64;
    if (o->mode != MODE_IDLE && o->size < 1) {
        fprintf(stderr, "znet-bench: --size must be at least 1\n");
        exit(2);
    }
    if (o->mode == MODE_RPC && (size_t)o->size > MAX_BODY - 16) {
        fprintf(stderr, "znet-bench: rpc --size must be at most %u\n",
                MAX_BODY - 16);
        exit(2);
    }
    if (o->mode == MODE_PINGPONG || o->mode == MODE_IDLE)
        o->pipeline = 1;
}


static void
parse_options(struct options *o, int argc, char **argv)
{
    static const struct option longs[] = {
        { "host", required_argument, NULL, 'H' },
        { "port", required_argument, NULL, 'P' },
        { "mode", required_argument, NULL, 'm' },
        { "conns", required_argument, NULL, 'c' },
        { "pipeline", required_argument, NULL, 'p' },
        { "size", required_argument, NULL, 's' },
        { "duration", required_argument, NULL, 'd' },
        { "warmup", required_argument, NULL, 'w' },
        { "json", no_argument, NULL, 'j' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    bool size_set = false;
    int ch;

    *o = (struct options){ "127.0.0.1", 11111, MODE_RR, 10, 1, 0, 5.0, 1.0,
                           false };
    while ((ch = getopt_long(argc, argv, "c:p:s:d:h", longs, NULL)) != -1) {
        switch (ch) {
        case 'H': o->host = optarg; break;
        case 'P': o->port = (int)parse_long(optarg, "--port", 1, 65535); break;
        case 'm': o->mode = parse_mode(optarg); break;
        case 'c': o->conns = parse_long(optarg, "--conns", 1, 1000000); break;
        case 'p':
            o->pipeline = parse_long(optarg, "--pipeline", 1,
                                     (1L << SLOT_BITS) - 1);
            break;
        case 's':
            o->size = parse_long(optarg, "--size", 0, 64L * 1024 * 1024);
            size_set = true;
            break;
        case 'd':
            o->duration = parse_seconds(optarg, "--duration", 0.001);
            break;
        case 'w':
            o->warmup = parse_seconds(optarg, "--warmup", 0.0);
            break;
        case 'j': o->json = true; break;
        case 'h': usage(stdout); exit(0);
        default: usage(stderr); exit(2);
        }
    }
    if (optind != argc) {
        fprintf(stderr, "znet-bench: unexpected argument '%s'\n", argv[optind]);
        exit(2);
    }
    check_options(o, size_set);
}


/* ---- set-up ------------------------------------------------------------- */

/* Idle runs hold thousands of sockets: take every descriptor the hard limit
 * allows rather than fail at the soft one. */
static void
raise_nofile(long conns)
{
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        die("getrlimit: %s", strerror(errno));
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
            die("setrlimit: %s", strerror(errno));
    }
    if (rl.rlim_cur != RLIM_INFINITY && (rlim_t)conns + 16 > rl.rlim_cur)
        die("%ld connections need %ld descriptors; the limit is %llu "
            "(raise the hard limit with ulimit -Hn)", conns, conns + 16,
            (unsigned long long)rl.rlim_cur);
}


/* Names are resolved once, before any connection: the first address wins,
 * IPv4 or IPv6. */
static void
resolve(struct bench *b)
{
    struct addrinfo hints = { 0 }, *res;
    char port[16];
    int rc;

    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    snprintf(port, sizeof(port), "%d", b->opt.port);
    rc = getaddrinfo(b->opt.host, port, &hints, &res);
    if (rc != 0)
        die("cannot resolve %s: %s", b->opt.host, gai_strerror(rc));
    memcpy(&b->addr, res->ai_addr, res->ai_addrlen);
    b->addrlen = res->ai_addrlen;
    freeaddrinfo(res);
}


/* SIGINT and SIGTERM stay blocked except inside epoll_pwait, so a signal can
 * never slip in between the check of the flag and the wait. */
static void
setup_signals(struct bench *b)
{
    struct sigaction sa;
    sigset_t block;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    sigemptyset(&block);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGTERM);
    sigprocmask(SIG_BLOCK, &block, &b->waitmask);
    sigdelset(&b->waitmask, SIGINT);
    sigdelset(&b->waitmask, SIGTERM);
}


/*
 * The pattern is pseudo-random so that a misplaced or corrupted byte is
 * caught. It is `period` bytes followed by a copy of its start long enough
 * that any chunk (or rpc payload) at offset o % period is contiguous.
 * pingpong echoes the stream it receives, so its period is the block size.
 */
static void
setup_pattern(struct bench *b)
{
    size_t size = (size_t)b->opt.size, extra = size > CHUNK ? size : CHUNK;
    uint32_t x = 2463534242u;
    size_t i;

    b->period = b->opt.mode == MODE_PINGPONG ? size : PERIOD;
    b->pattern = xcalloc(b->period + extra, 1);
    for (i = 0; i < b->period; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        b->pattern[i] = (unsigned char)(x >> 24);
    }
    for (; i < b->period + extra; i++)
        b->pattern[i] = b->pattern[i % b->period];
}


/* An EchoReq frame: header, tag 0x0a, varint length, payload. The input
 * buffer holds two such frames, or an error reply of up to 64 KiB. */
static void
setup_frame_size(struct bench *b)
{
    unsigned char varint[10];
    size_t body = 1 + pb_put_varint(varint, (uint64_t)b->opt.size)
                  + (size_t)b->opt.size;

    b->frame_len = FRAME_HEADER + body;
    b->in_cap = 2 * b->frame_len > CHUNK ? 2 * b->frame_len : CHUNK;
}


static void
setup_rpc(struct bench *b, struct conn *c)
{
    struct rpc_conn *r = xcalloc(1, sizeof(*r));
    uint32_t p = (uint32_t)b->opt.pipeline, i;

    r->out = xcalloc(p, b->frame_len);
    r->in = xcalloc(b->in_cap, 1);
    r->slots = xcalloc(p, sizeof(*r->slots));
    r->free_slots = xcalloc(p, sizeof(*r->free_slots));
    for (i = 0; i < p; i++)
        r->free_slots[i] = p - 1 - i;
    r->nfree = p;
    c->rpc = r;
}


static void
setup_conns(struct bench *b)
{
    long i;

    b->conns = xcalloc((size_t)b->opt.conns, sizeof(*b->conns));
    if (b->opt.mode == MODE_RPC)
        setup_frame_size(b);
    for (i = 0; i < b->opt.conns; i++) {
        struct conn *c = &b->conns[i];

        c->fd = -1;
        c->id = (int)i;
        if (b->opt.mode == MODE_RR)
            c->stamps = xcalloc((size_t)b->opt.pipeline, sizeof(uint64_t));
        else if (b->opt.mode == MODE_RPC)
            setup_rpc(b, c);
    }
}


/* ---- epoll helpers ------------------------------------------------------ */

static void
watch(struct bench *b, struct conn *c, int op, uint32_t events)
{
    struct epoll_event ev;

    ev.events = events;
    ev.data.u64 = (uint64_t)c->id;
    if (epoll_ctl(b->epfd, op, c->fd, &ev) != 0)
        die("epoll_ctl: %s", strerror(errno));
}


/* Waits for events until `deadline`, at most; returns how many arrived.
 * The time-out is rounded up to a whole millisecond: rounded down, the
 * last millisecond before a deadline would spin on zero time-outs. */
static int
wait_events(struct bench *b, struct epoll_event *ev, uint64_t deadline)
{
    uint64_t now = now_ns();
    int timeout, n;

    if (deadline <= now)
        return 0;
    timeout = (int)((deadline - now + 999999) / 1000000);
    n = epoll_pwait(b->epfd, ev, MAX_EVENTS, timeout, &b->waitmask);
    if (n < 0 && errno != EINTR)
        die("epoll_pwait: %s", strerror(errno));
    return n < 0 ? 0 : n;
}


/* ---- connecting --------------------------------------------------------- */

/* A non-blocking connect; the socket becomes writable when the handshake
 * ends either way. Nagle is off, as in every server measured: small
 * requests must leave at once. */
static void
start_connect(struct bench *b, struct conn *c)
{
    int one = 1;

    c->fd = socket(b->addr.ss_family,
                   SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
        die("socket: %s", strerror(errno));
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(c->fd, (struct sockaddr *)&b->addr, b->addrlen) != 0
        && errno != EINPROGRESS)
        die("connect to %s:%d: %s", b->opt.host, b->opt.port,
            strerror(errno));
    watch(b, c, EPOLL_CTL_ADD, EPOLLOUT);
}


/* The outcome of a connect is in SO_ERROR; a refusal ends the run. */
static void
finish_connect(struct bench *b, struct conn *c)
{
    int err = 0;
    socklen_t len = sizeof(err);

    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
        err = errno;
    if (err != 0)
        die("connect to %s:%d: %s", b->opt.host, b->opt.port,
            strerror(err));
    c->connected = true;
    watch(b, c, EPOLL_CTL_MOD, EPOLLIN);
}


/*
 * Opens every connection before any traffic starts, at most MAX_CONNECTING
 * at a time. Nothing is sent yet, so the only event a connected socket can
 * see is the server closing it, which is fatal.
 */
static void
connect_all(struct bench *b)
{
    struct epoll_event ev[MAX_EVENTS];
    uint64_t deadline = now_ns() + CONNECT_TIMEOUT_NS;
    long next = 0, open = 0, pending = 0;
    int i, n;

    while (open < b->opt.conns) {
        for (; pending < MAX_CONNECTING && next < b->opt.conns; next++) {
            start_connect(b, &b->conns[next]);
            pending++;
        }
        n = wait_events(b, ev, deadline);
        if (stop_requested)
            die("interrupted while connecting");
        if (n == 0 && now_ns() >= deadline)
            die("timed out connecting to %s:%d: %ld of %ld connections open",
                b->opt.host, b->opt.port, open, b->opt.conns);
        for (i = 0; i < n; i++) {
            struct conn *c = &b->conns[ev[i].data.u64];

            if (c->connected)
                die("connection %d closed by the server before any "
                    "traffic", c->id);
            finish_connect(b, c);
            pending--;
            open++;
        }
    }
}


/* ---- writing ------------------------------------------------------------ */

/* Writability is watched only while output is blocked, and epoll_ctl is
 * called only on a change, which small requests almost never cause. */
static void
set_want_out(struct bench *b, struct conn *c, bool want)
{
    if (want == c->want_out)
        return;
    c->want_out = want;
    watch(b, c, EPOLL_CTL_MOD, want ? EPOLLIN | EPOLLOUT : EPOLLIN);
}


/* Writes as much as the socket takes; false when it is full. */
static bool
write_some(struct conn *c, const unsigned char *p, size_t len, size_t *done)
{
    ssize_t n;

    *done = 0;
    while (*done < len) {
        n = send(c->fd, p + *done, len - *done, MSG_NOSIGNAL);
        if (n > 0) {
            *done += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return false;
        die("connection %d: send: %s", c->id,
            n < 0 ? strerror(errno) : "wrote nothing");
    }
    return true;
}


/* Stream modes write straight out of the pattern: the bytes due at stream
 * offset `sent` start at pattern[sent % period], and CHUNK bytes from any
 * such offset are contiguous. */
static void
flush_stream(struct bench *b, struct conn *c)
{
    bool more = true;
    size_t len, done;

    while (more && c->sent < c->queued) {
        len = c->queued - c->sent > CHUNK ? CHUNK
                                          : (size_t)(c->queued - c->sent);
        more = write_some(c, b->pattern + c->sent % b->period, len, &done);
        c->sent += done;
    }
    set_want_out(b, c, c->sent < c->queued);
}


static void
flush_rpc(struct bench *b, struct conn *c)
{
    struct rpc_conn *r = c->rpc;
    size_t done;

    write_some(c, r->out + r->out_off, r->out_len - r->out_off, &done);
    r->out_off += done;
    if (r->out_off == r->out_len)
        r->out_off = r->out_len = 0;
    set_want_out(b, c, r->out_len != 0);
}


static void
flush(struct bench *b, struct conn *c)
{
    if (b->opt.mode == MODE_RPC)
        flush_rpc(b, c);
    else
        flush_stream(b, c);
}


/* ---- requests ----------------------------------------------------------- */

static void
put_be16(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 8);
    p[1] = (unsigned char)v;
}


static void
put_be32(unsigned char *p, uint32_t v)
{
    put_be16(p, v >> 16);
    put_be16(p + 2, v);
}


static uint32_t
get_be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8
           | p[3];
}


/*
 * Appends one EchoReq frame. The seq carries the request's slot in its low
 * bits and a per-connection generation above, so a reply finds its request
 * in O(1) even when a server answers out of order. The payload is the
 * pattern at seq % PERIOD, which makes every reply checkable.
 */
static void
rpc_send(struct bench *b, struct conn *c)
{
    struct rpc_conn *r = c->rpc;
    size_t size = (size_t)b->opt.size, body = b->frame_len - FRAME_HEADER;
    uint32_t slot = r->free_slots[--r->nfree];
    uint32_t seq = (++r->gen << SLOT_BITS) | slot;
    unsigned char *p;

    if (r->out_off && r->out_len + b->frame_len
                      > (size_t)b->opt.pipeline * b->frame_len) {
        memmove(r->out, r->out + r->out_off, r->out_len - r->out_off);
        r->out_len -= r->out_off;
        r->out_off = 0;
    }
    p = r->out + r->out_len;
    put_be16(p, FRAME_MAGIC);
    p[2] = FRAME_VERSION;
    p[3] = 0;
    put_be32(p + 4, (uint32_t)body);
    put_be32(p + 8, CMD_ECHO);
    put_be32(p + 12, seq);
    p += FRAME_HEADER;
    *p++ = 0x0a;
    p += pb_put_varint(p, size);
    memcpy(p, b->pattern + seq % PERIOD, size);
    r->out_len += b->frame_len;
    r->slots[slot] = (struct rpc_slot){ seq, true, b->now };
}


/* Queues one rr request. An echo returns requests in order, so their send
 * times are a ring of P stamps: pushed here, popped by stream_input. */
static void
rr_send(struct bench *b, struct conn *c)
{
    uint32_t p = (uint32_t)b->opt.pipeline;

    c->stamps[(c->head + c->count) % p] = b->now;
    c->count++;
    c->queued += (uint64_t)b->opt.size;
}


/* Puts the first load on every connection: one block, P requests, or the
 * single round trip of an idle run. */
static void
start_traffic(struct bench *b)
{
    long i, j;

    b->now = now_ns();
    for (i = 0; i < b->opt.conns; i++) {
        struct conn *c = &b->conns[i];

        for (j = 0; j < b->opt.pipeline; j++) {
            if (b->opt.mode == MODE_RR)
                rr_send(b, c);
            else if (b->opt.mode == MODE_RPC)
                rpc_send(b, c);
            else
                c->queued += (uint64_t)b->opt.size;
        }
        flush(b, c);
    }
}


/* ---- reading ------------------------------------------------------------ */

/* Names the first wrong byte, so that a lost, doubled or reordered chunk
 * can be told from corruption. */
static void
report_mismatch(struct bench *b, struct conn *c, const unsigned char *p,
                size_t n)
{
    const unsigned char *want = b->pattern + c->received % b->period;
    size_t i = 0;

    while (i < n && p[i] == want[i])
        i++;
    die("connection %d: wrong echo at stream offset %" PRIu64
        ": got 0x%02x, expected 0x%02x", c->id, c->received + i, p[i],
        want[i]);
}


/* Requests completed in the warm-up or the drain are not counted: only
 * the measured window is reported. */
static void
complete_request(struct bench *b, uint64_t stamp)
{
    if (!b->measuring)
        return;
    b->requests++;
    hist_record(&b->hist, b->now - stamp);
}


/*
 * Bytes that came back on a stream connection: check them, then let the
 * mode react. pingpong echoes them; rr completes one request per `size`
 * bytes and issues a new one in its place; idle only counts its single
 * round trip.
 */
static void
stream_input(struct bench *b, struct conn *c, const unsigned char *p,
             size_t n)
{
    uint64_t size = (uint64_t)b->opt.size, before = c->received;
    uint64_t done;

    if (n > c->sent - c->received)
        die("connection %d: the server sent %zu bytes more than it was "
            "sent", c->id, (size_t)(n - (c->sent - c->received)));
    if (memcmp(p, b->pattern + c->received % b->period, n) != 0)
        report_mismatch(b, c, p, n);
    c->received += n;
    if (b->measuring)
        b->bytes += n;
    if (b->opt.mode == MODE_PINGPONG) {
        if (!b->draining)
            c->queued += n;
    } else if (b->opt.mode == MODE_RR) {
        for (done = c->received / size - before / size; done > 0; done--) {
            complete_request(b, c->stamps[c->head]);
            c->head = (c->head + 1) % (uint32_t)b->opt.pipeline;
            c->count--;
            if (!b->draining)
                rr_send(b, c);
        }
    } else if (c->received == size) {
        b->round_trips_left--;
    }
}


/* Checks a response to an outstanding EchoReq and replaces the request. */
static void
rpc_reply(struct bench *b, struct conn *c, uint32_t seq,
          const unsigned char *body, size_t len)
{
    struct rpc_conn *r = c->rpc;
    uint32_t slot = seq & ((1u << SLOT_BITS) - 1);
    const unsigned char *payload;
    size_t n;

    if (slot >= (uint32_t)b->opt.pipeline || !r->slots[slot].busy
        || r->slots[slot].seq != seq)
        die("connection %d: response seq %" PRIu32 " matches no outstanding "
            "request", c->id, seq);
    if (!pb_get_bytes(body, len, 1, &payload, &n))
        die("connection %d: seq %" PRIu32 ": body is not a valid EchoRsp",
            c->id, seq);
    if (n != (size_t)b->opt.size
        || (n && memcmp(payload, b->pattern + seq % PERIOD, n) != 0))
        die("connection %d: seq %" PRIu32 ": echoed payload differs from "
            "the request (%zu bytes, sent %ld)", c->id, seq, n, b->opt.size);
    r->slots[slot].busy = false;
    r->free_slots[r->nfree++] = slot;
    if (b->measuring)
        b->bytes += n;
    complete_request(b, r->slots[slot].stamp);
    if (!b->draining)
        rpc_send(b, c);
}


/* Validates one frame header; returns the body length. The header is
 * checked as strictly as DESIGN.md asks of servers: a bench must not
 * accept what a correct peer would refuse. A length is refused before the
 * body is waited for if it could never fit the input buffer. */
static uint32_t
rpc_header(struct bench *b, struct conn *c, const unsigned char *h)
{
    uint32_t len = get_be32(h + 4);

    if (h[0] != (FRAME_MAGIC >> 8) || h[1] != (FRAME_MAGIC & 0xff))
        die("connection %d: bad magic 0x%02x%02x", c->id, h[0], h[1]);
    if (h[2] != FRAME_VERSION)
        die("connection %d: unknown protocol version %u", c->id, h[2]);
    if (h[3] & ~(FLAG_RESPONSE | FLAG_ERROR | FLAG_ONEWAY))
        die("connection %d: reserved flag bits set (0x%02x)", c->id, h[3]);
    if (!(h[3] & FLAG_RESPONSE))
        die("connection %d: unexpected request frame from the server "
            "(cmd %" PRIu32 ")", c->id, get_be32(h + 8));
    if (len > b->in_cap - FRAME_HEADER)
        die("connection %d: response body of %" PRIu32 " bytes; an "
            "EchoRsp is %zu", c->id, len, b->frame_len - FRAME_HEADER);
    return len;
}


/* Takes every complete frame out of the input buffer. */
static void
rpc_input(struct bench *b, struct conn *c)
{
    struct rpc_conn *r = c->rpc;
    size_t pos = 0;
    uint32_t len, cmd, seq;
    const unsigned char *h;

    while (r->in_len - pos >= FRAME_HEADER) {
        h = r->in + pos;
        len = rpc_header(b, c, h);
        if (r->in_len - pos - FRAME_HEADER < len)
            break;
        cmd = get_be32(h + 8);
        seq = get_be32(h + 12);
        if (h[3] & FLAG_ERROR)
            die_error_frame(c, seq, h + FRAME_HEADER, len);
        if (cmd != CMD_ECHO)
            die("connection %d: response with cmd %" PRIu32 ", expected %d",
                c->id, cmd, CMD_ECHO);
        rpc_reply(b, c, seq, h + FRAME_HEADER, len);
        pos += FRAME_HEADER + len;
    }
    if (pos) {
        memmove(r->in, r->in + pos, r->in_len - pos);
        r->in_len -= pos;
    }
}


static void
die_closed(const struct conn *c, const char *why)
{
    if (c->rpc)
        die("connection %d: closed by the server (%s) after %" PRIu32
            " requests", c->id, why, c->rpc->gen);
    die("connection %d: closed by the server (%s) after %" PRIu64
        " bytes came back", c->id, why, c->received);
}


/*
 * Reads until the socket is drained (a short read says so without another
 * system call), then writes what the replies asked for in one go. An end of
 * file or a reset is fatal: no server may close during a run.
 */
static void
on_readable(struct bench *b, struct conn *c)
{
    unsigned char *p;
    size_t room;
    ssize_t n;

    do {
        p = c->rpc ? c->rpc->in + c->rpc->in_len : b->rbuf;
        room = c->rpc ? b->in_cap - c->rpc->in_len : CHUNK;
        n = recv(c->fd, p, room, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            break;
        if (n <= 0)
            die_closed(c, n < 0 ? strerror(errno) : "end of file");
        b->now = now_ns();
        if (c->rpc) {
            c->rpc->in_len += (size_t)n;
            rpc_input(b, c);
        } else {
            stream_input(b, c, p, (size_t)n);
        }
    } while ((size_t)n == room);
    flush(b, c);
}


static void
on_event(struct bench *b, struct conn *c, uint32_t events)
{
    if (events & (EPOLLIN | EPOLLERR | EPOLLHUP))
        on_readable(b, c);
    if ((events & EPOLLOUT) && c->want_out)
        flush(b, c);
}


/* ---- running ------------------------------------------------------------ */

/* Runs the event loop until `deadline`, a signal, or (when given) until
 * done() says so. The measured window opens at b->measure_at. */
static void
run_until(struct bench *b, uint64_t deadline, bool (*done)(struct bench *))
{
    struct epoll_event ev[MAX_EVENTS];
    uint64_t now, wake;
    int i, n;

    for (;;) {
        now = now_ns();
        if (!b->measuring && now >= b->measure_at) {
            b->measuring = true;
            b->measure_start = now;
        }
        if (now >= deadline || stop_requested || (done && done(b)))
            break;
        wake = !b->measuring && b->measure_at < deadline ? b->measure_at
                                                          : deadline;
        n = wait_events(b, ev, wake);
        for (i = 0; i < n; i++)
            on_event(b, &b->conns[ev[i].data.u64], ev[i].events);
    }
}


static bool
round_trips_done(struct bench *b)
{
    return b->round_trips_left == 0;
}


static uint64_t
seconds_ns(double s)
{
    return (uint64_t)(s * (double)NS_PER_S);
}


/* True when every reply has come back, so that closing now sends the server
 * a clean end of file rather than a reset for unread data. */
static bool
all_drained(struct bench *b)
{
    long i;

    for (i = 0; i < b->opt.conns; i++) {
        const struct conn *c = &b->conns[i];

        if (c->rpc ? c->rpc->nfree != (uint32_t)b->opt.pipeline
                   : c->received != c->queued)
            return false;
    }
    return true;
}


static void
close_all(struct bench *b)
{
    long i;

    for (i = 0; i < b->opt.conns; i++)
        if (b->conns[i].fd >= 0)
            close(b->conns[i].fd);
}


/* Idle: the optional round trip, then a line on stderr that tells an outside
 * observer every connection is open, then the hold. */
static void
run_idle(struct bench *b, double *connect_s, double *held_s)
{
    uint64_t t0 = now_ns(), t1;

    b->measure_at = UINT64_MAX;
    connect_all(b);
    if (b->opt.size > 0) {
        b->round_trips_left = b->opt.conns;
        start_traffic(b);
        run_until(b, now_ns() + ROUND_TRIP_TIMEOUT_NS, round_trips_done);
        if (b->round_trips_left && !stop_requested)
            die("timed out waiting for the round trip: %ld of %ld "
                "connections still waiting", b->round_trips_left,
                b->opt.conns);
    }
    t1 = now_ns();
    *connect_s = (double)(t1 - t0) / NS_PER_S;
    fprintf(stderr, "znet-bench: idle: %ld connections open, holding "
            "for %.1f s\n", b->opt.conns, b->opt.duration);
    fflush(stderr);
    run_until(b, t1 + seconds_ns(b->opt.duration), NULL);
    *held_s = (double)(now_ns() - t1) / NS_PER_S;
}


/* ---- reporting ---------------------------------------------------------- */

static void
print_idle(const struct bench *b, double connect_s, double held_s)
{
    const struct options *o = &b->opt;

    if (o->json)
        printf("{\"mode\":\"idle\",\"host\":\"%s\",\"port\":%d,"
               "\"conns\":%ld,\"size\":%ld,\"connect_s\":%.3f,"
               "\"held_s\":%.3f,\"interrupted\":%s}\n", o->host, o->port,
               o->conns, o->size, connect_s, held_s,
               stop_requested ? "true" : "false");
    else
        printf("znet-bench idle %s:%d  conns %ld  round trip %ld B\n"
               "opened in %.3f s, held %.3f s%s\n", o->host, o->port,
               o->conns, o->size, connect_s, held_s,
               stop_requested ? " (interrupted)" : "");
}


/* Latencies are in microseconds with nanosecond digits; throughput counts
 * the payload bytes that came back (echo bytes, or rpc payloads without
 * frame and protobuf overhead). */
static void
print_json(const struct bench *b, double secs)
{
    const struct options *o = &b->opt;
    const struct histogram *h = &b->hist;

    printf("{\"mode\":\"%s\",\"host\":\"%s\",\"port\":%d,\"conns\":%ld,"
           "\"pipeline\":%ld,\"size\":%ld,\"warmup_s\":%.3f,"
           "\"duration_s\":%.6f,\"bytes\":%" PRIu64 ",\"mib_per_s\":%.3f",
           mode_names[o->mode], o->host, o->port, o->conns, o->pipeline,
           o->size, o->warmup, secs, b->bytes,
           secs > 0 ? (double)b->bytes / secs / 1048576.0 : 0.0);
    if (o->mode != MODE_PINGPONG)
        printf(",\"requests\":%" PRIu64 ",\"requests_per_s\":%.1f,"
               "\"latency_us\":{\"min\":%.3f,\"mean\":%.3f,\"p50\":%.3f,"
               "\"p90\":%.3f,\"p99\":%.3f,\"p999\":%.3f,\"max\":%.3f}",
               b->requests, secs > 0 ? (double)b->requests / secs : 0.0,
               h->min / 1e3, h->count ? h->sum / (double)h->count / 1e3 : 0,
               hist_percentile(h, 0.5) / 1e3, hist_percentile(h, 0.9) / 1e3,
               hist_percentile(h, 0.99) / 1e3,
               hist_percentile(h, 0.999) / 1e3, h->max / 1e3);
    printf(",\"interrupted\":%s}\n", stop_requested ? "true" : "false");
}


static void
print_text(const struct bench *b, double secs)
{
    const struct options *o = &b->opt;
    const struct histogram *h = &b->hist;

    printf("znet-bench %s %s:%d  conns %ld  pipeline %ld  size %ld  "
           "%.2f s after %.2f s warm-up%s\n", mode_names[o->mode], o->host,
           o->port, o->conns, o->pipeline, o->size, secs, o->warmup,
           stop_requested ? " (interrupted)" : "");
    printf("throughput %.2f MiB/s",
           secs > 0 ? (double)b->bytes / secs / 1048576.0 : 0.0);
    if (o->mode == MODE_PINGPONG) {
        printf("\n");
        return;
    }
    printf("  %.0f requests/s\n",
           secs > 0 ? (double)b->requests / secs : 0.0);
    printf("latency us  p50 %.1f  p90 %.1f  p99 %.1f  p99.9 %.1f  "
           "max %.1f  mean %.1f\n", hist_percentile(h, 0.5) / 1e3,
           hist_percentile(h, 0.9) / 1e3, hist_percentile(h, 0.99) / 1e3,
           hist_percentile(h, 0.999) / 1e3, h->max / 1e3,
           h->count ? h->sum / (double)h->count / 1e3 : 0.0);
}


/*
 * Throughput modes: connect, load, warm up, measure, then stop issuing and
 * let the replies in flight come back (for a short while at most) so that
 * the server sees clean closes, then report. A run that completes nothing
 * in its measured window is a stalled server: an error.
 */
static void
run_load(struct bench *b)
{
    uint64_t t0, end;
    double secs;

    b->measure_at = UINT64_MAX;
    connect_all(b);
    t0 = now_ns();
    b->measure_at = t0 + seconds_ns(b->opt.warmup);
    end = b->measure_at + seconds_ns(b->opt.duration);
    start_traffic(b);
    run_until(b, end, NULL);
    secs = b->measuring ? (double)(now_ns() - b->measure_start) / NS_PER_S
                        : 0.0;
    b->measuring = false;
    b->measure_at = UINT64_MAX;
    b->draining = true;
    if (!stop_requested)
        run_until(b, now_ns() + DRAIN_TIMEOUT_NS, all_drained);
    close_all(b);
    if (!stop_requested && b->bytes == 0)
        die("no reply came back during the %.2f s measured window: is the "
            "server stalled?", secs);
    if (b->opt.json)
        print_json(b, secs);
    else
        print_text(b, secs);
}


int
main(int argc, char **argv)
{
    struct bench *b = xcalloc(1, sizeof(*b));
    double connect_s, held_s;

    parse_options(&b->opt, argc, argv);
    raise_nofile(b->opt.conns);
    resolve(b);
    setup_signals(b);
    setup_pattern(b);
    setup_conns(b);
    b->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (b->epfd < 0)
        die("epoll_create1: %s", strerror(errno));
    if (b->opt.mode == MODE_IDLE) {
        run_idle(b, &connect_s, &held_s);
        close_all(b);
        print_idle(b, connect_s, held_s);
    } else {
        run_load(b);
    }
    fflush(stdout);
    return 0;
}
