/*
 * test_hostile.c: the hostile-peer suite (issue 6, part 1; docs/hostile.md).
 *
 *   test_hostile SERVER MODEL [FILTER]
 *
 * SERVER is znet-test-server (tests/server). MODEL is single, workers
 * (--workers 2) or io (--io-threads 2); FILTER is a cmocka pattern such as
 * "test_slowloris" or "test_push*". Every case starts its own server (logs
 * in ./hostile-MODEL/CASE.log), starts a canary that calls cmd 1 every
 * 2 ms, attacks the server with zpeer, and ends with hs_end(), which holds
 * the pass criteria common to all cases:
 *
 *   - the server is alive; its descriptors and live connections return to
 *     what they were at the start (the canary's connection included);
 *   - the counters named by the case moved by the expected amount;
 *   - its RSS and peak RSS (VmHWM) stayed under the case's bound;
 *   - the canary was served throughout: no failure, and no call slower
 *     than HS_CANARY_MAX_MS, or the case's own bound (p50, p99 and max
 *     printed);
 *   - SIGTERM makes it exit 0 (so LeakSanitizer found nothing);
 *   - its log has no sanitizer report and no ERROR line, at most the
 *     case's number of lines, and the WARN line the case expects.
 *
 * Memory bounds are for plain builds; sanitizer builds multiply them (see
 * hs_mib). Time bounds are multiplied by g_slow there too.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "testutil.h"
#include "zpeer.h"

/* The slowest a canary call may be in any case. The slowest legitimate
 * wait in the suite is a canary call queued behind two 200 ms handlers on
 * the 2 workers (reset_while_handled: about 400 ms); a server stalled by
 * an attack (a loop blocked until a 1 s or 2 s deadline fires, or for
 * good) takes longer. Multiplied by g_slow under sanitizers. */
#define HS_CANARY_MAX_MS 1000u

#define KIB 1024u
#define MIB (1024u * 1024u)
#define ERR_UNKNOWN_CMD 1u
#define ERR_BAD_REQUEST 2u
#define ERR_OVERLOADED 3u

/* The command line, and how much slower than a plain build this one is. */
static const char *g_bin;
static const char *g_model;
static char g_dir[4200];
static unsigned g_slow = 1;
static bool g_sanitized;
static unsigned g_mem = 1; /* what a sanitizer multiplies a peak by */

/* A counter of the stats line that the case must have moved: the sum of
 * the deltas of the '+'-separated keys lies in [min, max] (max < 0: no
 * upper bound). */
typedef struct {
    const char *key;
    int64_t min, max;
} hs_counter_t;

/* What hs_end() checks beyond the criteria every case shares. */
typedef struct {
    hs_counter_t c[4];
    unsigned rss_mib;      /* VmRSS at the end; 0: 24 MiB */
    unsigned hwm_mib;      /* VmHWM (peak RSS); 0: 32 MiB */
    int max_log_lines;     /* every line of the log; 0: 12 */
    const char *log_has;   /* a line containing it must be there */
    int log_has_max;       /* and at most this many (0: any number) */
    unsigned canary_ms;    /* the slowest canary call; 0: HS_CANARY_MAX_MS */
} hs_expect_t;

/* One case: the server, its canary, and the baseline to come back to. */
typedef struct {
    zp_server_t srv;
    zp_canary_t *canary;
    char name[96];
    char base[4096];
    int base_fds;
} hs_t;

static hs_t g_case; /* the running case, for the teardown after a failure */


static unsigned
hs_ms(unsigned ms)
{
    return ms * g_slow;
}


/* A memory bound in KiB. Under ASan every allocation carries redzones,
 * freed blocks wait in a quarantine (capped at 64 MiB by main) and the
 * shadow memory counts in RSS; TSan's shadow is larger still: twice the
 * plain bound plus 64 MiB (an idle server is 2 MiB plain, 8 MiB under
 * ASan, 10 to 14 MiB under TSan). */
static int64_t
hs_mib(unsigned mib)
{
    return (int64_t)(g_sanitized ? mib * 2 + 64 : mib) * 1024;
}


static bool
hs_workers(void)
{
    return strcmp(g_model, "workers") == 0;
}

/* ---- start and end of a case ------------------------------------------- */


/* The model's flags, the suite's defaults, then the case's flags (later
 * flags win in znet-test-server). */
static void
hs_args(const char **args, size_t cap, const char *const *flags)
{
    static const char *const common[] = {
        "--log-level", "info", "--max-body", "65536",
        "--frame-deadline-ms", "1000", NULL};
    size_t n = 0, i;

    if (strcmp(g_model, "workers") == 0) {
        args[n++] = "--workers";
        args[n++] = "2";
    } else if (strcmp(g_model, "io") == 0) {
        args[n++] = "--io-threads";
        args[n++] = "2";
    }
    for (i = 0; common[i] != NULL; i++)
        args[n++] = common[i];
    for (i = 0; flags != NULL && flags[i] != NULL && n + 1 < cap; i++)
        args[n++] = flags[i];
    args[n] = NULL;
}


static void
hs_begin_canary(hs_t *h, const char *name, const char *const *flags,
                bool allow_overloaded)
{
    const char *args[48];

    memset(h, 0, sizeof(*h));
    snprintf(h->name, sizeof(h->name), "%s", name);
    /* A case that hangs fails, and the server dies with the process. */
    tu_alarm(hs_ms(40));
    hs_args(args, 48, flags);
    assert_int_equal(zp_server_start(&h->srv, g_bin, g_dir, name, args), 0);
    assert_int_equal(zp_canary_start(h->srv.port, 2, hs_ms(2000),
                                     allow_overloaded, &h->canary),
                     0);
    h->base_fds = zp_proc_fds(h->srv.pid);
    assert_true(h->base_fds > 0);
    assert_int_equal(zp_server_stats(&h->srv, h->base, sizeof(h->base),
                                     hs_ms(5000)),
                     0);
}


static void
hs_begin(hs_t *h, const char *name, const char *const *flags)
{
    hs_begin_canary(h, name, flags, false);
}


/* Waits until only the canary is connected and the server has as many
 * descriptors as at the start; leaves the last stats line in `now`. */
static void
hs_wait_settled(hs_t *h, char *now, size_t cap)
{
    uint64_t end = zp_now_us() + (uint64_t)hs_ms(5000) * 1000;
    int64_t live = -1;
    int fds = -1;

    while (zp_now_us() < end) {
        assert_int_equal(zp_server_stats(&h->srv, now, cap, hs_ms(5000)), 0);
        live = zp_stat(now, "conns_live");
        fds = zp_proc_fds(h->srv.pid);
        if (live == 1 && fds == h->base_fds)
            return;
        zp_sleep_ms(20);
    }
    fail_msg("%s: not settled: %lld connections live (want 1), %d fds "
             "(want %d)", h->name, (long long)live, fds, h->base_fds);
}


static int64_t
hs_delta(const hs_t *h, const char *now, const char *keys)
{
    char key[64];
    const char *p = keys, *plus;
    int64_t sum = 0;
    size_t len;

    while (*p != '\0') {
        plus = strchr(p, '+');
        len = plus != NULL ? (size_t)(plus - p) : strlen(p);
        snprintf(key, sizeof(key), "%.*s", (int)len, p);
        assert_true(zp_stat(now, key) >= 0);
        sum += zp_stat(now, key) - zp_stat(h->base, key);
        p += len + (plus != NULL);
    }
    return sum;
}


static void
hs_check_counters(const hs_t *h, const char *now, const hs_expect_t *ex)
{
    const hs_counter_t *c;
    int64_t d;
    int i;

    for (i = 0; i < 4 && ex->c[i].key != NULL; i++) {
        c = &ex->c[i];
        d = hs_delta(h, now, c->key);
        print_message("[%s] %s +%lld\n", h->name, c->key, (long long)d);
        if (d < c->min || (c->max >= 0 && d > c->max))
            fail_msg("%s: %s moved by %lld, want [%lld, %lld]", h->name,
                     c->key, (long long)d, (long long)c->min,
                     (long long)c->max);
    }
}


static void
hs_check_memory(const hs_t *h, const hs_expect_t *ex)
{
    int64_t rss = zp_proc_kb(h->srv.pid, "VmRSS");
    int64_t hwm = zp_proc_kb(h->srv.pid, "VmHWM");
    int64_t rss_max = hs_mib(ex->rss_mib ? ex->rss_mib : 24);
    int64_t hwm_max = hs_mib(ex->hwm_mib ? ex->hwm_mib : 32);

    print_message("[%s] server RSS %lld KiB (bound %lld), peak %lld KiB "
                  "(bound %lld)\n", h->name, (long long)rss,
                  (long long)rss_max, (long long)hwm, (long long)hwm_max);
    assert_true(rss > 0 && hwm > 0);
    assert_true(rss <= rss_max);
    assert_true(hwm <= hwm_max);
}


static void
hs_check_log(const hs_t *h, const hs_expect_t *ex)
{
    const char *log = h->srv.log_path;
    int lines = zp_file_lines(log), max = ex->max_log_lines;
    int has;

    if (max == 0)
        max = 12;
    print_message("[%s] log: %d lines (bound %d): %s\n", h->name, lines, max,
                  log);
    assert_int_equal(zp_file_count(log, "Sanitizer"), 0);
    assert_int_equal(zp_file_count(log, "runtime error"), 0);
    assert_int_equal(zp_file_count(log, " ERROR "), 0);
    assert_true(lines >= 1 && lines <= max);
    if (ex->log_has == NULL)
        return;
    has = zp_file_count(log, ex->log_has);
    if (has < 1 || (ex->log_has_max > 0 && has > ex->log_has_max))
        fail_msg("%s: %d log lines with \"%s\", want 1..%d", h->name, has,
                 ex->log_has, ex->log_has_max);
}


/* Stops the canary: it must have had no failure, and no call slower than
 * `ms` (times g_slow). Prints its latency. */
static void
hs_check_canary(hs_t *h, unsigned ms)
{
    zp_canary_report_t cr;
    int i;

    /* Even a short case lets the canary make a few calls after it. */
    for (i = 0; i < 500 && zp_canary_calls(h->canary) < 10; i++)
        zp_sleep_ms(2);
    zp_canary_stop(h->canary, &cr);
    h->canary = NULL;
    print_message("[%s] canary: %llu calls, %llu overloaded, p50 %llu us, "
                  "p99 %llu us, max %llu us\n", h->name,
                  (unsigned long long)cr.calls,
                  (unsigned long long)cr.overloaded,
                  (unsigned long long)cr.p50_us,
                  (unsigned long long)cr.p99_us,
                  (unsigned long long)cr.max_us);
    if (cr.failures > 0)
        fail_msg("%s: canary: %llu failures, first: %s", h->name,
                 (unsigned long long)cr.failures, cr.first_error);
    if (cr.max_us > (uint64_t)hs_ms(ms) * 1000)
        fail_msg("%s: canary: a call took %llu us (bound %u ms)", h->name,
                 (unsigned long long)cr.max_us, hs_ms(ms));
}


/* The pass criteria every case ends with (see the top of the file). */
static void
hs_end(hs_t *h, const hs_expect_t *ex)
{
    char now[4096], last[4096];
    int rc;

    assert_true(zp_server_alive(&h->srv));
    hs_wait_settled(h, now, sizeof(now));
    hs_check_counters(h, now, ex);
    hs_check_memory(h, ex);
    hs_check_canary(h, ex->canary_ms ? ex->canary_ms : HS_CANARY_MAX_MS);
    rc = zp_server_stop(&h->srv, hs_ms(15000), last, sizeof(last));
    if (rc != 0)
        fail_msg("%s: server exit status %d, see %s", h->name, rc,
                 h->srv.log_path);
    /* Its last words: the stats line written at exit, nothing left in
     * flight or queued. */
    assert_true(zp_stat(last, "seq") > 0);
    assert_int_equal(zp_stat(last, "in_flight"), 0);
    assert_int_equal(zp_stat(last, "queued"), 0);
    assert_int_equal(zp_stat(last, "in_held"), 0);
    assert_int_equal(zp_stat(last, "held"), 0);
    hs_check_log(h, ex);
}


