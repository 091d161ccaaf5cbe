/*
 * rpc_server: the seed's demo on znet's message layer.
 *
 *   cmd 1  demo.TestReq -> demo.TestRsp { res = "hello, i'm server" }
 *   cmd 2  demo.EchoReq -> demo.EchoRsp { the same payload }
 *
 *   rpc_server [--host H] [--port P] [--io-threads N] [--workers N]
 *              [--ordered] [--max-conns N] [--log-level L] [--log-conf F]
 *
 * On SIGINT or SIGTERM: stops accepting, answers new requests with
 * SHUTTING_DOWN, finishes the requests in flight, flushes the replies (at
 * most 5 s in all), exits 0.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "demo.pb-c.h"
#include "znet/msg.h"
#include "znet/znet.h"

#define DRAIN_MS 5000


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


static void
on_echo(zn_msg_req_t *req, const ProtobufCMessage *msg, void *ud)
{
    const Demo__EchoReq *in = (const Demo__EchoReq *)msg;
    Demo__EchoRsp rsp = DEMO__ECHO_RSP__INIT;

    (void)ud;
    rsp.payload = in->payload;
    zn_msg_reply(req, &rsp.base);
}


static void
on_signal(zn_loop_t *loop, int signum, void *ud)
{
    (void)ud;
    ZN_INFO("rpc_server: signal %d, shutting down", signum);
    zn_loop_stop(loop);
}


static void
usage(const char *prog)
{
    fprintf(stderr,
            "usage: %s [--host H] [--port P] [--io-threads N] [--workers N]\n"
            "          [--ordered] [--max-conns N] [--log-level L] "
            "[--log-conf FILE]\n",
            prog);
    exit(2);
}


static int
parse_args(int argc, char **argv, zn_server_opts_t *so, zn_msg_opts_t *mo)
{
    const char *conf = NULL, *level = NULL;
    zn_log_level_t lv;
    int i, rc;

    for (i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--ordered") == 0) {
            mo->ordered = true;
            continue;
        }
        if (v == NULL)
            usage(argv[0]);
        i++;
        if (strcmp(a, "--host") == 0)
            so->host = v;
        else if (strcmp(a, "--port") == 0)
            so->port = (uint16_t)atoi(v);
        else if (strcmp(a, "--io-threads") == 0)
            so->io_threads = (unsigned)atoi(v);
        else if (strcmp(a, "--workers") == 0)
            mo->workers = (unsigned)atoi(v);
        else if (strcmp(a, "--max-conns") == 0)
            so->max_conns = (unsigned)atoi(v);
        else if (strcmp(a, "--log-level") == 0)
            level = v;
        else if (strcmp(a, "--log-conf") == 0)
            conf = v;
        else
            usage(argv[0]);
    }
    if (conf != NULL && (rc = zn_log_init(conf, "server")) != 0) {
        fprintf(stderr, "%s: %s\n", conf, zn_strerror(rc));
        return rc;
    }
    if (level != NULL) {
        if (zn_log_level_parse(level, &lv) != 0)
            usage(argv[0]);
        zn_log_set_level(lv);
    }
    return 0;
}


/*
 * The graceful shutdown: stop accepting and refuse new requests, let the
 * requests in flight finish (the main loop keeps running, IO loops run on
 * their own), stop the workers, then flush and close every connection.
 */
static void
shutdown_gracefully(zn_loop_t *loop, zn_server_t *srv, zn_msg_service_t *svc)
{
    uint64_t deadline = zn_now_ms() + DRAIN_MS;

    zn_server_stop_accepting(srv);
    zn_msg_service_shutdown(svc);
    while (zn_msg_service_pending(svc) > 0 && zn_now_ms() < deadline)
        zn_loop_run_once(loop, 10);
    zn_msg_service_stop(svc);
    zn_server_stop(srv, deadline > zn_now_ms() ? deadline - zn_now_ms() : 0);
}


int
main(int argc, char **argv)
{
    zn_msg_table_t *table = NULL;
    zn_msg_service_t *svc = NULL;
    zn_server_t *srv = NULL;
    zn_loop_t *loop = NULL;
    zn_server_opts_t so;
    zn_msg_opts_t mo;
    int rc;

    zn_server_opts_default(&so);
    zn_msg_opts_default(&mo);
    so.host = "0.0.0.0";
    so.port = 11111;
    if (parse_args(argc, argv, &so, &mo) != 0)
        return 1;
    if ((rc = zn_msg_table_new(&table)) != 0 ||
        (rc = zn_msg_table_register(table, 1, &demo__test_req__descriptor,
                                    on_test, NULL)) != 0 ||
        (rc = zn_msg_table_register(table, 2, &demo__echo_req__descriptor,
                                    on_echo, NULL)) != 0 ||
        (rc = zn_msg_service_new(table, &mo, &svc)) != 0 ||
        (rc = zn_loop_new(&loop)) != 0 ||
        (rc = zn_loop_handle_signals(loop, NULL, on_signal, NULL)) != 0)
        goto fail;
    zn_msg_service_bind(svc, &so);
    if ((rc = zn_server_new(loop, &so, &srv)) != 0 ||
        (rc = zn_server_start(srv)) != 0)
        goto fail;
    ZN_INFO("rpc_server: listening on %s:%u, %u io threads, %u workers",
            so.host, zn_server_port(srv), so.io_threads, mo.workers);
    rc = zn_loop_run(loop);
    shutdown_gracefully(loop, srv, svc);
    zn_server_free(srv);
    zn_msg_service_free(svc);
    zn_msg_table_free(table);
    zn_loop_free(loop);
    zn_log_fini();
    return rc == 0 ? 0 : 1;

fail:
    fprintf(stderr, "rpc_server: %s:%u: %s\n", so.host, so.port,
            zn_strerror(rc));
    zn_server_free(srv);
    zn_msg_service_free(svc);
    zn_msg_table_free(table);
    zn_loop_free(loop);
    return 1;
}
