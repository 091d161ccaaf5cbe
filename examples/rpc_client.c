/*
 * rpc_client: the seed's demo client on znet's RPC client.
 *
 *   rpc_client [--host H] [--port P] [--count N] [--timeout MS]
 *              [--echo SIZE]
 *
 * Calls cmd 1 (demo.TestReq { msg: "hello" }) and prints the reply's
 * `res`; with --echo SIZE also calls cmd 2 with a SIZE-byte payload and
 * checks that the same bytes come back. --count repeats both N times.
 * Exits 0 if every call succeeded, 1 otherwise (with a message saying
 * why), 2 on bad arguments.
 *
 * The loop runs on a second thread; the main thread makes blocking calls
 * with zn_rpc_call_sync(), the helper meant for tools like this one.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "demo.pb-c.h"
#include "znet/rpc.h"
#include "znet/znet.h"

typedef struct {
    const char *host;
    uint16_t port;
    unsigned count;
    uint64_t timeout_ms;
    size_t echo; /* 0: no echo call */
} args_t;

/* The connection's fate, handed from the loop thread to the main one. */
typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int state; /* 0 connecting, 1 up, < 0 gave up: error */
} ready_t;


static void
usage(const char *prog)
{
    fprintf(stderr,
            "usage: %s [--host H] [--port P] [--count N] [--timeout MS]\n"
            "          [--echo SIZE]\n",
            prog);
    exit(2);
}


static void
parse_args(int argc, char **argv, args_t *a)
{
    int i;

    for (i = 1; i < argc; i += 2) {
        const char *k = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;

        if (v == NULL)
            usage(argv[0]);
        if (strcmp(k, "--host") == 0)
            a->host = v;
        else if (strcmp(k, "--port") == 0)
            a->port = (uint16_t)strtoul(v, NULL, 10);
        else if (strcmp(k, "--count") == 0)
            a->count = (unsigned)strtoul(v, NULL, 10);
        else if (strcmp(k, "--timeout") == 0)
            a->timeout_ms = strtoull(v, NULL, 10);
        else if (strcmp(k, "--echo") == 0)
            a->echo = (size_t)strtoull(v, NULL, 10);
        else
            usage(argv[0]);
    }
    if (a->count == 0 || a->timeout_ms == 0 || a->port == 0)
        usage(argv[0]);
}


static void
set_ready(ready_t *rd, int state)
{
    pthread_mutex_lock(&rd->mu);
    if (rd->state == 0)
        rd->state = state;
    pthread_cond_signal(&rd->cv);
    pthread_mutex_unlock(&rd->mu);
}


static void
on_state(zn_rpc_t *r, bool connected, void *ud)
{
    (void)r;
    if (connected)
        set_ready(ud, 1);
}


static void
on_give_up(zn_client_t *cl, int status, void *ud)
{
    (void)cl;
    set_ready(ud, status < 0 ? status : ZN_ENOTCONN);
}


static void *
loop_main(void *arg)
{
    zn_loop_run(arg);
    return NULL;
}


/* Waits until connected or given up (the client's connect time-out bounds
 * the wait); returns 0 or the error. */
static int
wait_ready(ready_t *rd)
{
    int state;

    pthread_mutex_lock(&rd->mu);
    while (rd->state == 0)
        pthread_cond_wait(&rd->cv, &rd->mu);
    state = rd->state;
    pthread_mutex_unlock(&rd->mu);
    return state > 0 ? 0 : state;
}


static int
call_test(zn_rpc_t *r, const args_t *a, bool print)
{
    Demo__TestReq req = DEMO__TEST_REQ__INIT;
    ProtobufCMessage *rsp;
    char text[256];
    uint32_t code;
    int rc;

    req.msg = "hello";
    rc = zn_rpc_call_sync(r, 1, &req.base, &demo__test_rsp__descriptor,
                          a->timeout_ms, &rsp, &code, text, sizeof(text));
    if (rc == ZN_EPROTO) {
        fprintf(stderr, "rpc_client: cmd 1: error response %u (%s): %s\n",
                (unsigned)code, zn_frame_err_name(code), text);
        return 1;
    }
    if (rc != 0) {
        fprintf(stderr, "rpc_client: cmd 1: %s\n", zn_strerror(rc));
        return 1;
    }
    if (print) {
        printf("%s\n", ((Demo__TestRsp *)rsp)->res);
        fflush(stdout);
    }
    zn_rpc_msg_free(rsp);
    return 0;
}