/* After a failed assertion: stop what the case left running. */
static int
hs_teardown(void **state)
{
    zp_canary_report_t cr;

    (void)state;
    if (g_case.canary != NULL)
        zp_canary_stop(g_case.canary, &cr);
    g_case.canary = NULL;
    if (g_case.srv.pid > 0)
        (void)zp_server_stop(&g_case.srv, 5000, NULL, 0);
    return 0;
}

/* ---- peer helpers ------------------------------------------------------- */


static int
hs_connect(const hs_t *h)
{
    int fd = zp_connect(h->srv.port, hs_ms(2000));

    assert_true(fd >= 0);
    return fd;
}


static void
hs_send(int fd, const void *p, size_t n)
{
    assert_int_equal(zp_send(fd, p, n, hs_ms(5000), NULL), 0);
}


static void
hs_send_frame(int fd, uint32_t cmd, uint32_t seq, uint8_t flags,
              const void *body, size_t n)
{
    uint8_t *f = zp_frame_new(cmd, seq, flags, body, n);

    assert_non_null(f);
    hs_send(fd, f, ZP_HDR_SIZE + n);
    free(f);
}


/* Sends cmd 1 and checks that the very next frame is its TestRsp. */
static void
hs_ping(int fd, uint32_t seq)
{
    static const uint8_t body[] = {0x0a, 0x01, 'x'};
    const uint8_t *res;
    size_t len;
    zp_msg_t m;

    hs_send_frame(fd, 1, seq, 0, body, sizeof(body));
    assert_int_equal(zp_read_frame(fd, &m, hs_ms(3000)), 0);
    assert_int_equal(m.h.flags, ZP_F_RESPONSE);
    assert_int_equal(m.h.seq, seq);
    assert_int_equal(zp_pb_get_field1(m.body, m.h.length, &res, &len), 0);
    assert_int_equal(len, 17);
    zp_msg_free(&m);
}


/* Reads the next frame: the error `code` answering `seq`. */
static void
hs_expect_error(int fd, uint32_t seq, uint32_t code)
{
    zp_msg_t m;

    assert_int_equal(zp_read_frame(fd, &m, hs_ms(3000)), 0);
    assert_int_equal(m.h.flags, ZP_F_RESPONSE | ZP_F_ERROR);
    assert_int_equal(m.h.seq, seq);
    assert_int_equal(zp_pb_error_code(m.body, m.h.length), code);
    zp_msg_free(&m);
}


/* The peer must close: nothing may arrive first, and the close must come
 * within `ms`. */
static void
hs_expect_closed_silently(int fd, unsigned ms)
{
    zp_report_t r;

    zp_read_to_end(fd, NULL, 0, hs_ms(ms), &r);
    assert_true(r.end == ZP_END_EOF || r.end == ZP_END_RST);
    assert_int_equal(r.bytes, 0);
}


/* A demo.EchoReq frame with an n-byte payload of `fill`. */
static uint8_t *
hs_echo_frame(uint32_t cmd, uint32_t seq, size_t n, uint8_t fill,
              size_t *size)
{
    uint8_t *payload = malloc(n + 1), *body, *f;
    size_t blen;

    assert_non_null(payload);
    memset(payload, fill, n);
    body = zp_pb_field1(payload, n, &blen);
    assert_non_null(body);
    f = zp_frame_new(cmd, seq, 0, body, blen);
    assert_non_null(f);
    free(payload);
    free(body);
    *size = ZP_HDR_SIZE + blen;
    return f;
}


/* An EchoReq body whose payload is the given 32-bit big-endian values
 * (the arguments of cmd 3 push and cmd 4 slow). */
static size_t
hs_args_body(uint8_t *out, const uint32_t *v, size_t n)
{
    uint8_t raw[16];
    size_t i;

    for (i = 0; i < n; i++) {
        raw[i * 4] = (uint8_t)(v[i] >> 24);
        raw[i * 4 + 1] = (uint8_t)(v[i] >> 16);
        raw[i * 4 + 2] = (uint8_t)(v[i] >> 8);
        raw[i * 4 + 3] = (uint8_t)v[i];
    }
    return zp_pb_bytes(out, 1, raw, n * 4);
}


/* A deterministic generator (xorshift64*), so a failure replays. */
static uint64_t
hs_rand(uint64_t *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 0x2545F4914F6CDD1DULL;
}

/* ---- A. malformed frames ------------------------------------------------- */


/* One connection per header: each must be closed at once, unanswered. */
static void
hs_bad_headers(hs_t *h, const zp_hdr_t *hdrs, size_t n)
{
    uint8_t raw[ZP_HDR_SIZE];
    size_t i;
    int fd;

    for (i = 0; i < n; i++) {
        fd = hs_connect(h);
        zp_hdr_put(raw, &hdrs[i]);
        hs_send(fd, raw, sizeof(raw));
        hs_expect_closed_silently(fd, 1000);
        zp_rst(fd);
    }
}


/* Wrong magic, as a whole header and as a single first byte: the decoder
 * refuses at the first wrong byte. */
static void
test_bad_magic(void **state)
{
    static const zp_hdr_t hdrs[] = {
        {0x0000, 1, 0, 4, 1, 1}, {0x6E7A, 1, 0, 4, 1, 2},
        {0x7A00, 1, 0, 4, 1, 3}, {0xFFFF, 1, 0, 4, 1, 4}};
    const hs_expect_t ex = {.c = {{"bad_frames", 5, 5},
                                  {"close_protocol", 5, 5}},
                            .max_log_lines = 12, .log_has = "bad magic",
                            .log_has_max = 5};
    hs_t *h = &g_case;
    int fd;

    (void)state;
    hs_begin(h, "bad_magic", NULL);
    hs_bad_headers(h, hdrs, 4);
    fd = hs_connect(h);
    hs_send(fd, "X", 1);
    hs_expect_closed_silently(fd, 1000);
    zp_rst(fd);
    hs_end(h, &ex);
}


static void
test_bad_version(void **state)
{
    static const zp_hdr_t hdrs[] = {{ZP_MAGIC, 0, 0, 4, 1, 1},
                                    {ZP_MAGIC, 2, 0, 4, 1, 2},
                                    {ZP_MAGIC, 255, 0, 4, 1, 3}};
    const hs_expect_t ex = {.c = {{"bad_frames", 3, 3}},
                            .max_log_lines = 10,
                            .log_has = "unknown version", .log_has_max = 3};
    hs_t *h = &g_case;

    (void)state;
    hs_begin(h, "bad_version", NULL);
    hs_bad_headers(h, hdrs, 3);
    hs_end(h, &ex);
}


static void
test_reserved_flags(void **state)
{
    static const zp_hdr_t hdrs[] = {{ZP_MAGIC, 1, 0x08, 4, 1, 1},
                                    {ZP_MAGIC, 1, 0x10, 4, 1, 2},
                                    {ZP_MAGIC, 1, 0x80, 4, 1, 3},
                                    {ZP_MAGIC, 1, 0xFF, 4, 1, 4}};
    const hs_expect_t ex = {.c = {{"bad_frames", 4, 4}},
                            .max_log_lines = 10,
                            .log_has = "reserved flag bits",
                            .log_has_max = 4};
    hs_t *h = &g_case;

    (void)state;
    hs_begin(h, "reserved_flags", NULL);
    hs_bad_headers(h, hdrs, 4);
    hs_end(h, &ex);
}


/* A body of exactly the limit is served; one byte more, and lengths that
 * wrap a 32-bit "16 + length", are closed on the header alone: the peer
 * never sends the body, so a server waiting for it would time out. */
static void
test_length_over_limit(void **state)
{
    static const zp_hdr_t hdrs[] = {
        {ZP_MAGIC, 1, 0, 65537, 2, 1}, {ZP_MAGIC, 1, 0, 0x7FFFFFFF, 2, 2},
        {ZP_MAGIC, 1, 0, 0x80000000, 2, 3},
        {ZP_MAGIC, 1, 0, 0xFFFFFFF0, 2, 4},
        {ZP_MAGIC, 1, 0, 0xFFFFFFFF, 2, 5}};
    const hs_expect_t ex = {.c = {{"too_large", 5, 5}, {"bad_frames", 0, 0}},
                            .max_log_lines = 10,
                            .log_has = "length over the limit",
                            .log_has_max = 5};
    hs_t *h = &g_case;
    size_t size;
    uint8_t *f;
    zp_msg_t m;
    int fd;

    (void)state;
    hs_begin(h, "length_over_limit", NULL);
    /* EchoReq: tag, 3-byte length, 65,532 bytes: a 65,536-byte body. */
    f = hs_echo_frame(2, 7, 65532, 'L', &size);
    assert_int_equal(size, ZP_HDR_SIZE + 65536);
    fd = hs_connect(h);
    hs_send(fd, f, size);
    assert_int_equal(zp_read_frame(fd, &m, hs_ms(3000)), 0);
    assert_int_equal(m.h.flags, ZP_F_RESPONSE);
    assert_int_equal(m.h.length, 65536);
    assert_memory_equal(m.body, f + ZP_HDR_SIZE, 65536);
    zp_msg_free(&m);
    free(f);
    zp_rst(fd);
    hs_bad_headers(h, hdrs, 5);
    hs_end(h, &ex);
}


/* Bodies protobuf-c (or the depth scan before it) refuses. */
static const struct {
    const char *what;
    uint8_t len;
    uint8_t b[12];
} hs_bad_bodies[] = {
    {"length past the end", 3, {0x0a, 0x05, 'a'}},
    {"huge length", 6, {0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f}},
    {"11-byte varint", 12,
     {0x10, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1}},
    {"cut varint", 2, {0x10, 0x80}},
    {"field number 0", 2, {0x00, 0x00}},
    {"wire type 3", 1, {0x0b}},
    {"wire type 4", 1, {0x0c}},
    {"wire type 6", 2, {0x0e, 0x00}},
    {"wire type 7", 2, {0x0f, 0x00}},
    {"fixed64 cut short", 3, {0x09, 0x01, 0x02}},
    {"varint for a string", 2, {0x08, 0x01}},
};
#define HS_NBAD (sizeof(hs_bad_bodies) / sizeof(hs_bad_bodies[0]))


/* Each undecodable body gets BAD_REQUEST with its seq, on cmd 1 and 2;
 * the connection stays open and is logged once; ONEWAY gets nothing. */
static void
test_undecodable_body(void **state)
{
    const hs_expect_t ex = {.c = {{"errors_bad_request", 2 * HS_NBAD,
                                   2 * HS_NBAD},
                                  {"close_protocol", 0, 0}},
                            .log_has = "malformed", .log_has_max = 1};
    hs_t *h = &g_case;
    uint32_t seq = 100;
    size_t i;
    int fd;

    (void)state;
    hs_begin(h, "undecodable_body", NULL);
    fd = hs_connect(h);
    for (i = 0; i < 2 * HS_NBAD; i++, seq++) {
        hs_send_frame(fd, 1 + (uint32_t)(i / HS_NBAD), seq, 0,
                      hs_bad_bodies[i % HS_NBAD].b,
                      hs_bad_bodies[i % HS_NBAD].len);
        hs_expect_error(fd, seq, ERR_BAD_REQUEST);
    }
    hs_send_frame(fd, 2, seq++, ZP_F_ONEWAY, hs_bad_bodies[0].b,
                  hs_bad_bodies[0].len);
    hs_ping(fd, seq);
    zp_rst(fd);
    hs_end(h, &ex);
}


