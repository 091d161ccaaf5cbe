/*
 * zpeer.c: the hostile peer, the server under test and the canary (see
 * zpeer.h). Plain POSIX and Linux calls only: it shares no code with the
 * library it attacks, so a bug there cannot hide itself here.
 */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "zpeer.h"

#define ZP_MAX_BODY (64u << 20)

/* ---- time --------------------------------------------------------------- */


uint64_t
zp_now_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}


void
zp_sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};

    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}


/* Milliseconds left until `end` (a zp_now_us() value), at least 0. */
static int
zp_left_ms(uint64_t end)
{
    uint64_t now = zp_now_us();

    return now >= end ? 0 : (int)((end - now + 999) / 1000);
}


/* Waits for `events` on fd until `end`; 1 ready, 0 time-out, -errno. */
static int
zp_wait(int fd, short events, uint64_t end)
{
    struct pollfd p = {fd, events, 0};
    int rc;

    for (;;) {
        rc = poll(&p, 1, zp_left_ms(end));
        if (rc >= 0)
            return rc;
        if (errno != EINTR)
            return -errno;
    }
}

/* ---- sockets ------------------------------------------------------------ */


int
zp_connect(uint16_t port, unsigned timeout_ms)
{
    return zp_connect_rcvbuf(port, 0, timeout_ms);
}


/* A non-blocking connect with a deadline: a server whose backlog is full
 * (EMFILE tests) drops SYNs, and a blocking connect would then retry for
 * minutes. */
int
zp_connect_rcvbuf(uint16_t port, int rcvbuf, unsigned timeout_ms)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    uint64_t end = zp_now_us() + (uint64_t)timeout_ms * 1000;
    int fd, one = 1, err = 0, rc;
    socklen_t len = sizeof(err);

    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    /* Before connect, so the window the peer sees is small from the
     * start. */
    if (rcvbuf > 0)
        (void)zp_set_rcvbuf(fd, rcvbuf);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0)
        return fd;
    if (errno != EINPROGRESS) {
        err = -errno;
        close(fd);
        return err;
    }
    rc = zp_wait(fd, POLLOUT, end);
    if (rc <= 0 ||
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) {
        close(fd);
        return rc < 0 ? rc : rc == 0 ? -ETIMEDOUT : -(err ? err : EIO);
    }
    return fd;
}


/* MSG_NOSIGNAL: a peer that resets must not kill the test with SIGPIPE.
 * MSG_DONTWAIT with poll: a server that stops reading (high-water pause)
 * must not block the test past its deadline. */
int
zp_send(int fd, const void *p, size_t n, unsigned timeout_ms, size_t *sent)
{
    uint64_t end = zp_now_us() + (uint64_t)timeout_ms * 1000;
    size_t off = 0;
    ssize_t k;
    int rc = 0;

    while (off < n) {
        k = send(fd, (const char *)p + off, n - off,
                 MSG_NOSIGNAL | MSG_DONTWAIT);
        if (k > 0) {
            off += (size_t)k;
            continue;
        }
        if (k < 0 && errno != EAGAIN && errno != EINTR) {
            rc = -errno;
            break;
        }
        if ((rc = zp_wait(fd, POLLOUT, end)) <= 0) {
            rc = rc == 0 ? -ETIMEDOUT : rc;
            break;
        }
        rc = 0;
    }
    if (sent != NULL)
        *sent = off;
    return rc;
}


int
zp_send_rate(int fd, const void *p, size_t n, unsigned rate, size_t chunk)
{
    uint64_t start = zp_now_us(), due;
    size_t off = 0, k;
    int rc;

    if (chunk == 0 || rate == 0)
        return -EINVAL;
    while (off < n) {
        /* Paced from the start, not from the last piece, so that the
         * rate holds whatever the sleeps cost. */
        due = start + (uint64_t)off * 1000000u / rate;
        if (due > zp_now_us())
            zp_sleep_ms((unsigned)((due - zp_now_us() + 999) / 1000));
        k = n - off < chunk ? n - off : chunk;
        if ((rc = zp_send(fd, (const char *)p + off, k, 5000, NULL)) != 0)
            return rc;
        off += k;
    }
    return 0;
}


