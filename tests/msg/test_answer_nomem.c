/*
 * test_answer_nomem.c: an answer made on a worker when memory has run out
 * cannot be packed; the request is then abandoned (its connection closed,
 * so that the peer does not wait) through the request's own task, which
 * needs no memory, even while the loop's queue is long. Nothing stays in
 * flight.
 */
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "demo.pb-c.h"
#include "testutil.h"
#include "znet/msg.h"

#define FILLERS 128

/* ---- the service ------------------------------------------------------ */

static zn_loop_t *g_loop;
static _Atomic int fillers;
static _Atomic int reply_rc;


/* On a worker: memory runs out while the loop is held with a long queue;
 * the reply (and the INTERNAL answer the service then tries) fails. */
static void
h_test(zn_msg_req_t *req, const ProtobufCMessage *msg, void *ud)
{
    Demo__TestRsp rsp = DEMO__TEST_RSP__INIT;

    (void)msg;
    (void)ud;
    tu_hold_and_fill(g_loop, FILLERS, &fillers);
    tu_refuse(true);
    rsp.res = "never sent";
    atomic_store(&reply_rc, zn_msg_reply(req, &rsp.base));
}


static int
nothing_pending(void *arg)
{
    return zn_msg_service_pending(arg) == 0;
}


static void
test_unanswerable_request_on_a_worker_is_abandoned(void **state)
{
    Demo__TestReq req = DEMO__TEST_REQ__INIT;
    zn_msg_service_t *svc;
    zn_msg_table_t *t;
    zn_server_opts_t so;
    zn_msg_opts_t mo;
    tu_server_t ts;
    uint8_t *frame;
    size_t len;
    char b;
    int fd;

    (void)state;
    tu_alarm(30);
    assert_int_equal(zn_msg_table_new(&t), 0);
    assert_int_equal(zn_msg_table_register(t, 1, &demo__test_req__descriptor,
                                           h_test, NULL), 0);
    zn_msg_opts_default(&mo);
    mo.workers = 1;
    assert_int_equal(zn_msg_service_new(t, &mo, &svc), 0);
    zn_server_opts_default(&so);
    zn_msg_service_bind(svc, &so);
    tu_server_start(&ts, &so);
    g_loop = ts.loop;
    fd = tu_connect(ts.port);
    req.msg = "hi";
    assert_int_equal(zn_msg_pack_frame(1, 7, 0, &req.base, &frame, &len), 0);
    tu_write_all(fd, frame, len);
    zn_msg_frame_free(frame);
    /* The worker holds the loop, then fails to answer: release it once the
     * worker is done, with memory still out. */
    while (atomic_load(&reply_rc) == 0)
        usleep(1000);
    assert_int_equal(atomic_load(&reply_rc), ZN_ENOMEM);
    /* Held a while longer: an abandonment that needed memory to travel
     * (retrying, then giving up) would be lost by now. */
    usleep(250 * 1000);
    tu_release();
    assert_true(recv(fd, &b, 1, 0) <= 0); /* closed: no answer will come */
    assert_true(tu_wait_until(nothing_pending, svc, 5000));
    tu_refuse(false);
    assert_int_equal(atomic_load(&fillers), FILLERS);
    close(fd);
    zn_msg_service_stop(svc);
    tu_server_stop(&ts);
    zn_msg_service_free(svc);
    zn_msg_table_free(t);
}


int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unanswerable_request_on_a_worker_is_abandoned),
    };

    signal(SIGPIPE, SIG_IGN);
    tu_refusing_allocator();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
