/*
 * zpeer.h: a hostile peer for znet's tests, in the spirit of haproxy's
 * tcploop (written from scratch): small blocking-style steps on loopback
 * sockets (connect, send bytes or frames, send at a rate, pause, half-close,
 * reset, shrink the receive buffer, read N bytes, read until EOF with a
 * deadline, reporting what arrived and when); the server under test
 * (znet-test-server) as a child process, with its log, its counters and its
 * /proc figures; and a canary client that keeps calling cmd 1 on its own
 * thread and records failures and latency.
 *
 * Every socket is non-blocking and every wait has a deadline, so a peer
 * step never hangs a test. Functions return 0 or a negative errno value
 * unless documented otherwise; none of them asserts. Writes use
 * MSG_NOSIGNAL: the test process never gets SIGPIPE.
 *
 * Thread-safety: the socket and frame functions may be used from any
 * thread on different sockets; a zp_server_t and a zp_canary_t belong to
 * the thread that started them.
 */
#ifndef ZPEER_H
#define ZPEER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define ZP_HDR_SIZE 16
#define ZP_MAGIC 0x7A6Eu
#define ZP_F_RESPONSE 0x01u
#define ZP_F_ERROR 0x02u
#define ZP_F_ONEWAY 0x04u

/* ---- time ------------------------------------------------------------- */

/* Monotonic clock, microseconds. */
uint64_t zp_now_us(void);
void zp_sleep_ms(unsigned ms);

/* ---- sockets ---------------------------------------------------------- */

/* Connects to 127.0.0.1:port within timeout_ms; returns a non-blocking,
 * close-on-exec socket with TCP_NODELAY, or -errno (-ETIMEDOUT). */
int zp_connect(uint16_t port, unsigned timeout_ms);

/* The same with SO_RCVBUF set to `rcvbuf` bytes before connecting (0:
 * the default), for readers that the server must see as slow. */
int zp_connect_rcvbuf(uint16_t port, int rcvbuf, unsigned timeout_ms);

/* Sends all n bytes within timeout_ms. Returns 0, -ETIMEDOUT (the peer
 * stopped reading; *sent, if not NULL, says how far it got), -EPIPE,
 * -ECONNRESET. */
int zp_send(int fd, const void *p, size_t n, unsigned timeout_ms,
            size_t *sent);

/* Sends n bytes at about `rate` bytes per second, in pieces of `chunk`
 * bytes (1 for slowloris). Same returns as zp_send. */
int zp_send_rate(int fd, const void *p, size_t n, unsigned rate,
                 size_t chunk);

/* shutdown(SHUT_WR): a FIN after the bytes sent. */
int zp_shut_wr(int fd);

/* An abortive close: SO_LINGER on with 0, then close: the peer gets RST. */
void zp_rst(int fd);

/* SO_RCVBUF (the kernel doubles it and keeps a minimum). On a connected
 * socket the window already announced stays; see zp_connect_rcvbuf. */
int zp_set_rcvbuf(int fd, int bytes);

/* Reads exactly n bytes within timeout_ms. Returns n, or the bytes read
 * before EOF (then fewer), or -errno (-ETIMEDOUT, -ECONNRESET). */
long zp_read_n(int fd, void *p, size_t n, unsigned timeout_ms);

typedef enum {
    ZP_END_EOF = 0,   /* orderly close (FIN) */
    ZP_END_RST,       /* ECONNRESET */
    ZP_END_TIMEOUT,   /* still open at the deadline */
    ZP_END_ERROR,     /* another error, in err */
    ZP_END_FULL       /* cap bytes arrived before the end */
} zp_end_t;

typedef struct {
    size_t bytes;      /* received */
    zp_end_t end;
    int err;           /* -errno when end is ZP_END_ERROR */
    uint64_t first_us; /* from the call to the first byte (0: none) */
    uint64_t end_us;   /* from the call to the end */
} zp_report_t;

/* Reads until EOF, reset, `cap` bytes or timeout_ms, into buf (or
 * nowhere if buf is NULL), and reports what arrived and when. */
void zp_read_to_end(int fd, void *buf, size_t cap, unsigned timeout_ms,
                    zp_report_t *r);

/* True if the peer closed: a read within `ms` sees EOF or a reset
 * (unread data is discarded). */
bool zp_wait_closed(int fd, unsigned ms);

/* ---- frames and protobuf wire bits ------------------------------------ */

/* A frame header with every field free, bad values included. */
typedef struct {
    uint16_t magic;
    uint8_t version;
    uint8_t flags;
    uint32_t length;
    uint32_t cmd;
    uint32_t seq;
} zp_hdr_t;

void zp_hdr_put(uint8_t *out, const zp_hdr_t *h);
void zp_hdr_get(const uint8_t *in, zp_hdr_t *h);

/* A valid frame (magic, version 1, length = n) with body p: a new buffer
 * of ZP_HDR_SIZE + n bytes (free()), or NULL. */
uint8_t *zp_frame_new(uint32_t cmd, uint32_t seq, uint8_t flags,
                      const void *p, size_t n);

