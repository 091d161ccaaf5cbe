/*
 * test_alloc_fail.c: allocation failure injection through the allocator
 * hook (zn_set_allocator). Each scenario runs once counting the
 * allocations it makes (K), then K times more, failing allocation 1, 2,
 * ..., K in turn: first that one alone, then that one and every later one
 * until the scenario starts its teardown (memory that runs out and comes
 * back). Every run must end cleanly: no crash, no hang (a per-run alarm),
 * every call returns 0 or a documented error, the scenario's invariants
 * hold, and after teardown no block the hook handed out is still live and
 * no descriptor is left open. LeakSanitizer checks the rest at exit.
 *
 * The first part, the harness, is shared with msg/test_alloc_fail_msg.c,
 * which includes this file with FA_HARNESS_ONLY defined.
 *
 * To debug a failure: FA_RUN=scenario[,mode,n] runs one scenario, or one
 * run of it (mode 1: fail only, 2: fail from); FA_TRACE=1 names each run
 * as it starts, FA_TRACE=2 also prints the stack of each refused
 * allocation.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <execinfo.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "testutil.h"

/* ---- the failing allocator -------------------------------------------- */

enum { FA_COUNT, FA_ONE, FA_FROM };

static const char *const fa_mode_names[] = {"count", "fail only",
                                            "fail from"};

static struct {
    _Atomic long count;   /* allocations since the run started */
    _Atomic long fail_at; /* the first one refused (1-based) */
    _Atomic int mode;
    _Atomic long refused; /* over the whole sweep */
    _Atomic long live;    /* blocks handed out and not yet freed */
    _Atomic long errors;  /* ERROR lines znet logged */
    _Atomic long silent;  /* waits that ran out, where allowed */
} fa;

/* What runs now, for the messages of a failure or a hang. */
static struct {
    const char *scenario;
    int mode;
    long n, k;
    bool lenient; /* silence allowed now: see fa_scenario_t */
} fa_ctx;

/* The first broken invariant of a run, noted by any thread (cmocka's
 * assertions work only on the test's own thread). */
static _Atomic(const char *) fa_bad;
static _Atomic int fa_bad_rc;

#define FA_STR2(x) #x
#define FA_STR(x) FA_STR2(x)

