/*
 * test_conn.c: a connection's lifetime, sends from any thread, closing,
 * half-close, flow control and limits, over real loopback sockets.
 */
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "testutil.h"

typedef struct {
    _Atomic int closes;
    _Atomic(zn_conn_t *) conn;   /* a reference taken in on_connect */
    _Atomic int close_reason;
    _Atomic int high_water;
    _Atomic int nested_close;    /* on_close ran inside another callback */
    _Atomic long data_bytes;
    int in_data;
    size_t push;                 /* bytes to push on connect */
    bool close_after_push;
    bool abort_after_push;
    bool echo;
    bool close_in_data;
    bool never_consume;
} conn_fx_t;


static void
fx_on_connect(zn_conn_t *c, void *ud)
{
    conn_fx_t *fx = ud;
    size_t off = 0, n;
    char *p;

    zn_conn_ref(c);
    atomic_store(&fx->conn, c);
    if (fx->push == 0)
        return;
    p = malloc(65536);
    for (off = 0; off < fx->push; off += n) {
        n = fx->push - off < 65536 ? fx->push - off : 65536;
        tu_pattern(p, n, 7, off);
        assert_int_equal(zn_conn_send(c, p, n), 0);
    }
    free(p);
    if (fx->close_after_push)
        zn_conn_close(c);
    if (fx->abort_after_push)
        zn_conn_abort(c);
}


static void
fx_on_data(zn_conn_t *c, zn_buf_t *in, void *ud)
{
    conn_fx_t *fx = ud;

    fx->in_data = 1;
    atomic_fetch_add(&fx->data_bytes, (long)zn_buf_len(in));
    if (fx->echo)
        assert_int_equal(zn_conn_send(c, zn_buf_peek(in), zn_buf_len(in)), 0);
    if (!fx->never_consume)
        zn_buf_consume(in, zn_buf_len(in));
    if (fx->close_in_data) {
        zn_conn_close(c);
        zn_conn_close(c); /* idempotent */
    }
    fx->in_data = 0;
}


static void
fx_on_high_water(zn_conn_t *c, size_t queued, void *ud)
{
    (void)c;
    assert_true(queued > 0);
    atomic_fetch_add(&((conn_fx_t *)ud)->high_water, 1);
}


static void
fx_on_close(zn_conn_t *c, zn_close_reason_t reason, void *ud)
{
    conn_fx_t *fx = ud;

    (void)c;
    if (fx->in_data)
        atomic_store(&fx->nested_close, 1);
    atomic_store(&fx->close_reason, (int)reason);
    atomic_fetch_add(&fx->closes, 1);
}


static void
fx_opts(zn_server_opts_t *o, conn_fx_t *fx)
{
    zn_server_opts_default(o);
    o->handler.on_connect = fx_on_connect;
    o->handler.on_data = fx_on_data;
    o->handler.on_high_water = fx_on_high_water;
    o->handler.on_close = fx_on_close;
    o->handler.ud = fx;
}


static int
fx_has_conn(void *ud)
{
    return atomic_load(&((conn_fx_t *)ud)->conn) != NULL;
}


static int
fx_closed(void *ud)
{
    return atomic_load(&((conn_fx_t *)ud)->closes) > 0;
}


static zn_conn_t *
fx_wait_conn(conn_fx_t *fx)
{
    assert_true(tu_wait_until(fx_has_conn, fx, 5000));
    return atomic_load(&fx->conn);
}

/* ---- sends from other threads ---------------------------------------- */

typedef struct {
    zn_conn_t *c;
    int id;
    int n;
    _Atomic int *enotconn;
} sender_t;


/* Sends n numbered messages (n < 0: until the connection closes). A full
 * pipe to the loop (ZN_ENOBUFS) means: wait a little and retry. */