int
zp_shut_wr(int fd)
{
    return shutdown(fd, SHUT_WR) == 0 ? 0 : -errno;
}


void
zp_rst(int fd)
{
    struct linger lg = {1, 0};

    (void)setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    close(fd);
}


int
zp_set_rcvbuf(int fd, int bytes)
{
    return setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bytes, sizeof(bytes)) == 0
               ? 0
               : -errno;
}


long
zp_read_n(int fd, void *p, size_t n, unsigned timeout_ms)
{
    uint64_t end = zp_now_us() + (uint64_t)timeout_ms * 1000;
    size_t off = 0;
    ssize_t k;
    int rc;

    while (off < n) {
        k = recv(fd, (char *)p + off, n - off, MSG_DONTWAIT);
        if (k > 0) {
            off += (size_t)k;
            continue;
        }
        if (k == 0)
            return (long)off;
        if (errno != EAGAIN && errno != EINTR)
            return -errno;
        if ((rc = zp_wait(fd, POLLIN, end)) <= 0)
            return rc == 0 ? -ETIMEDOUT : rc;
    }
    return (long)off;
}


/* One step of zp_read_to_end: true when the end is reached. */
static bool
zp_read_step(int fd, char *buf, size_t cap, zp_report_t *r)
{
    char sink[65536];
    size_t room = buf != NULL ? cap - r->bytes : sizeof(sink);
    ssize_t k;

    k = recv(fd, buf != NULL ? buf + r->bytes : sink, room, MSG_DONTWAIT);
    if (k > 0) {
        r->bytes += (size_t)k;
        return buf != NULL && r->bytes == cap;
    }
    if (k == 0) {
        r->end = ZP_END_EOF;
        return true;
    }
    if (errno == EAGAIN || errno == EINTR)
        return false;
    r->end = errno == ECONNRESET ? ZP_END_RST : ZP_END_ERROR;
    r->err = -errno;
    return true;
}


/* The tcploop-style report: how much arrived, how it ended, and when the
 * first byte and the end came, which is what the close-time bounds of the
 * cases are checked against. */
void
zp_read_to_end(int fd, void *buf, size_t cap, unsigned timeout_ms,
               zp_report_t *r)
{
    uint64_t start = zp_now_us(), end = start + (uint64_t)timeout_ms * 1000;
    size_t before;

    memset(r, 0, sizeof(*r));
    r->end = ZP_END_FULL;
    for (;;) {
        before = r->bytes;
        if (buf != NULL && r->bytes == cap)
            break;
        if (zp_read_step(fd, buf, cap, r)) {
            if (r->bytes > before && r->first_us == 0)
                r->first_us = zp_now_us() - start;
            break;
        }
        if (r->bytes > before) {
            if (r->first_us == 0)
                r->first_us = zp_now_us() - start;
            continue;
        }
        if (zp_wait(fd, POLLIN, end) <= 0) {
            r->end = ZP_END_TIMEOUT;
            break;
        }
    }
    r->end_us = zp_now_us() - start;
}


bool
zp_wait_closed(int fd, unsigned ms)
{
    zp_report_t r;

    zp_read_to_end(fd, NULL, 0, ms, &r);
    return r.end == ZP_END_EOF || r.end == ZP_END_RST;
}

/* ---- frames ------------------------------------------------------------- */


static void
zp_put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}


static uint32_t
zp_get32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 |
           p[3];
}


void
zp_hdr_put(uint8_t *out, const zp_hdr_t *h)
{
    out[0] = (uint8_t)(h->magic >> 8);
    out[1] = (uint8_t)h->magic;
    out[2] = h->version;
    out[3] = h->flags;
    zp_put32(out + 4, h->length);
    zp_put32(out + 8, h->cmd);
    zp_put32(out + 12, h->seq);
}


void
zp_hdr_get(const uint8_t *in, zp_hdr_t *h)
{
    h->magic = (uint16_t)(in[0] << 8 | in[1]);
    h->version = in[2];
    h->flags = in[3];
    h->length = zp_get32(in + 4);
    h->cmd = zp_get32(in + 8);
    h->seq = zp_get32(in + 12);
}


