/*
 * test_rpc.c: the RPC client (include/znet/rpc.h) against a responder
 * written here on the core server, over real loopback sockets: calls and
 * responses, pipelining, error responses, deadlines and late responses,
 * connection drops, stray responses, pushes, calls queued before the
 * connection, giving up, calls and blocking calls from other threads,
 * freeing with calls outstanding, and malformed responses.
 *
 * The responder decodes frames with zn_frame_next() and answers with
 * hand-packed frames; what it does depends on the request's cmd.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "demo.pb-c.h"
#include "testutil.h"
#include "znet/frame.h"
#include "znet/rpc.h"
#include "znet/znet.pb-c.h"

enum {
    CMD_TEST = 1,     /* TestReq -> TestRsp "hello, i'm server" */
    CMD_ECHO = 2,     /* EchoReq -> EchoRsp, same payload */
    CMD_DELAY = 3,    /* TestReq { msg: ms } -> TestRsp "late" after ms */
    CMD_STRAY = 4,    /* a response with another seq, then the answer */
    CMD_PUSH = 5,     /* a push (cmd PUSH_CMD), then the answer */
    CMD_HOLD = 6,     /* never answered */
    CMD_DROP = 7,     /* the connection is reset */
    CMD_GARBAGE = 8,  /* bytes with a bad magic */
    CMD_BADBODY = 9,  /* a response whose body is not a TestRsp */
    CMD_UNKNOWN = 99, /* anything else: error UNKNOWN_CMD */
    PUSH_CMD = 500
};

#define SERVER_HELLO "hello, i'm server"

/* ---- the responder (runs on the server's loop thread) ---------------- */

typedef struct delayed_s {
    zn_timer_t t;
    zn_conn_t *c;
    uint32_t seq;
    struct delayed_s *next;
} delayed_t;

typedef struct {
    tu_server_t ts;
    bool running;
    _Atomic unsigned requests; /* request frames received */
    _Atomic unsigned oneways;
    delayed_t *delayed; /* loop thread only */
} srv_t;

static srv_t g_srv;


static void
srv_send(zn_conn_t *c, uint32_t cmd, uint32_t seq, uint8_t flags,
         const void *body, size_t len)
{
    zn_frame_header_t h = {
        .length = (uint32_t)len, .cmd = cmd, .seq = seq, .flags = flags};
    uint8_t *frame = malloc(ZN_FRAME_HEADER_SIZE + len);

    assert_non_null(frame);
    assert_int_equal(zn_frame_encode_header(frame, &h), 0);
    if (len > 0)
        memcpy(frame + ZN_FRAME_HEADER_SIZE, body, len);
    (void)zn_conn_send(c, frame, ZN_FRAME_HEADER_SIZE + len);
    free(frame);
}


static void
srv_send_msg(zn_conn_t *c, uint32_t cmd, uint32_t seq, uint8_t flags,
             const ProtobufCMessage *m)
{
    size_t len = protobuf_c_message_get_packed_size(m);
    uint8_t *body = malloc(len + 1);

    assert_non_null(body);
    protobuf_c_message_pack(m, body);
    srv_send(c, cmd, seq, flags, body, len);
    free(body);
}


static void
srv_send_test_rsp(zn_conn_t *c, uint32_t cmd, uint32_t seq, uint8_t flags,
                  const char *text)
{
    Demo__TestRsp rsp = DEMO__TEST_RSP__INIT;

    rsp.res = (char *)text;
    srv_send_msg(c, cmd, seq, flags, &rsp.base);
}


static void
srv_send_error(zn_conn_t *c, uint32_t cmd, uint32_t seq)
{
    Znet__Error e = ZNET__ERROR__INIT;
    char text[64];

    snprintf(text, sizeof(text), "unknown cmd %u", (unsigned)cmd);
    e.code = ZN_CODE_UNKNOWN_CMD;
    e.message = text;
    srv_send_msg(c, cmd, seq, ZN_FRAME_F_RESPONSE | ZN_FRAME_F_ERROR, &e.base);
}


static void
srv_echo(zn_conn_t *c, const zn_frame_t *f)
{
    Demo__EchoReq *req;
    Demo__EchoRsp rsp = DEMO__ECHO_RSP__INIT;

    req = demo__echo_req__unpack(NULL, f->hdr.length, f->body);
    assert_non_null(req);
    rsp.payload = req->payload;
    srv_send_msg(c, f->hdr.cmd, f->hdr.seq, ZN_FRAME_F_RESPONSE, &rsp.base);
    demo__echo_req__free_unpacked(req, NULL);
}


