/*
 * test_service.c: typed services (znet/service.h) end to end, in the four
 * threading models: a generated service (examples/greeter/greeter.proto)
 * registered on a table beside a hand-registered command, called through
 * the generated callers on a client service, asynchronously from another
 * thread and with the blocking form; its answers, application errors,
 * deferred answers, deadlines, a lost connection, answers of the wrong
 * type; the id scheme and the registration's refusals.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "demo.pb-c.h"
#include "greeter.pb-c.h"
#include "testutil.h"
#include "znet/msg.h"
#include "znet/service.h"

typedef struct {
    const char *name;
    unsigned io_threads, workers;
} model_t;

static model_t models[] = {
    {"single", 0, 0}, {"workers", 0, 4}, {"io", 2, 0}, {"io+workers", 2, 4}};

/* ---- the server's implementation ------------------------------------- */

/* A deferred answer, given by a thread of its own after `ms`. */
typedef struct {
    zn_msg_req_t *req;
    Greet__HelloRsp_Closure closure;
    unsigned ms;
    char text[64];
} later_t;


/* The threads of deferred answers, joined before the server goes: one
 * may still be inside zn_loop_post when its answer has arrived. */
static pthread_t later_threads[16];
static _Atomic int n_later;


static void
join_later(void)
{
    int i, n = atomic_exchange(&n_later, 0);

    for (i = 0; i < n; i++)
        pthread_join(later_threads[i], NULL);
}


static void *
later_main(void *arg)
{
    later_t *l = arg;
    Greet__HelloRsp rsp = GREET__HELLO_RSP__INIT;

    usleep(l->ms * 1000);
    rsp.text = l->text;
    l->closure(&rsp, l->req);
    free(l);
    return NULL;
}


/*
 * Hello: "hello, NAME"; the name picks a behaviour for the tests:
 * "" an application error, "later:MS" a deferred answer from another
 * thread MS ms later, "drop" a closed connection and no answer, "wrong" a
 * CountRsp, "null" closure(NULL), "none" no answer at all.
 */
static void
greeter_hello(Greet__Greeter_Service *service, const Greet__HelloReq *in,
              Greet__HelloRsp_Closure closure, void *closure_data)
{
    Greet__HelloRsp rsp = GREET__HELLO_RSP__INIT;
    Greet__CountRsp wrong = GREET__COUNT_RSP__INIT;
    zn_msg_req_t *req = zn_msg_call_req(closure_data);
    char text[80];
    pthread_t th;
    later_t *l;

    (void)service;
    if (in->name[0] == '\0') {
        zn_msg_reply_error(req, 1001, "who?");
    } else if (strncmp(in->name, "later:", 6) == 0) {
        l = calloc(1, sizeof(*l));
        assert_non_null(l);
        l->req = req;
        l->closure = closure;
        l->ms = (unsigned)atoi(in->name + 6);
        snprintf(l->text, sizeof(l->text), "later, %u", l->ms);
        zn_msg_req_defer(req);
        assert_int_equal(pthread_create(&th, NULL, later_main, l), 0);
        later_threads[atomic_fetch_add(&n_later, 1)] = th;
    } else if (strcmp(in->name, "drop") == 0) {
        zn_msg_req_defer(req);
        zn_conn_close(zn_msg_req_conn(req));
        zn_msg_reply_error(req, 1002, "dropped"); /* finds it closed */
    } else if (strcmp(in->name, "wrong") == 0) {
        closure((const Greet__HelloRsp *)(void *)&wrong, closure_data);
    } else if (strcmp(in->name, "null") == 0) {
        closure(NULL, closure_data);
    } else if (strcmp(in->name, "none") != 0) {
        snprintf(text, sizeof(text), "hello, %s", in->name);
        rsp.text = text;
        closure(&rsp, closure_data);
    }
}