uint8_t *
zp_frame_new(uint32_t cmd, uint32_t seq, uint8_t flags, const void *p,
             size_t n)
{
    zp_hdr_t h = {ZP_MAGIC, 1, flags, (uint32_t)n, cmd, seq};
    uint8_t *f = malloc(ZP_HDR_SIZE + n);

    if (f == NULL)
        return NULL;
    zp_hdr_put(f, &h);
    if (n > 0)
        memcpy(f + ZP_HDR_SIZE, p, n);
    return f;
}


/* The header is not validated: the caller checks what it expects, so a
 * wrong magic or flags from the server shows up as a test failure, not
 * as a read error. */
int
zp_read_frame(int fd, zp_msg_t *m, unsigned timeout_ms)
{
    uint64_t end = zp_now_us() + (uint64_t)timeout_ms * 1000;
    uint8_t hdr[ZP_HDR_SIZE];
    long k;

    m->body = NULL;
    k = zp_read_n(fd, hdr, sizeof(hdr), timeout_ms);
    if (k != (long)sizeof(hdr))
        return k < 0 ? (int)k : -EPIPE;
    zp_hdr_get(hdr, &m->h);
    if (m->h.length > ZP_MAX_BODY)
        return -EMSGSIZE;
    if ((m->body = malloc(m->h.length + 1u)) == NULL)
        return -ENOMEM;
    k = zp_read_n(fd, m->body, m->h.length, (unsigned)zp_left_ms(end));
    if (k != (long)m->h.length) {
        zp_msg_free(m);
        return k < 0 ? (int)k : -EPIPE;
    }
    return 0;
}


void
zp_msg_free(zp_msg_t *m)
{
    free(m->body);
    m->body = NULL;
}


int
zp_call(int fd, uint32_t cmd, uint32_t seq, const void *body, size_t n,
        zp_msg_t *rsp, unsigned timeout_ms)
{
    uint64_t end = zp_now_us() + (uint64_t)timeout_ms * 1000;
    uint8_t *f = zp_frame_new(cmd, seq, 0, body, n);
    int rc;

    if (f == NULL)
        return -ENOMEM;
    rc = zp_send(fd, f, ZP_HDR_SIZE + n, timeout_ms, NULL);
    free(f);
    while (rc == 0) {
        rc = zp_read_frame(fd, rsp, (unsigned)zp_left_ms(end));
        if (rc != 0 || ((rsp->h.flags & ZP_F_RESPONSE) && rsp->h.seq == seq))
            break;
        zp_msg_free(rsp);
    }
    return rc;
}

/* ---- protobuf wire bits ------------------------------------------------- */