static void
srv_delayed_cb(zn_timer_t *t, void *ud)
{
    delayed_t *d = ud, **pp;

    (void)t;
    srv_send_test_rsp(d->c, CMD_DELAY, d->seq, ZN_FRAME_F_RESPONSE, "late");
    for (pp = &g_srv.delayed; *pp != d; pp = &(*pp)->next)
        ;
    *pp = d->next;
    zn_conn_unref(d->c);
    free(d);
}


/* Holds the answer to a CMD_DELAY request for the milliseconds it asks. */
static void
srv_delay(zn_conn_t *c, const zn_frame_t *f)
{
    Demo__TestReq *req = demo__test_req__unpack(NULL, f->hdr.length, f->body);
    delayed_t *d = calloc(1, sizeof(*d));

    assert_non_null(req);
    assert_non_null(d);
    d->c = c;
    d->seq = f->hdr.seq;
    zn_conn_ref(c);
    d->next = g_srv.delayed;
    g_srv.delayed = d;
    zn_timer_init(zn_conn_loop(c), &d->t, srv_delayed_cb, d);
    zn_timer_start(&d->t, strtoull(req->msg, NULL, 10), 0);
    demo__test_req__free_unpacked(req, NULL);
}


static void
srv_request(zn_conn_t *c, const zn_frame_t *f)
{
    static const uint8_t bad_body[] = {0x0a, 0x05, 'a'};
    uint32_t seq = f->hdr.seq;

    atomic_fetch_add(&g_srv.requests, 1);
    if (zn_frame_is_oneway(&f->hdr)) {
        atomic_fetch_add(&g_srv.oneways, 1);
        return;
    }
    switch (f->hdr.cmd) {
    case CMD_TEST:
        srv_send_test_rsp(c, CMD_TEST, seq, ZN_FRAME_F_RESPONSE, SERVER_HELLO);
        break;
    case CMD_ECHO:
        srv_echo(c, f);
        break;
    case CMD_DELAY:
        srv_delay(c, f);
        break;
    case CMD_STRAY:
        srv_send_test_rsp(c, CMD_STRAY, seq + 100000, ZN_FRAME_F_RESPONSE,
                          "stray");
        srv_send_test_rsp(c, CMD_STRAY, seq, ZN_FRAME_F_RESPONSE, "real");
        break;
    case CMD_PUSH:
        srv_send_test_rsp(c, PUSH_CMD, 0, 0, "pushed");
        srv_send_test_rsp(c, CMD_PUSH, seq, ZN_FRAME_F_RESPONSE, "after");
        break;
    case CMD_HOLD:
        break;
    case CMD_DROP:
        zn_conn_abort(c);
        break;
    case CMD_GARBAGE:
        (void)zn_conn_send(c, "GARBAGE!GARBAGE!GARBAGE!", 24);
        break;
    case CMD_BADBODY:
        srv_send(c, CMD_BADBODY, seq, ZN_FRAME_F_RESPONSE, bad_body,
                 sizeof(bad_body));
        break;
    default:
        srv_send_error(c, f->hdr.cmd, seq);
        break;
    }
}


static void
srv_on_data(zn_conn_t *c, zn_buf_t *in, void *ud)
{
    zn_frame_t f;

    (void)ud;
    while (zn_conn_is_open(c) &&
           zn_frame_next(zn_buf_peek(in), zn_buf_len(in),
                         ZN_FRAME_MAX_BODY_DEFAULT, &f, NULL) == 0) {
        srv_request(c, &f);
        zn_buf_consume(in, f.size);
    }
    if (!zn_conn_is_open(c))
        zn_buf_consume(in, zn_buf_len(in));
}


static void
srv_start(uint16_t port)
{
    zn_server_opts_t o;

    zn_server_opts_default(&o);
    o.port = port;
    o.handler.on_data = srv_on_data;
    tu_server_start(&g_srv.ts, &o);
    g_srv.running = true;
}


/* Drops the replies still held, on the server's loop. */
static void
srv_forget_delayed(void *arg)
{
    delayed_t *d;

    (void)arg;
    while ((d = g_srv.delayed) != NULL) {
        g_srv.delayed = d->next;
        zn_timer_stop(&d->t);
        zn_conn_unref(d->c);
        free(d);
    }
}


static void
srv_stop(void)
{
    if (!g_srv.running)
        return;
    tu_run_on(g_srv.ts.loop, srv_forget_delayed, NULL);
    tu_server_stop(&g_srv.ts);
    g_srv.running = false;
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
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    return ntohs(a.sin_port);
}


/* ---- the client's side ------------------------------------------------- */

/* The outcome of one call, as its callback saw it. */
typedef struct {
    int n; /* callbacks run: must end at 1 */
    int status;
    uint32_t code;
    char text[64];  /* TestRsp.res, or the error message */
    uint32_t index; /* pipelined calls: the index sent */
    bool echo_ok;
} res_t;

