/*
 * soak.c: a mixed load with faults against znet-test-server (tests/server)
 * for a bounded time (docs/testing.md, "Soak").
 *
 *   soak SERVER [SECONDS [LOG]]      default 120 s, soak-server.log
 *
 * Starts SERVER (--io-threads 2 --workers 2) as a child with its log in
 * LOG, then, from several threads: callers that pipeline cmd 1 and cmd 2
 * (echo, 0 B to 256 KiB) and check every answer; a fault thread cycling
 * through resets mid-frame and mid-reply, closes without reading, bad
 * frames, partial frames; a slow reader; a slowloris. Every second it
 * samples the server's VmRSS and open descriptors. Then it stops the load
 * and checks (the server runs with glibc's mmap threshold fixed at
 * 128 KiB, see server_start): RSS flat after the warm-up (the first 20 %: the largest
 * sample of the last third within 10 % + 2 MiB of the largest of the first
 * third), descriptors flat and back to the baseline, no unexpected outcome
 * on the client side, exit status 0 on SIGTERM, and no ERROR, FATAL,
 * "Sanitizer" or "runtime error" in the server's log. Prints the samples
 * and a verdict; exits 0 on PASS.
 *
 * The peers use blocking sockets and protobuf-c directly (only znet's pure
 * frame codec), so that what is measured is the server alone.
 */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "demo.pb-c.h"
#include "znet/frame.h"
#include "znet/znet.pb-c.h"

#define CALLERS 4
#define WINDOW 8                /* requests in flight per caller */
#define MAX_PAYLOAD (256 * 1024)
#define MAX_SAMPLES 100000

enum { CMD_TEST = 1, CMD_ECHO = 2 };

static const char hello[] = "hello, i'm server";

static atomic_bool stop;
static _Atomic uint64_t calls_ok, faults_done, unexpected;
static uint16_t port;

typedef struct {
    double t;
    long rss_kib;
    int fds;
    uint64_t calls, faults;
} sample_t;

static sample_t samples[MAX_SAMPLES];
static int nsamples;

/* ---- small helpers ----------------------------------------------------- */


static double
now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}


static void
sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};

    nanosleep(&ts, NULL);
}


/* An outcome the server's contract does not allow: counted, and the first
 * few are printed. */
