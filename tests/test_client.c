/*
 * test_client.c: connecting, the connect time-out, reconnection with
 * back-off, the retry limit, and freeing a client in any state.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "testutil.h"

typedef struct {
    zn_loop_t *loop;
    int connects;
    int closes;
    int give_ups;
    int give_up_status;
    char reply[16];
    size_t got;
    bool stop_on_connect;
    zn_client_t *cl;
} cl_fx_t;


static void
cl_on_connect(zn_conn_t *c, void *ud)
{
    cl_fx_t *fx = ud;

    fx->connects++;
    assert_int_equal(zn_conn_send(c, "ping", 4), 0);
}


static void
cl_on_data(zn_conn_t *c, zn_buf_t *in, void *ud)
{
    cl_fx_t *fx = ud;

    (void)c;
    fx->got += zn_buf_read(in, fx->reply + fx->got,
                           sizeof(fx->reply) - 1 - fx->got);
    if (fx->got >= 4)
        zn_loop_stop(fx->loop);
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

    (void)cl;
    fx->give_ups++;
    fx->give_up_status = status;
    zn_loop_stop(fx->loop);
}


static void
cl_opts(zn_client_opts_t *o, cl_fx_t *fx, uint16_t port)
{
    zn_client_opts_default(o);
    o->host = "127.0.0.1";
    o->port = port;
    o->handler.on_connect = cl_on_connect;
    o->handler.on_data = cl_on_data;
    o->handler.on_close = cl_on_close;
    o->handler.ud = fx;
    o->on_give_up = cl_on_give_up;
}


/* A port with nothing listening: bind one, read its number, close it. */
static uint16_t
free_port(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET};
    socklen_t len = sizeof(a);
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    getsockname(fd, (struct sockaddr *)&a, &len);
    close(fd);
    return ntohs(a.sin_port);
}


static void
echo_on_data(zn_conn_t *c, zn_buf_t *in, void *ud)
{
    (void)ud;
    zn_conn_send(c, zn_buf_peek(in), zn_buf_len(in));
    zn_buf_consume(in, zn_buf_len(in));
}


static void
start_echo_on(tu_server_t *ts, uint16_t port)
{
    zn_server_opts_t o;

    zn_server_opts_default(&o);
    o.port = port;
    o.handler.on_data = echo_on_data;
    tu_server_start(ts, &o);
}


static void
stop_loop_cb(zn_timer_t *t, void *ud)
{
    (void)t;
    zn_loop_stop(ud);
}


static void
test_connects_and_talks(void **state)
{
    cl_fx_t fx = {0};
    zn_client_opts_t o;
    tu_server_t ts;

    (void)state;
    start_echo_on(&ts, 0);
    assert_int_equal(zn_loop_new(&fx.loop), 0);
    cl_opts(&o, &fx, ts.port);
    assert_int_equal(zn_client_new(fx.loop, &o, &fx.cl), 0);
    assert_int_equal(zn_client_start(fx.cl), 0);
    assert_int_equal(zn_client_start(fx.cl), ZN_EALREADY);
    assert_int_equal(zn_loop_run(fx.loop), 0);
    assert_string_equal(fx.reply, "ping");
    zn_conn_t *c = zn_client_conn(fx.cl);
    assert_non_null(c);
    zn_conn_unref(c);
    zn_client_free(fx.cl); /* connected: memory goes after the close */
    while (fx.closes == 0)
        zn_loop_run_once(fx.loop, 100);
    zn_loop_free(fx.loop);
    tu_server_stop(&ts);
}


static void
start_server_late(zn_timer_t *t, void *ud)
{
    (void)t;
    start_echo_on(ud, ((tu_server_t *)ud)->port);
}


static void
test_reconnects_to_server_that_starts_late(void **state)
{
    cl_fx_t fx = {0};
    zn_client_opts_t o;
    tu_server_t ts;
    zn_timer_t late;

    (void)state;
    ts.port = free_port();
    assert_int_equal(zn_loop_new(&fx.loop), 0);
    cl_opts(&o, &fx, ts.port);
    o.reconnect = true;
    o.backoff_min_ms = 20;
    o.backoff_max_ms = 80;
    assert_int_equal(zn_client_new(fx.loop, &o, &fx.cl), 0);
    zn_timer_init(fx.loop, &late, start_server_late, &ts);
    zn_timer_start(&late, 300, 0);
    assert_int_equal(zn_client_start(fx.cl), 0);
    assert_int_equal(zn_loop_run(fx.loop), 0);
    assert_string_equal(fx.reply, "ping");
    assert_int_equal(fx.connects, 1);
    assert_int_equal(fx.give_ups, 0);
    assert_int_equal(zn_client_failures(fx.cl), 0);
    zn_client_free(fx.cl);
    while (fx.closes == 0)
        zn_loop_run_once(fx.loop, 100);
    zn_loop_free(fx.loop);
    tu_server_stop(&ts);
}