typedef struct {
    zn_loop_t *loop;
    zn_rpc_t *r;
    int states_up, states_down;
    int give_ups;
    int pushes;
    uint32_t push_cmd;
    char push_text[32];
    int order[8]; /* indexes of calls in callback order */
    int norder;
    res_t *free_in_cb; /* the call whose callback frees the client */
} fx_t;

static fx_t g_fx;
static _Atomic int g_done; /* callbacks of calls from other threads */


static void
on_result(int status, const ProtobufCMessage *rsp, const zn_rpc_error_t *err,
          void *ud)
{
    res_t *x = ud;

    x->n++;
    x->status = status;
    if (err != NULL) {
        x->code = err->code;
        snprintf(x->text, sizeof(x->text), "%s", err->message);
    }
    if (rsp != NULL && rsp->descriptor == &demo__test_rsp__descriptor)
        snprintf(x->text, sizeof(x->text), "%s",
                 ((const Demo__TestRsp *)rsp)->res);
    if (rsp != NULL && rsp->descriptor == &demo__echo_rsp__descriptor) {
        const Demo__EchoRsp *e = (const Demo__EchoRsp *)rsp;

        x->echo_ok = e->payload.len == sizeof(x->index) &&
                     memcmp(e->payload.data, &x->index, 4) == 0;
    }
    if (x == g_fx.free_in_cb) {
        zn_rpc_free(g_fx.r);
        g_fx.r = NULL;
    }
    atomic_fetch_add(&g_done, 1);
}


static void
on_push(zn_rpc_t *r, uint32_t cmd, const void *body, size_t len, void *ud)
{
    fx_t *fx = ud;
    Demo__TestRsp *m = demo__test_rsp__unpack(NULL, len, body);

    (void)r;
    assert_non_null(m);
    fx->pushes++;
    fx->push_cmd = cmd;
    snprintf(fx->push_text, sizeof(fx->push_text), "%s", m->res);
    demo__test_rsp__free_unpacked(m, NULL);
}


static void
on_state(zn_rpc_t *r, bool up, void *ud)
{
    fx_t *fx = ud;

    (void)r;
    if (up)
        fx->states_up++;
    else
        fx->states_down++;
}


static void
on_give_up(zn_client_t *cl, int status, void *ud)
{
    (void)cl;
    (void)status;
    ((fx_t *)ud)->give_ups++;
}


static void
rpc_opts(zn_rpc_opts_t *o, uint16_t port)
{
    zn_rpc_opts_default(o);
    o->client.host = "127.0.0.1";
    o->client.port = port;
    o->client.on_give_up = on_give_up;
    o->on_push = on_push;
    o->on_state = on_state;
    o->ud = &g_fx;
    o->timeout_ms = 5000;
}


static void
client_new(const zn_rpc_opts_t *o)
{
    assert_int_equal(zn_loop_new(&g_fx.loop), 0);
    assert_int_equal(zn_rpc_new(g_fx.loop, o, &g_fx.r), 0);
}


/* Runs the client's loop on this thread until pred(arg) or `ms` pass. */
static int
run_until(int (*pred)(void *), void *arg, unsigned ms)
{
    uint64_t end = zn_now_ms() + ms;

    while (!pred(arg) && zn_now_ms() < end)
        assert_true(zn_loop_run_once(g_fx.loop, 5) >= 0);
    return pred(arg);
}


static int
done_at_least(void *arg)
{
    return atomic_load(&g_done) >= *(int *)arg;
}


static int
is_connected(void *arg)
{
    (void)arg;
    return zn_rpc_connected(g_fx.r);
}


static void
wait_done(int n, unsigned ms)
{
    assert_true(run_until(done_at_least, &n, ms));
}


/* Frees the client if the test has not, lets its close finish, and checks
 * that the loop is left with no timers. */
static void
client_finish(void)
{
    zn_loop_stats_t st;
    int i;

    zn_rpc_free(g_fx.r);
    g_fx.r = NULL;
    for (i = 0; i < 3; i++)
        zn_loop_run_once(g_fx.loop, 0);
    zn_loop_stats(g_fx.loop, &st);
    assert_int_equal(st.timers_active, 0);
    zn_loop_free(g_fx.loop);
    g_fx.loop = NULL;
}


static zn_rpc_stats_t
stats(void)
{
    zn_rpc_stats_t st;

    zn_rpc_stats(g_fx.r, &st);
    return st;
}


static int
call_test(uint32_t cmd, const char *msg, uint64_t timeout_ms, res_t *x)
{
    Demo__TestReq req = DEMO__TEST_REQ__INIT;

    req.msg = (char *)msg;
    return zn_rpc_call(g_fx.r, cmd, &req.base, &demo__test_rsp__descriptor,
                       timeout_ms, on_result, x);
}