static void *
sender_main(void *arg)
{
    sender_t *s = arg;
    uint64_t deadline = zn_now_ms() + 20000;
    uint32_t msg[2];
    int i, rc;

    for (i = 0; s->n < 0 || i < s->n;) {
        msg[0] = (uint32_t)s->id;
        msg[1] = (uint32_t)i;
        rc = zn_conn_send(s->c, msg, sizeof(msg));
        if (rc == ZN_ENOTCONN) {
            atomic_fetch_add(s->enotconn, 1);
            return NULL;
        }
        assert_true(zn_now_ms() < deadline);
        if (rc == ZN_ENOBUFS) {
            usleep(100);
            continue;
        }
        assert_int_equal(rc, 0);
        i++;
    }
    return NULL;
}


static void
test_send_from_another_thread_arrives_in_order(void **state)
{
    enum { N = 20000 };
    conn_fx_t fx = {0};
    zn_server_opts_t o;
    tu_server_t ts;
    sender_t s;
    pthread_t th;
    _Atomic int enc = 0;
    uint32_t msg[2];
    int fd, i;

    (void)state;
    fx_opts(&o, &fx);
    tu_server_start(&ts, &o);
    fd = tu_connect(ts.port);
    s = (sender_t){fx_wait_conn(&fx), 3, N, &enc};
    pthread_create(&th, NULL, sender_main, &s);
    for (i = 0; i < N; i++) {
        assert_int_equal(tu_read_exact(fd, msg, sizeof(msg)), 0);
        assert_int_equal(msg[0], 3);
        assert_int_equal(msg[1], (uint32_t)i);
    }
    pthread_join(th, NULL);
    assert_int_equal(atomic_load(&enc), 0);
    close(fd);
    assert_true(tu_wait_until(fx_closed, &fx, 5000));
    assert_int_equal(atomic_load(&fx.close_reason), ZN_CLOSE_PEER);
    zn_conn_unref(s.c);
    tu_server_stop(&ts);
}


static void
test_close_from_another_thread_while_sends_in_flight(void **state)
{
    conn_fx_t fx = {0};
    zn_server_opts_t o;
    tu_server_t ts;
    sender_t s[4];
    pthread_t th[4];
    _Atomic int enc = 0;
    zn_conn_t *c;
    long got;
    int fd, i, err;

    (void)state;
    fx_opts(&o, &fx);
    tu_server_start(&ts, &o);
    fd = tu_connect(ts.port);
    c = fx_wait_conn(&fx);
    for (i = 0; i < 4; i++) {
        s[i] = (sender_t){c, i, -1, &enc};
        pthread_create(&th[i], NULL, sender_main, &s[i]);
    }
    usleep(20000);
    zn_conn_close(c); /* from this thread, while four others send */
    for (i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    assert_int_equal(atomic_load(&enc), 4); /* each saw the close */
    got = tu_read_to_eof(fd, 1L << 30, &err);
    assert_true(got >= 0);
    assert_true(got % 8 == 0);
    assert_true(tu_wait_until(fx_closed, &fx, 5000));
    assert_int_equal(atomic_load(&fx.closes), 1);
    /* Our close, or the hard bound if the senders filled it first. */
    assert_true(atomic_load(&fx.close_reason) == ZN_CLOSE_LOCAL ||
                atomic_load(&fx.close_reason) == ZN_CLOSE_OUTPUT_CAP);
    assert_int_equal(zn_conn_send(c, "x", 1), ZN_ENOTCONN);
    zn_conn_unref(c);
    close(fd);
    tu_server_stop(&ts);
}


typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int release;
} blocker_t;


static void
block_loop_task(void *ud)
{
    blocker_t *b = ud;

    pthread_mutex_lock(&b->mu);
    while (!b->release)
        pthread_cond_wait(&b->cv, &b->mu);
    pthread_mutex_unlock(&b->mu);
}


