/*
 * test_crossing.c: what crosses to a loop from another thread gets there
 * without memory, in order, on the right thread. The allocator hook
 * refuses every allocation while told to (tu_refuse); before that, the
 * target loop is held busy and its task queue filled with tasks posted
 * while memory was there (so that a queue which had to grow for one more
 * task could not). Then: a close, a shutdown, a connection handed to a
 * client's conn_loop and its close reported back, embedded tasks. And a
 * graceful close from another thread comes after that thread's sends.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "conn_int.h"
#include "testutil.h"

#define FILLERS 128

/* ---- a server whose handler records its connection ------------------- */

typedef struct {
    _Atomic(zn_conn_t *) conn;
    _Atomic int closes;
    _Atomic int reason;
    _Atomic int connects;
    _Atomic int wrong_thread;
    _Atomic(zn_loop_t *) expect_loop;
} rec_t;


static void
rec_connect(zn_conn_t *c, void *ud)
{
    rec_t *r = ud;
    zn_loop_t *want = atomic_load(&r->expect_loop);

    if (want != NULL && !zn_loop_in_thread(want))
        atomic_fetch_add(&r->wrong_thread, 1);
    zn_conn_ref(c);
    atomic_store(&r->conn, c);
    atomic_fetch_add(&r->connects, 1);
}


static void
rec_close(zn_conn_t *c, zn_close_reason_t reason, void *ud)
{
    rec_t *r = ud;

    (void)c;
    atomic_store(&r->reason, (int)reason);
    atomic_fetch_add(&r->closes, 1);
}


static int
has_conn(void *arg)
{
    return atomic_load(&((rec_t *)arg)->conn) != NULL;
}


static int
closed_once(void *arg)
{
    return atomic_load(&((rec_t *)arg)->closes) == 1;
}


static void
rec_server(tu_server_t *ts, rec_t *r)
{
    zn_server_opts_t o;

    memset(r, 0, sizeof(*r));
    zn_server_opts_default(&o);
    o.handler.on_connect = rec_connect;
    o.handler.on_close = rec_close;
    o.handler.ud = r;
    tu_server_start(ts, &o);
}


static void
rec_drop(rec_t *r)
{
    zn_conn_t *c = atomic_exchange(&r->conn, NULL);

    if (c != NULL)
        zn_conn_unref(c);
}

/* ---- tests ------------------------------------------------------------ */


/* A close from another thread reaches the loop though no memory is left
 * and the queue is long: the peer sees the end, on_close runs once. */
static void
test_close_from_another_thread_needs_no_memory(void **state)
{
    _Atomic int fillers = 0;
    tu_server_t ts;
    rec_t r;
    char b;
    int fd;

    (void)state;
    tu_alarm(20);
    rec_server(&ts, &r);
    fd = tu_connect(ts.port);
    assert_true(tu_wait_until(has_conn, &r, 5000));
    tu_hold_and_fill(ts.loop, FILLERS, &fillers);
    tu_refuse(true);
    zn_conn_close(atomic_load(&r.conn));
    tu_release();
    assert_true(tu_wait_until(closed_once, &r, 5000));
    tu_refuse(false);
    assert_int_equal(atomic_load(&r.reason), ZN_CLOSE_LOCAL);
    assert_int_equal(recv(fd, &b, 1, 0), 0);
    assert_int_equal(atomic_load(&fillers), FILLERS);
    close(fd);
    rec_drop(&r);
    tu_server_stop(&ts);
}


/* Likewise a shutdown: the peer reads the end of the stream, and the
 * connection still takes what the peer sends. */
static void
test_shutdown_from_another_thread_needs_no_memory(void **state)
{
    _Atomic int fillers = 0;
    tu_server_t ts;
    rec_t r;
    char b;
    int fd;

    (void)state;
    tu_alarm(20);
    rec_server(&ts, &r);
    fd = tu_connect(ts.port);
    assert_true(tu_wait_until(has_conn, &r, 5000));
    tu_hold_and_fill(ts.loop, FILLERS, &fillers);
    tu_refuse(true);
    zn_conn_shutdown(atomic_load(&r.conn));
    tu_release();
    assert_int_equal(recv(fd, &b, 1, 0), 0);
    tu_refuse(false);
    assert_int_equal(atomic_load(&r.closes), 0);
    close(fd);
    assert_true(tu_wait_until(closed_once, &r, 5000));
    assert_int_equal(atomic_load(&r.reason), ZN_CLOSE_PEER);
    rec_drop(&r);
    tu_server_stop(&ts);
}


/* Embedded tasks: posted from another thread with no memory at all, each
 * runs once; zn_loop_post() (which allocates) says ZN_ENOMEM. */
static void
count_run(void *ud)
{
    (*(int *)ud)++;
}