static int
call_echo(res_t *x)
{
    Demo__EchoReq req = DEMO__ECHO_REQ__INIT;

    req.payload.data = (uint8_t *)&x->index;
    req.payload.len = sizeof(x->index);
    return zn_rpc_call(g_fx.r, CMD_ECHO, &req.base, &demo__echo_rsp__descriptor,
                       0, on_result, x);
}


static int
setup(void **state)
{
    (void)state;
    tu_alarm(30);
    memset(&g_fx, 0, sizeof(g_fx));
    atomic_store(&g_done, 0);
    atomic_store(&g_srv.requests, 0);
    atomic_store(&g_srv.oneways, 0);
    return 0;
}


static int
setup_server(void **state)
{
    setup(state);
    srv_start(0);
    return 0;
}


static int
teardown(void **state)
{
    (void)state;
    if (g_fx.loop != NULL)
        client_finish();
    srv_stop();
    alarm(0);
    return 0;
}


/* ---- tests ------------------------------------------------------------- */


static void
test_call_response(void **state)
{
    zn_rpc_opts_t o;
    res_t x = {0};

    (void)state;
    rpc_opts(&o, g_srv.ts.port);
    client_new(&o);
    assert_int_equal(call_test(CMD_TEST, "hello", 0, &x), 0);
    wait_done(1, 5000);
    assert_int_equal(x.n, 1);
    assert_int_equal(x.status, 0);
    assert_string_equal(x.text, SERVER_HELLO);
    assert_true(zn_rpc_connected(g_fx.r));
    assert_int_equal(g_fx.states_up, 1);
    assert_int_equal(stats().calls, 1);
    assert_int_equal(stats().ok, 1);
    assert_int_equal(stats().outstanding, 0);
}


static void
test_pipelining_1000(void **state)
{
    enum { N = 1000 };
    res_t *x = calloc(N, sizeof(*x));
    zn_rpc_opts_t o;
    uint32_t i;

    (void)state;
    assert_non_null(x);
    rpc_opts(&o, g_srv.ts.port);
    client_new(&o);
    assert_true(run_until(is_connected, NULL, 5000));
    for (i = 0; i < N; i++) {
        x[i].index = i * 7919u;
        assert_int_equal(call_echo(&x[i]), 0);
    }
    assert_int_equal(stats().outstanding, N);
    wait_done(N, 10000);
    for (i = 0; i < N; i++) {
        assert_int_equal(x[i].n, 1);
        assert_int_equal(x[i].status, 0);
        assert_true(x[i].echo_ok);
    }
    assert_int_equal(stats().ok, N);
    assert_int_equal(stats().late_responses, 0);
    assert_int_equal(atomic_load(&g_srv.requests), N);
    free(x);
}


static void
test_error_response(void **state)
{
    zn_rpc_opts_t o;
    res_t x = {0};

    (void)state;
    rpc_opts(&o, g_srv.ts.port);
    client_new(&o);
    assert_int_equal(call_test(CMD_UNKNOWN, "x", 0, &x), 0);
    wait_done(1, 5000);
    assert_int_equal(x.status, ZN_EPROTO);
    assert_int_equal(x.code, ZN_CODE_UNKNOWN_CMD);
    assert_string_equal(x.text, "unknown cmd 99");
    assert_int_equal(stats().errors, 1);
    assert_true(zn_rpc_connected(g_fx.r));
}


static int
late_counted(void *arg)
{
    (void)arg;
    return stats().late_responses >= 1;
}


static void
test_timeout_then_late_response(void **state)
{
    zn_rpc_opts_t o;
    res_t x = {0}, y = {0};
    uint64_t t0;

    (void)state;
    rpc_opts(&o, g_srv.ts.port);
    client_new(&o);
    t0 = zn_now_ms();
    assert_int_equal(call_test(CMD_DELAY, "300", 50, &x), 0);
    wait_done(1, 5000);
    assert_int_equal(x.status, ZN_ETIMEDOUT);
    assert_true(zn_now_ms() - t0 >= 45);
    assert_int_equal(stats().timeouts, 1);
    assert_int_equal(stats().outstanding, 0);
    assert_true(run_until(late_counted, NULL, 5000));
    assert_int_equal(x.n, 1);
    assert_int_equal(stats().late_responses, 1);
    assert_int_equal(call_test(CMD_TEST, "again", 0, &y), 0);
    wait_done(2, 5000);
    assert_int_equal(y.status, 0);
}


static int
requests_at_least(void *arg)
{
    return atomic_load(&g_srv.requests) >= *(unsigned *)arg;
}