static void
test_sends_from_thread_are_bounded_while_loop_is_busy(void **state)
{
    static char chunk[64 << 10];
    blocker_t b = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0};
    conn_fx_t fx = {0};
    zn_server_opts_t o;
    tu_server_t ts;
    zn_conn_t *c;
    size_t sent = 0;
    int fd, rc;

    (void)state;
    fx_opts(&o, &fx);
    o.limits.out_hard = 1 << 20;
    tu_server_start(&ts, &o);
    fd = tu_connect(ts.port);
    c = fx_wait_conn(&fx);
    assert_int_equal(zn_loop_post(ts.loop, block_loop_task, &b), 0);
    while ((rc = zn_conn_send(c, chunk, sizeof(chunk))) == 0)
        sent += sizeof(chunk);
    /* The loop is stuck, so nothing was queued: the posted bytes hit the
     * bound, and the connection is still open. */
    assert_int_equal(rc, ZN_ENOBUFS);
    assert_int_equal(sent, 1 << 20);
    assert_true(zn_conn_is_open(c));
    pthread_mutex_lock(&b.mu);
    b.release = 1;
    pthread_cond_signal(&b.cv);
    pthread_mutex_unlock(&b.mu);
    close(fd);
    assert_true(tu_wait_until(fx_closed, &fx, 5000));
    zn_conn_unref(c);
    tu_server_stop(&ts);
}


static void
test_reference_held_after_close(void **state)
{
    conn_fx_t fx = {0};
    zn_server_opts_t o;
    tu_server_t ts;
    zn_conn_t *c;
    uint64_t id;
    int fd;

    (void)state;
    fx_opts(&o, &fx);
    tu_server_start(&ts, &o);
    fd = tu_connect(ts.port);
    c = fx_wait_conn(&fx);
    id = zn_conn_id(c);
    assert_true(zn_conn_is_open(c));
    close(fd);
    assert_true(tu_wait_until(fx_closed, &fx, 5000));
    /* The memory is still ours; every operation fails cleanly. */
    assert_false(zn_conn_is_open(c));
    assert_int_equal(zn_conn_send(c, "late", 4), ZN_ENOTCONN);
    zn_conn_close(c);
    zn_conn_abort(c);
    assert_int_equal(zn_conn_id(c), id);
    assert_null(zn_server_find(ts.srv, id));
    zn_conn_unref(c); /* the last reference: ASan checks it is freed */
    tu_server_stop(&ts);
}

/* ---- closing --------------------------------------------------------- */


static void
test_graceful_close_flushes_queued_output(void **state)
{
    enum { SIZE = 8 << 20 };
    conn_fx_t fx = {.push = SIZE, .close_after_push = true};
    zn_server_opts_t o;
    tu_server_t ts;
    char *buf = malloc(SIZE + 1);
    int fd, err;

    (void)state;
    fx_opts(&o, &fx);
    o.limits.out_hard = 0;
    tu_server_start(&ts, &o);
    fd = tu_connect(ts.port);
    usleep(50000); /* let the queue build up before reading */
    assert_int_equal(tu_read_exact(fd, buf, SIZE), 0);
    assert_true(tu_pattern_check(buf, SIZE, 7, 0));
    assert_int_equal(tu_read_to_eof(fd, 1, &err), 0); /* then EOF */
    assert_int_equal(err, 0);
    assert_true(tu_wait_until(fx_closed, &fx, 5000));
    assert_int_equal(atomic_load(&fx.close_reason), ZN_CLOSE_LOCAL);
    zn_conn_unref(atomic_load(&fx.conn));
    close(fd);
    free(buf);
    tu_server_stop(&ts);
}


static void
test_abortive_close_drops_output_and_resets(void **state)
{
    conn_fx_t fx = {.push = 4 << 20, .abort_after_push = true};
    zn_server_opts_t o;
    tu_server_t ts;
    long got;
    int fd, err;

    (void)state;
    fx_opts(&o, &fx);
    o.limits.out_hard = 0;
    tu_server_start(&ts, &o);
    fd = tu_connect(ts.port);
    assert_true(tu_wait_until(fx_closed, &fx, 5000));
    got = tu_read_to_eof(fd, 1L << 30, &err);
    assert_true(got < (4 << 20));
    assert_int_equal(err, -ECONNRESET);
    zn_conn_unref(atomic_load(&fx.conn));
    close(fd);
    tu_server_stop(&ts);
}


