/*
 * commands.c: znet-test-server's request handlers.
 *
 *   cmd 1  demo.TestReq -> demo.TestRsp { res = "hello, i'm server" }
 *   cmd 2  demo.EchoReq -> demo.EchoRsp { the same payload }
 *
 * and, with --test-commands:
 *
 *   cmd 3  push: demo.EchoReq, payload = count, size (4 bytes each, big
 *          endian; at most 65,536 frames, 1 MiB each, 256 MiB in all).
 *          Pushes `count` frames (cmd 3, demo.EchoRsp with `size` bytes)
 *          to the caller with zn_msg_push(), stopping at the first that
 *          fails, then replies EchoRsp with the number pushed (4 bytes,
 *          big endian).
 *   cmd 4  slow: demo.EchoReq, payload = milliseconds (4 bytes, big
 *          endian). Sleeps that long on the handler's thread (meant for
 *          --workers), then echoes the payload.
 *   cmd 5  tree: ztest.Tree { repeated Tree kids = 1; } (tree.proto), a
 *          recursive type; answers demo.TestRsp { res = "tree" }. For the
 *          depth guard and allocation bombs.
 *   cmd 6  shapes: ztest.Shapes (tree.proto), a repeated field of each
 *          kind; answers demo.TestRsp { res = "tree" }. For the decode
 *          bound's shapes.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "app.h"
#include "demo.pb-c.h"
#include "tree.pb-c.h"

#define PUSH_MAX_COUNT 65536u
#define PUSH_MAX_SIZE (1u << 20)
#define PUSH_MAX_TOTAL (256ull << 20) /* even with --out-hard 0 */
#define PUSH_RETRY_MS 5000
#define SLOW_MAX_MS 10000u


/* The seed's CTest::onTest. */
static void
on_test(zn_msg_req_t *req, const ProtobufCMessage *msg, void *ud)
{
    Demo__TestRsp rsp = DEMO__TEST_RSP__INIT;

    (void)msg;
    (void)ud;
    rsp.res = "hello, i'm server";
    zn_msg_reply(req, &rsp.base);
}


/* cmd 2: the payload back. */
static void
on_echo(zn_msg_req_t *req, const ProtobufCMessage *msg, void *ud)
{
    const Demo__EchoReq *in = (const Demo__EchoReq *)msg;
    Demo__EchoRsp rsp = DEMO__ECHO_RSP__INIT;

    (void)ud;
    rsp.payload = in->payload;
    zn_msg_reply(req, &rsp.base);
}


static uint32_t
get_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 |
           p[3];
}


static void
sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};

    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}


/*
 * Pushes one frame. On the loop thread ZN_ENOBUFS means the connection
 * passed its hard output bound and is closed; from a worker it means the
 * bytes posted to the loop and not yet queued would pass it, and the
 * connection stays open: wait for the loop to catch up (bounded), so that
 * a reader that never reads still ends at the hard bound in every model.
 */
static int
push_one(zn_conn_t *c, const ProtobufCMessage *m)
{
    unsigned waited = 0;
    int rc;

    while ((rc = zn_msg_push(c, 3, m)) == ZN_ENOBUFS &&
           !zn_loop_in_thread(zn_conn_loop(c)) && zn_conn_is_open(c) &&
           waited++ < PUSH_RETRY_MS)
        sleep_ms(1);
    return rc;
}


/*
 * cmd 3: a burst of server pushes, for the output bounds. The request's
 * own limits keep one request from asking for unbounded memory; the count
 * pushed tells the caller where the hard bound stopped it.
 */
static void
on_push(zn_msg_req_t *req, const ProtobufCMessage *msg, void *ud)
{
    const Demo__EchoReq *in = (const Demo__EchoReq *)msg;
    Demo__EchoRsp rsp = DEMO__ECHO_RSP__INIT;
    uint32_t count, size, n;
    uint8_t done[4];

    (void)ud;
    if (in->payload.len != 8 ||
        (count = get_be32(in->payload.data)) > PUSH_MAX_COUNT ||
        (size = get_be32(in->payload.data + 4)) > PUSH_MAX_SIZE ||
        (uint64_t)count * size > PUSH_MAX_TOTAL) {
        zn_msg_reply_error(req, ZN_CODE_APP_BASE, "push: count, size");
        return;
    }
    if ((rsp.payload.data = malloc(size > 0 ? size : 1)) == NULL) {
        zn_msg_reply_error(req, ZN_CODE_INTERNAL, "push: out of memory");
        return;
    }
    memset(rsp.payload.data, 'p', size);
    rsp.payload.len = size;
    for (n = 0; n < count; n++)
        if (push_one(zn_msg_req_conn(req), &rsp.base) != 0)
            break;
    free(rsp.payload.data);
    done[0] = (uint8_t)(n >> 24);
    done[1] = (uint8_t)(n >> 16);
    done[2] = (uint8_t)(n >> 8);
    done[3] = (uint8_t)n;
    rsp.payload.data = done;
    rsp.payload.len = sizeof(done);
    zn_msg_reply(req, &rsp.base);
}


/* cmd 4: holds its handler's thread for a while, so that tests can keep
 * requests in flight (queue bound, ordering, graceful drain). */
static void
on_slow(zn_msg_req_t *req, const ProtobufCMessage *msg, void *ud)
{
    const Demo__EchoReq *in = (const Demo__EchoReq *)msg;
    Demo__EchoRsp rsp = DEMO__ECHO_RSP__INIT;
    uint32_t ms;

    (void)ud;
    if (in->payload.len != 4 || (ms = get_be32(in->payload.data)) >
                                    SLOW_MAX_MS) {
        zn_msg_reply_error(req, ZN_CODE_APP_BASE, "slow: milliseconds");
        return;
    }
    sleep_ms(ms);
    rsp.payload = in->payload;
    zn_msg_reply(req, &rsp.base);
}


/* cmd 5: the answer matters little; what is tested is the decoding of a
 * hostile Tree before the handler runs (or instead of it). */
static void
on_tree(zn_msg_req_t *req, const ProtobufCMessage *msg, void *ud)
{
    Demo__TestRsp rsp = DEMO__TEST_RSP__INIT;

    (void)msg;
    (void)ud;
    rsp.res = "tree";
    zn_msg_reply(req, &rsp.base);
}


/* The demo's two commands always; the test commands only when asked, so
 * that a plain run is the demo server. */
int
app_register_commands(zn_msg_table_t *t, bool test_commands)
{
    int rc;

    if ((rc = zn_msg_table_register(t, 1, &demo__test_req__descriptor,
                                    on_test, NULL)) != 0 ||
        (rc = zn_msg_table_register(t, 2, &demo__echo_req__descriptor,
                                    on_echo, NULL)) != 0 || !test_commands)
        return rc;
    if ((rc = zn_msg_table_register(t, 3, &demo__echo_req__descriptor,
                                    on_push, NULL)) != 0 ||
        (rc = zn_msg_table_register(t, 4, &demo__echo_req__descriptor,
                                    on_slow, NULL)) != 0)
        return rc;
    if ((rc = zn_msg_table_register(t, 5, &ztest__tree__descriptor, on_tree,
                                    NULL)) != 0)
        return rc;
    return zn_msg_table_register(t, 6, &ztest__shapes__descriptor, on_tree,
                                 NULL);
}