static void
test_drop_fails_outstanding(void **state)
{
    enum { N = 100 };
    res_t x[N + 1];
    zn_rpc_opts_t o;
    int i;

    (void)state;
    memset(x, 0, sizeof(x));
    rpc_opts(&o, g_srv.ts.port);
    client_new(&o);
    for (i = 0; i < N; i++)
        assert_int_equal(call_test(CMD_HOLD, "", 0, &x[i]), 0);
    assert_int_equal(call_test(CMD_DROP, "", 0, &x[N]), 0);
    wait_done(N + 1, 5000);
    for (i = 0; i <= N; i++) {
        assert_int_equal(x[i].n, 1);
        assert_int_equal(x[i].status, ZN_ECONNRESET);
    }
    assert_int_equal(stats().failed, N + 1);
    assert_int_equal(stats().outstanding, 0);
    assert_int_equal(g_fx.states_down, 1);
    /* Without reconnect the client is done: calls are refused. */
    assert_int_equal(call_test(CMD_TEST, "", 0, &x[0]), ZN_ENOTCONN);
    for (i = 0; i < 5; i++)
        zn_loop_run_once(g_fx.loop, 1);
    assert_int_equal(x[0].n, 1);
}


static void
test_unknown_seq_dropped(void **state)
{
    zn_rpc_opts_t o;
    res_t x = {0};

    (void)state;
    rpc_opts(&o, g_srv.ts.port);
    client_new(&o);
    assert_int_equal(call_test(CMD_STRAY, "", 0, &x), 0);
    wait_done(1, 5000);
    assert_int_equal(x.n, 1);
    assert_int_equal(x.status, 0);
    assert_string_equal(x.text, "real");
    assert_int_equal(stats().late_responses, 1);
    assert_true(zn_rpc_connected(g_fx.r));
}


static void
test_push_reaches_on_push(void **state)
{
    zn_rpc_opts_t o;
    res_t x = {0};

    (void)state;
    rpc_opts(&o, g_srv.ts.port);
    client_new(&o);
    assert_int_equal(call_test(CMD_PUSH, "", 0, &x), 0);
    wait_done(1, 5000);
    assert_int_equal(x.status, 0);
    assert_string_equal(x.text, "after");
    assert_int_equal(g_fx.pushes, 1);
    assert_int_equal(g_fx.push_cmd, PUSH_CMD);
    assert_string_equal(g_fx.push_text, "pushed");
    assert_int_equal(stats().pushes, 1);
}


static void
on_ordered(int status, const ProtobufCMessage *rsp, const zn_rpc_error_t *err,
           void *ud)
{
    res_t *x = ud;

    on_result(status, rsp, err, ud);
    g_fx.order[g_fx.norder++] = (int)x->index;
}


/*
 * Calls made before there is a server at all: the client fails to
 * connect and waits to retry; the server then starts on that port, and
 * the queued calls go out, in order, on the first connection.
 */
static void
test_calls_before_connect(void **state)
{
    Demo__TestReq req = DEMO__TEST_REQ__INIT;
    uint16_t port = free_port();
    zn_rpc_opts_t o;
    res_t x[3];
    int i;

    (void)state;
    memset(x, 0, sizeof(x));
    rpc_opts(&o, port);
    o.client.reconnect = true;
    o.client.backoff_min_ms = 20;
    o.client.backoff_max_ms = 50;
    client_new(&o);
    req.msg = "early";
    for (i = 0; i < 3; i++) {
        x[i].index = (uint32_t)i;
        assert_int_equal(zn_rpc_call(g_fx.r, CMD_TEST, &req.base,
                                     &demo__test_rsp__descriptor, 0, on_ordered,
                                     &x[i]),
                         0);
    }
    assert_false(zn_rpc_connected(g_fx.r));
    zn_loop_run_once(g_fx.loop, 30);
    assert_int_equal(stats().outstanding, 3);
    srv_start(port);
    wait_done(3, 5000);
    for (i = 0; i < 3; i++) {
        assert_int_equal(x[i].n, 1);
        assert_int_equal(x[i].status, 0);
        assert_string_equal(x[i].text, SERVER_HELLO);
        assert_int_equal(g_fx.order[i], i);
    }
    assert_int_equal(g_fx.states_up, 1);
    assert_int_equal(atomic_load(&g_srv.requests), 3);
}


static int
gave_up(void *arg)
{
    (void)arg;
    return g_fx.give_ups > 0;
}


static void
test_give_up_fails_queued(void **state)
{
    Demo__TestReq req = DEMO__TEST_REQ__INIT;
    zn_rpc_opts_t o;
    res_t x[4];
    int i;

    (void)state;
    memset(x, 0, sizeof(x));
    rpc_opts(&o, free_port());
    o.client.reconnect = true;
    o.client.max_retries = 3;
    o.client.backoff_min_ms = 10;
    o.client.backoff_max_ms = 20;
    client_new(&o);
    for (i = 0; i < 4; i++)
        assert_int_equal(call_test(CMD_TEST, "", 0, &x[i]), 0);
    assert_true(run_until(gave_up, NULL, 5000));
    for (i = 0; i < 4; i++) {
        assert_int_equal(x[i].n, 1);
        assert_int_equal(x[i].status, ZN_ENOTCONN);
    }
    assert_int_equal(g_fx.give_ups, 1);
    assert_int_equal(stats().failed, 4);
    assert_int_equal(call_test(CMD_TEST, "", 0, &x[0]), ZN_ENOTCONN);
    assert_int_equal(zn_rpc_send_oneway(g_fx.r, CMD_TEST, &req.base),
                     ZN_ENOTCONN);
}