static void
test_peer_half_close_gets_replies_then_close(void **state)
{
    enum { SIZE = 300000 };
    conn_fx_t fx = {.echo = true};
    zn_server_opts_t o;
    tu_server_t ts;
    char *out = malloc(SIZE), *in = malloc(SIZE);
    int fd, err;

    (void)state;
    fx_opts(&o, &fx);
    tu_server_start(&ts, &o);
    fd = tu_connect(ts.port);
    tu_pattern(out, SIZE, 11, 0);
    tu_write_all(fd, out, SIZE);
    assert_int_equal(shutdown(fd, SHUT_WR), 0);
    assert_int_equal(tu_read_exact(fd, in, SIZE), 0);
    assert_memory_equal(in, out, SIZE);
    assert_int_equal(tu_read_to_eof(fd, 1, &err), 0);
    assert_true(tu_wait_until(fx_closed, &fx, 5000));
    assert_int_equal(atomic_load(&fx.close_reason), ZN_CLOSE_PEER);
    zn_conn_unref(atomic_load(&fx.conn));
    close(fd);
    free(out);
    free(in);
    tu_server_stop(&ts);
}


static void
test_close_inside_on_data_runs_on_close_once_later(void **state)
{
    conn_fx_t fx = {.close_in_data = true};
    zn_server_opts_t o;
    tu_server_t ts;
    int fd, err;

    (void)state;
    fx_opts(&o, &fx);
    tu_server_start(&ts, &o);
    fd = tu_connect(ts.port);
    tu_write_all(fd, "bye", 3);
    assert_int_equal(tu_read_to_eof(fd, 1, &err), 0);
    assert_true(tu_wait_until(fx_closed, &fx, 5000));
    usleep(10000);
    assert_int_equal(atomic_load(&fx.closes), 1);
    assert_int_equal(atomic_load(&fx.nested_close), 0);
    zn_conn_unref(atomic_load(&fx.conn));
    close(fd);
    tu_server_stop(&ts);
}

/* ---- flow control and limits ----------------------------------------- */


static int
fx_high_water(void *ud)
{
    return atomic_load(&((conn_fx_t *)ud)->high_water) > 0;
}


static int
fx_got_data(void *ud)
{
    return atomic_load(&((conn_fx_t *)ud)->data_bytes) > 0;
}


static void
test_high_water_pauses_reading_until_low_mark(void **state)
{
    enum { PUSH = 8 << 20 };
    conn_fx_t fx = {.push = PUSH};
    zn_server_opts_t o;
    tu_server_t ts;
    char *buf = malloc(PUSH);
    int fd;

    (void)state;
    fx_opts(&o, &fx);
    o.limits.out_high = 1 << 20;
    o.limits.out_low = 256 << 10;
    o.limits.out_hard = 0;
    tu_server_start(&ts, &o);
    fd = tu_connect(ts.port);
    assert_true(tu_wait_until(fx_high_water, &fx, 5000));
    tu_write_all(fd, "ping", 4);
    usleep(100000);
    /* Reading is paused: the bytes wait in the kernel. */
    assert_int_equal(atomic_load(&fx.data_bytes), 0);
    assert_int_equal(tu_server_stats(&ts).high_water_events, 1);
    assert_int_equal(tu_read_exact(fd, buf, PUSH), 0);
    assert_true(tu_pattern_check(buf, PUSH, 7, 0));
    /* Drained below the low mark: reading resumed. */
    assert_true(tu_wait_until(fx_got_data, &fx, 5000));
    assert_int_equal(atomic_load(&fx.data_bytes), 4);
    zn_conn_unref(atomic_load(&fx.conn));
    close(fd);
    free(buf);
    tu_server_stop(&ts);
}


typedef struct {
    zn_conn_t *c;
    int rc;
} push_ctx_t;


/* On the loop: pushes until the hard bound closes the connection. */
static void
push_until_closed(void *ud)
{
    push_ctx_t *p = ud;
    static char chunk[65536];
    int i;

    for (i = 0; i < 4096; i++)
        if ((p->rc = zn_conn_send(p->c, chunk, sizeof(chunk))) != 0)
            return;
}