static void
bad(const char *fmt, ...)
{
    va_list ap;

    if (atomic_fetch_add(&unexpected, 1) >= 20)
        return;
    va_start(ap, fmt);
    fprintf(stderr, "soak: unexpected: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
}


static uint32_t
rnd(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return (uint32_t)(*s >> 11);
}


static void
fill(uint8_t *p, size_t n, uint32_t seed)
{
    size_t i;

    for (i = 0; i < n; i++)
        p[i] = (uint8_t)((seed + i * 2654435761u) >> 13);
}


/* A blocking client socket with `secs` second time-outs, or -1. */
static int
dial(int secs)
{
    struct sockaddr_in a = {.sin_family = AF_INET};
    struct timeval tv = {secs, 0};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;

    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}


/* Closes with a reset (SO_LINGER 0) instead of a FIN. */
static void
close_rst(int fd)
{
    struct linger lg = {1, 0};

    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    close(fd);
}


static int
put(int fd, const void *p, size_t n)
{
    const char *s = p;
    ssize_t w;

    while (n > 0) {
        w = send(fd, s, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        s += w;
        n -= (size_t)w;
    }
    return 0;
}


/* Reads exactly n bytes: 0, or -1 (EOF, reset, time-out: see errno; EOF
 * sets it to 0). */
static int
get(int fd, void *p, size_t n)
{
    char *s = p;
    ssize_t r;

    while (n > 0) {
        r = recv(fd, s, n, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            if (r == 0)
                errno = 0;
            return -1;
        }
        s += r;
        n -= (size_t)r;
    }
    return 0;
}

/* ---- frames ------------------------------------------------------------ */


/* Packs a frame into a new malloc'd block; *len gets its size. */
static uint8_t *
pack(uint32_t cmd, uint32_t seq, uint8_t flags, const ProtobufCMessage *m,
     size_t *len)
{
    size_t body = protobuf_c_message_get_packed_size(m);
    zn_frame_header_t h = {(uint32_t)body, cmd, seq, flags};
    uint8_t *p = malloc(ZN_FRAME_HEADER_SIZE + body);

    (void)zn_frame_encode_header(p, &h);
    protobuf_c_message_pack(m, p + ZN_FRAME_HEADER_SIZE);
    *len = ZN_FRAME_HEADER_SIZE + body;
    return p;
}


static uint8_t *
pack_echo(uint32_t seq, size_t n, uint32_t seed, size_t *len)
{
    static _Thread_local uint8_t payload[MAX_PAYLOAD];
    Demo__EchoReq e = DEMO__ECHO_REQ__INIT;

    fill(payload, n, seed);
    e.payload.data = payload;
    e.payload.len = n;
    return pack(CMD_ECHO, seq, 0, &e.base, len);
}


static uint8_t *
pack_test(uint32_t seq, uint8_t flags, size_t *len)
{
    Demo__TestReq t = DEMO__TEST_REQ__INIT;

    t.msg = "hi";
    return pack(CMD_TEST, seq, flags, &t.base, len);
}


/* Reads one frame; returns its body (malloc'd, the caller frees) or NULL
 * with errno as for get(). */
static uint8_t *
read_frame(int fd, zn_frame_header_t *h)
{
    uint8_t hdr[ZN_FRAME_HEADER_SIZE], *body;

    if (get(fd, hdr, sizeof(hdr)) != 0)
        return NULL;
    if (zn_frame_decode_header(hdr, sizeof(hdr), 8u << 20, h, NULL) != 0) {
        bad("undecodable frame header from the server");
        errno = EPROTO;
        return NULL;
    }
    body = malloc(h->length + 1);
    if (get(fd, body, h->length) != 0) {
        free(body);
        return NULL;
    }
    return body;
}


static uint32_t
error_code(const zn_frame_header_t *h, const uint8_t *body)
{
    Znet__Error *e = znet__error__unpack(NULL, h->length, body);
    uint32_t code = e != NULL ? e->code : 0;

    znet__error__free_unpacked(e, NULL);
    return code;
}

/* ---- callers ----------------------------------------------------------- */

typedef struct {
    uint32_t seq, cmd, seed;
    size_t len;
} call_t;

typedef struct {
    unsigned id;
    uint64_t rng;
    call_t w[WINDOW]; /* in flight; seq 0: free */
} caller_t;


/* Mostly small bodies, some large: 0-1 KiB (70 %), to 16 KiB (25 %), to
 * 256 KiB. */
static size_t
pick_size(uint64_t *rng)
{
    uint32_t r = rnd(rng) % 100;

    if (r < 70)
        return rnd(rng) % 1024;
    if (r < 95)
        return rnd(rng) % (16 * 1024);
    return rnd(rng) % MAX_PAYLOAD;
}


/* Sends request `seq` (a quarter cmd 1, the rest echoes) and files it in a
 * free slot of the window, for caller_check(). */
static int
caller_send(caller_t *c, int fd, uint32_t seq)
{
    call_t *k = NULL;
    uint8_t *frame;
    size_t len;
    int i, rc;

    for (i = 0; i < WINDOW && k == NULL; i++)
        if (c->w[i].seq == 0)
            k = &c->w[i];
    if (k == NULL) { /* an answer matched no call: already reported */
        errno = EPROTO;
        return -1;
    }
    k->seq = seq;
    k->cmd = rnd(&c->rng) % 4 == 0 ? CMD_TEST : CMD_ECHO;
    k->seed = rnd(&c->rng);
    k->len = k->cmd == CMD_ECHO ? pick_size(&c->rng) : 0;
    frame = k->cmd == CMD_ECHO ? pack_echo(seq, k->len, k->seed, &len)
                               : pack_test(seq, 0, &len);
    rc = put(fd, frame, len);
    free(frame);
    return rc;
}


/* Checks one answer against the call it answers (workers may answer a
 * connection's requests out of order). */
static void
caller_check(caller_t *c, const zn_frame_header_t *h, const uint8_t *body)
{
    static _Thread_local uint8_t want[MAX_PAYLOAD];
    call_t *k = NULL;
    Demo__EchoRsp *e;
    Demo__TestRsp *t;
    int i;

    for (i = 0; i < WINDOW && k == NULL; i++)
        if (c->w[i].seq == h->seq)
            k = &c->w[i];
    if (k == NULL || h->flags != ZN_FRAME_F_RESPONSE || h->cmd != k->cmd) {
        bad("caller %u: answer seq %u flags %u: %s", c->id, h->seq, h->flags,
            k == NULL ? "no such call" : "not a plain response");
        if (k != NULL && (h->flags & ZN_FRAME_F_ERROR))
            bad("  error code %u", error_code(h, body));
    } else if (k->cmd == CMD_ECHO) {
        e = demo__echo_rsp__unpack(NULL, h->length, body);
        fill(want, k->len, k->seed);
        if (e == NULL || e->payload.len != k->len ||
            memcmp(e->payload.data, want, k->len) != 0)
            bad("caller %u: echo seq %u: wrong payload", c->id, h->seq);
        demo__echo_rsp__free_unpacked(e, NULL);
    } else {
        t = demo__test_rsp__unpack(NULL, h->length, body);
        if (t == NULL || strcmp(t->res, hello) != 0)
            bad("caller %u: test seq %u: wrong answer", c->id, h->seq);
        demo__test_rsp__free_unpacked(t, NULL);
    }
    if (k != NULL)
        k->seq = 0;
    atomic_fetch_add(&calls_ok, 1);
}


/* One connection: n requests, WINDOW in flight, then a graceful close.
 * Once the load stops no new request is sent; those in flight are read. */
static void
caller_session(caller_t *c, int fd, uint32_t n)
{
    uint32_t sent = 0, got = 0;
    zn_frame_header_t h;
    uint8_t *body;

    memset(c->w, 0, sizeof(c->w));
    while (got < sent || (sent < n && !atomic_load(&stop))) {
        while (sent < n && sent - got < WINDOW && !atomic_load(&stop))
            if (caller_send(c, fd, ++sent) != 0) {
                bad("caller %u: send: %s", c->id, strerror(errno));
                return;
            }
        if ((body = read_frame(fd, &h)) == NULL) {
            bad("caller %u: read (%u of %u answered): %s", c->id, got, sent,
                errno ? strerror(errno) : "closed by the server");
            return;
        }
        caller_check(c, &h, body);
        free(body);
        got++;
    }
}


/* Sessions of 100 to 2,100 requests, one connection each, until the load
 * stops: connects and closes are part of the load too. */
static void *
caller_main(void *arg)
{
    caller_t *c = arg;
    int fd;

    while (!atomic_load(&stop)) {
        if ((fd = dial(10)) < 0) {
            bad("caller %u: connect: %s", c->id, strerror(errno));
            sleep_ms(100);
            continue;
        }
        caller_session(c, fd, 100 + rnd(&c->rng) % 2000);
        close(fd);
    }
    return NULL;
}

/* ---- faults ------------------------------------------------------------ */


/* Reads and drops what comes until the server closes; a server that keeps
 * the connection open for 5 s after bad input breaks its contract. */
static void
expect_closed(int fd, const char *what)
{
    char buf[4096];
    ssize_t r;

    while ((r = recv(fd, buf, sizeof(buf), 0)) > 0 ||
           (r < 0 && errno == EINTR))
        ;
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        bad("%s: connection still open after 5 s", what);
}


/* Reads one answer and checks it is an error with `code` for `seq`. */
static void
expect_error(int fd, uint32_t seq, uint32_t code, const char *what)
{
    zn_frame_header_t h;
    uint8_t *body = read_frame(fd, &h);

    if (body == NULL)
        bad("%s: no answer: %s", what, errno ? strerror(errno) : "closed");
    else if (h.seq != seq || !(h.flags & ZN_FRAME_F_ERROR) ||
             error_code(&h, body) != code)
        bad("%s: answer seq %u flags %u, not error %u", what, h.seq, h.flags,
            code);
    free(body);
}


/* Part of an echo frame, then a reset: the server holds a partial frame. */
static void
fault_rst_mid_frame(int fd, uint64_t *rng)
{
    size_t len;
    uint8_t *f = pack_echo(1, 10000, 1, &len);

    (void)put(fd, f, 1 + rnd(rng) % (len - 1));
    free(f);
    sleep_ms(2);
    close_rst(fd);
}


/* A large echo, then a reset while the server writes the answer. */
static void
fault_rst_mid_reply(int fd, uint64_t *rng)
{
    size_t len;
    uint8_t *f = pack_echo(1, MAX_PAYLOAD - 1, 2, &len);

    (void)put(fd, f, len);
    free(f);
    sleep_ms(rnd(rng) % 3);
    close_rst(fd);
}


/* Requests, then a FIN without reading a byte of the answers. */
static void
fault_close_unread(int fd, uint64_t *rng)
{
    uint8_t *f;
    size_t len;
    uint32_t i;

    for (i = 1; i <= 4; i++) {
        f = pack_echo(i, rnd(rng) % 20000, i, &len);
        (void)put(fd, f, len);
        free(f);
    }
    close(fd);
}


/* A header promising 1000 bytes, ten of them, a pause, and a FIN. */
static void
fault_partial(int fd, uint64_t *rng)
{
    zn_frame_header_t h = {1000, CMD_ECHO, 1, 0};
    uint8_t buf[ZN_FRAME_HEADER_SIZE + 10] = {0};

    (void)zn_frame_encode_header(buf, &h);
    (void)put(fd, buf, sizeof(buf));
    sleep_ms(50 + rnd(rng) % 250);
    close(fd);
}


/* A header the server must refuse and close on: the kinds rotate. */
static void
fault_bad_header(int fd, uint64_t *rng)
{
    static const char *const kinds[] = {"bad magic", "bad version",
                                        "bad flags", "too long", "http",
                                        "tls", "garbage"};
    static _Atomic unsigned next;
    unsigned k = atomic_fetch_add(&next, 1) % 7, i;
    uint8_t b[64] = {'z', 'n', 1, 0, 0, 0, 0, 4, 0, 0, 0, 1, 0, 0, 0, 1};

    if (k == 0)
        b[1] = 'X';
    else if (k == 1)
        b[2] = 2;
    else if (k == 2)
        b[3] = 0x80;
    else if (k == 3)
        b[4] = 0x7f; /* 2 GiB */
    else if (k == 4)
        memcpy(b, "GET / HTTP/1.1\r\nHost: x\r\n\r\n", 27);
    else if (k == 5)
        memcpy(b, "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 11);
    else
        for (i = 0, b[0] = 0; i < sizeof(b) - 1; i++)
            b[i + 1] = (uint8_t)rnd(rng);
    (void)put(fd, b, sizeof(b));
    expect_closed(fd, kinds[k]);
    close(fd);
}


/* Requests the server must answer with an error and stay open for; a
 * RESPONSE frame it must drop. */
static void
fault_bad_request(int fd, uint64_t *rng)
{
    static const uint8_t junk[] = {0x0a, 0xff, 0xff, 0xff, 0xff};
    zn_frame_header_t h = {sizeof(junk), CMD_ECHO, 7, 0};
    uint8_t b[ZN_FRAME_HEADER_SIZE + sizeof(junk)], *f;
    size_t len;

    (void)rnd(rng);
    (void)zn_frame_encode_header(b, &h);
    memcpy(b + ZN_FRAME_HEADER_SIZE, junk, sizeof(junk));
    (void)put(fd, b, sizeof(b));
    expect_error(fd, 7, ZN_CODE_BAD_REQUEST, "bad body");
    f = pack_test(8, 0, &len);
    f[11] = 77; /* cmd 77: unknown */
    (void)put(fd, f, len);
    free(f);
    expect_error(fd, 8, ZN_CODE_UNKNOWN_CMD, "unknown cmd");
    f = pack_test(9, ZN_FRAME_F_RESPONSE, &len);
    (void)put(fd, f, len);
    free(f);
    f = pack_test(10, 0, &len);
    (void)put(fd, f, len);
    free(f);
    if ((f = read_frame(fd, &h)) == NULL || h.seq != 10 || h.flags != 1)
        bad("response frame to the server: not dropped quietly");
    free(f);
    close(fd);
}


typedef void (*fault_fn)(int fd, uint64_t *rng);

/* Cycles through the faults, one connection each, about 20 a second. */
static void *
fault_main(void *arg)
{
    static const fault_fn faults[] = {
        fault_rst_mid_frame, fault_rst_mid_reply, fault_close_unread,
        fault_partial,       fault_bad_header,    fault_bad_request};
    uint64_t rng = (uintptr_t)arg | 1;
    unsigned i = 0;
    int fd;

    while (!atomic_load(&stop)) {
        if ((fd = dial(5)) < 0) {
            bad("fault: connect: %s", strerror(errno));
            sleep_ms(100);
            continue;
        }
        faults[i++ % (sizeof(faults) / sizeof(faults[0]))](fd, &rng);
        atomic_fetch_add(&faults_done, 1);
        sleep_ms(10 + rnd(&rng) % 20);
    }
    return NULL;
}


/*
 * A slow reader: 28 echoes of 128 KiB pipelined with a small receive
 * buffer, a pause, then one answer every 30 ms. The server must queue
 * (up to its high-water mark) and deliver every answer.
 */
static void
slow_reader_round(void)
{
    int fd = dial(10), n, rcvbuf = 16384;
    zn_frame_header_t h;
    uint8_t *f;
    size_t len;

    if (fd < 0) {
        bad("slow reader: connect: %s", strerror(errno));
        return;
    }
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
    for (n = 1; n <= 28; n++) {
        f = pack_echo((uint32_t)n, 128 * 1024, 3, &len);
        if (put(fd, f, len) != 0)
            bad("slow reader: send %d: %s", n, strerror(errno));
        free(f);
    }
    sleep_ms(1000);
    for (n = 0; n < 28 && (f = read_frame(fd, &h)) != NULL; n++) {
        free(f);
        sleep_ms(30);
    }
    if (n < 28)
        bad("slow reader: %d of 28 answers", n);
    close(fd);
}


static void *
slow_reader_main(void *arg)
{
    (void)arg;
    while (!atomic_load(&stop)) {
        slow_reader_round();
        atomic_fetch_add(&faults_done, 1);
        sleep_ms(500);
    }
    return NULL;
}


/*
 * Slowloris: a header promising 1000 bytes, then a byte a second (the
 * receive time-out paces it). The server's frame deadline (30 s) must
 * close it; at this pace the frame would take 1000 s to complete.
 */
static void *
slowloris_main(void *arg)
{
    zn_frame_header_t h = {1000, CMD_ECHO, 1, 0};
    uint8_t hdr[ZN_FRAME_HEADER_SIZE];
    double t0;
    int fd;

    (void)arg;
    (void)zn_frame_encode_header(hdr, &h);
    while (!atomic_load(&stop)) {
        if ((fd = dial(1)) < 0) {
            bad("slowloris: connect: %s", strerror(errno));
            sleep_ms(1000);
            continue;
        }
        (void)put(fd, hdr, sizeof(hdr));
        for (t0 = now_s(); !atomic_load(&stop) && put(fd, "x", 1) == 0;)
            if (recv(fd, hdr, 1, 0) == 0 || errno == ECONNRESET)
                break; /* closed by the server: the deadline */
        if (!atomic_load(&stop) && now_s() - t0 > 45)
            bad("slowloris: open for %.0f s", now_s() - t0);
        atomic_fetch_add(&faults_done, 1);
        close(fd);
    }
    return NULL;
}

/* ---- the server -------------------------------------------------------- */


/* Starts the server with its output in `log`; returns its pid. */
static pid_t
server_start(const char *path, const char *log)
{
    int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    pid_t pid;

    if (fd < 0) {
        perror(log);
        exit(2);
    }
    if ((pid = fork()) == 0) {
        dup2(fd, 1);
        dup2(fd, 2);
        /* glibc raises its mmap threshold each time it frees a large mmapped
         * block, so later 256 KiB buffers come from the heap and its
         * fragmentation makes RSS drift up with the history of the run
         * (measured: 14.3 -> 18.4 MiB over 300 s, no block leaked). A fixed
         * threshold keeps large buffers mmapped and RSS a measure of what
         * the server holds (3.5 - 4.2 MiB), so that growth means a leak. */
        setenv("MALLOC_MMAP_THRESHOLD_", "131072", 0);
        execl(path, path, "--host", "127.0.0.1", "--port", "0",
              "--io-threads", "2", "--workers", "2", "--log-level", "info",
              (char *)NULL);
        _exit(127);
    }
    close(fd);
    return pid;
}


/* The port the server logged ("listening on 127.0.0.1:P"), or 0 if it did
 * not within 10 s. */
static uint16_t
server_port(const char *log, pid_t pid)
{
    char line[512], *p;
    unsigned v = 0;
    FILE *f;
    int i;

    for (i = 0; i < 200 && v == 0; i++) {
        sleep_ms(50);
        if (waitpid(pid, NULL, WNOHANG) == pid || (f = fopen(log, "r")) == NULL)
            return 0;
        while (v == 0 && fgets(line, sizeof(line), f) != NULL)
            if ((p = strstr(line, "listening on 127.0.0.1:")) != NULL)
                v = (unsigned)atoi(p + strlen("listening on 127.0.0.1:"));
        fclose(f);
    }
    return (uint16_t)v;
}


static long
server_rss_kib(pid_t pid)
{
    char path[64], line[256];
    long kib = -1;
    FILE *f;

    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    if ((f = fopen(path, "r")) == NULL)
        return -1;
    while (fgets(line, sizeof(line), f) != NULL)
        if (sscanf(line, "VmRSS: %ld kB", &kib) == 1)
            break;
    fclose(f);
    return kib;
}


static int
server_fds(pid_t pid)
{
    char path[64];
    struct dirent *e;
    DIR *d;
    int n = 0;

    snprintf(path, sizeof(path), "/proc/%d/fd", (int)pid);
    if ((d = opendir(path)) == NULL)
        return -1;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n;
}


/* SIGTERM, then up to 10 s for a clean exit; true if it exited 0. */
static bool
server_stop(pid_t pid)
{
    int i, st;

    kill(pid, SIGTERM);
    for (i = 0; i < 200; i++) {
        if (waitpid(pid, &st, WNOHANG) == pid) {
            if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
                printf("soak: server exit status %#x\n", st);
            return WIFEXITED(st) && WEXITSTATUS(st) == 0;
        }
        sleep_ms(50);
    }
    printf("soak: server still running 10 s after SIGTERM\n");
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return false;
}


/* Lines of the log that must not be there; prints the first ten. */
static int
log_scan(const char *log, int *warns)
{
    static const char *const banned[] = {" ERROR ", " FATAL ", "Sanitizer",
                                         "runtime error"};
    char line[1024];
    unsigned i;
    int n = 0;
    FILE *f = fopen(log, "r");

    *warns = 0;
    while (f != NULL && fgets(line, sizeof(line), f) != NULL) {
        *warns += strstr(line, " WARN ") != NULL;
        for (i = 0; i < sizeof(banned) / sizeof(banned[0]); i++)
            if (strstr(line, banned[i]) != NULL) {
                if (n++ < 10)
                    printf("soak: log: %s", line);
                break;
            }
    }
    if (f != NULL)
        fclose(f);
    return n;
}

/* ---- sampling and the verdict ------------------------------------------ */


/* One sample: the server's RSS and descriptors, the clients' progress. */
static void
sample(pid_t pid, double t0)
{
    sample_t *s = &samples[nsamples];

    if (nsamples >= MAX_SAMPLES)
        return;
    s->t = now_s() - t0;
    s->rss_kib = server_rss_kib(pid);
    s->fds = server_fds(pid);
    s->calls = atomic_load(&calls_ok);
    s->faults = atomic_load(&faults_done);
    nsamples++;
}


static void
print_samples(void)
{
    int i;

    printf("soak: %6s %9s %5s %10s %8s\n", "t (s)", "RSS (MiB)", "fds",
           "calls", "faults");
    for (i = 0; i < nsamples; i++)
        printf("soak: %6.1f %9.1f %5d %10llu %8llu\n", samples[i].t,
               samples[i].rss_kib / 1024.0, samples[i].fds,
               (unsigned long long)samples[i].calls,
               (unsigned long long)samples[i].faults);
}


/* The largest RSS (KiB) and fd count among samples [from, to). */
static void
sample_max(int from, int to, long *rss, int *fds)
{
    int i;

    *rss = 0;
    *fds = 0;
    for (i = from; i < to; i++) {
        if (samples[i].rss_kib > *rss)
            *rss = samples[i].rss_kib;
        if (samples[i].fds > *fds)
            *fds = samples[i].fds;
    }
}


/*
 * Flat after the warm-up: the first 20 % of the samples are the warm-up;
 * of the rest, the largest sample of the last third may exceed the
 * largest of the first third by 10 % + 2 MiB (RSS) or 10 % + 8 (fds:
 * connections come and go with the load).
 */
static bool
check_flat(void)
{
    int warm = nsamples / 5, third = (nsamples - warm) / 3, f1, f3;
    long r1, r3;
    bool ok;

    if (third < 2) {
        printf("soak: too few samples (%d) to judge flatness\n", nsamples);
        return false;
    }
    sample_max(warm, warm + third, &r1, &f1);
    sample_max(nsamples - third, nsamples, &r3, &f3);
    ok = r3 <= r1 + r1 / 10 + 2048 && f3 <= f1 + f1 / 10 + 8;
    printf("soak: RSS max %.1f MiB in the first third after warm-up, %.1f "
           "MiB in the last (%s); fds %d, %d (%s)\n",
           r1 / 1024.0, r3 / 1024.0,
           r3 <= r1 + r1 / 10 + 2048 ? "flat" : "GROWING", f1, f3,
           f3 <= f1 + f1 / 10 + 8 ? "flat" : "GROWING");
    return ok;
}

/* ---- the run ----------------------------------------------------------- */

static pthread_t threads[CALLERS + 3];
static caller_t callers[CALLERS];


static void
load_start(void)
{
    int i;

    for (i = 0; i < CALLERS; i++) {
        callers[i].id = (unsigned)i;
        callers[i].rng = 0x9e3779b97f4a7c15ull * (uint64_t)(i + 1);
        pthread_create(&threads[i], NULL, caller_main, &callers[i]);
    }
    pthread_create(&threads[CALLERS], NULL, fault_main, (void *)12345);
    pthread_create(&threads[CALLERS + 1], NULL, slow_reader_main, NULL);
    pthread_create(&threads[CALLERS + 2], NULL, slowloris_main, NULL);
}


static void
load_stop(void)
{
    int i;

    atomic_store(&stop, true);
    for (i = 0; i < CALLERS + 3; i++)
        pthread_join(threads[i], NULL);
}


/* Runs the load for `secs`, sampling every second. False if the server
 * died meanwhile. */
static bool
soak_run(pid_t pid, unsigned secs)
{
    double t0 = now_s(), next = t0;
    int st;

    load_start();
    while (now_s() - t0 < secs) {
        next += 1.0;
        if (next > now_s())
            sleep_ms((unsigned)((next - now_s()) * 1000));
        if (waitpid(pid, &st, WNOHANG) == pid) {
            printf("soak: the server died (status %#x) at %.0f s\n", st,
                   now_s() - t0);
            load_stop();
            return false;
        }
        sample(pid, t0);
    }
    load_stop();
    return true;
}


/* Descriptors back to the baseline (+ 2) within 5 s of the load's end. */
static bool
check_fds_back(pid_t pid, int baseline)
{
    int i, n = -1;

    for (i = 0; i < 50; i++) {
        if ((n = server_fds(pid)) <= baseline + 2)
            break;
        sleep_ms(100);
    }
    printf("soak: %d fds after the load, baseline %d (%s)\n", n, baseline,
           n <= baseline + 2 ? "back" : "LEAKED");
    return n <= baseline + 2;
}


/* Prints the totals and PASS, or FAIL with every reason; the exit status. */
static int
verdict(bool alive, bool flat, bool back, bool exited, int log_errors)
{
    uint64_t u = atomic_load(&unexpected), c = atomic_load(&calls_ok);
    bool pass = alive && flat && back && exited && log_errors == 0 &&
                u == 0 && c > 0;

    printf("soak: %llu calls answered, %llu faults injected, %llu "
           "unexpected outcomes, %d bad log lines\n",
           (unsigned long long)c, (unsigned long long)atomic_load(&faults_done),
           (unsigned long long)u, log_errors);
    printf("soak: %s%s%s%s%s%s%s\n", pass ? "PASS" : "FAIL:",
           alive ? "" : " server died;", flat ? "" : " not flat;",
           back ? "" : " descriptors not back;",
           exited ? "" : " no clean exit on SIGTERM;",
           log_errors == 0 ? "" : " errors in the log;",
           u == 0 && c > 0 ? "" : " unexpected outcomes on the clients;");
    return pass ? 0 : 1;
}


/* Server up, baseline, load with samples, then the checks in order: the
 * samples, the descriptors once the load stopped, SIGTERM, the log. */
int
main(int argc, char **argv)
{
    const char *log = argc > 3 ? argv[3] : "soak-server.log";
    unsigned secs = argc > 2 ? (unsigned)atoi(argv[2]) : 120;
    bool alive, flat, back, exited;
    int baseline, warns, errors;
    pid_t pid;

    if (argc < 2 || secs == 0) {
        fprintf(stderr, "usage: %s SERVER [SECONDS [LOG]]\n", argv[0]);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    pid = server_start(argv[1], log);
    if ((port = server_port(log, pid)) == 0) {
        printf("soak: FAIL: the server did not start (see %s)\n", log);
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        return 1;
    }
    sleep_ms(200);
    baseline = server_fds(pid);
    printf("soak: server pid %d on port %u for %u s; %d fds, %.1f MiB\n",
           (int)pid, port, secs, baseline, server_rss_kib(pid) / 1024.0);
    alive = soak_run(pid, secs);
    print_samples();
    flat = check_flat();
    back = alive && check_fds_back(pid, baseline);
    exited = alive && server_stop(pid);
    errors = log_scan(log, &warns);
    printf("soak: server log %s: %d WARN lines (expected: bad input)\n", log,
           warns);
    return verdict(alive, flat, back, exited, errors);
}