static void
greeter_count(Greet__Greeter_Service *service, const Greet__CountReq *in,
              Greet__CountRsp_Closure closure, void *closure_data)
{
    Greet__CountRsp rsp = GREET__COUNT_RSP__INIT;
    uint32_t n[1000], i;

    (void)service;
    if (in->upto > 1000) {
        zn_msg_reply_error(zn_msg_call_req(closure_data),
                           ZN_CODE_BAD_REQUEST, "upto over 1000");
        return;
    }
    for (i = 0; i < in->upto; i++)
        n[i] = i + 1;
    rsp.n = n;
    rsp.n_n = in->upto;
    closure(&rsp, closure_data);
}


static Greet__Greeter_Service greeter = GREET__GREETER__INIT(greeter_);


/* The seed's cmd 1, registered by hand beside the service. */
static void
h_test(zn_msg_req_t *req, const ProtobufCMessage *msg, void *ud)
{
    Demo__TestRsp rsp = DEMO__TEST_RSP__INIT;

    (void)msg;
    (void)ud;
    rsp.res = "hand-registered";
    zn_msg_reply(req, &rsp.base);
}

/* ---- fixture ----------------------------------------------------------- */

typedef struct {
    zn_msg_table_t *table;
    zn_msg_service_t *svc;
    tu_server_t ts;
    zn_loop_t *cloop;
    tu_loop_thread_t clt;
    zn_rpc_t *rpc;
    ProtobufCService *stub;
} fx_t;


static void
fx_start(fx_t *fx, const model_t *m)
{
    zn_server_opts_t so;
    zn_msg_opts_t mo;
    zn_rpc_opts_t ro;

    memset(fx, 0, sizeof(*fx));
    assert_int_equal(zn_msg_table_new(&fx->table), 0);
    assert_int_equal(zn_msg_table_register(fx->table, 1,
                                           &demo__test_req__descriptor,
                                           h_test, NULL), 0);
    assert_int_equal(zn_msg_table_add_service(fx->table, &greeter.base, NULL),
                     0);
    zn_msg_opts_default(&mo);
    mo.workers = m->workers;
    assert_int_equal(zn_msg_service_new(fx->table, &mo, &fx->svc), 0);
    zn_server_opts_default(&so);
    so.io_threads = m->io_threads;
    zn_msg_service_bind(fx->svc, &so);
    tu_server_start(&fx->ts, &so);
    assert_int_equal(zn_loop_new(&fx->cloop), 0);
    zn_rpc_opts_default(&ro);
    ro.client.host = "127.0.0.1";
    ro.client.port = fx->ts.port;
    ro.timeout_ms = 5000;
    assert_int_equal(zn_rpc_new(fx->cloop, &ro, &fx->rpc), 0);
    assert_int_equal(zn_rpc_service_new(fx->rpc, &greet__greeter__descriptor,
                                        NULL, &fx->stub),
                     0);
    tu_loop_thread_start(&fx->clt, fx->cloop);
}


static void
fx_stop(fx_t *fx)
{
    tu_loop_thread_join(&fx->clt);
    zn_rpc_service_free(fx->stub);
    zn_rpc_free(fx->rpc);
    zn_loop_free(fx->cloop);
    zn_msg_service_stop(fx->svc);
    tu_server_stop(&fx->ts);
    zn_msg_service_free(fx->svc);
    zn_msg_table_free(fx->table);
}

/* ---- an asynchronous call, waited for ---------------------------------- */

typedef struct {
    zn_call_t call;            /* the closure_data */
    _Atomic int done;
    int calls;                 /* closures run */
    bool on_loop;              /* the closure ran on the client's loop */
    char text[128];
    size_t count;
    zn_loop_t *loop;
} res_t;


static void
on_hello(const Greet__HelloRsp *rsp, void *closure_data)
{
    res_t *r = (res_t *)closure_data; /* call is its first member */

    r->calls++;
    r->on_loop = zn_loop_in_thread(r->loop);
    snprintf(r->text, sizeof(r->text), "%s", rsp != NULL ? rsp->text : "-");
    atomic_store(&r->done, 1);
}


static void
on_count(const Greet__CountRsp *rsp, void *closure_data)
{
    res_t *r = (res_t *)closure_data;

    r->calls++;
    r->count = rsp != NULL ? rsp->n_n : 0;
    if (rsp != NULL && rsp->n_n > 0 && rsp->n[rsp->n_n - 1] != rsp->n_n)
        r->count = 0;
    atomic_store(&r->done, 1);
}