static void
test_output_hard_cap_closes_and_counts(void **state)
{
    conn_fx_t fx = {0};
    zn_server_opts_t o;
    tu_server_t ts;
    push_ctx_t p;
    int fd;

    (void)state;
    fx_opts(&o, &fx);
    o.limits.out_high = 1 << 20;
    o.limits.out_low = 256 << 10;
    o.limits.out_hard = 4 << 20;
    tu_server_start(&ts, &o);
    fd = tu_connect(ts.port);
    p.c = fx_wait_conn(&fx);
    tu_run_on(ts.loop, push_until_closed, &p);
    assert_int_equal(p.rc, ZN_ENOBUFS);
    assert_true(tu_wait_until(fx_closed, &fx, 5000));
    assert_int_equal(atomic_load(&fx.close_reason), ZN_CLOSE_OUTPUT_CAP);
    assert_int_equal(tu_server_stats(&ts).closes[ZN_CLOSE_OUTPUT_CAP], 1);
    zn_conn_unref(p.c);
    close(fd);
    tu_server_stop(&ts);
}


static void
test_unconsumed_input_over_cap_closes(void **state)
{
    conn_fx_t fx = {.never_consume = true};
    zn_server_opts_t o;
    tu_server_t ts;
    char *buf = calloc(1, 1 << 20);
    long got;
    int fd, err;

    (void)state;
    fx_opts(&o, &fx);
    o.limits.in_max = 256 << 10;
    tu_server_start(&ts, &o);
    fd = tu_connect(ts.port);
    (void)send(fd, buf, 1 << 20, MSG_NOSIGNAL);
    got = tu_read_to_eof(fd, 1, &err);
    assert_true(got <= 0);
    assert_true(tu_wait_until(fx_closed, &fx, 5000));
    assert_int_equal(atomic_load(&fx.close_reason), ZN_CLOSE_INPUT_CAP);
    zn_conn_unref(atomic_load(&fx.conn));
    close(fd);
    free(buf);
    tu_server_stop(&ts);
}


static void
test_idle_timeout_closes(void **state)
{
    conn_fx_t fx = {0};
    zn_server_opts_t o;
    tu_server_t ts;
    uint64_t t0;
    int fd, err;

    (void)state;
    fx_opts(&o, &fx);
    o.limits.idle_ms = 100;
    tu_server_start(&ts, &o);
    fd = tu_connect(ts.port);
    t0 = zn_now_ms();
    usleep(60000);
    tu_write_all(fd, "x", 1); /* input moves the deadline */
    assert_int_equal(tu_read_to_eof(fd, 1, &err), 0);
    assert_true(zn_now_ms() - t0 >= 150);
    assert_true(tu_wait_until(fx_closed, &fx, 5000));
    assert_int_equal(atomic_load(&fx.close_reason), ZN_CLOSE_IDLE);
    zn_conn_unref(atomic_load(&fx.conn));
    close(fd);
    tu_server_stop(&ts);
}


static void
test_no_sigpipe_when_peer_resets(void **state)
{
    conn_fx_t fx = {0};
    zn_server_opts_t o;
    tu_server_t ts;
    struct linger lg = {1, 0};
    push_ctx_t p;
    int fd;

    (void)state;
    signal(SIGPIPE, SIG_DFL); /* the library must not rely on SIG_IGN */
    fx_opts(&o, &fx);
    tu_server_start(&ts, &o);
    fd = tu_connect(ts.port);
    p.c = fx_wait_conn(&fx);
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    close(fd); /* RST */
    usleep(20000);
    tu_run_on(ts.loop, push_until_closed, &p);
    assert_true(p.rc != 0);
    assert_true(tu_wait_until(fx_closed, &fx, 5000));
    zn_conn_unref(p.c);
    tu_server_stop(&ts);
}


/* A new loop with one end of a socketpair adopted as a connection that
 * the fixture handles; *peer is the other end. The handler and limits are
 * static: they must outlive the connection. */