static void
test_unknown_cmd(void **state)
{
    static const uint32_t cmds[] = {0, 7, 999, 0x7FFFFFFF, 0x80000000,
                                    0xFFFFFFFF};
    static const uint8_t body[] = {0x0a, 0x01, 'u'};
    const hs_expect_t ex = {.c = {{"errors_unknown_cmd", 6, 6}},
                            .log_has = "unknown command", .log_has_max = 1};
    hs_t *h = &g_case;
    uint32_t i;
    int fd;

    (void)state;
    hs_begin(h, "unknown_cmd", NULL);
    fd = hs_connect(h);
    for (i = 0; i < 6; i++) {
        hs_send_frame(fd, cmds[i], 200 + i, 0, body, sizeof(body));
        hs_expect_error(fd, 200 + i, ERR_UNKNOWN_CMD);
    }
    hs_send_frame(fd, 999, 300, ZP_F_ONEWAY, body, sizeof(body));
    hs_ping(fd, 301);
    zp_rst(fd);
    hs_end(h, &ex);
}


/* RESPONSE frames sent to a server match no call of its: dropped and
 * counted; the next frame the peer gets is the answer to its ping. */
static void
test_unsolicited_response(void **state)
{
    static const uint8_t rsp[] = {0x0a, 0x02, 'h', 'i'};
    static const uint8_t err[] = {0x08, 0x04};
    const hs_expect_t ex = {.c = {{"responses_dropped", 3, 3}}};
    hs_t *h = &g_case;
    int fd;

    (void)state;
    hs_begin(h, "unsolicited_response", NULL);
    fd = hs_connect(h);
    hs_send_frame(fd, 1, 4242, ZP_F_RESPONSE, rsp, sizeof(rsp));
    hs_send_frame(fd, 1, 4243, ZP_F_RESPONSE | ZP_F_ERROR, err, sizeof(err));
    hs_send_frame(fd, 77, 0, ZP_F_RESPONSE, NULL, 0);
    hs_ping(fd, 4244);
    zp_rst(fd);
    hs_end(h, &ex);
}


/* A ztest.Tree body nested `depth` levels (the top level is level 1):
 * built from the inside out. */
static uint8_t *
hs_tree_body(unsigned depth, size_t *len)
{
    size_t cap = (size_t)depth * 6 + 16, pos = cap, inner = 0, k;
    uint8_t *b = malloc(cap), v[10];
    unsigned i;

    assert_non_null(b);
    for (i = 1; i < depth; i++) {
        k = zp_pb_varint(v, inner);
        pos -= k;
        memcpy(b + pos, v, k);
        b[--pos] = 0x0a;
        inner = cap - pos;
    }
    memmove(b, b + pos, cap - pos);
    *len = cap - pos;
    return b;
}


/* Sends a Tree of `depth` on cmd 5: "tree" back, or BAD_REQUEST. */
static void
hs_tree(int fd, unsigned depth, uint32_t seq, bool ok)
{
    size_t len;
    uint8_t *b = hs_tree_body(depth, &len);
    zp_msg_t m;

    hs_send_frame(fd, 5, seq, 0, b, len);
    free(b);
    if (!ok) {
        hs_expect_error(fd, seq, ERR_BAD_REQUEST);
        return;
    }
    assert_int_equal(zp_read_frame(fd, &m, hs_ms(3000)), 0);
    assert_int_equal(m.h.flags, ZP_F_RESPONSE);
    assert_int_equal(m.h.seq, seq);
    zp_msg_free(&m);
}


/* protobuf-c recurses once per level with no limit (about 1 KB of stack
 * each); 20,000 levels would overflow any thread's stack. */
static void
test_deep_nesting(void **state)
{
    static const char *const flags[] = {"--max-body", "262144", NULL};
    const hs_expect_t ex = {.c = {{"errors_bad_request", 3, 3}},
                            .log_has = "too deep", .log_has_max = 1};
    hs_t *h = &g_case;
    size_t len;
    uint8_t *b;
    int fd;

    (void)state;
    hs_begin(h, "deep_nesting", flags);
    fd = hs_connect(h);
    hs_tree(fd, 1, 1, true);
    hs_tree(fd, 64, 2, true);
    hs_tree(fd, 65, 3, false);
    hs_tree(fd, 20000, 4, false);
    hs_tree(fd, 60000, 5, false);
    b = hs_tree_body(20000, &len);
    hs_send_frame(fd, 5, 6, ZP_F_ONEWAY, b, len);
    free(b);
    hs_ping(fd, 7);
    zp_rst(fd);
    hs_end(h, &ex);
}


/* Other protocols knocking at the port: an HTTP request and a TLS
 * ClientHello. Closed at their first byte, never answered. */
static void
test_http_and_tls_hello(void **state)
{
    static const char http[] = "GET / HTTP/1.1\r\nHost: localhost\r\n"
                               "User-Agent: hostile\r\n\r\n";
    uint8_t tls[52] = {0x16, 0x03, 0x01, 0x00, 0x2f, /* record */
                       0x01, 0x00, 0x00, 0x2b,       /* ClientHello */
                       0x03, 0x03};                  /* TLS 1.2 */
    const hs_expect_t ex = {.c = {{"bad_frames", 2, 2}},
                            .log_has = "bad magic", .log_has_max = 2};
    hs_t *h = &g_case;
    int fd;

    (void)state;
    /* 32 random bytes, no session id, one suite, null compression. */
    memset(tls + 11, 0x5a, 32);
    memcpy(tls + 43, "\x00\x00\x02\x13\x01\x01\x00\x00\x00", 9);
    hs_begin(h, "http_and_tls_hello", NULL);
    fd = hs_connect(h);
    hs_send(fd, http, sizeof(http) - 1);
    hs_expect_closed_silently(fd, 1000);
    zp_rst(fd);
    fd = hs_connect(h);
    hs_send(fd, tls, sizeof(tls));
    hs_expect_closed_silently(fd, 1000);
    zp_rst(fd);
    hs_end(h, &ex);
}


/* Random bytes blasted at the port from 16 connections: each is closed at
 * its first byte (which is never 'z'); the blast is cut short. */
static void
test_random_bytes(void **state)
{
    const hs_expect_t ex = {.c = {{"bad_frames", 16, 16}},
                            .max_log_lines = 24, .log_has = "bad magic"};
    hs_t *h = &g_case;
    uint64_t seed = 0x5eed0001;
    size_t i, n = 1 * MIB, sent;
    uint8_t *junk = malloc(n);
    int fd, k;

    (void)state;
    assert_non_null(junk);
    hs_begin(h, "random_bytes", NULL);
    for (k = 0; k < 16; k++) {
        for (i = 0; i < n; i++)
            junk[i] = (uint8_t)hs_rand(&seed);
        if (junk[0] == 'z')
            junk[0] = 'y';
        fd = hs_connect(h);
        /* The send fails (reset) or ends; either way the peer closes. */
        (void)zp_send(fd, junk, n, hs_ms(2000), &sent);
        assert_true(zp_wait_closed(fd, hs_ms(1000)));
        zp_rst(fd);
    }
    free(junk);
    hs_end(h, &ex);
}


/* One random frame with a valid magic and version; returns true if the
 * server must close on it (reserved flags, or length over the limit). */
static bool
hs_random_frame(uint64_t *seed, uint8_t *out, size_t *len)
{
    static const uint32_t cmds[] = {0, 1, 2, 5, 7, 0xFFFFFFFF};
    uint64_t r = hs_rand(seed);
    zp_hdr_t hd = {ZP_MAGIC, 1, (uint8_t)(r & 7), (uint32_t)(r >> 8) % 600,
                   cmds[(r >> 40) % 6], (uint32_t)hs_rand(seed)};
    bool bad = false;
    size_t i;

    if ((r >> 32) % 8 == 0) {
        hd.flags |= (uint8_t)(8 << ((r >> 36) % 5));
        bad = true;
    }
    if ((r >> 48) % 6 == 0) {
        hd.length = 65537 + (uint32_t)(hs_rand(seed) % 0xFFFEFFFFu);
        bad = true;
    }
    if ((r >> 56) % 4 == 0)
        hd.cmd = (uint32_t)hs_rand(seed);
    zp_hdr_put(out, &hd);
    *len = ZP_HDR_SIZE;
    for (i = 0; !bad && i < hd.length; i++)
        out[(*len)++] = (uint8_t)hs_rand(seed);
    return bad;
}


/* After a random frame the stream is either still in step (the ping that
 * follows is answered; at most one frame comes before it) or the
 * connection is closed, and only a bad header may close it. */
static int
hs_random_round(hs_t *h, uint64_t *seed, uint32_t i)
{
    static const uint8_t ping[] = {0x0a, 0x01, 'r'};
    uint8_t f[ZP_HDR_SIZE + 600];
    uint32_t seq = 0xABC00000u + i;
    unsigned before = 0;
    size_t len;
    bool bad = hs_random_frame(seed, f, &len);
    zp_msg_t m;
    int fd = hs_connect(h), rc;

    hs_send(fd, f, len);
    if (bad) {
        assert_true(zp_wait_closed(fd, hs_ms(1000)));
        zp_rst(fd);
        return 1;
    }
    hs_send_frame(fd, 1, seq, 0, ping, sizeof(ping));
    while ((rc = zp_read_frame(fd, &m, hs_ms(3000))) == 0 &&
           !(m.h.flags == ZP_F_RESPONSE && m.h.seq == seq)) {
        zp_msg_free(&m);
        before++;
    }
    if (rc != 0)
        fail_msg("random frame %u: %s", i, strerror(-rc));
    zp_msg_free(&m);
    assert_true(before <= 1);
    zp_rst(fd);
    return 0;
}


static void
test_random_headers(void **state)
{
    hs_expect_t ex = {.c = {{"bad_frames+too_large", 0, 0}},
                      .max_log_lines = 150};
    hs_t *h = &g_case;
    uint64_t seed = 0x5eed0002;
    int closes = 0;
    uint32_t i;

    (void)state;
    hs_begin(h, "random_headers", NULL);
    for (i = 0; i < 300; i++)
        closes += hs_random_round(h, &seed, i);
    print_message("[%s] 300 random frames, %d refused\n", h->name, closes);
    ex.c[0].min = ex.c[0].max = closes;
    hs_end(h, &ex);
}

/* ---- B. memory attacks --------------------------------------------------- */

/* A client thread that sends `rounds` copies of one frame, one at a time,
 * and checks each answer: the same body back (echo) or an error code. */
typedef struct {
    uint16_t port;
    uint8_t *frame;        /* the client's own copy: it sets the seq */
    size_t size;
    unsigned rounds;
    uint32_t want_error;   /* 0: an echo of the request's body */
    bool either;           /* the answer may be a response or the error */
    unsigned errors, oks;
    int rc;
    pthread_t t;
} hs_client_t;


static int
hs_client_round(hs_client_t *c, int fd, uint32_t seq)
{
    zp_msg_t m;
    zp_hdr_t hd;
    int rc;

    zp_hdr_get(c->frame, &hd);
    hd.seq = seq;
    zp_hdr_put(c->frame, &hd);
    if ((rc = zp_send(fd, c->frame, c->size, 30000, NULL)) != 0 ||
        (rc = zp_read_frame(fd, &m, 30000)) != 0)
        return rc;
    if (m.h.seq != seq)
        rc = -EBADMSG;
    else if (m.h.flags == (ZP_F_RESPONSE | ZP_F_ERROR) && c->want_error &&
             zp_pb_error_code(m.body, m.h.length) == c->want_error)
        c->errors++;
    else if (m.h.flags == ZP_F_RESPONSE && (c->either || !c->want_error) &&
             (c->either || (m.h.length == c->size - ZP_HDR_SIZE &&
                            memcmp(m.body, c->frame + ZP_HDR_SIZE,
                                   m.h.length) == 0)))
        c->oks++;
    else
        rc = -EBADMSG;
    zp_msg_free(&m);
    return rc;
}