static int
is_done(void *arg)
{
    return atomic_load(&((res_t *)arg)->done);
}


/* Calls Hello(name) from this thread (not the client's loop's) through
 * the generated caller and waits for its closure. */
static void
hello(fx_t *fx, const char *name, uint64_t timeout_ms, res_t *r)
{
    Greet__HelloReq req = GREET__HELLO_REQ__INIT;

    memset(r, 0, sizeof(*r));
    r->loop = fx->cloop;
    r->call.timeout_ms = timeout_ms;
    req.name = (char *)name;
    greet__greeter__hello(fx->stub, &req, on_hello, &r->call);
    assert_true(tu_wait_until(is_done, r, 10000));
    usleep(1000); /* a second closure would show in calls */
    assert_int_equal(r->calls, 1);
    assert_true(r->on_loop);
}

/* ---- tests ------------------------------------------------------------- */

/* The id scheme of service.h: FNV-1a of the full name, top bit set. The
 * figures were computed apart from znet (by a few lines of Python). */
static void
test_method_ids_are_the_documented_hash(void **state)
{
    (void)state;
    assert_int_equal(zn_method_id("greet.Greeter.Hello"), 0xfe234b00u);
    assert_int_equal(zn_method_id("greet.Greeter.Count"), 0xe16e1617u);
    assert_int_equal(zn_method_id(""), 0x811c9dc5u);
    assert_int_equal(zn_service_method_id(&greet__greeter__descriptor, 0),
                     zn_method_id("greet.Greeter.Hello"));
    assert_int_equal(zn_service_method_id(&greet__greeter__descriptor, 1),
                     zn_method_id("greet.Greeter.Count"));
    assert_int_equal(zn_service_method_id(&greet__greeter__descriptor, 2), 0);
}


/* A clash with a hand-registered command, with another method, or a second
 * registration is refused, and leaves the table as it was. */
static void
test_registration_refuses_clashes_and_changes_nothing(void **state)
{
    const uint32_t same[2] = {7, 7}, explicit_ids[2] = {7, 0};
    const uint32_t clash[2] = {0, 1};
    zn_msg_table_t *t;

    (void)state;
    assert_int_equal(zn_msg_table_new(&t), 0);
    assert_int_equal(zn_msg_table_register(t, 1, &demo__test_req__descriptor,
                                           h_test, NULL), 0);
    assert_int_equal(zn_msg_table_add_service(t, &greeter.base, clash),
                     ZN_EEXIST);
    /* nothing of the service went in: Hello's hashed id is still free */
    assert_int_equal(zn_msg_table_register(t,
                                           zn_method_id("greet.Greeter.Hello"),
                                           &demo__test_req__descriptor,
                                           h_test, NULL), 0);
    assert_int_equal(zn_msg_table_add_service(t, &greeter.base, NULL),
                     ZN_EEXIST);
    assert_int_equal(zn_msg_table_add_service(t, &greeter.base, same),
                     ZN_EEXIST);
    assert_int_equal(zn_msg_table_add_service(t, &greeter.base, explicit_ids),
                     0);
    assert_int_equal(zn_msg_table_add_service(t, &greeter.base, explicit_ids),
                     ZN_EEXIST);
    assert_int_equal(zn_msg_table_add_service(t, NULL, NULL), ZN_EINVAL);
    zn_msg_table_free(t);
}