static zn_loop_t *
adopt_pair(conn_fx_t *fx, zn_conn_t **c, int *peer)
{
    static zn_conn_limits_t lim;
    static zn_handler_t h;
    zn_loop_t *loop;
    int sv[2];

    zn_conn_limits_default(&lim);
    memset(&h, 0, sizeof(h));
    h.on_connect = fx_on_connect;
    h.on_data = fx_on_data;
    h.on_close = fx_on_close;
    h.ud = fx;
    assert_int_equal(zn_loop_new(&loop), 0);
    assert_int_equal(
        socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    assert_int_equal(zn_conn_adopt(loop, sv[0], &h, &lim, c), 0);
    *peer = sv[1];
    return loop;
}


static void
test_adopted_socketpair_echoes(void **state)
{
    conn_fx_t fx = {.echo = true};
    zn_loop_t *loop;
    zn_conn_t *c;
    char buf[5];
    int sv[2];

    (void)state;
    loop = adopt_pair(&fx, &c, &sv[1]);
    assert_int_equal(write(sv[1], "hello", 5), 5);
    while (atomic_load(&fx.data_bytes) < 5)
        zn_loop_run_once(loop, 1000);
    assert_int_equal(read(sv[1], buf, 5), 5);
    assert_memory_equal(buf, "hello", 5);
    zn_conn_close(c);
    while (atomic_load(&fx.closes) == 0)
        zn_loop_run_once(loop, 1000);
    zn_conn_unref(atomic_load(&fx.conn));
    close(sv[1]);
    zn_loop_free(loop);
}


/*
 * Inside on_data, replies wait for the end of the callback, except the
 * first one when it is large and nothing is queued: that one is written at
 * once (no copy). Later sends of the batch queue behind, in order.
 */
typedef struct {
    size_t after[3]; /* zn_conn_out_len() after each send */
    int calls;
} batch_fx_t;

enum { BATCH_BIG = 8192, BATCH_SMALL = 64 };

static void
batch_on_data(zn_conn_t *c, zn_buf_t *in, void *ud)
{
    batch_fx_t *fx = ud;
    static const size_t sizes[2][3] = {{BATCH_BIG, BATCH_SMALL, BATCH_BIG},
                                       {BATCH_SMALL, BATCH_BIG, BATCH_BIG}};
    const size_t *sz = sizes[zn_buf_peek(in)[0] == 's'];
    char *p = malloc(BATCH_BIG);
    size_t off = 0;
    int i;

    for (i = 0; i < 3; i++) {
        tu_pattern(p, sz[i], 5, off);
        assert_int_equal(zn_conn_send(c, p, sz[i]), 0);
        fx->after[i] = zn_conn_out_len(c);
        off += sz[i];
    }
    free(p);
    fx->calls++;
    zn_buf_consume(in, zn_buf_len(in));
}


static void
test_first_large_send_in_on_data_is_written_at_once(void **state)
{
    enum { TOTAL = 2 * BATCH_BIG + BATCH_SMALL };
    batch_fx_t fx = {0};
    zn_conn_limits_t lim;
    zn_handler_t h = {0};
    zn_loop_t *loop;
    zn_conn_t *c;
    char *buf = malloc(TOTAL);
    int sv[2], round;

    (void)state;
    zn_conn_limits_default(&lim);
    h.on_data = batch_on_data;
    h.ud = &fx;
    assert_int_equal(zn_loop_new(&loop), 0);
    assert_int_equal(
        socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    assert_int_equal(zn_conn_adopt(loop, sv[0], &h, &lim, &c), 0);
    for (round = 0; round < 2; round++) {
        /* 'b': big first, written at once; 's': small first, all queued */
        assert_int_equal(write(sv[1], round == 0 ? "b" : "s", 1), 1);
        while (fx.calls == round)
            zn_loop_run_once(loop, 1000);
        if (round == 0) {
            assert_int_equal(fx.after[0], 0);
            assert_int_equal(fx.after[1], BATCH_SMALL);
            assert_int_equal(fx.after[2], BATCH_SMALL + BATCH_BIG);
        } else {
            assert_int_equal(fx.after[0], BATCH_SMALL);
            assert_int_equal(fx.after[1], BATCH_SMALL + BATCH_BIG);
            assert_int_equal(fx.after[2], TOTAL);
        }
        assert_int_equal(zn_conn_out_len(c), 0); /* flushed on return */
        assert_int_equal(tu_read_exact(sv[1], buf, TOTAL), 0);
        assert_true(tu_pattern_check(buf, TOTAL, 5, 0));
    }
    zn_conn_close(c);
    zn_loop_run_once(loop, 100);
    close(sv[1]);
    zn_loop_free(loop);
    free(buf);
}


/* Counts allocations, for the test below; the blocks are libc's. */
static _Atomic long n_allocs;

static void *
count_malloc(size_t n)
{
    atomic_fetch_add(&n_allocs, 1);
    return malloc(n);
}

static void *
count_realloc(void *p, size_t n)
{
    atomic_fetch_add(&n_allocs, 1);
    return realloc(p, n);
}

static void *
count_calloc(size_t k, size_t n)
{
    atomic_fetch_add(&n_allocs, 1);
    return calloc(k, n);
}


/*
 * A request answered and written at once allocates nothing once the loop
 * is warm: the reply's output buffer comes from the loop's spare and goes
 * back to it when written, so an idle connection still holds none.
 */
static void
test_replies_written_at_once_allocate_nothing(void **state)
{
    conn_fx_t fx = {.echo = true};
    zn_loop_t *loop;
    zn_conn_t *c;
    char buf[64];
    long before = 0;
    int sv[2], i;

    (void)state;
    assert_int_equal(zn_set_allocator(count_malloc, count_realloc,
                                      count_calloc, free), 0);
    loop = adopt_pair(&fx, &c, &sv[1]);
    for (i = 0; i < 101; i++) {
        if (i == 1)
            before = atomic_load(&n_allocs); /* warm after one */
        assert_int_equal(write(sv[1], buf, sizeof(buf)), (ssize_t)sizeof(buf));
        while (atomic_load(&fx.data_bytes) < (long)sizeof(buf) * (i + 1))
            zn_loop_run_once(loop, 1000);
        assert_int_equal(tu_read_exact(sv[1], buf, sizeof(buf)), 0);
    }
    assert_int_equal(atomic_load(&n_allocs) - before, 0);
    assert_int_equal(zn_conn_out_len(c), 0);
    zn_conn_close(c);
    while (atomic_load(&fx.closes) == 0)
        zn_loop_run_once(loop, 1000);
    zn_conn_unref(atomic_load(&fx.conn));
    close(sv[1]);
    zn_loop_free(loop);
    assert_int_equal(zn_set_allocator(malloc, realloc, calloc, free), 0);
}


int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_send_from_another_thread_arrives_in_order),
        cmocka_unit_test(test_close_from_another_thread_while_sends_in_flight),
        cmocka_unit_test(
            test_sends_from_thread_are_bounded_while_loop_is_busy),
        cmocka_unit_test(test_reference_held_after_close),
        cmocka_unit_test(test_graceful_close_flushes_queued_output),
        cmocka_unit_test(test_abortive_close_drops_output_and_resets),
        cmocka_unit_test(test_peer_half_close_gets_replies_then_close),
        cmocka_unit_test(test_close_inside_on_data_runs_on_close_once_later),
        cmocka_unit_test(test_high_water_pauses_reading_until_low_mark),
        cmocka_unit_test(test_output_hard_cap_closes_and_counts),
        cmocka_unit_test(test_unconsumed_input_over_cap_closes),
        cmocka_unit_test(test_idle_timeout_closes),
        cmocka_unit_test(test_no_sigpipe_when_peer_resets),
        cmocka_unit_test(test_adopted_socketpair_echoes),
        cmocka_unit_test(test_first_large_send_in_on_data_is_written_at_once),
        cmocka_unit_test(test_replies_written_at_once_allocate_nothing),
    };

    tu_alarm(120);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
