/*
 * test_drain.c: zn_msg_service_drain(), the graceful shutdown in one call,
 * in every threading model: a request in flight (on a worker, or deferred
 * where there are none) when the drain starts is answered and its reply
 * flushed whole; a request that arrives during the drain gets
 * SHUTTING_DOWN; nothing is accepted any more; the connection closes
 * after the reply; and a request that never ends is cut short at the
 * time limit.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "demo.pb-c.h"
#include "testutil.h"
#include "znet/msg.h"
#include "znet/znet.pb-c.h"

enum { CMD_TEST = 1, CMD_SLOW = 2, CMD_HANG = 3 };

#define BIG (1u << 20) /* a reply the socket cannot take at once */

typedef struct {
    const char *name;
    unsigned io_threads, workers;
    bool reuseport;
} model_t;

static const model_t models[] = {
    {"single", 0, 0, false},   {"workers", 0, 2, false},
    {"io", 2, 0, false},       {"io+workers", 2, 2, false},
    {"io-reuseport", 2, 0, true}};

/* The gate: slow requests wait for it (on their worker, or deferred). */
static pthread_mutex_t gate_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gate_cv = PTHREAD_COND_INITIALIZER;
static int gate_open;
static _Atomic(zn_msg_req_t *) parked;  /* deferred, waiting for the gate */
static _Atomic(zn_msg_req_t *) hanging; /* deferred, answered by the test */


static void
gate_wait(void)
{
    pthread_mutex_lock(&gate_mu);
    while (!gate_open)
        pthread_cond_wait(&gate_cv, &gate_mu);
    pthread_mutex_unlock(&gate_mu);
}


static void
gate_set(int open)
{
    pthread_mutex_lock(&gate_mu);
    gate_open = open;
    pthread_cond_broadcast(&gate_cv);
    pthread_mutex_unlock(&gate_mu);
}


static void
h_test(zn_msg_req_t *req, const ProtobufCMessage *msg, void *ud)
{
    Demo__TestRsp rsp = DEMO__TEST_RSP__INIT;

    (void)msg;
    (void)ud;
    rsp.res = "hello, i'm server";
    zn_msg_reply(req, &rsp.base);
}


static void
reply_big(zn_msg_req_t *req)
{
    Demo__EchoRsp rsp = DEMO__ECHO_RSP__INIT;
    uint8_t *p = malloc(BIG);

    assert_non_null(p);
    tu_pattern(p, BIG, zn_msg_req_seq(req), 0);
    rsp.payload.data = p;
    rsp.payload.len = BIG;
    assert_int_equal(zn_msg_reply(req, &rsp.base), 0);
    free(p);
}


/* On a worker: holds it until the gate opens. On the loop: defers, and
 * the gate thread answers. Either way the answer is 1 MiB. */
static void
h_slow(zn_msg_req_t *req, const ProtobufCMessage *msg, void *ud)
{
    const unsigned *workers = ud;

    (void)msg;
    if (*workers > 0) {
        gate_wait();
        reply_big(req);
        return;
    }
    zn_msg_req_defer(req);
    atomic_store(&parked, req);
}


static void
h_hang(zn_msg_req_t *req, const ProtobufCMessage *msg, void *ud)
{
    (void)msg;
    (void)ud;
    zn_msg_req_defer(req);
    atomic_store(&hanging, req);
}


static void *
gate_thread(void *arg)
{
    zn_msg_req_t *req;

    (void)arg;
    gate_wait();
    if ((req = atomic_exchange(&parked, NULL)) != NULL)
        reply_big(req);
    return NULL;
}

/* ---- fixture ---------------------------------------------------------- */

typedef struct {
    const model_t *m;
    unsigned workers;
    zn_msg_table_t *table;
    zn_msg_service_t *svc;
    tu_server_t ts;
    uint64_t drain_ms;
    int drain_rc;
    uint64_t drain_took;
    pthread_t drainer;
} fx_t;