size_t
zp_pb_varint(uint8_t *out, uint64_t v)
{
    size_t n = 0;

    while (v >= 0x80) {
        out[n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    out[n++] = (uint8_t)v;
    return n;
}


size_t
zp_pb_bytes(uint8_t *out, unsigned field, const void *p, size_t n)
{
    size_t k = zp_pb_varint(out, (uint64_t)field << 3 | 2);

    k += zp_pb_varint(out + k, n);
    if (n > 0)
        memcpy(out + k, p, n);
    return k + n;
}


uint8_t *
zp_pb_field1(const void *p, size_t n, size_t *len)
{
    uint8_t *b = malloc(n + 11);

    if (b != NULL)
        *len = zp_pb_bytes(b, 1, p, n);
    return b;
}


/* Reads a varint at *off; false if it runs past n or over 10 bytes. */
static bool
zp_pb_get_varint(const uint8_t *b, size_t n, size_t *off, uint64_t *v)
{
    unsigned shift = 0;

    *v = 0;
    while (*off < n && shift < 70) {
        *v |= (uint64_t)(b[*off] & 0x7f) << shift;
        if ((b[(*off)++] & 0x80) == 0)
            return true;
        shift += 7;
    }
    return false;
}


/* Walks the fields of a body: calls back on field 1; false if
 * malformed. Only wire types 0 and 2 occur in the messages read here. */
static bool
zp_pb_find1(const uint8_t *b, size_t n, uint64_t *val, size_t *off_out)
{
    size_t off = 0;
    uint64_t tag, v;

    while (off < n) {
        if (!zp_pb_get_varint(b, n, &off, &tag) ||
            ((tag & 7) != 0 && (tag & 7) != 2) ||
            !zp_pb_get_varint(b, n, &off, &v))
            return false;
        if ((tag & 7) == 2 && v > n - off)
            return false;
        if (tag >> 3 == 1) {
            *val = v;
            *off_out = off;
            return true;
        }
        if ((tag & 7) == 2)
            off += v;
    }
    return false;
}


uint32_t
zp_pb_error_code(const uint8_t *body, size_t n)
{
    uint64_t v;
    size_t off;

    return zp_pb_find1(body, n, &v, &off) ? (uint32_t)v : 0;
}


int
zp_pb_get_field1(const uint8_t *body, size_t n, const uint8_t **p,
                 size_t *len)
{
    uint64_t v;
    size_t off;

    if (n == 0) { /* proto3: an empty field is not on the wire */
        *p = body;
        *len = 0;
        return 0;
    }
    if (!zp_pb_find1(body, n, &v, &off))
        return -EINVAL;
    *p = body + off;
    *len = (size_t)v;
    return 0;
}

/* ---- the server under test ---------------------------------------------- */


/* Moves src to dst in the child; dup2 keeps close-on-exec when they are
 * already equal, so clear it by hand then. */
static void
zp_child_fd(int src, int dst)
{
    if (src == dst)
        (void)fcntl(dst, F_SETFD, 0);
    else
        (void)dup2(src, dst);
}


/* In the child, between fork and exec: only async-signal-safe calls. */
static void
zp_child_exec(const char *bin, char *const *argv, int log_fd, int stats_fd,
              pid_t parent)
{
    struct sigaction dfl;
    sigset_t none;
    int null_fd = open("/dev/null", O_RDONLY);

    /* Dies with the test, whatever ends it (an alarm, a crash). */
    (void)prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
        _exit(126);
    zp_child_fd(null_fd, 0);
    zp_child_fd(log_fd, 1);
    zp_child_fd(log_fd, 2);
    zp_child_fd(stats_fd, 3);
    /* A known set of descriptors, so the fd counts mean something. */
    if (close_range(4, ~0u, 0) != 0)
        for (int fd = 4; fd < 65536; fd++)
            (void)close(fd);
    /* As a shell would start it: SIGPIPE at its default, nothing
     * blocked, whatever the test process does with them. */
    memset(&dfl, 0, sizeof(dfl));
    dfl.sa_handler = SIG_DFL;
    (void)sigaction(SIGPIPE, &dfl, NULL);
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    execv(bin, argv);
    _exit(127);
}


/* Builds the argument vector: the fixed flags, then `extra`. */
static int
zp_server_argv(zp_server_t *s, const char *bin, const char *const *extra,
               char **argv, size_t cap)
{
    const char *fixed[] = {bin, "--host", "127.0.0.1", "--port", "0",
                           "--port-file", s->port_path, "--stats-fd", "3",
                           "--test-commands"};
    size_t n = 0, i;

    for (i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++)
        argv[n++] = (char *)fixed[i];
    for (i = 0; extra != NULL && extra[i] != NULL; i++) {
        if (n + 1 >= cap)
            return -E2BIG;
        argv[n++] = (char *)extra[i];
    }
    argv[n] = NULL;
    return 0;
}


/* Waits for the port file the server writes once it listens. */
static int
zp_server_wait_port(zp_server_t *s, unsigned timeout_ms)
{
    uint64_t end = zp_now_us() + (uint64_t)timeout_ms * 1000;
    unsigned port;
    FILE *f;

    while (zp_now_us() < end) {
        if (!zp_server_alive(s))
            return -ECHILD;
        if ((f = fopen(s->port_path, "r")) != NULL) {
            int ok = fscanf(f, "%u", &port) == 1 && port > 0 &&
                     port <= 65535;
            fclose(f);
            if (ok) {
                s->port = (uint16_t)port;
                return 0;
            }
        }
        zp_sleep_ms(5);
    }
    return -ETIMEDOUT;
}


/*
 * The log file is opened before the pipe so that the child can move both
 * to fixed numbers (1-2 and 3) without one clobbering the other. The port
 * comes from --port-file, written by the server once it listens: no race
 * with another process for a port picked in advance.
 */
int
zp_server_start(zp_server_t *s, const char *bin, const char *dir,
                const char *name, const char *const *extra)
{
    char *argv[64];
    int log_fd, p[2], rc;
    pid_t parent = getpid();

    memset(s, 0, sizeof(*s));
    snprintf(s->log_path, sizeof(s->log_path), "%s/%s.log", dir, name);
    snprintf(s->port_path, sizeof(s->port_path), "%s/%s.port", dir, name);
    (void)unlink(s->port_path);
    if ((rc = zp_server_argv(s, bin, extra, argv, 64)) != 0)
        return rc;
    log_fd = open(s->log_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC,
                  0644);
    if (log_fd < 0)
        return -errno;
    if (pipe2(p, O_CLOEXEC) != 0) {
        rc = -errno;
        close(log_fd);
        return rc;
    }
    if ((s->pid = fork()) == 0)
        zp_child_exec(bin, argv, log_fd, p[1], parent);
    rc = s->pid < 0 ? -errno : 0;
    close(log_fd);
    close(p[1]);
    s->stats_rd = p[0];
    if (rc != 0) {
        close(p[0]);
        return rc;
    }
    if ((rc = zp_server_wait_port(s, 20000)) != 0)
        (void)zp_server_stop(s, 2000, NULL, 0);
    return rc;
}


bool
zp_server_alive(zp_server_t *s)
{
    char path[64], buf[512], *rp;
    int fd;
    ssize_t n;

    if (s->pid <= 0 || kill(s->pid, 0) != 0)
        return false;
    /* A zombie still takes signals: look at its state in /proc. */
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)s->pid);
    if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
        return false;
    n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        return false;
    buf[n] = '\0';
    rp = strrchr(buf, ')');
    return rp != NULL && rp[1] == ' ' && rp[2] != 'Z' && rp[2] != 'X';
}