/* The typed calls work in every model, beside the hand-registered cmd. */
static void
test_typed_calls_answer(void **state)
{
    Greet__CountReq creq = GREET__COUNT_REQ__INIT;
    Demo__TestReq treq = DEMO__TEST_REQ__INIT;
    ProtobufCMessage *out;
    zn_call_t call;
    res_t r;
    fx_t fx;

    fx_start(&fx, *state);
    hello(&fx, "bob", 0, &r);
    assert_int_equal(r.call.status, 0);
    assert_string_equal(r.text, "hello, bob");
    /* a second method, a repeated answer */
    memset(&r, 0, sizeof(r));
    r.loop = fx.cloop;
    creq.upto = 300;
    greet__greeter__count(fx.stub, &creq, on_count, &r.call);
    assert_true(tu_wait_until(is_done, &r, 10000));
    assert_int_equal(r.call.status, 0);
    assert_int_equal(r.count, 300);
    /* the blocking form */
    memset(&call, 0, sizeof(call));
    creq.upto = 5;
    assert_int_equal(zn_rpc_service_call_sync(fx.stub, "Count", &creq.base,
                                              &out, &call), 0);
    assert_int_equal(((Greet__CountRsp *)out)->n_n, 5);
    zn_rpc_msg_free(out);
    creq.upto = 5000;
    assert_int_equal(zn_rpc_service_call_sync(fx.stub, "Count", &creq.base,
                                              &out, &call), ZN_EPROTO);
    assert_int_equal(call.code, ZN_CODE_BAD_REQUEST);
    assert_string_equal(call.message, "upto over 1000");
    assert_int_equal(zn_rpc_service_call_sync(fx.stub, "Nope", &creq.base,
                                              &out, &call), ZN_ENOENT);
    assert_int_equal(zn_rpc_service_call_sync(fx.stub, "Hello", &creq.base,
                                              &out, &call), ZN_EINVAL);
    /* the seed's command by hand, on the same connection */
    treq.msg = "hi";
    assert_int_equal(zn_rpc_call_sync(fx.rpc, 1, &treq.base,
                                      &demo__test_rsp__descriptor, 0, &out,
                                      NULL, NULL, 0), 0);
    assert_string_equal(((Demo__TestRsp *)out)->res, "hand-registered");
    zn_rpc_msg_free(out);
    fx_stop(&fx);
}


static int
nothing_pending(void *svc)
{
    return zn_msg_service_pending(svc) == 0;
}


/* Every way a call can end reaches the closure once, with its status. */
static void
test_typed_call_outcomes(void **state)
{
    res_t r;
    fx_t fx;

    fx_start(&fx, *state);
    hello(&fx, "", 0, &r); /* an application error */
    assert_int_equal(r.call.status, ZN_EPROTO);
    assert_int_equal(r.call.code, 1001);
    assert_string_equal(r.call.message, "who?");
    assert_string_equal(r.text, "-");
    hello(&fx, "later:50", 0, &r); /* deferred, answered from a thread */
    assert_int_equal(r.call.status, 0);
    assert_string_equal(r.text, "later, 50");
    hello(&fx, "later:600", 150, &r); /* past the call's deadline */
    assert_int_equal(r.call.status, ZN_ETIMEDOUT);
    hello(&fx, "wrong", 0, &r); /* an answer of another type */
    assert_int_equal(r.call.status, ZN_EPROTO);
    assert_int_equal(r.call.code, ZN_CODE_INTERNAL);
    hello(&fx, "null", 0, &r);
    assert_int_equal(r.call.status, ZN_EPROTO);
    assert_int_equal(r.call.code, ZN_CODE_INTERNAL);
    hello(&fx, "none", 0, &r); /* neither answered nor deferred */
    assert_int_equal(r.call.status, ZN_EPROTO);
    assert_int_equal(r.call.code, ZN_CODE_INTERNAL);
    hello(&fx, "drop", 0, &r); /* the connection lost before an answer */
    assert_int_equal(r.call.status, ZN_ECONNRESET);
    /* the late answer to the timed-out call is given, then dropped */
    assert_true(tu_wait_until(nothing_pending, fx.svc, 10000));
    join_later();
    fx_stop(&fx);
}


#define PER_MODEL(fn)                                                         \
    cmocka_unit_test_prestate(fn, &models[0]),                               \
        cmocka_unit_test_prestate(fn, &models[1]),                           \
        cmocka_unit_test_prestate(fn, &models[2]),                           \
        cmocka_unit_test_prestate(fn, &models[3])

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_method_ids_are_the_documented_hash),
        cmocka_unit_test(
            test_registration_refuses_clashes_and_changes_nothing),
        PER_MODEL(test_typed_calls_answer),
        PER_MODEL(test_typed_call_outcomes),
    };

    tu_alarm(240);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