static void
fx_start(fx_t *fx, const model_t *m)
{
    zn_server_opts_t so;
    zn_msg_opts_t mo;

    memset(fx, 0, sizeof(*fx));
    fx->m = m;
    fx->workers = m->workers;
    gate_set(0);
    atomic_store(&parked, NULL);
    atomic_store(&hanging, NULL);
    assert_int_equal(zn_msg_table_new(&fx->table), 0);
    zn_msg_table_register(fx->table, CMD_TEST, &demo__test_req__descriptor,
                          h_test, NULL);
    zn_msg_table_register(fx->table, CMD_SLOW, &demo__test_req__descriptor,
                          h_slow, &fx->workers);
    zn_msg_table_register(fx->table, CMD_HANG, &demo__test_req__descriptor,
                          h_hang, NULL);
    zn_msg_opts_default(&mo);
    mo.workers = m->workers;
    assert_int_equal(zn_msg_service_new(fx->table, &mo, &fx->svc), 0);
    zn_server_opts_default(&so);
    so.io_threads = m->io_threads;
    so.reuseport = m->reuseport;
    zn_msg_service_bind(fx->svc, &so);
    tu_server_start(&fx->ts, &so);
}


/* The drain runs on a thread of its own, which becomes the main loop's:
 * the loop's first thread has returned from zn_loop_run(). */
static void *
drain_main(void *arg)
{
    fx_t *fx = arg;
    uint64_t t0 = zn_now_ms();

    fx->drain_rc = zn_msg_service_drain(fx->svc, fx->ts.srv, fx->drain_ms);
    fx->drain_took = zn_now_ms() - t0;
    return NULL;
}


static void
fx_drain_start(fx_t *fx, uint64_t ms)
{
    tu_loop_thread_join(&fx->ts.lt);
    fx->drain_ms = ms;
    assert_int_equal(pthread_create(&fx->drainer, NULL, drain_main, fx), 0);
}


/* Waits for the drain to return. */
static void
fx_drain_wait(fx_t *fx)
{
    pthread_join(fx->drainer, NULL);
}


static void
fx_free(fx_t *fx)
{
    zn_server_free(fx->ts.srv);
    zn_msg_service_free(fx->svc);
    zn_msg_table_free(fx->table);
    zn_loop_free(fx->ts.loop);
}


static int
pending_is_one(void *arg)
{
    return zn_msg_service_pending(((fx_t *)arg)->svc) == 1;
}

/* ---- a blocking client ------------------------------------------------ */


static void
send_req(int fd, uint32_t cmd, uint32_t seq)
{
    Demo__TestReq req = DEMO__TEST_REQ__INIT;
    uint8_t *p;
    size_t n;

    req.msg = "hi";
    assert_int_equal(zn_msg_pack_frame(cmd, seq, 0, &req.base, &p, &n), 0);
    tu_write_all(fd, p, n);
    zn_msg_frame_free(p);
}


/* Reads one frame into a new buffer (*body, freed by the caller). */
static int
recv_frame(int fd, zn_frame_header_t *h, uint8_t **body)
{
    uint8_t hdr[ZN_FRAME_HEADER_SIZE];
    zn_frame_reason_t why;

    *body = NULL;
    if (tu_read_exact(fd, hdr, sizeof(hdr)) != 0)
        return -1;
    assert_int_equal(zn_frame_decode_header(hdr, sizeof(hdr), UINT32_MAX, h,
                                            &why), 0);
    *body = malloc(h->length + 1);
    assert_non_null(*body);
    return h->length > 0 ? tu_read_exact(fd, *body, h->length) : 0;
}


static void
expect_shutting_down(int fd, uint32_t seq)
{
    zn_frame_header_t h;
    Znet__Error *e;
    uint8_t *body;

    assert_int_equal(recv_frame(fd, &h, &body), 0);
    assert_int_equal(h.seq, seq);
    assert_int_equal(h.flags, ZN_FRAME_F_RESPONSE | ZN_FRAME_F_ERROR);
    e = znet__error__unpack(NULL, h.length, body);
    assert_non_null(e);
    assert_int_equal(e->code, ZN_CODE_SHUTTING_DOWN);
    znet__error__free_unpacked(e, NULL);
    free(body);
}


static void
expect_big_reply(int fd, uint32_t seq)
{
    Demo__EchoRsp *rsp;
    zn_frame_header_t h;
    uint8_t *body;

    assert_int_equal(recv_frame(fd, &h, &body), 0);
    assert_int_equal(h.seq, seq);
    assert_int_equal(h.flags, ZN_FRAME_F_RESPONSE);
    rsp = demo__echo_rsp__unpack(NULL, h.length, body);
    assert_non_null(rsp);
    assert_int_equal(rsp->payload.len, BIG);
    assert_true(tu_pattern_check(rsp->payload.data, BIG, seq, 0));
    demo__echo_rsp__free_unpacked(rsp, NULL);
    free(body);
}