/* Takes the next complete line from the stats pipe, waiting until end.
 * The server writes each line with one write() under PIPE_BUF, so lines
 * never interleave; bytes past the line stay in s->pending for the next
 * call (the exit line may follow a SIGUSR1 line in the same read). */
static int
zp_stats_line(zp_server_t *s, char *line, size_t cap, uint64_t end)
{
    char *nl;
    ssize_t k;
    size_t len;
    int rc;

    while ((nl = memchr(s->pending, '\n', s->pending_len)) == NULL) {
        if (s->pending_len == sizeof(s->pending))
            return -EMSGSIZE;
        if ((rc = zp_wait(s->stats_rd, POLLIN, end)) <= 0)
            return rc == 0 ? -ETIMEDOUT : rc;
        k = read(s->stats_rd, s->pending + s->pending_len,
                 sizeof(s->pending) - s->pending_len);
        if (k <= 0)
            return k == 0 ? -EPIPE : -errno;
        s->pending_len += (size_t)k;
    }
    len = (size_t)(nl - s->pending);
    if (line != NULL && cap > 0) {
        snprintf(line, cap, "%.*s", (int)len, s->pending);
    }
    s->pending_len -= len + 1;
    memmove(s->pending, nl + 1, s->pending_len);
    return 0;
}


int
zp_server_stats(zp_server_t *s, char *line, size_t cap, unsigned timeout_ms)
{
    if (kill(s->pid, SIGUSR1) != 0)
        return -errno;
    return zp_stats_line(s, line, cap,
                         zp_now_us() + (uint64_t)timeout_ms * 1000);
}


int64_t
zp_stat(const char *json, const char *key)
{
    char pat[80];
    const char *p;

    snprintf(pat, sizeof(pat), "\"%s\":", key);
    if ((p = strstr(json, pat)) == NULL)
        return -1;
    return strtoll(p + strlen(pat), NULL, 10);
}