static void
test_embedded_tasks_need_no_memory(void **state)
{
    enum { N = 1000 };
    static zn_task_t tasks[N];
    _Atomic int fillers = 0;
    tu_loop_thread_t lt;
    zn_loop_t *loop;
    int counter = 0;
    int i;

    (void)state;
    tu_alarm(20);
    assert_int_equal(zn_loop_new(&loop), 0);
    tu_loop_thread_start(&lt, loop);
    tu_hold_and_fill(loop, FILLERS, &fillers);
    tu_refuse(true);
    for (i = 0; i < N; i++) {
        zn_task_init(&tasks[i], count_run, &counter);
        assert_int_equal(zn_loop_post_task(loop, &tasks[i]), 0);
    }
    assert_int_equal(zn_loop_post_task(loop, &tasks[0]), ZN_EBUSY);
    assert_int_equal(zn_loop_post(loop, count_run, &counter), ZN_ENOMEM);
    tu_release();
    tu_loop_thread_join(&lt);
    tu_refuse(false);
    assert_int_equal(counter, N);
    assert_int_equal(atomic_load(&fillers), FILLERS);
    zn_loop_free(loop);
}


/* zn_conn_set_limits() needs a group of its own: without memory it says
 * so, and the connection keeps the limits it had. */
typedef struct {
    zn_conn_t *c;
    zn_conn_limits_t l;
    int rc_nomem, rc_ok;
} limits_arg_t;


static void
set_limits_task(void *ud)
{
    limits_arg_t *a = ud;

    tu_refuse(true);
    a->rc_nomem = zn_conn_set_limits(a->c, &a->l);
    tu_refuse(false);
    a->rc_ok = zn_conn_set_limits(a->c, &a->l);
}


static void
test_set_limits_says_out_of_memory(void **state)
{
    limits_arg_t a;
    tu_server_t ts;
    rec_t r;
    int fd;

    (void)state;
    tu_alarm(20);
    rec_server(&ts, &r);
    fd = tu_connect(ts.port);
    assert_true(tu_wait_until(has_conn, &r, 5000));
    memset(&a, 0, sizeof(a));
    a.c = atomic_load(&r.conn);
    zn_conn_limits_default(&a.l);
    a.l.idle_ms = 100;
    tu_run_on(ts.loop, set_limits_task, &a);
    assert_int_equal(a.rc_nomem, ZN_ENOMEM);
    assert_int_equal(a.rc_ok, 0);
    close(fd);
    assert_true(tu_wait_until(closed_once, &r, 5000));
    rec_drop(&r);
    tu_server_stop(&ts);
}


/*
 * A client whose connection lives on another loop: every connection is
 * started there (never on the client's loop, even when memory runs out
 * while it connects: the attempt fails and is retried), and its close is
 * reported back to the client's loop without memory.
 */
typedef struct {
    zn_client_t *cl;
    zn_task_t task;
    rec_t *r;
} cl_arg_t;


static void
client_start_task(void *ud)
{
    cl_arg_t *a = ud;

    assert_int_equal(zn_client_start(a->cl), 0);
}


static void
client_stop_task(void *ud)
{
    cl_arg_t *a = ud;

    zn_client_stop(a->cl, false);
}


static void
client_free_task(void *ud)
{
    cl_arg_t *a = ud;

    /* The close has been reported: the client holds no connection. */
    assert_null(zn_client_conn(a->cl));
    zn_client_free(a->cl);
}