static void
test_gives_up_after_retry_limit(void **state)
{
    cl_fx_t fx = {0};
    zn_client_opts_t o;
    uint64_t t0, took;

    (void)state;
    assert_int_equal(zn_loop_new(&fx.loop), 0);
    cl_opts(&o, &fx, free_port());
    o.reconnect = true;
    o.backoff_min_ms = 10;
    o.backoff_max_ms = 40;
    o.max_retries = 5;
    assert_int_equal(zn_client_new(fx.loop, &o, &fx.cl), 0);
    t0 = zn_now_ms();
    assert_int_equal(zn_client_start(fx.cl), 0);
    assert_int_equal(zn_loop_run(fx.loop), 0);
    took = zn_now_ms() - t0;
    assert_int_equal(fx.give_ups, 1);
    assert_int_equal(fx.give_up_status, ZN_ECONNREFUSED);
    assert_int_equal(zn_client_failures(fx.cl), 5);
    assert_int_equal(fx.connects, 0);
    /* four waits of at least half of 10, 20, 40, 40 ms */
    assert_true(took >= 55);
    zn_client_free(fx.cl);
    zn_loop_free(fx.loop);
}


static void
test_freed_while_retry_pending(void **state)
{
    cl_fx_t fx = {0};
    zn_client_opts_t o;
    zn_timer_t end;

    (void)state;
    assert_int_equal(zn_loop_new(&fx.loop), 0);
    cl_opts(&o, &fx, free_port());
    o.reconnect = true;
    o.backoff_min_ms = 50;
    assert_int_equal(zn_client_new(fx.loop, &o, &fx.cl), 0);
    assert_int_equal(zn_client_start(fx.cl), 0);
    while (zn_client_failures(fx.cl) == 0) /* refused: a retry is armed */
        zn_loop_run_once(fx.loop, 100);
    zn_client_free(fx.cl);
    zn_timer_init(fx.loop, &end, stop_loop_cb, fx.loop);
    zn_timer_start(&end, 150, 0);
    assert_int_equal(zn_loop_run(fx.loop), 0);
    assert_int_equal(fx.give_ups, 0); /* nothing ran after the free */
    zn_loop_stats_t st;
    zn_loop_stats(fx.loop, &st);
    assert_int_equal(st.timers_active, 0);
    zn_loop_free(fx.loop);
}


/*
 * A listener with a backlog of 1 that never accepts: once its queue is
 * full, the kernel drops further SYNs, so a connect hangs until our
 * time-out.
 */