static void
test_malformed_body(void **state)
{
    zn_rpc_opts_t o;
    res_t x = {0}, y = {0};

    (void)state;
    rpc_opts(&o, g_srv.ts.port);
    client_new(&o);
    assert_int_equal(call_test(CMD_BADBODY, "", 0, &x), 0);
    wait_done(1, 5000);
    assert_int_equal(x.n, 1);
    assert_int_equal(x.status, ZN_EBADMSG);
    /* The stream itself is fine: the connection stays. */
    assert_int_equal(call_test(CMD_TEST, "", 0, &y), 0);
    wait_done(2, 5000);
    assert_int_equal(y.status, 0);
    assert_int_equal(g_fx.states_down, 0);
}


static void
test_garbage_closes_connection(void **state)
{
    zn_rpc_opts_t o;
    res_t x = {0}, y = {0};

    (void)state;
    rpc_opts(&o, g_srv.ts.port);
    client_new(&o);
    assert_int_equal(call_test(CMD_HOLD, "", 0, &x), 0);
    assert_int_equal(call_test(CMD_GARBAGE, "", 0, &y), 0);
    wait_done(2, 5000);
    assert_int_equal(x.status, ZN_ECONNRESET);
    assert_int_equal(y.status, ZN_ECONNRESET);
    assert_int_equal(g_fx.states_down, 1);
    assert_false(zn_rpc_connected(g_fx.r));
}


static void
test_max_pending(void **state)
{
    zn_rpc_opts_t o;
    res_t x[5];
    int i;

    (void)state;
    memset(x, 0, sizeof(x));
    rpc_opts(&o, g_srv.ts.port);
    o.max_pending = 4;
    client_new(&o);
    for (i = 0; i < 4; i++)
        assert_int_equal(call_test(CMD_HOLD, "", 0, &x[i]), 0);
    assert_int_equal(call_test(CMD_HOLD, "", 0, &x[4]), ZN_ENOBUFS);
    zn_rpc_free(g_fx.r);
    g_fx.r = NULL;
    for (i = 0; i < 4; i++)
        assert_int_equal(x[i].status, ZN_ECANCELED);
    assert_int_equal(x[4].n, 0);
}


static void
test_free_with_calls_outstanding(void **state)
{
    unsigned n = 10;
    zn_rpc_opts_t o;
    res_t x[10];
    unsigned i;

    (void)state;
    memset(x, 0, sizeof(x));
    rpc_opts(&o, g_srv.ts.port);
    client_new(&o);
    for (i = 0; i < n; i++)
        assert_int_equal(call_test(CMD_HOLD, "", 0, &x[i]), 0);
    assert_true(run_until(requests_at_least, &n, 5000));
    zn_rpc_free(g_fx.r);
    g_fx.r = NULL;
    for (i = 0; i < n; i++) {
        assert_int_equal(x[i].n, 1);
        assert_int_equal(x[i].status, ZN_ECANCELED);
    }
    /* on_close runs later, with nothing left to fail and no state. */
    for (i = 0; i < 3; i++)
        zn_loop_run_once(g_fx.loop, 0);
    assert_int_equal(g_fx.states_down, 0);
    assert_int_equal(atomic_load(&g_done), (int)n);
}


/* Freed while waiting to reconnect: the queued calls are canceled. */
static void
test_free_while_waiting(void **state)
{
    zn_rpc_opts_t o;
    res_t x[3];
    int i;

    (void)state;
    memset(x, 0, sizeof(x));
    rpc_opts(&o, free_port());
    o.client.reconnect = true;
    o.client.backoff_min_ms = 5000;
    client_new(&o);
    for (i = 0; i < 3; i++)
        assert_int_equal(call_test(CMD_TEST, "", 0, &x[i]), 0);
    zn_loop_run_once(g_fx.loop, 20);
    zn_rpc_free(g_fx.r);
    g_fx.r = NULL;
    for (i = 0; i < 3; i++) {
        assert_int_equal(x[i].n, 1);
        assert_int_equal(x[i].status, ZN_ECANCELED);
    }
}