static void
test_client_hand_off_and_close_report_need_no_memory(void **state)
{
    tu_loop_thread_t la, lb;
    zn_loop_t *a, *b;
    zn_client_opts_t co;
    _Atomic int fillers = 0;
    struct sockaddr_in sa = {.sin_family = AF_INET};
    socklen_t salen = sizeof(sa);
    rec_t cr;
    cl_arg_t arg;
    int lfd;

    (void)state;
    tu_alarm(30);
    /* The peer is a bare listening socket, whose handshakes the kernel
     * completes: a znet server in this process would share the refusing
     * allocator and refuse or drop connections of its own. */
    lfd = socket(AF_INET, SOCK_STREAM, 0);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(lfd, 64), 0);
    assert_int_equal(getsockname(lfd, (struct sockaddr *)&sa, &salen), 0);
    assert_int_equal(zn_loop_new(&a), 0);
    assert_int_equal(zn_loop_new(&b), 0);
    memset(&cr, 0, sizeof(cr));
    atomic_store(&cr.expect_loop, b);
    zn_client_opts_default(&co);
    co.host = "127.0.0.1";
    co.port = ntohs(sa.sin_port);
    co.reconnect = true;
    co.backoff_min_ms = 5;
    co.backoff_max_ms = 20;
    co.conn_loop = b;
    co.handler.on_connect = rec_connect;
    co.handler.on_close = rec_close;
    co.handler.ud = &cr;
    assert_int_equal(zn_client_new(a, &co, &arg.cl), 0);
    arg.r = &cr;
    tu_loop_thread_start(&la, a);
    tu_loop_thread_start(&lb, b);
    /* Connect while memory is out for a while: attempts fail, then one
     * connects once it is back. */
    tu_refuse(true);
    zn_task_init(&arg.task, client_start_task, &arg);
    assert_int_equal(zn_loop_post_task(a, &arg.task), 0);
    usleep(100 * 1000);
    tu_refuse(false);
    assert_true(tu_wait_until(has_conn, &cr, 5000));
    assert_int_equal(atomic_load(&cr.connects), 1);
    /* Close it with no memory and long queues on both loops. */
    tu_hold_and_fill(a, FILLERS, &fillers);
    tu_refuse(true);
    zn_task_init(&arg.task, client_stop_task, &arg);
    assert_int_equal(zn_loop_post_task(a, &arg.task), 0);
    tu_release();
    assert_true(tu_wait_until(closed_once, &cr, 5000));
    tu_refuse(false);
    tu_run_on(a, client_free_task, &arg);
    assert_int_equal(atomic_load(&cr.wrong_thread), 0);
    tu_loop_thread_join(&la);
    tu_loop_thread_join(&lb);
    rec_drop(&cr);
    zn_loop_free(a);
    zn_loop_free(b);
    close(lfd);
}


/*
 * A thread sends N messages, then closes. The connection's task may be
 * queued already, ahead of those sends (here: a flush asked on the loop
 * while it is held); the close rides on it, yet must wait for the sends
 * posted before it: the peer gets all N, then the end.
 */
typedef struct {
    zn_conn_t *c;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int sent;
} order_arg_t;


static void
flush_then_wait_task(void *ud)
{
    order_arg_t *a = ud;

    /* Queues the connection's task (a flush) for the next batch. */
    assert_int_equal(zn__conn_send_deferred(a->c, "x", 1), 0);
    pthread_mutex_lock(&a->mu);
    while (!a->sent)
        pthread_cond_wait(&a->cv, &a->mu);
    pthread_mutex_unlock(&a->mu);
}


static void *
send_then_close(void *arg)
{
    order_arg_t *a = arg;
    uint32_t i;

    for (i = 0; i < 1000; i++)
        assert_int_equal(zn_conn_send(a->c, &i, sizeof(i)), 0);
    zn_conn_close(a->c);
    pthread_mutex_lock(&a->mu);
    a->sent = 1;
    pthread_cond_broadcast(&a->cv);
    pthread_mutex_unlock(&a->mu);
    return NULL;
}


static void
test_close_from_another_thread_comes_after_its_sends(void **state)
{
    order_arg_t a = {NULL, PTHREAD_MUTEX_INITIALIZER,
                     PTHREAD_COND_INITIALIZER, 0};
    tu_server_t ts;
    pthread_t th;
    uint32_t v, i;
    rec_t r;
    char x;
    int fd, err;

    (void)state;
    tu_alarm(20);
    rec_server(&ts, &r);
    fd = tu_connect(ts.port);
    assert_true(tu_wait_until(has_conn, &r, 5000));
    a.c = atomic_load(&r.conn);
    assert_int_equal(zn_loop_post(ts.loop, flush_then_wait_task, &a), 0);
    assert_int_equal(pthread_create(&th, NULL, send_then_close, &a), 0);
    pthread_join(th, NULL);
    assert_int_equal(tu_read_exact(fd, &x, 1), 0);
    assert_int_equal(x, 'x');
    for (i = 0; i < 1000; i++) {
        assert_int_equal(tu_read_exact(fd, &v, sizeof(v)), 0);
        assert_int_equal(v, i);
    }
    assert_int_equal(tu_read_to_eof(fd, 1 << 20, &err), 0);
    assert_true(tu_wait_until(closed_once, &r, 5000));
    assert_int_equal(atomic_load(&r.reason), ZN_CLOSE_LOCAL);
    close(fd);
    rec_drop(&r);
    tu_server_stop(&ts);
}


int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_close_from_another_thread_needs_no_memory),
        cmocka_unit_test(test_shutdown_from_another_thread_needs_no_memory),
        cmocka_unit_test(test_embedded_tasks_need_no_memory),
        cmocka_unit_test(test_set_limits_says_out_of_memory),
        cmocka_unit_test(
            test_client_hand_off_and_close_report_need_no_memory),
        cmocka_unit_test(test_close_from_another_thread_comes_after_its_sends),
    };

    tu_refusing_allocator();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