static int
call_echo(zn_rpc_t *r, const args_t *a, uint8_t *payload, bool print)
{
    Demo__EchoReq req = DEMO__ECHO_REQ__INIT;
    const Demo__EchoRsp *e;
    ProtobufCMessage *rsp;
    char text[256];
    uint32_t code;
    bool same;
    int rc;

    req.payload.data = payload;
    req.payload.len = a->echo;
    rc = zn_rpc_call_sync(r, 2, &req.base, &demo__echo_rsp__descriptor,
                          a->timeout_ms, &rsp, &code, text, sizeof(text));
    if (rc != 0) {
        fprintf(stderr, "rpc_client: cmd 2: %s%s%s\n", zn_strerror(rc),
                rc == ZN_EPROTO ? ": " : "", rc == ZN_EPROTO ? text : "");
        return 1;
    }
    e = (const Demo__EchoRsp *)rsp;
    same = e->payload.len == a->echo &&
           (a->echo == 0 || memcmp(e->payload.data, payload, a->echo) == 0);
    zn_rpc_msg_free(rsp);
    if (!same) {
        fprintf(stderr, "rpc_client: cmd 2: the echo differs\n");
        return 1;
    }
    if (print)
        printf("echo: %zu bytes, intact\n", a->echo);
    return 0;
}


/* The calls, from the main thread, while the loop runs on its own. */
static int
run_calls(zn_rpc_t *r, const args_t *a)
{
    uint8_t *payload = NULL;
    uint64_t t0 = zn_now_ms();
    unsigned i;
    size_t j;
    int rc = 0;

    if (a->echo > 0 && (payload = malloc(a->echo)) == NULL)
        return 1;
    for (j = 0; j < a->echo; j++)
        payload[j] = (uint8_t)(j * 31 + 7);
    for (i = 0; i < a->count && rc == 0; i++) {
        rc = call_test(r, a, i == 0);
        if (rc == 0 && a->echo > 0)
            rc = call_echo(r, a, payload, i == 0);
    }
    if (rc == 0 && a->count > 1)
        printf("rpc_client: %u rounds in %llu ms, all ok\n", a->count,
               (unsigned long long)(zn_now_ms() - t0));
    free(payload);
    return rc;
}


typedef struct {
    zn_loop_t *loop;
    zn_rpc_t *r;
} app_t;


/* On the loop: the client goes (it belongs to the loop's thread), then
 * the loop stops. */
static void
stop_task(void *arg)
{
    app_t *app = arg;

    zn_rpc_free(app->r);
    zn_loop_stop(app->loop);
}


/* No reconnect: a refused connection gives up at once, and on_give_up
 * says why. */
static void
make_opts(zn_rpc_opts_t *o, const args_t *a, ready_t *rd)
{
    zn_rpc_opts_default(o);
    o->client.host = a->host;
    o->client.port = a->port;
    o->client.connect_timeout_ms = a->timeout_ms;
    o->client.on_give_up = on_give_up;
    o->on_state = on_state;
    o->ud = rd;
    o->timeout_ms = a->timeout_ms;
    if (a->echo + 64 > o->max_body)
        o->max_body = (uint32_t)(a->echo + 64);
}


int
main(int argc, char **argv)
{
    args_t a = {"127.0.0.1", 11111, 1, 5000, 0};
    ready_t rd = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0};
    app_t app;
    zn_rpc_opts_t o;
    pthread_t th;
    int rc;

    parse_args(argc, argv, &a);
    make_opts(&o, &a, &rd);
    if ((rc = zn_loop_new(&app.loop)) != 0) {
        fprintf(stderr, "rpc_client: loop: %s\n", zn_strerror(rc));
        return 1;
    }
    if ((rc = zn_rpc_new(app.loop, &o, &app.r)) != 0) {
        fprintf(stderr, "rpc_client: %s:%u: %s%s\n", a.host, (unsigned)a.port,
                zn_strerror(rc),
                rc == ZN_EINVAL ? " (the host must be a numeric address)" : "");
        zn_loop_free(app.loop);
        return 1;
    }
    if (pthread_create(&th, NULL, loop_main, app.loop) != 0) {
        zn_rpc_free(app.r);
        zn_loop_free(app.loop);
        return 1;
    }
    rc = wait_ready(&rd);
    if (rc != 0)
        fprintf(stderr, "rpc_client: cannot connect to %s:%u: %s\n", a.host,
                (unsigned)a.port, zn_strerror(rc));
    else
        rc = run_calls(app.r, &a);
    zn_loop_post(app.loop, stop_task, &app);
    pthread_join(th, NULL);
    zn_loop_free(app.loop);
    return rc == 0 ? 0 : 1;
}