/* Notes `cond` broken, with `rc` (a return code, or 0) for the message. */
#define FA_NOTE_RC(cond, rc)                                                 \
    do {                                                                     \
        if (!(cond))                                                         \
            fa_note(__FILE__ ":" FA_STR(__LINE__) ": " #cond, (int)(rc));    \
    } while (0)
#define FA_NOTE(cond) FA_NOTE_RC(cond, 0)

/* The same, with words instead of the condition in the message. */
#define FA_NOTE_WHY(cond, why, rc)                                           \
    do {                                                                     \
        if (!(cond))                                                         \
            fa_note(__FILE__ ":" FA_STR(__LINE__) ": " why, (int)(rc));      \
    } while (0)

/* A wait ran out: a hang unless silence is allowed now (fa_silence). */
#define FA_NOTE_WAIT(what)                                                   \
    do {                                                                     \
        if (!fa_silence())                                                   \
            fa_note(__FILE__ ":" FA_STR(__LINE__) ": " what, 0);             \
    } while (0)


static void
fa_note(const char *what, int rc)
{
    const char *none = NULL;

    if (atomic_compare_exchange_strong(&fa_bad, &none, what))
        atomic_store(&fa_bad_rc, rc);
}


/* With FA_TRACE=2 in the environment, prints where each refused
 * allocation was made (resolve with addr2line -f -e BINARY OFFSET). */
static void
fa_trace_refusal(long n)
{
    void *frames[16];
    const char *t = getenv("FA_TRACE");

    if (t == NULL || strcmp(t, "2") != 0)
        return;
    fprintf(stderr, "alloc-fail: refused allocation %ld:\n", n);
    backtrace_symbols_fd(frames, backtrace(frames, 16), 2);
}


/* Counts every allocation; refuses the fail_at-th ("fail only") or every
 * one from it on ("fail from"). Counting only: never refuses. */
static bool
fa_refuse(void)
{
    long n = atomic_fetch_add(&fa.count, 1) + 1;
    long at = atomic_load(&fa.fail_at);
    int mode = atomic_load(&fa.mode);

    if (mode == FA_COUNT || n < at || (mode == FA_ONE && n > at))
        return false;
    atomic_fetch_add(&fa.refused, 1);
    fa_trace_refusal(n);
    return true;
}


static void *
fa_malloc(size_t size)
{
    void *p = fa_refuse() ? NULL : malloc(size);

    if (p != NULL)
        atomic_fetch_add(&fa.live, 1);
    return p;
}


/* A refused realloc leaves the block alone, as realloc() does. */
static void *
fa_realloc(void *ptr, size_t size)
{
    void *p;

    if (fa_refuse())
        return NULL;
    p = realloc(ptr, size);
    if (p != NULL && ptr == NULL)
        atomic_fetch_add(&fa.live, 1);
    return p;
}


static void *
fa_calloc(size_t count, size_t size)
{
    void *p = fa_refuse() ? NULL : calloc(count, size);

    if (p != NULL)
        atomic_fetch_add(&fa.live, 1);
    return p;
}


static void
fa_free(void *ptr)
{
    if (ptr != NULL)
        atomic_fetch_sub(&fa.live, 1);
    free(ptr);
}


/* Keeps the test's output readable: errors are expected here. */
static void
fa_log(zn_log_level_t level, const char *file, int line, const char *msg,
       void *ud)
{
    (void)file;
    (void)line;
    (void)msg;
    (void)ud;
    if (level >= ZN_LOG_ERROR)
        atomic_fetch_add(&fa.errors, 1);
}


/* A scenario calls this when it starts to tear down: in "fail from" mode
 * memory comes back then, so that what was built can be freed. */
static void
fa_teardown(void)
{
    int from = FA_FROM;

    atomic_compare_exchange_strong(&fa.mode, &from, FA_COUNT);
}

/* ---- runs and sweeps --------------------------------------------------- */

/*
 * A scenario. With `silence_ok`, a peer of the scenario may fall silent in
 * "fail from" mode without closing: a server that runs out of memory for
 * good cannot answer. Its waits are then short and their end is counted,
 * not a failure; leaks and descriptors are still checked.
 */
typedef struct {
    const char *name;
    void (*run)(const void *arg);
    const void *arg;
    unsigned timeout_s; /* per run: longer is a hang */
    bool silence_ok;
} fa_scenario_t;


/* A wait ran out: true (and counted) if that is allowed now. */
static bool
fa_silence(void)
{
    if (fa_ctx.lenient)
        atomic_fetch_add(&fa.silent, 1);
    return fa_ctx.lenient;
}


static size_t
fa_cat(char *buf, size_t k, size_t size, const char *s)
{
    while (*s != '\0' && k < size - 1)
        buf[k++] = *s++;
    return k;
}


static size_t
fa_cat_num(char *buf, size_t k, size_t size, long v)
{
    char digits[24];
    int i = 0;

    do
        digits[i++] = (char)('0' + v % 10);
    while ((v /= 10) > 0 && i < (int)sizeof(digits));
    while (i > 0 && k < size - 1)
        buf[k++] = digits[--i];
    return k;
}


/* A run that outlives its alarm hangs: say which, and fail (signal-safe). */
static void
fa_on_alarm(int sig)
{
    char buf[256];
    size_t k = 0, n = sizeof(buf);

    (void)sig;
    k = fa_cat(buf, k, n, "alloc-fail: HANG in ");
    k = fa_cat(buf, k, n, fa_ctx.scenario);
    k = fa_cat(buf, k, n, ", ");
    k = fa_cat(buf, k, n, fa_mode_names[fa_ctx.mode]);
    k = fa_cat(buf, k, n, " allocation ");
    k = fa_cat_num(buf, k, n, fa_ctx.n);
    k = fa_cat(buf, k, n, " of ");
    k = fa_cat_num(buf, k, n, fa_ctx.k);
    buf[k++] = '\n';
    (void)!write(2, buf, k);
    _exit(124);
}


static void
fa_expect(bool ok, const char *what, long value)
{
    if (ok)
        return;
    fail_msg("%s, %s allocation %ld of %ld: %s (%ld)", fa_ctx.scenario,
             fa_mode_names[fa_ctx.mode], fa_ctx.n, fa_ctx.k, what, value);
}


/* One run of a scenario; returns the number of allocations it made. */
static long
fa_once(const fa_scenario_t *s, int mode, long n)
{
    int fds = tu_count_fds();
    const char *bad;

    fa_ctx.mode = mode;
    fa_ctx.n = n;
    fa_ctx.lenient = mode == FA_FROM && s->silence_ok;
    if (getenv("FA_TRACE") != NULL) /* which run crashed */
        fprintf(stderr, "alloc-fail: %s, %s allocation %ld\n",
                s->name, fa_mode_names[mode], n);
    atomic_store(&fa_bad, NULL);
    atomic_store(&fa.count, 0);
    atomic_store(&fa.fail_at, n);
    atomic_store(&fa.mode, mode);
    alarm(s->timeout_s);
    s->run(s->arg);
    alarm(0);
    atomic_store(&fa.mode, FA_COUNT);
    bad = atomic_load(&fa_bad);
    fa_expect(bad == NULL, bad, atomic_load(&fa_bad_rc));
    fa_expect(atomic_load(&fa.live) == 0, "blocks live after teardown",
              atomic_load(&fa.live));
    fa_expect(tu_count_fds() == fds, "descriptors open after teardown",
              tu_count_fds() - fds);
    return atomic_load(&fa.count);
}


/* FA_RUN=scenario[,mode,n] (mode 1: fail only, 2: fail from) in the
 * environment runs only that scenario, or only that run of it (after the
 * counting runs), to debug it. */
static bool
fa_selected(const char *scenario, int mode, long n)
{
    const char *run = getenv("FA_RUN");
    char name[32];
    int m;
    long k;

    if (run == NULL)
        return true;
    switch (sscanf(run, "%31[^,],%d,%ld", name, &m, &k)) {
    case 1:
        return strcmp(name, scenario) == 0;
    case 3:
        return strcmp(name, scenario) == 0 && (mode == FA_COUNT ||
                                               (m == mode && k == n));
    default:
        return false;
    }
}


/*
 * Counts the allocation sites of a scenario (the largest of two counting
 * runs: threads make the count vary a little), then fails each in turn,
 * alone and from there on.
 */
static void
fa_sweep(const fa_scenario_t *s)
{
    uint64_t t0 = zn_now_ms();
    long k, k2, n, runs = 0, refused = atomic_load(&fa.refused);
    long silent = atomic_load(&fa.silent), errors = atomic_load(&fa.errors);
    int mode;

    if (!fa_selected(s->name, FA_COUNT, 0))
        return;
    signal(SIGALRM, fa_on_alarm);
    atomic_store(&fa.live, 0); /* what a failed sweep left is reported */
    fa_ctx.scenario = s->name;
    fa_ctx.k = 0;
    k = fa_once(s, FA_COUNT, 0);
    k2 = fa_once(s, FA_COUNT, 0);
    fa_ctx.k = k = k2 > k ? k2 : k;
    for (mode = FA_ONE; mode <= FA_FROM; mode++)
        for (n = 1; n <= k; n++)
            if (fa_selected(s->name, mode, n)) {
                (void)fa_once(s, mode, n);
                runs++;
            }
    print_message("alloc-fail: %-11s %3ld sites, %4ld runs, %6ld refused, "
                  "%3ld silent, %4ld ERROR logs, %5.1f s\n",
                  s->name, k, runs, atomic_load(&fa.refused) - refused,
                  atomic_load(&fa.silent) - silent,
                  atomic_load(&fa.errors) - errors,
                  (double)(zn_now_ms() - t0) / 1000.0);
}


/* Installs the hook: before any other znet call, as common.h requires. */
static void
fa_install(void)
{
    assert_int_equal(zn_set_allocator(fa_malloc, fa_realloc, fa_calloc,
                                      fa_free), 0);
    zn_log_set_handler(fa_log, NULL);
}

/* ---- blocking loopback clients ----------------------------------------- */


/* A client socket with 3 s time-outs (a wait that long is a hang; 200 ms
 * where silence is allowed) and, if `rcvbuf` is not 0, that receive
 * buffer (set before connecting, so that the window never shrinks). */
static int
cli_connect_buf(uint16_t port, int rcvbuf)
{
    struct sockaddr_in a = {.sin_family = AF_INET};
    struct timeval tv = {3, 0}, brief = {0, 200000};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (rcvbuf > 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
    if (fa_ctx.lenient)
        tv = brief;
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    return fd;
}


static int
cli_connect(uint16_t port)
{
    return cli_connect_buf(port, 0);
}


/* Writes all; returns 0, or -1 if the peer closed the connection. A
 * time-out is noted as a hang. */
static int
cli_write(int fd, const void *p, size_t n)
{
    const char *s = p;
    ssize_t w;

    while (n > 0) {
        w = send(fd, s, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno == EAGAIN)
            FA_NOTE_WAIT("the server took no bytes for 3 s");
        if (w < 0)
            return -1;
        s += w;
        n -= (size_t)w;
    }
    return 0;
}


/* Reads up to n bytes, stopping early only when the peer closes; returns
 * the count. A time-out (the server neither answered nor closed) is noted
 * as a hang. */
static size_t
cli_read(int fd, void *p, size_t n)
{
    char *s = p;
    size_t got = 0;
    ssize_t r;

    while (got < n) {
        r = recv(fd, s + got, n - got, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && errno == EAGAIN)
            FA_NOTE_WAIT("the server neither answered nor closed in 3 s");
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    return got;
}

/* A listening socket of the test's own (no znet) on 127.0.0.1. */
static int
listen_any(uint16_t *port)
{
    struct sockaddr_in a = {.sin_family = AF_INET};
    socklen_t len = sizeof(a);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);

    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(fd, 16), 0);
    getsockname(fd, (struct sockaddr *)&a, &len);
    *port = ntohs(a.sin_port);
    return fd;
}

/* ---- a server on a loop thread, tolerant of ENOMEM -------------------- */

typedef struct {
    zn_loop_t *loop;
    zn_server_t *srv;
    tu_loop_thread_t lt;
    bool running;
    zn_server_stats_t st; /* read at teardown */
} srv_fx_t;


static void srv_fx_stop(srv_fx_t *fx);


/* Starts a server with `so` on 127.0.0.1. Returns 0, or the (expected)
 * error; then everything is undone already. */
static int
srv_fx_start(srv_fx_t *fx, zn_server_opts_t *so)
{
    int rc;

    memset(fx, 0, sizeof(*fx));
    so->host = "127.0.0.1";
    if ((rc = zn_loop_new(&fx->loop)) != 0) {
        FA_NOTE_RC(rc == ZN_ENOMEM, rc);
        return rc;
    }
    rc = zn_server_new(fx->loop, so, &fx->srv);
    FA_NOTE_RC(rc == 0 || rc == ZN_ENOMEM, rc);
    if (rc == 0) {
        rc = zn_server_start(fx->srv);
        FA_NOTE_RC(rc == 0 || rc == ZN_ENOMEM, rc);
    }
    if (rc != 0) {
        srv_fx_stop(fx);
        return rc;
    }
    tu_loop_thread_start(&fx->lt, fx->loop);
    fx->running = true;
    return 0;
}


/* Memory comes back; stops the loop, then the server (draining 200 ms). */
static void
srv_fx_stop(srv_fx_t *fx)
{
    fa_teardown();
    if (fx->running)
        tu_loop_thread_join(&fx->lt);
    if (fx->srv != NULL) {
        zn_server_stop(fx->srv, 200);
        zn_server_stats(fx->srv, &fx->st);
        FA_NOTE_RC(fx->st.conns_live == 0, fx->st.conns_live);
        zn_server_free(fx->srv);
    }
    zn_loop_free(fx->loop);
}

#ifndef FA_HARNESS_ONLY

/* ---- scenario: the loop (tasks, timers, io) ---------------------------- */

typedef struct {
    zn_loop_t *loop;
    _Atomic int posted, ran;
    zn_timer_t once, rep;
    int once_fired, rep_fired;
    zn_io_t io;
    int io_fired;
} loop_fx_t;


static void
loop_task(void *ud)
{
    atomic_fetch_add(&((loop_fx_t *)ud)->ran, 1);
}


static void
loop_post_some(loop_fx_t *fx, int n)
{
    int i, rc;

    for (i = 0; i < n; i++) {
        rc = zn_loop_post(fx->loop, loop_task, fx);
        FA_NOTE_RC(rc == 0 || rc == ZN_ENOMEM, rc);
        if (rc == 0)
            atomic_fetch_add(&fx->posted, 1);
    }
}


static void *
loop_poster(void *arg)
{
    loop_post_some(arg, 100);
    return NULL;
}


static void
loop_on_once(zn_timer_t *t, void *ud)
{
    (void)t;
    ((loop_fx_t *)ud)->once_fired++;
}


static void
loop_on_rep(zn_timer_t *t, void *ud)
{
    loop_fx_t *fx = ud;

    if (++fx->rep_fired == 3)
        zn_timer_stop(t);
}


static void
loop_on_io(zn_io_t *io, unsigned events, void *ud)
{
    uint64_t v;

    (void)events;
    (void)!read(io->fd, &v, sizeof(v));
    ((loop_fx_t *)ud)->io_fired++;
}


static bool
loop_done(loop_fx_t *fx)
{
    return atomic_load(&fx->ran) == atomic_load(&fx->posted) &&
           fx->once_fired == 1 && fx->rep_fired == 3 &&
           (!zn_io_active(&fx->io) || fx->io_fired > 0);
}


/*
 * Tasks from the loop's thread and from another, two timers, and an io
 * watcher on a descriptor numbered past the loop's first fd table (so the
 * table must grow). A post that returned 0 runs exactly once; one that
 * failed never runs.
 */
static void
sc_loop(const void *arg)
{
    loop_fx_t fx;
    pthread_t th;
    uint64_t end;
    int rc, efd;

    (void)arg;
    memset(&fx, 0, sizeof(fx));
    if ((rc = zn_loop_new(&fx.loop)) != 0) {
        FA_NOTE_RC(rc == ZN_ENOMEM, rc);
        return;
    }
    loop_post_some(&fx, 100);
    assert_int_equal(pthread_create(&th, NULL, loop_poster, &fx), 0);
    pthread_join(th, NULL);
    zn_timer_init(fx.loop, &fx.once, loop_on_once, &fx);
    zn_timer_init(fx.loop, &fx.rep, loop_on_rep, &fx);
    zn_timer_start(&fx.once, 0, 0);
    zn_timer_start(&fx.rep, 1, 1);
    rc = eventfd(1, EFD_NONBLOCK | EFD_CLOEXEC);
    efd = fcntl(rc, F_DUPFD_CLOEXEC, 300);
    close(rc);
    zn_io_init(fx.loop, &fx.io, efd, loop_on_io, &fx);
    rc = zn_io_start(&fx.io, ZN_EV_READABLE);
    FA_NOTE_RC(rc == 0 || rc == ZN_ENOMEM, rc);
    for (end = zn_now_ms() + 2000; !loop_done(&fx) && zn_now_ms() < end;)
        zn_loop_run_once(fx.loop, 5);
    FA_NOTE(loop_done(&fx));
    fa_teardown();
    zn_io_stop(&fx.io);
    close(efd);
    zn_timer_stop(&fx.rep);
    zn_loop_free(fx.loop);
    FA_NOTE(atomic_load(&fx.ran) == atomic_load(&fx.posted));
}

/* ---- scenario: a server echoing over loopback -------------------------- */

static _Atomic int echo_aborts;


/* An echo that cannot queue its reply breaks the stream: it aborts. */
static void
echo_on_data(zn_conn_t *c, zn_buf_t *in, void *ud)
{
    int rc = zn_conn_send(c, zn_buf_peek(in), zn_buf_len(in));

    (void)ud;
    FA_NOTE_RC(rc == 0 || rc == ZN_ENOMEM, rc);
    if (rc != 0) {
        atomic_fetch_add(&echo_aborts, 1);
        zn_conn_abort(c);
    }
    zn_buf_consume(in, zn_buf_len(in));
}


/* Sends n bytes and reads the echo; every byte that comes back must be
 * right. Returns true if all came back, false if the server closed. */
static bool
echo_exchange(int fd, size_t n, uint32_t seed)
{
    static char out[80000], in[80000];
    size_t got;

    tu_pattern(out, n, seed, 0);
    if (cli_write(fd, out, n) != 0)
        return false;
    got = cli_read(fd, in, n);
    FA_NOTE(tu_pattern_check(in, got, seed, 0));
    return got == n;
}


/*
 * Three clients at once, each echoing a small message, one larger than
 * the loop's 64 KiB read area and one of 3 KB. A client may find its
 * connection closed (the server ran out of memory for it) but never a
 * wrong byte, and never waits for nothing.
 */
static void
sc_echo(const void *arg)
{
    static const size_t sizes[] = {100, 70000, 3000};
    zn_server_opts_t so;
    srv_fx_t fx;
    int fd[3], i, j;

    zn_server_opts_default(&so);
    so.io_threads = *(const unsigned *)arg;
    so.handler.on_data = echo_on_data;
    if (srv_fx_start(&fx, &so) != 0)
        return;
    for (i = 0; i < 3; i++)
        fd[i] = cli_connect(zn_server_port(fx.srv));
    for (i = 0; i < 3; i++)
        for (j = 0; j < 3; j++)
            if (!echo_exchange(fd[i], sizes[j], (uint32_t)(i * 3 + j)))
                break;
    for (i = 0; i < 3; i++)
        close(fd[i]);
    srv_fx_stop(&fx);
}

/* ---- scenario: a client connecting and reconnecting -------------------- */

typedef struct {
    zn_loop_t *loop;
    zn_client_t *good, *bad;
    int lfd, acc[4], nacc;
    int connects, closes;
    int good_gave_up, bad_gave_up;
} cl_fx_t;


static void
cl_on_connect(zn_conn_t *c, void *ud)
{
    int rc = zn_conn_send(c, "hello", 5);

    FA_NOTE_RC(rc == 0 || rc == ZN_ENOMEM, rc);
    ((cl_fx_t *)ud)->connects++;
}


static void
cl_on_close(zn_conn_t *c, zn_close_reason_t reason, void *ud)
{
    (void)c;
    (void)reason;
    ((cl_fx_t *)ud)->closes++;
}


static void
cl_on_give_up(zn_client_t *cl, int status, void *ud)
{
    cl_fx_t *fx = ud;

    FA_NOTE_RC(status == ZN_ECONNREFUSED || status == ZN_ENOMEM, status);
    if (cl == fx->good)
        fx->good_gave_up++;
    else
        fx->bad_gave_up++;
}


static bool
cl_done(const cl_fx_t *fx)
{
    return (fx->good == NULL || fx->nacc >= 2 || fx->good_gave_up) &&
           (fx->bad == NULL || fx->bad_gave_up);
}


/* A client with quick retries to `port`, or NULL if it cannot be had. */
static zn_client_t *
cl_new(cl_fx_t *fx, uint16_t port, unsigned retries)
{
    zn_client_opts_t o;
    zn_client_t *cl = NULL;
    int rc;

    zn_client_opts_default(&o);
    o.host = "127.0.0.1";
    o.port = port;
    o.reconnect = true;
    o.backoff_min_ms = 1;
    o.backoff_max_ms = 4;
    o.max_retries = retries;
    o.handler.on_connect = cl_on_connect;
    o.handler.on_close = cl_on_close;
    o.handler.ud = fx;
    o.on_give_up = cl_on_give_up;
    rc = zn_client_new(fx->loop, &o, &cl);
    FA_NOTE_RC(rc == 0 || rc == ZN_ENOMEM, rc);
    if (rc == 0)
        FA_NOTE(zn_client_start(cl) == 0);
    return rc == 0 ? cl : NULL;
}


/* Accepts what is pending; the first peer is hung up on at once, so that
 * the client has to reconnect. */
static void
cl_accept(cl_fx_t *fx)
{
    int fd;

    while (fx->nacc < 4 && (fd = accept4(fx->lfd, NULL, NULL,
                                         SOCK_CLOEXEC)) >= 0) {
        if (fx->nacc == 0) {
            close(fd);
            fd = -1;
        }
        fx->acc[fx->nacc++] = fd;
    }
}


/*
 * A client that connects, is hung up on and reconnects, and one that is
 * refused until it gives up. Every connection opened is closed (once),
 * and a client gives up at most once.
 */
static void
sc_client(const void *arg)
{
    cl_fx_t fx;
    uint16_t port, dead;
    uint64_t end;
    int i, rc;

    (void)arg;
    memset(&fx, 0, sizeof(fx));
    if ((rc = zn_loop_new(&fx.loop)) != 0) {
        FA_NOTE_RC(rc == ZN_ENOMEM, rc);
        return;
    }
    fx.lfd = listen_any(&port);
    close(listen_any(&dead));
    fx.good = cl_new(&fx, port, 3);
    fx.bad = cl_new(&fx, dead, 2);
    for (end = zn_now_ms() + 2000; !cl_done(&fx) && zn_now_ms() < end;) {
        zn_loop_run_once(fx.loop, 2);
        cl_accept(&fx);
    }
    FA_NOTE(cl_done(&fx));
    fa_teardown();
    zn_client_free(fx.good);
    zn_client_free(fx.bad);
    for (end = zn_now_ms() + 1000; fx.closes < fx.connects &&
                                   zn_now_ms() < end;)
        zn_loop_run_once(fx.loop, 2);
    zn_loop_free(fx.loop);
    for (i = 0; i < fx.nacc; i++)
        if (fx.acc[i] >= 0)
            close(fx.acc[i]);
    close(fx.lfd);
    FA_NOTE_RC(fx.closes == fx.connects, fx.connects - fx.closes);
    FA_NOTE(fx.good_gave_up <= 1 && fx.bad_gave_up <= 1);
}

/* ---- scenario: sends from other threads -------------------------------- */

#define XS_THREADS 3
#define XS_RECORDS 60
#define XS_MAX 6000 /* largest record payload */

typedef struct {
    uint16_t thread, seq;
    uint32_t len; /* payload bytes after this header */
} xs_hdr_t;

typedef struct {
    srv_fx_t srv;
    _Atomic(zn_conn_t *) conn; /* a reference */
    _Atomic long expected;     /* bytes of the sends that returned 0 */
    bool ok[XS_THREADS][XS_RECORDS];
} xs_fx_t;

typedef struct {
    xs_fx_t *fx;
    unsigned id;
} xs_sender_t;


/* Keeps the first connection (with a reference) for the senders. */
static void
xs_on_connect(zn_conn_t *c, void *ud)
{
    xs_fx_t *fx = ud;
    zn_conn_t *none = NULL;

    /* Socket buffers smaller than the records sent (about 500 KB) make
     * the server queue part of them, and queueing is what allocates. Not
     * much smaller: near a loopback segment (64 KiB), TCP trickles on its
     * persist timer and delayed acknowledgements, and runs crawl. */
    setsockopt(zn_conn_fd(c), SOL_SOCKET, SO_SNDBUF, &(int){262144},
               sizeof(int));
    zn_conn_ref(c);
    if (!atomic_compare_exchange_strong(&fx->conn, &none, c))
        zn_conn_unref(c);
}


/* Sends numbered records of its own pattern and remembers which sends
 * returned 0: those must arrive (or the connection close). */
static void *
xs_sender(void *arg)
{
    xs_sender_t *s = arg;
    zn_conn_t *c = atomic_load(&s->fx->conn);
    char rec[sizeof(xs_hdr_t) + XS_MAX];
    xs_hdr_t h;
    unsigned i;
    size_t n;
    int rc;

    for (i = 0; i < XS_RECORDS; i++) {
        h.thread = (uint16_t)s->id;
        h.seq = (uint16_t)i;
        h.len = (uint32_t)(16 + (i * 337 + s->id * 101) % (XS_MAX - 16));
        memcpy(rec, &h, sizeof(h));
        tu_pattern(rec + sizeof(h), h.len, s->id << 16 | i, 0);
        n = sizeof(h) + h.len;
        rc = zn_conn_send(c, rec, n);
        FA_NOTE_RC(rc == 0 || rc == ZN_ENOMEM || rc == ZN_ENOTCONN, rc);
        s->fx->ok[s->id][i] = rc == 0;
        if (rc == 0)
            atomic_fetch_add(&s->fx->expected, (long)n);
    }
    return NULL;
}


/*
 * Reads the records. Each thread's records arrive whole, in order, and
 * only those whose send returned 0; unless the connection was closed, all
 * of those arrive. Returns the bytes read.
 */
static long
xs_read(xs_fx_t *fx, int fd)
{
    static char payload[XS_MAX];
    int next[XS_THREADS] = {0};
    long got = 0;
    xs_hdr_t h;
    int i;

    while (got < atomic_load(&fx->expected)) {
        if (cli_read(fd, &h, sizeof(h)) != sizeof(h))
            break;
        FA_NOTE_RC(h.thread < XS_THREADS && h.len <= XS_MAX, h.len);
        if (h.thread >= XS_THREADS || h.len > XS_MAX ||
            cli_read(fd, payload, h.len) != h.len)
            break;
        FA_NOTE(tu_pattern_check(payload, h.len, h.thread << 16 | h.seq, 0));
        for (i = next[h.thread]; i < h.seq; i++)
            FA_NOTE_WHY(!fx->ok[h.thread][i],
                        "a send that returned 0 never arrived (record)", i);
        FA_NOTE_RC(h.seq >= next[h.thread] && fx->ok[h.thread][h.seq], h.seq);
        next[h.thread] = h.seq + 1;
        got += (long)(sizeof(h) + h.len);
    }
    return got;
}


static void
xs_send_all(xs_fx_t *fx)
{
    xs_sender_t s[XS_THREADS];
    pthread_t th[XS_THREADS];
    unsigned i;

    for (i = 0; i < XS_THREADS; i++) {
        s[i].fx = fx;
        s[i].id = i;
        assert_int_equal(pthread_create(&th[i], NULL, xs_sender, &s[i]), 0);
    }
    for (i = 0; i < XS_THREADS; i++)
        pthread_join(th[i], NULL);
}


/* Waits until the server holds the connection, or has dropped it. */
static zn_conn_t *
xs_wait_conn(xs_fx_t *fx, int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    uint64_t end = zn_now_ms() + 2000;

    while (atomic_load(&fx->conn) == NULL && zn_now_ms() < end)
        if (poll(&p, 1, 1) == 1)
            return NULL; /* closed: the server could not open it */
    FA_NOTE(atomic_load(&fx->conn) != NULL);
    return atomic_load(&fx->conn);
}


/*
 * Three threads send records on one connection of an IO loop, then the
 * test closes it from its own thread: a send that returned 0 is written,
 * in order, or the connection is closed.
 */
static void
sc_xsend(const void *arg)
{
    static xs_fx_t fx;
    zn_server_opts_t so;
    zn_conn_t *c;
    long got;
    int fd;

    (void)arg;
    zn_server_opts_default(&so);
    so.io_threads = 1;
    so.handler.on_connect = xs_on_connect;
    so.handler.ud = &fx;
    memset(&fx, 0, sizeof(fx));
    if (srv_fx_start(&fx.srv, &so) != 0)
        return;
    fd = cli_connect_buf(zn_server_port(fx.srv.srv), 131072);
    if ((c = xs_wait_conn(&fx, fd)) != NULL) {
        xs_send_all(&fx);
        got = xs_read(&fx, fd);
        FA_NOTE_RC(got == atomic_load(&fx.expected) || !zn_conn_is_open(c),
                   atomic_load(&fx.expected) - got);
        zn_conn_close(c);
    }
    close(fd);
    srv_fx_stop(&fx.srv);
    if ((c = atomic_load(&fx.conn)) != NULL)
        zn_conn_unref(c);
}

/* ---- the sweeps -------------------------------------------------------- */

static const unsigned zero = 0, two = 2;


static void
test_loop_tasks_timers_io(void **state)
{
    fa_scenario_t s = {"loop", sc_loop, NULL, 20, false};

    (void)state;
    fa_sweep(&s);
}


static void
test_server_echo_single_loop(void **state)
{
    fa_scenario_t s = {"echo", sc_echo, &zero, 20, false};

    (void)state;
    fa_sweep(&s);
}


static void
test_server_echo_two_io_loops(void **state)
{
    fa_scenario_t s = {"echo-io2", sc_echo, &two, 20, false};

    (void)state;
    fa_sweep(&s);
}


static void
test_client_connect_reconnect_give_up(void **state)
{
    fa_scenario_t s = {"client", sc_client, NULL, 20, false};

    (void)state;
    fa_sweep(&s);
}


static void
test_sends_from_other_threads(void **state)
{
    fa_scenario_t s = {"xsend", sc_xsend, NULL, 20, false};

    (void)state;
    fa_sweep(&s);
}


int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_loop_tasks_timers_io),
        cmocka_unit_test(test_server_echo_single_loop),
        cmocka_unit_test(test_server_echo_two_io_loops),
        cmocka_unit_test(test_client_connect_reconnect_give_up),
        cmocka_unit_test(test_sends_from_other_threads),
    };

    fa_install();
    return cmocka_run_group_tests(tests, NULL, NULL);
}

#endif /* FA_HARNESS_ONLY */