static void *
hs_client_main(void *arg)
{
    hs_client_t *c = arg;
    int fd = zp_connect(c->port, 5000);
    unsigned i;

    c->rc = fd < 0 ? fd : 0;
    for (i = 0; c->rc == 0 && i < c->rounds; i++)
        c->rc = hs_client_round(c, fd, i + 1);
    if (fd >= 0)
        zp_rst(fd);
    return NULL;
}


/* Runs n clients at once, each with its own copy of the frame. */
static void
hs_clients(hs_t *h, hs_client_t *cs, unsigned n, const uint8_t *frame,
           size_t size)
{
    unsigned i;

    for (i = 0; i < n; i++) {
        cs[i].port = h->srv.port;
        cs[i].size = size;
        cs[i].frame = malloc(size);
        assert_non_null(cs[i].frame);
        memcpy(cs[i].frame, frame, size);
        assert_int_equal(pthread_create(&cs[i].t, NULL, hs_client_main,
                                        &cs[i]), 0);
    }
    for (i = 0; i < n; i++) { /* all joined before any failure returns */
        pthread_join(cs[i].t, NULL);
        free(cs[i].frame);
    }
    for (i = 0; i < n; i++)
        if (cs[i].rc != 0)
            fail_msg("client %u: %s", i, strerror(-cs[i].rc));
}


/*
 * Four clients echo 4 MiB bodies (the default limit) at once, twice.
 * Bound: a request costs at most its input (4 MiB), the decoded payload
 * (4), the packed reply (4) and the output queue (4): 16 MiB, 64 MiB for
 * four; peak RSS < 128 MiB leaves as much again for allocator caches (one
 * arena per thread in the threaded models). Measured: 30 to 51 MiB. At
 * the end RSS < 64 MiB: the buffers are freed (glibc may keep some).
 * A 4 MiB frame may take a sanitized server over the suite's 1 s frame
 * deadline when four arrive at once: this case allows 10 s.
 */
static void
test_max_bodies_at_once(void **state)
{
    static const char *const flags[] = {"--max-body", "4194304",
                                        "--frame-deadline-ms", "10000",
                                        NULL};
    const hs_expect_t ex = {.c = {{"errors_bad_request+too_large", 0, 0}},
                            .rss_mib = 64, .hwm_mib = 128};
    hs_client_t cs[4] = {{0}};
    hs_t *h = &g_case;
    size_t size;
    uint8_t *f;
    unsigned i;

    (void)state;
    hs_begin(h, "max_bodies_at_once", flags);
    /* Tag, 4-byte length, 4,194,299 bytes: a 4 MiB body. */
    f = hs_echo_frame(2, 1, 4194299, 'M', &size);
    assert_int_equal(size, ZP_HDR_SIZE + 4 * MIB);
    for (i = 0; i < 4; i++)
        cs[i].rounds = 2;
    hs_clients(h, cs, 4, f, size);
    for (i = 0; i < 4; i++)
        assert_int_equal(cs[i].oks, 2);
    free(f);
    hs_end(h, &ex);
}


/* A body of `n` bytes made of the two bytes a, b repeated. */
static uint8_t *
hs_repeat_frame(uint32_t cmd, uint8_t a, uint8_t b, size_t n, size_t *size)
{
    uint8_t *body = malloc(n), *f;
    size_t i;

    assert_non_null(body);
    for (i = 0; i + 1 < n; i += 2) {
        body[i] = a;
        body[i + 1] = b;
    }
    f = zp_frame_new(cmd, 1, 0, body, n);
    assert_non_null(f);
    free(body);
    *size = ZP_HDR_SIZE + n;
    return f;
}


/*
 * Allocation bomb, first shape: a 1 MiB ztest.Tree of 524,288 empty kids
 * (two bytes each on the wire, a 40-byte struct, a pointer and protobuf-c's
 * bookkeeping once decoded: about 50 times the body). The decode bound
 * (docs/protocol.md) is over the budget (the body + 64 KiB): BAD_REQUEST
 * before anything is allocated. Two at once (one per IO loop): the 1 MiB
 * inputs are all the memory they take. Before the bound (a budget of 32
 * per body byte), a decode could use 32 MiB before it failed.
 */
static void
test_alloc_bomb_kids(void **state)
{
    static const char *const flags[] = {"--max-body", "1048576",
                                        "--frame-deadline-ms", "10000",
                                        NULL};
    const hs_expect_t ex = {.c = {{"errors_bad_request", 6, 6}},
                            .rss_mib = 32, .hwm_mib = 96,
                            .log_has = "over budget", .log_has_max = 2};
    hs_client_t cs[2] = {{0}};
    hs_t *h = &g_case;
    size_t size;
    uint8_t *f;

    (void)state;
    hs_begin(h, "alloc_bomb_kids", flags);
    f = hs_repeat_frame(5, 0x0a, 0x00, 1 * MIB, &size);
    cs[0].rounds = cs[1].rounds = 3;
    cs[0].want_error = cs[1].want_error = ERR_BAD_REQUEST;
    hs_clients(h, cs, 2, f, size);
    assert_int_equal(cs[0].errors + cs[1].errors, 6);
    free(f);
    hs_end(h, &ex);
}


/*
 * Allocation bomb, second shape, on the flat demo.TestReq: no nesting and
 * no sub-message, only field occurrences. (a) 524,288 unknown varint
 * fields (protobuf-c keeps each, with a copy of its data: 24 bytes and an
 * allocation per 2 body bytes); (b) 524,288 repeats of the singular
 * string field (each replaces the last, and what decoding frees is not
 * given back to the bound). Both are over their bound's budget: refused
 * before anything is allocated.
 */
static void
test_alloc_bomb_fields(void **state)
{
    static const char *const flags[] = {"--max-body", "1048576",
                                        "--frame-deadline-ms", "10000",
                                        NULL};
    hs_expect_t ex = {.c = {{"errors_bad_request", 0, 0}},
                      .rss_mib = 32, .hwm_mib = 96};
    hs_client_t cs[2] = {{0}};
    hs_t *h = &g_case;
    unsigned refused = 0;
    size_t size;
    uint8_t *f;
    int k;

    (void)state;
    hs_begin(h, "alloc_bomb_fields", flags);
    for (k = 0; k < 2; k++) {
        f = hs_repeat_frame(1, k == 0 ? 0x28 : 0x0a, 0x00, 1 * MIB, &size);
        memset(cs, 0, sizeof(cs));
        cs[0].rounds = cs[1].rounds = 2;
        cs[0].want_error = cs[1].want_error = ERR_BAD_REQUEST;
        cs[0].either = cs[1].either = true;
        hs_clients(h, cs, 2, f, size);
        print_message("[%s] shape %c: %u refused, %u decoded\n", h->name,
                      k == 0 ? 'a' : 'b', cs[0].errors + cs[1].errors,
                      cs[0].oks + cs[1].oks);
        refused += cs[0].errors + cs[1].errors;
        free(f);
    }
    ex.c[0].min = ex.c[0].max = refused;
    hs_end(h, &ex);
}


/*
 * The decode bound at the largest body. Each shape that makes protobuf-c
 * allocate more than the body (unknown fields of each wire type, empty
 * strings, empty sub-messages, packed and unpacked repeats, empty
 * repeated strings and bytes) fills a 4 MiB body; so do two shapes that
 * decode at about 1x (a long string, packed fixed32). Each goes to a
 * fresh server, once: it is refused (BAD_REQUEST) or decoded, and the
 * server's peak RSS (VmHWM) may rise by at most 2 x the body + 1 MiB
 * (DESIGN.md's "no large allocation", issue 11's measure). Without the
 * bound (the old budget of 32 x the body), the bombs raised it by up to
 * 128 MiB.
 */
typedef struct {
    const char *name;
    uint32_t cmd;
    uint8_t field[12];  /* flen 0: field[0] is the key of one long field
                           filling the body, field[1] its filler byte */
    size_t flen;
} hs_shape_t;

static const hs_shape_t hs_shapes[] = {
    {"unknown_varint", 1, {0x10, 0x01}, 2},
    {"unknown_64bit", 1, {0x11, 1, 2, 3, 4, 5, 6, 7, 8}, 9},
    {"unknown_length", 1, {0x12, 0x00}, 2},
    {"unknown_32bit", 1, {0x15, 1, 2, 3, 4}, 5},
    {"empty_strings", 1, {0x0a, 0x00}, 2},
    {"empty_submessages", 5, {0x0a, 0x00}, 2},
    {"packed_varints", 6, {0x0a, 0x01}, 0},
    {"unpacked_int32", 6, {0x10, 0x01}, 2},
    {"empty_repeated_strings", 6, {0x1a, 0x00}, 2},
    {"empty_repeated_bytes", 6, {0x22, 0x00}, 2},
    {"packed_fixed32", 6, {0x2a, 0x07}, 0},
    {"long_string", 1, {0x0a, 'x'}, 0},
};


/* The shape's frame, with a body of at most n bytes. */
static uint8_t *
hs_shape_frame(const hs_shape_t *sh, size_t n, size_t *size)
{
    uint8_t *body = malloc(n), *f;
    size_t i, len = 0, payload;

    assert_non_null(body);
    if (sh->flen == 0) { /* key, a 4-byte length, then the filler */
        payload = (n - 5) / 8 * 8;
        body[0] = sh->field[0];
        body[1] = (uint8_t)(0x80 | (payload & 0x7f));
        body[2] = (uint8_t)(0x80 | (payload >> 7 & 0x7f));
        body[3] = (uint8_t)(0x80 | (payload >> 14 & 0x7f));
        body[4] = (uint8_t)(payload >> 21);
        memset(body + 5, sh->field[1], payload);
        len = 5 + payload;
    } else {
        for (i = 0; len + sh->flen <= n; i++, len += sh->flen)
            memcpy(body + len, sh->field, sh->flen);
    }
    f = zp_frame_new(sh->cmd, 1, 0, body, len);
    assert_non_null(f);
    free(body);
    *size = ZP_HDR_SIZE + len;
    return f;
}


static void
test_bound_at_the_largest_body(void **state)
{
    static const char *const flags[] = {"--max-body", "4194304",
                                        "--frame-deadline-ms", "10000",
                                        NULL};
    const hs_expect_t ex = {.rss_mib = 24, .hwm_mib = 32};
    hs_client_t c;
    hs_t *h = &g_case;
    int64_t hwm0, hwm1, limit;
    size_t i, size;
    uint8_t *f;

    (void)state;
    for (i = 0; i < sizeof(hs_shapes) / sizeof(hs_shapes[0]); i++) {
        f = hs_shape_frame(&hs_shapes[i], 4 * MIB, &size);
        hs_begin(h, hs_shapes[i].name, flags);
        hwm0 = zp_proc_kb(h->srv.pid, "VmHWM");
        memset(&c, 0, sizeof(c));
        c.rounds = 1;
        c.want_error = ERR_BAD_REQUEST;
        c.either = true;
        hs_clients(h, &c, 1, f, size);
        hwm1 = zp_proc_kb(h->srv.pid, "VmHWM");
        /* Twice the body and 1 MiB, times g_mem under a sanitizer: ASan
         * keeps freed memory in quarantine and adds redzones and shadow
         * (a 4 MiB body measured +14.5 MiB refused, +19 MiB decoded:
         * bound x3), TSan's shadow is larger (+27 MiB refused, +45.5 MiB
         * decoded: bound x6). A bomb cost 43-75 MiB in a plain build
         * before the decode bound, so the plain run is the proof; the
         * sanitizer runs show the bound holds with their allocator. */
        limit = (int64_t)(2 * (size - ZP_HDR_SIZE) + MIB) / 1024 * g_mem;
        free(f);
        print_message("[%s] %zu B body: %s, peak RSS +%lld KiB (bound %lld)"
                      "\n", h->name, size - ZP_HDR_SIZE,
                      c.errors ? "refused" : "decoded",
                      (long long)(hwm1 - hwm0), (long long)limit);
        assert_true(hwm0 > 0 && hwm1 >= hwm0);
        assert_true(hwm1 - hwm0 <= limit);
        hs_end(h, &ex);
    }
}