static void
test_connect_timeout(void **state)
{
    struct sockaddr_in a = {.sin_family = AF_INET};
    socklen_t len = sizeof(a);
    cl_fx_t fx = {0};
    zn_client_opts_t o;
    int lfd, fill[4], i;
    uint64_t t0;

    (void)state;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    lfd = socket(AF_INET, SOCK_STREAM, 0);
    assert_int_equal(bind(lfd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(lfd, 0), 0);
    getsockname(lfd, (struct sockaddr *)&a, &len);
    for (i = 0; i < 4; i++) {
        fill[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        (void)connect(fill[i], (struct sockaddr *)&a, sizeof(a));
    }
    usleep(50000);
    assert_int_equal(zn_loop_new(&fx.loop), 0);
    cl_opts(&o, &fx, ntohs(a.sin_port));
    o.connect_timeout_ms = 200;
    assert_int_equal(zn_client_new(fx.loop, &o, &fx.cl), 0);
    t0 = zn_now_ms();
    assert_int_equal(zn_client_start(fx.cl), 0);
    assert_int_equal(zn_loop_run(fx.loop), 0);
    assert_int_equal(fx.give_ups, 1);
    assert_int_equal(fx.give_up_status, ZN_ETIMEDOUT);
    assert_true(zn_now_ms() - t0 >= 200);
    zn_client_free(fx.cl);
    zn_loop_free(fx.loop);
    for (i = 0; i < 4; i++)
        close(fill[i]);
    close(lfd);
}


static void
free_in_give_up(zn_client_t *cl, int status, void *ud)
{
    cl_fx_t *fx = ud;

    (void)status;
    fx->give_ups++;
    zn_client_free(cl); /* from inside its own callback */
    zn_loop_stop(fx->loop);
}


static void
test_freed_inside_its_own_callback(void **state)
{
    cl_fx_t fx = {0};
    zn_client_opts_t o;

    (void)state;
    assert_int_equal(zn_loop_new(&fx.loop), 0);
    cl_opts(&o, &fx, free_port());
    o.on_give_up = free_in_give_up;
    assert_int_equal(zn_client_new(fx.loop, &o, &fx.cl), 0);
    assert_int_equal(zn_client_start(fx.cl), 0);
    zn_loop_run(fx.loop);
    assert_int_equal(fx.give_ups, 1);
    zn_loop_free(fx.loop);
}


typedef struct {
    zn_loop_t *main_loop;
    zn_loop_t *io_loop;
    _Atomic int on_io_thread;
    _Atomic int connects;
    _Atomic int closes;
    _Atomic int got;
} remote_fx_t;


static void
remote_on_connect(zn_conn_t *c, void *ud)
{
    remote_fx_t *fx = ud;

    if (zn_loop_in_thread(fx->io_loop) && zn_conn_loop(c) == fx->io_loop)
        atomic_fetch_add(&fx->on_io_thread, 1);
    atomic_fetch_add(&fx->connects, 1);
    zn_conn_send(c, "ping", 4);
}


static void
remote_on_data(zn_conn_t *c, zn_buf_t *in, void *ud)
{
    remote_fx_t *fx = ud;

    atomic_fetch_add(&fx->got, (int)zn_buf_len(in));
    zn_buf_consume(in, zn_buf_len(in));
    if (atomic_load(&fx->got) >= 4 && atomic_load(&fx->connects) == 1)
        zn_conn_close(c); /* the client reconnects from its own loop */
    else if (atomic_load(&fx->connects) >= 2)
        zn_loop_stop(fx->main_loop);
}


static void
remote_on_close(zn_conn_t *c, zn_close_reason_t reason, void *ud)
{
    (void)c;
    (void)reason;
    atomic_fetch_add(&((remote_fx_t *)ud)->closes, 1);
}


static int
remote_two_closes(void *ud)
{
    return atomic_load(&((remote_fx_t *)ud)->closes) >= 2;
}


/* The multi-loop model for clients: the client's loop connects, the
 * connection lives on an IO loop of its own thread. */
static void
test_connection_handed_to_another_loop(void **state)
{
    remote_fx_t fx = {0};
    zn_client_opts_t o;
    tu_loop_thread_t lt;
    tu_server_t ts;
    zn_client_t *cl;

    (void)state;
    start_echo_on(&ts, 0);
    assert_int_equal(zn_loop_new(&fx.main_loop), 0);
    assert_int_equal(zn_loop_new(&fx.io_loop), 0);
    tu_loop_thread_start(&lt, fx.io_loop);
    zn_client_opts_default(&o);
    o.host = "127.0.0.1";
    o.port = ts.port;
    o.reconnect = true;
    o.backoff_min_ms = 5;
    o.conn_loop = fx.io_loop;
    o.handler.on_connect = remote_on_connect;
    o.handler.on_data = remote_on_data;
    o.handler.on_close = remote_on_close;
    o.handler.ud = &fx;
    assert_int_equal(zn_client_new(fx.main_loop, &o, &cl), 0);
    assert_int_equal(zn_client_start(cl), 0);
    assert_int_equal(zn_loop_run(fx.main_loop), 0);
    assert_int_equal(atomic_load(&fx.on_io_thread), 2);
    zn_client_free(cl); /* the connection closes on the IO loop */
    while (!remote_two_closes(&fx))
        zn_loop_run_once(fx.main_loop, 10);
    for (int i = 0; i < 5; i++) /* the close report frees the client */
        zn_loop_run_once(fx.main_loop, 10);
    tu_loop_thread_join(&lt);
    zn_loop_free(fx.io_loop);
    zn_loop_free(fx.main_loop);
    tu_server_stop(&ts);
}


int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_connects_and_talks),
        cmocka_unit_test(test_reconnects_to_server_that_starts_late),
        cmocka_unit_test(test_gives_up_after_retry_limit),
        cmocka_unit_test(test_freed_while_retry_pending),
        cmocka_unit_test(test_connect_timeout),
        cmocka_unit_test(test_freed_inside_its_own_callback),
        cmocka_unit_test(test_connection_handed_to_another_loop),
    };

    tu_alarm(60);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