/* A frame read back: header and body (free with zp_msg_free). */
typedef struct {
    zp_hdr_t h;
    uint8_t *body;
} zp_msg_t;

/* Reads one frame within timeout_ms (bodies up to 64 MiB). Returns 0,
 * -EPIPE on EOF, -ECONNRESET, -ETIMEDOUT, -EMSGSIZE, -ENOMEM. */
int zp_read_frame(int fd, zp_msg_t *m, unsigned timeout_ms);
void zp_msg_free(zp_msg_t *m);

/* Sends a request and reads frames until the response with its seq (push
 * frames, seq 0 and RESPONSE clear, are skipped). Same returns as
 * zp_read_frame, or those of zp_send. */
int zp_call(int fd, uint32_t cmd, uint32_t seq, const void *body, size_t n,
            zp_msg_t *rsp, unsigned timeout_ms);

/* Protobuf wire format, enough for demo.* and znet.Error: a varint, and a
 * length-delimited field (tag, length, bytes). Return the bytes written;
 * out must have room (10, and 11 + n). */
size_t zp_pb_varint(uint8_t *out, uint64_t v);
size_t zp_pb_bytes(uint8_t *out, unsigned field, const void *p, size_t n);

/* A body with field 1 as bytes: demo.TestReq, EchoReq. New buffer of
 * *len bytes (free()), or NULL. */
uint8_t *zp_pb_field1(const void *p, size_t n, size_t *len);

/* znet.Error.code of an error body (0 if absent or unreadable). */
uint32_t zp_pb_error_code(const uint8_t *body, size_t n);

/* Field 1 as bytes (demo.TestRsp.res, EchoRsp.payload): 0, or -EINVAL. */
int zp_pb_get_field1(const uint8_t *body, size_t n, const uint8_t **p,
                     size_t *len);

/* ---- the server under test -------------------------------------------- */

typedef struct {
    pid_t pid;
    uint16_t port;
    int stats_rd;          /* read end of the --stats-fd pipe */
    char log_path[512];
    char port_path[512];
    char pending[8192];    /* bytes of the stats pipe not yet a line */
    size_t pending_len;
} zp_server_t;

/*
 * Starts `bin` (znet-test-server) as a child on 127.0.0.1 with a free port
 * (--port 0, --port-file), --stats-fd 3, --test-commands and the extra
 * arguments (NULL-terminated). Its stdout and stderr go to
 * dir/name.log; SIGPIPE is at its default disposition and no signal is
 * blocked; it dies with the test process. Waits up to 20 s for the port.
 */
int zp_server_start(zp_server_t *s, const char *bin, const char *dir,
                    const char *name, const char *const *extra);

/* True while the child runs (not exited, not a zombie). */
bool zp_server_alive(zp_server_t *s);

/* Asks for a stats line (SIGUSR1) and stores it, NUL-terminated. */
int zp_server_stats(zp_server_t *s, char *line, size_t cap,
                    unsigned timeout_ms);

/* The value of "key" in a stats line; -1 if absent. */
int64_t zp_stat(const char *json, const char *key);

/*
 * SIGTERM, then waits up to timeout_ms. Returns the exit status (0-255),
 * 128 + the signal if it died of one, or -ETIMEDOUT (it was then killed).
 * The last stats line it wrote (at exit) goes to last, if not NULL.
 */
int zp_server_stop(zp_server_t *s, unsigned timeout_ms, char *last,
                   size_t cap);

/* /proc/PID figures: a "Name:" line of status in KiB (-1 if unknown),
 * the number of open descriptors, user + system CPU time in ms. */
int64_t zp_proc_kb(pid_t pid, const char *name);
int zp_proc_fds(pid_t pid);
uint64_t zp_proc_cpu_ms(pid_t pid);

/* Lines in a file, and lines containing `needle`. */
int zp_file_lines(const char *path);
int zp_file_count(const char *path, const char *needle);

/* ---- canary ----------------------------------------------------------- */

typedef struct zp_canary_s zp_canary_t;

typedef struct {
    uint64_t calls;        /* calls answered correctly */
    uint64_t failures;     /* error, time-out, wrong answer, lost conn */
    uint64_t overloaded;   /* OVERLOADED answers, when allowed */
    uint64_t p50_us, p99_us, max_us;
    char first_error[160];
} zp_canary_report_t;

/*
 * Connects a well-behaved client, makes one call, then calls cmd 1 every
 * `interval_ms` on its own thread; a call fails if its answer is not the
 * right TestRsp within timeout_ms (an OVERLOADED error is counted apart,
 * not as a failure, if allow_overloaded: a full worker queue refuses the
 * canary too, by design). After a failure it reconnects.
 */
int zp_canary_start(uint16_t port, unsigned interval_ms, unsigned timeout_ms,
                    bool allow_overloaded, zp_canary_t **out);
void zp_canary_stop(zp_canary_t *c, zp_canary_report_t *r);

/* Calls answered so far (any thread). */
uint64_t zp_canary_calls(zp_canary_t *c);

#endif /* ZPEER_H */