/*
 * 64 connections each send a 4 MiB request at once (a long string, 1x to
 * decode) to a server whose decoded requests may hold 16 MiB: the bytes
 * held never pass it (requests past it are answered OVERLOADED before
 * they are decoded), every request is answered, and the peak RSS stays
 * within the inputs (64 x 4 MiB at most), the 16 MiB and 32 MiB of slack.
 */
static void
test_decoded_requests_held_within_bound(void **state)
{
    /* The frame deadline is not under test: 256 MiB arrive at once, which
     * under TSan on a loaded machine took a frame past 20 s (CI). */
    static const char *const flags[] = {"--max-body", "4194304",
                                        "--frame-deadline-ms", "180000",
                                        "--max-held", "16777216", NULL};
    /* The canary's calls queue behind up to 16 MiB of held requests on the
     * workers and share the IO thread with 256 MiB of input and up to as
     * much output: measured max 138 ms plain, 1.7 s under TSan alone and
     * 5.2 s under TSan beside another hostile suite on 2 cores (the CI
     * failure with the 1 s default, x5). */
    const hs_expect_t ex = {.rss_mib = 64, .hwm_mib = 256 + 16 + 32,
                            .c = {{"errors_overloaded", 0, 64}},
                            .canary_ms = 3000};
    static hs_client_t cs[64];
    hs_t *h = &g_case;
    char now[4096];
    unsigned i, oks = 0, refused = 0;
    size_t size;
    uint8_t *f;

    (void)state;
    f = hs_shape_frame(&hs_shapes[sizeof(hs_shapes) / sizeof(hs_shapes[0]) -
                                  1], 4 * MIB, &size);
    hs_begin(h, "decoded_held_within_bound", flags);
    memset(cs, 0, sizeof(cs));
    for (i = 0; i < 64; i++) {
        cs[i].rounds = 1;
        cs[i].want_error = ERR_OVERLOADED;
        cs[i].either = true;
    }
    hs_clients(h, cs, 64, f, size);
    for (i = 0; i < 64; i++) {
        oks += cs[i].oks;
        refused += cs[i].errors;
    }
    assert_int_equal(oks + refused, 64);
    assert_int_equal(zp_server_stats(&h->srv, now, sizeof(now), hs_ms(5000)),
                     0);
    print_message("[%s] %u decoded, %u refused OVERLOADED; held peak %lld "
                  "B (bound 16777216)\n", h->name, oks, refused,
                  (long long)zp_stat(now, "held_peak"));
    assert_true(zp_stat(now, "held_peak") > 0);
    assert_true(zp_stat(now, "held_peak") <= 16777216);
    free(f);
    hs_end(h, &ex);
}


/* Polls the fds until each peer has closed (EOF or reset) or `ms` pass,
 * and stores the time of each close (zp_now_us) in when[i]; a non-zero
 * when[i] on entry means closed already. Returns how many are closed. */
static size_t
hs_wait_all_closed(const int *fds, uint64_t *when, size_t n, unsigned ms)
{
    uint64_t end = zp_now_us() + (uint64_t)ms * 1000;
    struct pollfd *p = calloc(n, sizeof(*p));
    size_t i, closed = 0;
    char buf[256];
    ssize_t k;

    assert_non_null(p);
    for (i = 0; i < n; i++) {
        p[i] = (struct pollfd){when[i] ? -1 : fds[i], POLLIN, 0};
        closed += when[i] != 0;
    }
    while (closed < n && zp_now_us() < end) {
        if (poll(p, n, 10) <= 0)
            continue;
        for (i = 0; i < n; i++) {
            if (p[i].fd < 0 || p[i].revents == 0)
                continue;
            k = recv(p[i].fd, buf, sizeof(buf), MSG_DONTWAIT);
            if (k > 0 || (k < 0 && errno == EAGAIN))
                continue;
            when[i] = zp_now_us();
            p[i].fd = -1;
            closed++;
        }
    }
    free(p);
    return closed;
}


/* How many connections the test may open, given its descriptor limit. */
static size_t
hs_conn_budget(size_t want)
{
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur < 300)
        return 100;
    return want < rl.rlim_cur - 200 ? want : rl.rlim_cur - 200;
}


/*
 * 1,000 connections each hold a partial frame: a header announcing 60,000
 * bytes and 1,000 of them. Each is closed when its frame deadline (2 s)
 * passes, not before. Bound: 1 KB buffered and a connection's state each,
 * a few MiB in all: peak RSS < 32 MiB (the default). Measured: 3 MiB.
 */
static void
test_many_partial_frames(void **state)
{
    static const char *const flags[] = {"--frame-deadline-ms", "2000", NULL};
    size_t n = hs_conn_budget(1000), i, closed;
    hs_expect_t ex = {.c = {{"deadline_closes", 0, 0},
                            {"close_deadline", 0, 0}},
                      .max_log_lines = 200, .log_has = "deadline"};
    uint8_t part[ZP_HDR_SIZE + 1000] = {0};
    zp_hdr_t hd = {ZP_MAGIC, 1, 0, 60000, 2, 1};
    int *fds = calloc(n, sizeof(int));
    uint64_t *sent = calloc(n, 8), *when = calloc(n, 8), dt;
    hs_t *h = &g_case;

    (void)state;
    assert_true(fds != NULL && sent != NULL && when != NULL);
    zp_hdr_put(part, &hd);
    hs_begin(h, "many_partial_frames", flags);
    for (i = 0; i < n; i++) {
        fds[i] = hs_connect(h);
        hs_send(fds[i], part, sizeof(part));
        sent[i] = zp_now_us();
    }
    closed = hs_wait_all_closed(fds, when, n, 2000 + hs_ms(4000));
    assert_int_equal(closed, n);
    for (i = 0; i < n; i++) {
        dt = (when[i] - sent[i]) / 1000;
        if (dt < 1900 || dt > 2000 + hs_ms(3000))
            fail_msg("conn %zu closed %llu ms after its bytes", i,
                     (unsigned long long)dt);
        zp_rst(fds[i]);
    }
    free(fds);
    free(sent);
    free(when);
    ex.c[0].min = ex.c[0].max = ex.c[1].min = ex.c[1].max = (int64_t)n;
    hs_end(h, &ex);
}

/*
 * The same attack against a small server-wide input budget (256 KiB):
 * each connection holds 4,012 bytes (a header and 4,000 bytes of a 60,000
 * byte body), so 65 fit; every later one is closed as soon as its bytes
 * arrive (close_input_budget), long before the frame deadline (20 s), and
 * the 65 stay open. The canary's frames are complete, so it holds
 * nothing and is served throughout.
 */
static void
test_partial_frames_past_the_input_budget(void **state)
{
    enum { BODY = 4000, BUDGET = 262144 };
    static const char *const flags[] = {"--in-budget", "262144",
                                        "--frame-deadline-ms", "20000",
                                        NULL};
    size_t n = hs_conn_budget(1000), fit = BUDGET / (ZP_HDR_SIZE + BODY);
    size_t i, closed;
    hs_expect_t ex = {.c = {{"close_input_budget", 0, 0},
                            {"deadline_closes", 0, 0}},
                      .max_log_lines = 40, .log_has = "unread input"};
    static uint8_t part[ZP_HDR_SIZE + BODY];
    zp_hdr_t hd = {ZP_MAGIC, 1, 0, 60000, 2, 1};
    int *fds = calloc(n, sizeof(int));
    uint64_t *when = calloc(n, 8);
    hs_t *h = &g_case;

    (void)state;
    assert_true(fds != NULL && when != NULL && n > fit);
    zp_hdr_put(part, &hd);
    hs_begin(h, "partial_frames_past_input_budget", flags);
    for (i = 0; i < n; i++) {
        fds[i] = hs_connect(h);
        hs_send(fds[i], part, sizeof(part));
    }
    closed = hs_wait_all_closed(fds, when, n, hs_ms(3000));
    assert_int_equal(closed, n - fit);
    for (i = 0; i < n; i++)
        zp_rst(fds[i]);
    free(fds);
    free(when);
    ex.c[0].min = ex.c[0].max = (int64_t)(n - fit);
    hs_end(h, &ex);
}


/* ---- C. slow and idle peers ---------------------------------------------- */


/* A frame stalled after its first bytes, a body stalled half-way, and a
 * partial frame behind a complete one: each closed 1 s (the deadline)
 * after the first byte of the stalled frame. */
static void
test_partial_frame_deadline(void **state)
{
    const hs_expect_t ex = {.c = {{"deadline_closes", 3, 3}},
                            .log_has = "deadline"};
    uint8_t buf[ZP_HDR_SIZE * 2 + 600] = {0};
    zp_hdr_t hd = {ZP_MAGIC, 1, 0, 1000, 2, 9};
    uint64_t t[3], when[3] = {0};
    hs_t *h = &g_case;
    int fds[3], i;

    (void)state;
    hs_begin(h, "partial_frame_deadline", NULL);
    for (i = 0; i < 3; i++)
        fds[i] = hs_connect(h);
    zp_hdr_put(buf, &hd);
    hs_send(fds[0], buf, 5);
    t[0] = zp_now_us();
    hs_send(fds[1], buf, ZP_HDR_SIZE + 500);
    t[1] = zp_now_us();
    hs_ping(fds[2], 1);
    hs_send(fds[2], buf, 9);
    t[2] = zp_now_us();
    assert_int_equal(hs_wait_all_closed(fds, when, 3, hs_ms(3000)), 3);
    for (i = 0; i < 3; i++) {
        print_message("[%s] conn %d closed after %llu ms\n", h->name, i,
                      (unsigned long long)(when[i] - t[i]) / 1000);
        assert_true(when[i] - t[i] >= 950000);
        assert_true(when[i] - t[i] <= 1000000 + hs_ms(1000) * 1000u);
        zp_rst(fds[i]);
    }
    hs_end(h, &ex);
}


/*
 * Slowloris: 40 connections send a valid 33-byte request a byte every
 * 100 ms (3.3 s in all). The frame deadline (1 s from a frame's first
 * byte) is not reset by further bytes, so each is closed about 1 s after
 * its first byte. Then a peer sending the same frame at 50 bytes/s (0.66 s,
 * within the deadline) is answered normally.
 */