static void
test_free_in_callback(void **state)
{
    zn_rpc_opts_t o;
    res_t x = {0}, y = {0};

    (void)state;
    rpc_opts(&o, g_srv.ts.port);
    client_new(&o);
    assert_int_equal(call_test(CMD_HOLD, "", 0, &y), 0);
    assert_int_equal(call_test(CMD_TEST, "", 0, &x), 0);
    g_fx.free_in_cb = &x;
    wait_done(2, 5000);
    assert_null(g_fx.r);
    assert_int_equal(x.status, 0);
    assert_int_equal(y.n, 1);
    assert_int_equal(y.status, ZN_ECANCELED);
}


static int
oneways_at_least(void *arg)
{
    return atomic_load(&g_srv.oneways) >= *(unsigned *)arg;
}


static void
test_oneway(void **state)
{
    Demo__TestReq req = DEMO__TEST_REQ__INIT;
    zn_rpc_opts_t o;
    unsigned one = 1;
    res_t x = {0};

    (void)state;
    req.msg = "fire and forget";
    rpc_opts(&o, g_srv.ts.port);
    client_new(&o);
    assert_true(run_until(is_connected, NULL, 5000));
    assert_int_equal(zn_rpc_send_oneway(g_fx.r, CMD_TEST, &req.base), 0);
    assert_true(run_until(oneways_at_least, &one, 5000));
    assert_int_equal(call_test(CMD_TEST, "", 0, &x), 0);
    wait_done(1, 5000);
    assert_int_equal(x.status, 0);
    assert_int_equal(stats().late_responses, 0);
}


/* ---- threads ------------------------------------------------------------ */


static void
noop(void *arg)
{
    (void)arg;
}


/* Starts the client's loop on a thread and waits until it runs there. */
static void
loop_thread_start(tu_loop_thread_t *lt)
{
    tu_loop_thread_start(lt, g_fx.loop);
    tu_run_on(g_fx.loop, noop, NULL);
}


static void
free_rpc_task(void *arg)
{
    (void)arg;
    zn_rpc_free(g_fx.r);
    g_fx.r = NULL;
}


static void
loop_thread_finish(tu_loop_thread_t *lt)
{
    tu_run_on(g_fx.loop, free_rpc_task, NULL);
    tu_loop_thread_join(lt);
    client_finish();
}


static void
test_call_sync_other_thread(void **state)
{
    Demo__TestReq req = DEMO__TEST_REQ__INIT;
    ProtobufCMessage *rsp;
    tu_loop_thread_t lt;
    zn_rpc_opts_t o;
    char text[64];
    uint32_t code;
    int rc;

    (void)state;
    rpc_opts(&o, g_srv.ts.port);
    client_new(&o);
    loop_thread_start(&lt);
    req.msg = "sync";
    rc = zn_rpc_call_sync(g_fx.r, CMD_TEST, &req.base,
                          &demo__test_rsp__descriptor, 0, &rsp, &code, text,
                          sizeof(text));
    assert_int_equal(rc, 0);
    assert_non_null(rsp);
    assert_ptr_equal(rsp->descriptor, &demo__test_rsp__descriptor);
    assert_string_equal(((Demo__TestRsp *)rsp)->res, SERVER_HELLO);
    zn_rpc_msg_free(rsp);
    rc = zn_rpc_call_sync(g_fx.r, CMD_UNKNOWN, &req.base,
                          &demo__test_rsp__descriptor, 0, &rsp, &code, text,
                          sizeof(text));
    assert_int_equal(rc, ZN_EPROTO);
    assert_null(rsp);
    assert_int_equal(code, ZN_CODE_UNKNOWN_CMD);
    assert_string_equal(text, "unknown cmd 99");
    rc = zn_rpc_call_sync(g_fx.r, CMD_HOLD, &req.base,
                          &demo__test_rsp__descriptor, 50, &rsp, NULL, NULL, 0);
    assert_int_equal(rc, ZN_ETIMEDOUT);
    loop_thread_finish(&lt);
}


static void
sync_on_loop(void *arg)
{
    Demo__TestReq req = DEMO__TEST_REQ__INIT;
    ProtobufCMessage *rsp = (ProtobufCMessage *)&req;

    *(int *)arg =
        zn_rpc_call_sync(g_fx.r, CMD_TEST, &req.base,
                         &demo__test_rsp__descriptor, 0, &rsp, NULL, NULL, 0);
    assert_null(rsp);
}


static void
test_call_sync_on_loop_thread(void **state)
{
    tu_loop_thread_t lt;
    zn_rpc_opts_t o;
    int rc = 0;

    (void)state;
    rpc_opts(&o, g_srv.ts.port);
    client_new(&o);
    /* Before the loop runs elsewhere, this thread is the loop's. */
    sync_on_loop(&rc);
    assert_int_equal(rc, ZN_EDEADLK);
    loop_thread_start(&lt);
    rc = 0;
    tu_run_on(g_fx.loop, sync_on_loop, &rc);
    assert_int_equal(rc, ZN_EDEADLK);
    assert_int_equal(stats().calls, 0);
    loop_thread_finish(&lt);
}