int
zp_server_stop(zp_server_t *s, unsigned timeout_ms, char *last, size_t cap)
{
    uint64_t end = zp_now_us() + (uint64_t)timeout_ms * 1000;
    int status = 0, rc = -ETIMEDOUT;
    pid_t w = 0;

    if (s->pid <= 0)
        return -ECHILD;
    (void)kill(s->pid, SIGTERM);
    while ((w = waitpid(s->pid, &status, WNOHANG)) == 0 &&
           zp_now_us() < end)
        zp_sleep_ms(2);
    if (w == 0) {
        (void)kill(s->pid, SIGKILL);
        (void)waitpid(s->pid, &status, 0);
    } else if (w == s->pid) {
        rc = WIFEXITED(status) ? WEXITSTATUS(status)
                               : 128 + WTERMSIG(status);
    }
    /* Every line left in the pipe; the last one is the exit line. */
    if (last != NULL && cap > 0)
        last[0] = '\0';
    while (zp_stats_line(s, last, cap, zp_now_us()) == 0)
        ;
    close(s->stats_rd);
    s->stats_rd = -1;
    s->pid = 0;
    return rc;
}

/* ---- /proc and files ---------------------------------------------------- */


int64_t
zp_proc_kb(pid_t pid, const char *name)
{
    char path[64], line[256];
    size_t len = strlen(name);
    int64_t v = -1;
    FILE *f;

    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    if ((f = fopen(path, "re")) == NULL)
        return -1;
    while (fgets(line, sizeof(line), f) != NULL)
        if (strncmp(line, name, len) == 0 && line[len] == ':') {
            v = strtoll(line + len + 1, NULL, 10);
            break;
        }
    fclose(f);
    return v;
}


int
zp_proc_fds(pid_t pid)
{
    char path[64];
    struct dirent *e;
    int n = 0;
    DIR *d;

    snprintf(path, sizeof(path), "/proc/%d/fd", (int)pid);
    if ((d = opendir(path)) == NULL)
        return -1;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n;
}


uint64_t
zp_proc_cpu_ms(pid_t pid)
{
    char path[64], buf[1024], *p;
    unsigned long long ut = 0, st = 0;
    long hz = sysconf(_SC_CLK_TCK);
    FILE *f;
    size_t n;

    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    if ((f = fopen(path, "re")) == NULL)
        return 0;
    n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* Fields 14 and 15 (utime, stime), counted after the command name,
     * which may hold spaces and ends with the last ')'. */
    if ((p = strrchr(buf, ')')) == NULL ||
        sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu",
               &ut, &st) != 2)
        return 0;
    return (ut + st) * 1000u / (uint64_t)(hz > 0 ? hz : 100);
}


int
zp_file_count(const char *path, const char *needle)
{
    char line[4096];
    int n = 0;
    FILE *f;

    if ((f = fopen(path, "re")) == NULL)
        return -1;
    while (fgets(line, sizeof(line), f) != NULL)
        if (needle == NULL || strstr(line, needle) != NULL)
            n++;
    fclose(f);
    return n;
}


int
zp_file_lines(const char *path)
{
    return zp_file_count(path, NULL);
}

/* ---- canary ------------------------------------------------------------- */

struct zp_canary_s {
    pthread_t thread;
    atomic_bool stop;
    uint16_t port;
    unsigned interval_ms, timeout_ms;
    bool allow_overloaded;
    int fd;
    uint32_t seq;
    _Atomic uint64_t calls;  /* read by the test thread meanwhile */
    uint64_t failures, overloaded;
    uint64_t *lat;      /* latency of each good call, microseconds */
    size_t nlat, caplat;
    char first_error[160];
};