static void
test_slowloris(void **state)
{
    static const uint8_t body[] = {0x0a, 0x0f, 's', 'l', 'o', 'w', 'l', 'o',
                                   'r', 'i', 's', '-', 'b', 'y', 't', 'e',
                                   's'};
    const hs_expect_t ex = {.c = {{"deadline_closes", 40, 40}},
                            .max_log_lines = 60, .log_has = "deadline"};
    uint64_t first[40] = {0}, when[40] = {0};
    uint8_t *f = zp_frame_new(1, 1, 0, body, sizeof(body));
    size_t i, pos[40] = {0}, closed = 0;
    hs_t *h = &g_case;
    int fds[40], tick;
    zp_msg_t m;

    (void)state;
    assert_non_null(f);
    hs_begin(h, "slowloris", NULL);
    for (i = 0; i < 40; i++)
        fds[i] = hs_connect(h);
    for (tick = 0; closed < 40 && tick < 33; tick++) {
        for (i = 0; i < 40; i++) {
            if (when[i] != 0)
                continue;
            if (zp_send(fds[i], f + pos[i], 1, 100, NULL) != 0)
                when[i] = zp_now_us(); /* reset by the server */
            else if (pos[i]++ == 0)
                first[i] = zp_now_us();
        }
        closed = hs_wait_all_closed(fds, when, 40, 100);
    }
    assert_int_equal(closed, 40);
    for (i = 0; i < 40; i++) {
        if (when[i] - first[i] < 950000 ||
            when[i] - first[i] > 1000000 + hs_ms(800) * 1000u)
            fail_msg("conn %zu closed %llu ms after its first byte", i,
                     (unsigned long long)(when[i] - first[i]) / 1000);
        zp_rst(fds[i]);
    }
    fds[0] = hs_connect(h);
    assert_int_equal(zp_send_rate(fds[0], f, ZP_HDR_SIZE + sizeof(body), 50,
                                  1), 0);
    assert_int_equal(zp_read_frame(fds[0], &m, hs_ms(3000)), 0);
    assert_int_equal(m.h.flags, ZP_F_RESPONSE);
    zp_msg_free(&m);
    zp_rst(fds[0]);
    free(f);
    hs_end(h, &ex);
}


/* With an idle time-out of 500 ms: a silent peer is closed after it, a
 * peer that pings every 100 ms is not. */
static void
test_idle_timeout(void **state)
{
    static const char *const flags[] = {"--idle-ms", "500", NULL};
    const hs_expect_t ex = {.c = {{"close_idle", 1, 1}},
                            .log_has = "idle"};
    uint64_t t0, when[1] = {0};
    hs_t *h = &g_case;
    int silent, busy, i;

    (void)state;
    hs_begin(h, "idle_timeout", flags);
    silent = hs_connect(h);
    t0 = zp_now_us();
    busy = hs_connect(h);
    for (i = 0; i < 12; i++) {
        hs_ping(busy, (uint32_t)i + 1);
        (void)hs_wait_all_closed(&silent, when, 1, 100);
    }
    assert_int_equal(hs_wait_all_closed(&silent, when, 1, hs_ms(2000)), 1);
    print_message("[%s] silent peer closed after %llu ms\n", h->name,
                  (unsigned long long)(when[0] - t0) / 1000);
    assert_true(when[0] - t0 >= 450000);
    assert_true(when[0] - t0 <= 500000 + hs_ms(1000) * 1000u);
    zp_rst(silent);
    zp_rst(busy);
    hs_end(h, &ex);
}


/* Reads `n` echo responses of `len` bytes each, on a thread, so that the
 * main thread can finish sending meanwhile. */
typedef struct {
    int fd;
    unsigned n, got;
    uint32_t len;
    int rc;
    pthread_t t;
} hs_drain_t;


static void *
hs_drain_main(void *arg)
{
    hs_drain_t *d = arg;
    zp_msg_t m;

    while (d->got < d->n &&
           (d->rc = zp_read_frame(d->fd, &m, 20000)) == 0) {
        if (m.h.flags != ZP_F_RESPONSE || m.h.length != d->len)
            d->rc = -EBADMSG;
        zp_msg_free(&m);
        if (d->rc != 0)
            break;
        d->got++;
    }
    return NULL;
}


/* Pipelines 60 KB echoes at a reader that does not read, until the server
 * stops reading (a send makes no progress for 1 s); returns how many
 * requests were started, and in *rest what is left of the last one. */
static unsigned
hs_flood_until_paused(int fd, uint8_t *f, size_t size, size_t *rest)
{
    zp_hdr_t hd;
    size_t sent;
    unsigned i;
    int rc;

    *rest = 0;
    for (i = 0; i < 1000; i++) {
        zp_hdr_get(f, &hd);
        hd.seq = i + 1;
        zp_hdr_put(f, &hd);
        rc = zp_send(fd, f, size, 1000, &sent);
        if (rc == -ETIMEDOUT) {
            *rest = size - sent;
            return sent > 0 ? i + 1 : i;
        }
        assert_int_equal(rc, 0);
    }
    fail_msg("the server never stopped reading (60 MB sent)");
    return i;
}


/*
 * A peer that pipelines requests and does not read (receive buffer 4 KiB):
 * once its replies pass the high-water mark (256 KiB here) the server
 * stops reading from it, so the peer's sends stall; nothing is closed
 * (the hard bound, 32 MiB, is far). Then the peer reads, and every reply
 * arrives. Bound: 256 KiB of queue, a read buffer, a frame being
 * decoded: peak RSS < 32 MiB (the default). Measured: 3 MiB.
 *
 * The frame deadline is 10 s here, not the suite's 1 s: the server stops
 * reading in the middle of a frame, and the deadline keeps running while
 * it does (see test_paused_reader_deadline).
 */
static void
hs_slow_reader(const char *name, const char *deadline_ms)
{
    const char *const flags[] = {"--out-high", "262144", "--out-low",
                                 "65536", "--out-hard", "33554432",
                                 "--frame-deadline-ms", deadline_ms, NULL};
    const hs_expect_t ex = {.c = {{"high_water_events", 1, -1},
                                  {"close_output_cap+close_deadline", 0,
                                   0}}};
    hs_drain_t d = {0};
    hs_t *h = &g_case;
    size_t size, rest;
    uint8_t *f;

    hs_begin(h, name, flags);
    f = hs_echo_frame(2, 1, 60000, 'e', &size);
    d.fd = zp_connect_rcvbuf(h->srv.port, 4096, hs_ms(2000));
    assert_true(d.fd >= 0);
    d.n = hs_flood_until_paused(d.fd, f, size, &rest);
    d.len = (uint32_t)(size - ZP_HDR_SIZE);
    print_message("[%s] reading paused after %u requests\n", h->name, d.n);
    assert_int_equal(pthread_create(&d.t, NULL, hs_drain_main, &d), 0);
    if (rest > 0)
        hs_send(d.fd, f + size - rest, rest);
    pthread_join(d.t, NULL);
    assert_int_equal(d.rc, 0);
    assert_int_equal(d.got, d.n);
    zp_rst(d.fd);
    free(f);
    hs_end(h, &ex);
}


static void
test_slow_reader_pauses(void **state)
{
    (void)state;
    hs_slow_reader("slow_reader_pauses", "10000");
}


/*
 * The same slow reader with the suite's 1 s frame deadline. The server
 * pauses reading at the high-water mark with part of a frame buffered; the
 * peer cannot finish the frame until the server reads again, so the frame
 * deadline must stop while reading is paused: a peer that is merely slow
 * to read is not a slowloris. (This case found that bug; it stays as its
 * regression test.)
 */
static void
test_paused_reader_deadline(void **state)
{
    (void)state;
    hs_slow_reader("paused_reader_deadline", "1000");
}


/* Asks for `count` pushes of `size` bytes (cmd 3). */
static void
hs_push_request(int fd, uint32_t seq, uint32_t count, uint32_t size)
{
    const uint32_t v[2] = {count, size};
    uint8_t body[32];

    hs_send_frame(fd, 3, seq, 0, body, hs_args_body(body, v, 2));
}


/*
 * Server pushes at a slow reader: 128 pushes of 64 KiB (8 MiB) with a
 * 256 KiB high-water mark and a 64 MiB hard bound. The reader waits
 * 0.5 s, then reads everything: 128 pushes and the reply. Bound: the
 * 8 MiB queue, less what the kernel took, and a frame being packed: peak
 * RSS < 48 MiB. Measured: 10 MiB.
 */
static void
test_push_high_water(void **state)
{
    static const char *const flags[] = {"--out-high", "262144", "--out-low",
                                        "65536", "--out-hard", "67108864",
                                        NULL};
    const hs_expect_t ex = {.c = {{"high_water_events", 1, -1},
                                  {"close_output_cap", 0, 0}},
                            .hwm_mib = 48};
    hs_t *h = &g_case;
    unsigned pushes = 0;
    const uint8_t *p;
    size_t len;
    zp_msg_t m;
    int fd;

    (void)state;
    hs_begin(h, "push_high_water", flags);
    fd = zp_connect_rcvbuf(h->srv.port, 4096, hs_ms(2000));
    assert_true(fd >= 0);
    hs_push_request(fd, 1, 128, 65536);
    zp_sleep_ms(500);
    while (zp_read_frame(fd, &m, hs_ms(5000)) == 0 &&
           m.h.flags == ZP_F_ONEWAY) {
        assert_int_equal(m.h.cmd, 3);
        assert_int_equal(m.h.length, 65536 + 4);
        pushes++;
        zp_msg_free(&m);
    }
    assert_int_equal(pushes, 128);
    assert_int_equal(m.h.flags, ZP_F_RESPONSE);
    assert_int_equal(zp_pb_get_field1(m.body, m.h.length, &p, &len), 0);
    assert_int_equal(len, 4);
    assert_int_equal(p[3] | p[2] << 8, 128);
    zp_msg_free(&m);
    zp_rst(fd);
    hs_end(h, &ex);
}


/* Waits until the stats show `key` moved by at least `min` since the
 * case began. */
static void
hs_wait_counter(hs_t *h, const char *key, int64_t min, unsigned ms)
{
    uint64_t end = zp_now_us() + (uint64_t)ms * 1000;
    char now[4096];

    while (zp_now_us() < end) {
        assert_int_equal(zp_server_stats(&h->srv, now, sizeof(now),
                                         hs_ms(5000)), 0);
        if (hs_delta(h, now, key) >= min)
            return;
        zp_sleep_ms(10);
    }
    fail_msg("%s: %s did not move by %lld", h->name, key, (long long)min);
}


/*
 * Server pushes at a reader that never reads: 512 pushes of 64 KiB
 * (32 MiB) against a 1 MiB hard bound. The server must close the
 * connection (counted as output_cap) while the peer still does not read,
 * having sent it at most the bound plus the kernel's buffers. Bound: the
 * 1 MiB queue: peak RSS < 32 MiB (the default). Measured: 3 MiB.
 */
static void
test_push_hard_cap(void **state)
{
    static const char *const flags[] = {"--out-high", "262144", "--out-low",
                                        "65536", "--out-hard", "1048576",
                                        NULL};
    const hs_expect_t ex = {.c = {{"close_output_cap", 1, 1}},
                            .log_has = "output queue over",
                            .log_has_max = 1};
    hs_t *h = &g_case;
    zp_report_t r;
    int fd;

    (void)state;
    hs_begin(h, "push_hard_cap", flags);
    fd = zp_connect_rcvbuf(h->srv.port, 4096, hs_ms(2000));
    assert_true(fd >= 0);
    hs_push_request(fd, 1, 512, 65536);
    hs_wait_counter(h, "close_output_cap", 1, hs_ms(5000));
    zp_read_to_end(fd, NULL, 0, hs_ms(3000), &r);
    print_message("[%s] reader got %zu bytes, then %s\n", h->name, r.bytes,
                  r.end == ZP_END_RST ? "a reset" : "EOF");
    assert_true(r.end == ZP_END_EOF || r.end == ZP_END_RST);
    assert_true(r.bytes < 12 * MIB);
    zp_rst(fd);
    hs_end(h, &ex);
}

/* ---- D. connection faults ------------------------------------------------ */