/* True once a connect to the port is refused (nothing listens). */
static int
refused(void *arg)
{
    struct sockaddr_in a = {.sin_family = AF_INET};
    int fd = socket(AF_INET, SOCK_STREAM, 0), rc;

    a.sin_port = htons(*(uint16_t *)arg);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    rc = connect(fd, (struct sockaddr *)&a, sizeof(a));
    close(fd);
    return rc != 0 && errno == ECONNREFUSED;
}

/* ---- tests ------------------------------------------------------------ */


/*
 * A request is in flight when the drain starts. While the drain waits for
 * it: the port refuses connections, and a new request on the open
 * connection gets SHUTTING_DOWN. Then the request ends: its 1 MiB reply
 * arrives whole (the socket took only part of it at once, so the server
 * flushed the rest while closing), the connection closes, and the drain
 * reports success.
 */
static void
test_in_flight_request_is_answered_and_flushed(void **state)
{
    const model_t *m = *state;
    pthread_t gt;
    fx_t fx;
    long rest;
    int fd, err;

    tu_alarm(30);
    fx_start(&fx, m);
    fd = tu_connect(fx.ts.port);
    send_req(fd, CMD_SLOW, 1);
    assert_true(tu_wait_until(pending_is_one, &fx, 5000));
    assert_int_equal(pthread_create(&gt, NULL, gate_thread, NULL), 0);
    fx_drain_start(&fx, 10000);
    assert_true(tu_wait_until(refused, &fx.ts.port, 5000));
    send_req(fd, CMD_TEST, 2);
    expect_shutting_down(fd, 2);
    assert_int_equal(zn_msg_service_pending(fx.svc), 1);
    gate_set(1);
    expect_big_reply(fd, 1);
    rest = tu_read_to_eof(fd, 1 << 20, &err);
    assert_int_equal(rest, 0);
    close(fd);
    pthread_join(gt, NULL);
    fx_drain_wait(&fx);
    assert_int_equal(fx.drain_rc, 0);
    assert_int_equal(tu_server_stats(&fx.ts).conns_live, 0);
    fx_free(&fx);
}


/*
 * A request that is never answered in time: the drain gives up at its
 * limit with ZN_ETIMEDOUT and the connection is closed; the late answer is
 * then refused (ZN_ENOTCONN) and counted, and nothing leaks.
 */
static void
test_drain_stops_at_its_time_limit(void **state)
{
    const model_t *m = *state;
    zn_msg_stats_t st;
    zn_msg_req_t *req;
    fx_t fx;
    int fd, err;

    tu_alarm(30);
    fx_start(&fx, m);
    fd = tu_connect(fx.ts.port);
    send_req(fd, CMD_HANG, 7);
    assert_true(tu_wait_until(pending_is_one, &fx, 5000));
    fx_drain_start(&fx, 300);
    fx_drain_wait(&fx);
    assert_int_equal(fx.drain_rc, ZN_ETIMEDOUT);
    assert_true(fx.drain_took >= 300);
    assert_int_equal(tu_read_to_eof(fd, 1 << 20, &err), 0);
    close(fd);
    req = atomic_exchange(&hanging, NULL);
    assert_non_null(req);
    assert_int_equal(zn_msg_reply_error(req, 1000, "too late"), ZN_ENOTCONN);
    /* The end of the request waits on the stopped loop, which runs it as
     * it is freed. */
    zn_server_free(fx.ts.srv);
    zn_loop_free(fx.ts.loop);
    zn_msg_service_stats(fx.svc, &st);
    assert_int_equal(st.late_replies, 1);
    assert_int_equal(st.in_flight, 0);
    zn_msg_service_free(fx.svc);
    zn_msg_table_free(fx.table);
}


#define PER_MODEL(fn)                                                         \
    cmocka_unit_test_prestate(fn, (void *)&models[0]),                       \
        cmocka_unit_test_prestate(fn, (void *)&models[1]),                   \
        cmocka_unit_test_prestate(fn, (void *)&models[2]),                   \
        cmocka_unit_test_prestate(fn, (void *)&models[3]),                   \
        cmocka_unit_test_prestate(fn, (void *)&models[4])


int
main(void)
{
    const struct CMUnitTest tests[] = {
        PER_MODEL(test_in_flight_request_is_answered_and_flushed),
        PER_MODEL(test_drain_stops_at_its_time_limit),
    };

    signal(SIGPIPE, SIG_IGN);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