enum { THREADS = 4, PER_THREAD = 250 };

typedef struct {
    pthread_t th;
    res_t x[PER_THREAD];
    int base;
} caller_t;


static void *
caller_main(void *arg)
{
    caller_t *c = arg;
    int i;

    for (i = 0; i < PER_THREAD; i++) {
        c->x[i].index = (uint32_t)(c->base + i);
        assert_int_equal(call_echo(&c->x[i]), 0);
    }
    return NULL;
}


static int
all_done(void *arg)
{
    return atomic_load(&g_done) >= *(int *)arg;
}


/* Calls from several threads at once; each callback runs once, on the
 * loop, with its own response. */
static void
test_call_from_other_threads(void **state)
{
    caller_t *c = calloc(THREADS, sizeof(*c));
    int i, j, total = THREADS * PER_THREAD;
    tu_loop_thread_t lt;
    zn_rpc_opts_t o;

    (void)state;
    assert_non_null(c);
    rpc_opts(&o, g_srv.ts.port);
    client_new(&o);
    loop_thread_start(&lt);
    for (i = 0; i < THREADS; i++) {
        c[i].base = i * PER_THREAD;
        assert_int_equal(pthread_create(&c[i].th, NULL, caller_main, &c[i]), 0);
    }
    for (i = 0; i < THREADS; i++)
        pthread_join(c[i].th, NULL);
    assert_true(tu_wait_until(all_done, &total, 10000));
    loop_thread_finish(&lt);
    for (i = 0; i < THREADS; i++)
        for (j = 0; j < PER_THREAD; j++) {
            assert_int_equal(c[i].x[j].n, 1);
            assert_int_equal(c[i].x[j].status, 0);
            assert_true(c[i].x[j].echo_ok);
        }
    free(c);
}


/*
 * Calls posted from another thread while the loop is stopped, then the
 * client freed from this thread: the posted calls fail with ZN_ECANCELED
 * when zn_loop_free() runs them, and nothing leaks.
 */
static void
test_free_after_loop_stopped(void **state)
{
    unsigned n = 3;
    tu_loop_thread_t lt;
    zn_rpc_opts_t o;
    res_t x[5];
    int i;

    (void)state;
    memset(x, 0, sizeof(x));
    rpc_opts(&o, g_srv.ts.port);
    client_new(&o);
    loop_thread_start(&lt);
    for (i = 0; i < 3; i++)
        assert_int_equal(call_test(CMD_HOLD, "", 0, &x[i]), 0);
    assert_true(tu_wait_until(requests_at_least, &n, 5000));
    tu_loop_thread_join(&lt);
    /* This thread is not the loop's: these are posted. */
    assert_int_equal(call_test(CMD_HOLD, "", 0, &x[3]), 0);
    assert_int_equal(call_test(CMD_HOLD, "", 0, &x[4]), 0);
    zn_rpc_free(g_fx.r);
    g_fx.r = NULL;
    for (i = 0; i < 3; i++)
        assert_int_equal(x[i].status, ZN_ECANCELED);
    assert_int_equal(x[3].n, 0);
    zn_loop_free(g_fx.loop);
    g_fx.loop = NULL;
    for (i = 0; i < 5; i++) {
        assert_int_equal(x[i].n, 1);
        assert_int_equal(x[i].status, ZN_ECANCELED);
    }
}


int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_call_response, setup_server,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_pipelining_1000, setup_server,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_error_response, setup_server,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_timeout_then_late_response,
                                        setup_server, teardown),
        cmocka_unit_test_setup_teardown(test_drop_fails_outstanding,
                                        setup_server, teardown),
        cmocka_unit_test_setup_teardown(test_unknown_seq_dropped, setup_server,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_push_reaches_on_push, setup_server,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_calls_before_connect, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_give_up_fails_queued, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_malformed_body, setup_server,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_garbage_closes_connection,
                                        setup_server, teardown),
        cmocka_unit_test_setup_teardown(test_max_pending, setup_server,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_free_with_calls_outstanding,
                                        setup_server, teardown),
        cmocka_unit_test_setup_teardown(test_free_while_waiting, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_free_in_callback, setup_server,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_oneway, setup_server, teardown),
        cmocka_unit_test_setup_teardown(test_call_sync_other_thread,
                                        setup_server, teardown),
        cmocka_unit_test_setup_teardown(test_call_sync_on_loop_thread,
                                        setup_server, teardown),
        cmocka_unit_test_setup_teardown(test_call_from_other_threads,
                                        setup_server, teardown),
        cmocka_unit_test_setup_teardown(test_free_after_loop_stopped,
                                        setup_server, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