/* Splits `n` bytes of whole frames; returns how many, with their cmds. */
static unsigned
hs_split_frames(const uint8_t *b, size_t n, uint32_t *cmds, unsigned cap)
{
    unsigned k = 0;
    size_t off = 0;
    zp_hdr_t hd;

    while (off + ZP_HDR_SIZE <= n && k < cap) {
        zp_hdr_get(b + off, &hd);
        assert_int_equal(hd.flags, ZP_F_RESPONSE);
        cmds[k++] = hd.cmd;
        off += ZP_HDR_SIZE + hd.length;
    }
    assert_int_equal(off, n);
    return k;
}


/*
 * Half-close: requests already received are answered and flushed, then
 * the connection is closed. (a) one ping then FIN; (b) a slow request (on
 * a worker, 200 ms; 5 ms on the loop in the other models) and a ping,
 * then FIN: both answers arrive before the EOF; (c) half a header then
 * FIN: closed at once, not at the frame deadline.
 */
static void
test_half_close(void **state)
{
    static const uint8_t ping[] = {0x0a, 0x01, 'h'};
    const hs_expect_t ex = {.c = {{"close_peer+close_local", 3, 3},
                                  {"deadline_closes", 0, 0}}};
    const uint32_t ms = hs_workers() ? 200 : 5;
    uint8_t buf[512], body[16];
    uint32_t cmds[4];
    hs_t *h = &g_case;
    zp_report_t r;
    int fd;

    (void)state;
    hs_begin(h, "half_close", NULL);
    fd = hs_connect(h);
    hs_send_frame(fd, 1, 1, 0, ping, sizeof(ping));
    assert_int_equal(zp_shut_wr(fd), 0);
    zp_read_to_end(fd, buf, sizeof(buf), hs_ms(1000), &r);
    assert_int_equal(r.end, ZP_END_EOF);
    assert_int_equal(hs_split_frames(buf, r.bytes, cmds, 4), 1);
    close(fd);
    fd = hs_connect(h);
    hs_send_frame(fd, 4, 2, 0, body, hs_args_body(body, &ms, 1));
    hs_send_frame(fd, 1, 3, 0, ping, sizeof(ping));
    assert_int_equal(zp_shut_wr(fd), 0);
    zp_read_to_end(fd, buf, sizeof(buf), hs_ms(1000) + ms, &r);
    assert_int_equal(r.end, ZP_END_EOF);
    assert_int_equal(hs_split_frames(buf, r.bytes, cmds, 4), 2);
    assert_int_equal(cmds[0] + cmds[1], 5);
    close(fd);
    fd = hs_connect(h);
    hs_send(fd, "zn\001", 3);
    assert_int_equal(zp_shut_wr(fd), 0);
    zp_read_to_end(fd, buf, sizeof(buf), 500, &r);
    assert_int_equal(r.end, ZP_END_EOF);
    assert_int_equal(r.bytes, 0);
    close(fd);
    hs_end(h, &ex);
}


/* A connection refused over the limit: OVERLOADED with seq 0, then EOF. */
static void
hs_expect_refused(int fd)
{
    hs_expect_error(fd, 0, ERR_OVERLOADED);
    assert_true(zp_wait_closed(fd, hs_ms(1000)));
}


/* Waits until the server counts `live` open connections. */
static void
hs_wait_live(hs_t *h, int64_t live)
{
    uint64_t end = zp_now_us() + (uint64_t)hs_ms(3000) * 1000;
    char now[4096];

    do {
        assert_int_equal(zp_server_stats(&h->srv, now, sizeof(now),
                                         hs_ms(5000)), 0);
        if (zp_stat(now, "conns_live") == live)
            return;
        zp_sleep_ms(5);
    } while (zp_now_us() < end);
    fail_msg("%s: %lld live connections, want %lld", h->name,
             (long long)zp_stat(now, "conns_live"), (long long)live);
}


/*
 * --max-conns 8, the canary being one: 7 more are served, 5 beyond get
 * OVERLOADED (seq 0) and are closed; after 3 leave, 3 new ones are served.
 */
static void
test_max_conns(void **state)
{
    static const char *const flags[] = {"--max-conns", "8", NULL};
    const hs_expect_t ex = {.c = {{"conns_rejected", 5, 5},
                                  {"close_max_conns", 5, 5}},
                            .log_has = "connections, refusing"};
    hs_t *h = &g_case;
    int held[7], fd, i;

    (void)state;
    hs_begin(h, "max_conns", flags);
    for (i = 0; i < 7; i++) {
        held[i] = hs_connect(h);
        hs_ping(held[i], 1);
    }
    for (i = 0; i < 5; i++) {
        fd = hs_connect(h);
        hs_expect_refused(fd);
        zp_rst(fd);
    }
    for (i = 0; i < 3; i++)
        zp_rst(held[i]);
    hs_wait_live(h, 5);
    for (i = 0; i < 3; i++) {
        held[i] = hs_connect(h);
        hs_ping(held[i], 2);
    }
    for (i = 0; i < 7; i++)
        zp_rst(held[i]);
    hs_end(h, &ex);
}


/*
 * A fresh client served within `ms`: connects and pings, and connects
 * again if the server dropped it (reset or EOF before the answer). While
 * the server drains the backlog that the departed clients left in its
 * accept queue (up to 64 accepts per wake-up against a 40-descriptor
 * limit), it may still be out of descriptors for a moment and shed a new
 * connection, by design. Returns the connected fd.
 */
static int
hs_served_within(hs_t *h, unsigned ms)
{
    static const uint8_t body[] = {0x0a, 0x01, 'x'};
    uint64_t end = zp_now_us() + (uint64_t)ms * 1000;
    zp_msg_t m;
    int fd, rc;

    for (;;) {
        fd = hs_connect(h);
        hs_send_frame(fd, 1, 1, 0, body, sizeof(body));
        rc = zp_read_frame(fd, &m, hs_ms(3000));
        if (rc == 0) {
            assert_int_equal(m.h.flags, ZP_F_RESPONSE);
            zp_msg_free(&m);
            return fd;
        }
        zp_rst(fd);
        if (zp_now_us() > end)
            fail_msg("no fresh client served within %u ms (last: %d)", ms,
                     rc);
        zp_sleep_ms(50);
    }
}


/*
 * Out of descriptors: the server's limit is lowered to 40 once it
 * listens, then 120 clients connect and stay 1.5 s. The server must not
 * spin (CPU time over the hold < 30% of one core), must count the EMFILE
 * events and log them rate-limited, and must recover by itself: once the
 * clients leave, 5 fresh ones are served within 3 s (each may need a
 * second try while the dead backlog drains; see hs_served_within).
 */
static void
test_emfile(void **state)
{
    static const char *const flags[] = {"--max-fds", "40", NULL};
    const hs_expect_t ex = {.c = {{"emfile_events", 1, -1}},
                            .max_log_lines = 30,
                            .log_has = "too many open files",
                            .log_has_max = 10};
    hs_t *h = &g_case;
    uint64_t cpu0, cpu1, t0, wall;
    int fds[120], i;

    (void)state;
    hs_begin(h, "emfile", flags);
    for (i = 0; i < 120; i++)
        fds[i] = hs_connect(h);
    cpu0 = zp_proc_cpu_ms(h->srv.pid);
    t0 = zp_now_us();
    zp_sleep_ms(1500);
    cpu1 = zp_proc_cpu_ms(h->srv.pid);
    wall = (zp_now_us() - t0) / 1000;
    print_message("[%s] server CPU %llu ms over %llu ms, %d fds\n", h->name,
                  (unsigned long long)(cpu1 - cpu0),
                  (unsigned long long)wall, zp_proc_fds(h->srv.pid));
    assert_true((cpu1 - cpu0) * 10 < wall * 3);
    for (i = 0; i < 120; i++)
        zp_rst(fds[i]);
    hs_wait_live(h, 1);
    for (i = 0; i < 5; i++)
        fds[i] = hs_served_within(h, hs_ms(3000));
    for (i = 0; i < 5; i++)
        zp_rst(fds[i]);
    hs_end(h, &ex);
}


/* Resets in the middle of a frame (10,000 bytes announced, 5,000 sent):
 * the server frees the connection and its partial frame. */
static void
test_rst_mid_frame(void **state)
{
    const hs_expect_t ex = {.c = {{"close_error+close_peer", 20, 20},
                                  {"deadline_closes", 0, 0}}};
    uint8_t part[ZP_HDR_SIZE + 5000];
    zp_hdr_t hd = {ZP_MAGIC, 1, 0, 10000, 2, 1};
    hs_t *h = &g_case;
    int fd, i;

    (void)state;
    memset(part, 'r', sizeof(part));
    zp_hdr_put(part, &hd);
    hs_begin(h, "rst_mid_frame", NULL);
    for (i = 0; i < 20; i++) {
        fd = hs_connect(h);
        hs_send(fd, part, sizeof(part));
        zp_sleep_ms(5);
        zp_rst(fd);
    }
    hs_end(h, &ex);
}


/*
 * Resets while the server writes: each of 10 peers pipelines 50 echoes of
 * 60 KB (3 MB of replies), reads 64 KiB and resets. The server leaves
 * SIGPIPE at its default (it would die of it): writes must not raise it.
 * Bound: one peer's 3 MB of replies at a time: peak RSS < 32 MiB.
 */
static void
test_rst_mid_reply(void **state)
{
    const hs_expect_t ex = {.c = {{"close_error+close_peer", 10, 10}}};
    uint8_t *f, *all, buf[65536];
    hs_t *h = &g_case;
    size_t size, i;
    zp_hdr_t hd;
    int fd, k;

    (void)state;
    hs_begin(h, "rst_mid_reply", NULL);
    f = hs_echo_frame(2, 1, 60000, 'w', &size);
    all = malloc(size * 50);
    assert_non_null(all);
    for (i = 0; i < 50; i++) {
        zp_hdr_get(f, &hd);
        hd.seq = (uint32_t)i + 1;
        zp_hdr_put(all + i * size, &hd);
        memcpy(all + i * size + ZP_HDR_SIZE, f + ZP_HDR_SIZE,
               size - ZP_HDR_SIZE);
    }
    for (k = 0; k < 10; k++) {
        fd = hs_connect(h);
        hs_send(fd, all, size * 50);
        assert_int_equal(zp_read_n(fd, buf, sizeof(buf), hs_ms(3000)),
                         (long)sizeof(buf));
        zp_rst(fd);
        assert_true(zp_server_alive(&h->srv));
    }
    free(all);
    free(f);
    hs_end(h, &ex);
}


/* Resets while the server pushes 4 MiB (from a worker in that model):
 * 20 times, with SIGPIPE at its default in the server. Bound: the 4 MiB
 * queue of one peer (plus what the threads' arenas keep): peak RSS
 * < 48 MiB. Measured: 6 to 14 MiB. */
static void
test_rst_during_push(void **state)
{
    const hs_expect_t ex = {.c = {{"close_error+close_peer", 20, 20}},
                            .hwm_mib = 48};
    uint8_t buf[1024];
    hs_t *h = &g_case;
    int fd, k;

    (void)state;
    hs_begin(h, "rst_during_push", NULL);
    for (k = 0; k < 20; k++) {
        fd = hs_connect(h);
        hs_push_request(fd, 1, 64, 65536);
        assert_int_equal(zp_read_n(fd, buf, sizeof(buf), hs_ms(3000)),
                         (long)sizeof(buf));
        zp_rst(fd);
        assert_true(zp_server_alive(&h->srv));
    }
    hs_end(h, &ex);
}


/* 2,000 connections that come and go: 1,000 reset at once, 500 close at
 * once (FIN), 500 ping then reset. */
static void
test_connect_close_storm(void **state)
{
    const hs_expect_t ex = {.c = {{"conns_accepted", 2000, 2000}}};
    hs_t *h = &g_case;
    int fd, i;

    (void)state;
    hs_begin(h, "connect_close_storm", NULL);
    for (i = 0; i < 2000; i++) {
        fd = hs_connect(h);
        if (i >= 1500)
            hs_ping(fd, (uint32_t)i);
        if (i >= 1000 && i < 1500)
            close(fd);
        else
            zp_rst(fd);
    }
    hs_end(h, &ex);
}