/* One call of cmd 1: 0, 1 for an allowed OVERLOADED, or -errno. */
static int
zp_canary_call(zp_canary_t *c)
{
    static const uint8_t body[] = {0x0a, 0x06, 'c', 'a', 'n', 'a', 'r', 'y'};
    uint64_t t0 = zp_now_us();
    const uint8_t *res;
    size_t len;
    zp_msg_t m;
    int rc;

    rc = zp_call(c->fd, 1, ++c->seq, body, sizeof(body), &m, c->timeout_ms);
    if (rc != 0)
        return rc;
    if (c->allow_overloaded && m.h.flags == (ZP_F_RESPONSE | ZP_F_ERROR) &&
        zp_pb_error_code(m.body, m.h.length) == 3) {
        zp_msg_free(&m);
        return 1;
    }
    if (m.h.flags != ZP_F_RESPONSE || m.h.cmd != 1 ||
        zp_pb_get_field1(m.body, m.h.length, &res, &len) != 0 ||
        len != 17 || memcmp(res, "hello, i'm server", 17) != 0)
        rc = -EBADMSG;
    zp_msg_free(&m);
    if (rc == 0 && c->nlat < c->caplat)
        c->lat[c->nlat++] = zp_now_us() - t0;
    return rc;
}


static void
zp_canary_fail(zp_canary_t *c, int rc)
{
    c->failures++;
    if (c->first_error[0] == '\0')
        snprintf(c->first_error, sizeof(c->first_error),
                 "call %llu (seq %u): %s",
                 (unsigned long long)(c->calls + c->failures), c->seq,
                 strerror(-rc));
    /* A failed call may leave half a frame behind: start afresh. */
    if (c->fd >= 0)
        zp_rst(c->fd);
    c->fd = zp_connect(c->port, c->timeout_ms);
}


/* Paced by a sleep after each call rather than a fixed clock: when the
 * server stalls, the canary records one slow call, not a burst of calls
 * queued behind it. */
static void *
zp_canary_main(void *arg)
{
    zp_canary_t *c = arg;
    int rc;

    while (!atomic_load(&c->stop)) {
        zp_sleep_ms(c->interval_ms);
        rc = c->fd >= 0 ? zp_canary_call(c) : c->fd;
        if (rc == 0)
            atomic_fetch_add(&c->calls, 1);
        else if (rc == 1)
            c->overloaded++;
        else
            zp_canary_fail(c, rc);
    }
    return NULL;
}


int
zp_canary_start(uint16_t port, unsigned interval_ms, unsigned timeout_ms,
                bool allow_overloaded, zp_canary_t **out)
{
    zp_canary_t *c = calloc(1, sizeof(*c));
    int rc = -ENOMEM;

    if (c == NULL)
        return -ENOMEM;
    c->fd = -1;
    c->port = port;
    c->interval_ms = interval_ms;
    c->timeout_ms = timeout_ms;
    c->allow_overloaded = allow_overloaded;
    c->caplat = 1u << 20;
    if ((c->lat = malloc(c->caplat * sizeof(*c->lat))) == NULL)
        goto fail;
    if ((c->fd = zp_connect(port, timeout_ms)) < 0) {
        rc = c->fd;
        goto fail;
    }
    /* One call before the thread starts: the canary is known good. */
    if ((rc = zp_canary_call(c)) != 0)
        goto fail;
    atomic_store(&c->calls, 1);
    if ((rc = -pthread_create(&c->thread, NULL, zp_canary_main, c)) != 0)
        goto fail;
    *out = c;
    return 0;

fail:
    if (c->fd >= 0)
        close(c->fd);
    free(c->lat);
    free(c);
    return rc;
}


uint64_t
zp_canary_calls(zp_canary_t *c)
{
    return atomic_load(&c->calls);
}


static int
zp_cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

    return x < y ? -1 : x > y;
}


void
zp_canary_stop(zp_canary_t *c, zp_canary_report_t *r)
{
    atomic_store(&c->stop, true);
    pthread_join(c->thread, NULL);
    memset(r, 0, sizeof(*r));
    r->calls = atomic_load(&c->calls);
    r->failures = c->failures;
    r->overloaded = c->overloaded;
    snprintf(r->first_error, sizeof(r->first_error), "%s", c->first_error);
    if (c->nlat > 0) {
        qsort(c->lat, c->nlat, sizeof(*c->lat), zp_cmp_u64);
        r->p50_us = c->lat[c->nlat / 2];
        r->p99_us = c->lat[(c->nlat * 99) / 100];
        r->max_us = c->lat[c->nlat - 1];
    }
    if (c->fd >= 0)
        close(c->fd);
    free(c->lat);
    free(c);
}