/*
 * The peer resets while a worker holds its request (cmd 4, 200 ms): the
 * reply comes back to a closed connection and is dropped and counted, not
 * written anywhere. In the other models the handler runs on the loop
 * (20 ms), and the reply meets the reset socket instead.
 */
static void
test_reset_while_handled(void **state)
{
    hs_expect_t ex = {.c = {{"close_error+close_peer", 4, 4},
                            {"late_replies", 0, 0}}};
    const uint32_t ms = hs_workers() ? 200 : 20;
    hs_t *h = &g_case;
    uint8_t body[16];
    int fds[4], i;

    (void)state;
    if (hs_workers())
        ex.c[1].min = ex.c[1].max = 4;
    hs_begin(h, "reset_while_handled", NULL);
    for (i = 0; i < 4; i++) {
        fds[i] = hs_connect(h);
        hs_send_frame(fds[i], 4, 1, 0, body, hs_args_body(body, &ms, 1));
    }
    zp_sleep_ms(10);
    for (i = 0; i < 4; i++)
        zp_rst(fds[i]);
    if (hs_workers())
        hs_wait_counter(h, "late_replies", 4, hs_ms(3000));
    hs_end(h, &ex);
}

/* ---- E. overload --------------------------------------------------------- */


/* 1,000 requests in one write (about 20 KB): every one is answered, once,
 * and in order on one connection unless workers may reorder them. */
static void
test_pipelined_burst(void **state)
{
    static const uint8_t body[] = {0x0a, 0x01, 'b'};
    const size_t one = ZP_HDR_SIZE + sizeof(body);
    uint8_t *all = malloc(1000 * one), *f;
    bool seen[1000] = {false};
    hs_t *h = &g_case;
    zp_msg_t m;
    uint32_t i;
    int fd;

    (void)state;
    assert_non_null(all);
    for (i = 0; i < 1000; i++) {
        f = zp_frame_new(1, i + 1, 0, body, sizeof(body));
        assert_non_null(f);
        memcpy(all + i * one, f, one);
        free(f);
    }
    hs_begin(h, "pipelined_burst", NULL);
    fd = hs_connect(h);
    hs_send(fd, all, 1000 * one);
    for (i = 0; i < 1000; i++) {
        assert_int_equal(zp_read_frame(fd, &m, hs_ms(3000)), 0);
        assert_int_equal(m.h.flags, ZP_F_RESPONSE);
        assert_true(m.h.seq >= 1 && m.h.seq <= 1000 && !seen[m.h.seq - 1]);
        if (!hs_workers())
            assert_int_equal(m.h.seq, i + 1);
        seen[m.h.seq - 1] = true;
        zp_msg_free(&m);
    }
    zp_rst(fd);
    free(all);
    hs_end(h, &(hs_expect_t){.c = {{"requests", 1000, -1}}});
}


/* Reads n answers to seqs 1..n: each exactly once, either the echo of
 * cmd 4 or OVERLOADED; returns how many were OVERLOADED. */
static unsigned
hs_read_slow_answers(int fd, unsigned n)
{
    unsigned i, overloaded = 0;
    bool seen[64] = {false};
    zp_msg_t m;

    assert_true(n <= 64);
    for (i = 0; i < n; i++) {
        assert_int_equal(zp_read_frame(fd, &m, hs_ms(10000)), 0);
        assert_true(m.h.seq >= 1 && m.h.seq <= n && !seen[m.h.seq - 1]);
        seen[m.h.seq - 1] = true;
        if (m.h.flags == (ZP_F_RESPONSE | ZP_F_ERROR)) {
            assert_int_equal(zp_pb_error_code(m.body, m.h.length),
                             ERR_OVERLOADED);
            overloaded++;
        } else {
            assert_int_equal(m.h.flags, ZP_F_RESPONSE);
            assert_int_equal(m.h.cmd, 4);
        }
        zp_msg_free(&m);
    }
    return overloaded;
}


/*
 * Worker queue overflow: 2 workers, a queue of 4, and 4 peers pipelining
 * 20 requests of 20 ms each. Every request gets its answer or OVERLOADED
 * with its seq, none is lost, and the counter equals the OVERLOADED
 * answers seen (the canary's own refusals are counted by the canary). In
 * the models without workers the queue does not exist (1 ms each).
 */
static void
test_worker_queue_overflow(void **state)
{
    static const char *const flags[] = {"--queue-max", "4", NULL};
    hs_expect_t ex = {.c = {{"overloaded", 0, 0}}, .max_log_lines = 12};
    const uint32_t ms = hs_workers() ? 20 : 1;
    uint8_t body[16], all[20 * 32];
    hs_t *h = &g_case;
    unsigned seen = 0;
    size_t blen = hs_args_body(body, &ms, 1), i;
    zp_hdr_t hd = {ZP_MAGIC, 1, 0, (uint32_t)blen, 4, 0};
    zp_canary_report_t cr;
    int fds[4], k;

    (void)state;
    hs_begin_canary(h, "worker_queue_overflow", flags, true);
    for (i = 0; i < 20; i++) {
        hd.seq = (uint32_t)i + 1;
        zp_hdr_put(all + i * (ZP_HDR_SIZE + blen), &hd);
        memcpy(all + i * (ZP_HDR_SIZE + blen) + ZP_HDR_SIZE, body, blen);
    }
    for (k = 0; k < 4; k++) {
        fds[k] = hs_connect(h);
        hs_send(fds[k], all, 20 * (ZP_HDR_SIZE + blen));
    }
    for (k = 0; k < 4; k++) {
        seen += hs_read_slow_answers(fds[k], 20);
        zp_rst(fds[k]);
    }
    print_message("[%s] %u of 80 requests refused\n", h->name, seen);
    if (hs_workers())
        assert_true(seen > 0);
    /* The canary's refusals count too: stop it first to know them. */
    zp_canary_stop(h->canary, &cr);
    assert_int_equal(cr.failures, 0);
    assert_int_equal(zp_canary_start(h->srv.port, 2, hs_ms(2000), false,
                                     &h->canary), 0);
    ex.c[0].min = ex.c[0].max = (int64_t)(seen + cr.overloaded);
    hs_end(h, &ex);
}

/* ---- main ---------------------------------------------------------------- */


/* Sanitizer builds are slower and bigger (g_slow, g_mem, hs_mib). Under
 * ASan freed memory waits in a quarantine (256 MiB by default) that would
 * dominate every RSS figure; 64 MiB still catches a use-after-free within
 * a request. The child inherits the setting. TSan is the slowest (a 4 MiB
 * request decodes and checks several times slower than under ASan: the
 * canary waited 3.4 s behind 64 of them) and the largest (shadow memory
 * about 5x what the program touches). */
static void
hs_sanitizer_setup(void)
{
    const char *old = getenv("ASAN_OPTIONS");
    char opts[1024];
    bool tsan = false;

#if defined(__SANITIZE_ADDRESS__)
    g_sanitized = true;
#endif
#if defined(__SANITIZE_THREAD__)
    tsan = true;
#endif
#if defined(__has_feature)
#if __has_feature(address_sanitizer)
    g_sanitized = true;
#endif
#if __has_feature(thread_sanitizer)
    tsan = true;
#endif
#endif
    if (tsan) {
        g_sanitized = true;
        g_slow = 5;
        g_mem = 6;
        return;
    }
    if (!g_sanitized)
        return;
    g_slow = 3;
    g_mem = 3;
    if (old != NULL && strstr(old, "quarantine_size_mb") != NULL)
        return;
    snprintf(opts, sizeof(opts), "%s%squarantine_size_mb=64",
             old != NULL ? old : "", old != NULL && *old ? ":" : "");
    setenv("ASAN_OPTIONS", opts, 1);
}


/* The suite opens over a thousand sockets: raise the soft limit. */
static void
hs_raise_nofile(void)
{
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max < 65536 ? rl.rlim_max : 65536;
        (void)setrlimit(RLIMIT_NOFILE, &rl);
    }
}


#define HS_CASE(f) cmocka_unit_test_teardown(f, hs_teardown)

/* Each case is described in docs/hostile.md. */
static const struct CMUnitTest hs_cases[] = {
    HS_CASE(test_bad_magic),
    HS_CASE(test_bad_version),
    HS_CASE(test_reserved_flags),
    HS_CASE(test_length_over_limit),
    HS_CASE(test_undecodable_body),
    HS_CASE(test_unknown_cmd),
    HS_CASE(test_unsolicited_response),
    HS_CASE(test_deep_nesting),
    HS_CASE(test_http_and_tls_hello),
    HS_CASE(test_random_bytes),
    HS_CASE(test_random_headers),
    HS_CASE(test_max_bodies_at_once),
    HS_CASE(test_alloc_bomb_kids),
    HS_CASE(test_alloc_bomb_fields),
    HS_CASE(test_bound_at_the_largest_body),
    HS_CASE(test_decoded_requests_held_within_bound),
    HS_CASE(test_many_partial_frames),
    HS_CASE(test_partial_frames_past_the_input_budget),
    HS_CASE(test_partial_frame_deadline),
    HS_CASE(test_slowloris),
    HS_CASE(test_idle_timeout),
    HS_CASE(test_slow_reader_pauses),
    HS_CASE(test_paused_reader_deadline),
    HS_CASE(test_push_high_water),
    HS_CASE(test_push_hard_cap),
    HS_CASE(test_half_close),
    HS_CASE(test_max_conns),
    HS_CASE(test_emfile),
    HS_CASE(test_rst_mid_frame),
    HS_CASE(test_rst_mid_reply),
    HS_CASE(test_rst_during_push),
    HS_CASE(test_connect_close_storm),
    HS_CASE(test_reset_while_handled),
    HS_CASE(test_pipelined_burst),
    HS_CASE(test_worker_queue_overflow),
};


/*
 * Where the servers' logs and port files go: $HOSTILE_OUT/hostile-MODEL if
 * set, else hostile-MODEL beside this program (in the build tree), never
 * the current directory, so that a run by hand leaves the source tree
 * clean.
 */
static void
hs_out_dir(char *dir, size_t cap, const char *model)
{
    char exe[4000];
    const char *base = getenv("HOSTILE_OUT");
    ssize_t n;
    char *slash;

    if (base == NULL || base[0] == '\0') {
        n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
        exe[n > 0 ? n : 0] = '\0';
        slash = strrchr(exe, '/');
        if (slash == NULL)
            snprintf(exe, sizeof(exe), ".");
        else
            *slash = '\0';
        base = exe;
    }
    snprintf(dir, cap, "%s/hostile-%s", base, model);
    (void)mkdir(dir, 0755);
}


int
main(int argc, char **argv)
{
    char group[64];

    if (argc < 3 || (strcmp(argv[2], "single") != 0 &&
                     strcmp(argv[2], "workers") != 0 &&
                     strcmp(argv[2], "io") != 0)) {
        fprintf(stderr, "usage: %s SERVER single|workers|io [FILTER]\n",
                argv[0]);
        return 2;
    }
    g_bin = argv[1];
    g_model = argv[2];
    hs_out_dir(g_dir, sizeof(g_dir), g_model);
    hs_sanitizer_setup();
    hs_raise_nofile();
    if (argc > 3)
        cmocka_set_test_filter(argv[3]);
    snprintf(group, sizeof(group), "hostile_%s", g_model);
    return _cmocka_run_group_tests(group, hs_cases,
                                   sizeof(hs_cases) / sizeof(hs_cases[0]),
                                   NULL, NULL);
}
