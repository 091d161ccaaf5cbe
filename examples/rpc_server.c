/*
 * rpc_server: the seed's demo. cmd 1 TestReq -> TestRsp, cmd 2 echo; until
 * SIGINT or SIGTERM, then a graceful shutdown and exit 0.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "demo.pb-c.h" /* protoc-c's output for examples/proto/demo.proto */
#include "znet/msg.h"
#include "znet/znet.h"


/* The seed's CTest::onTest: cmd 1 is answered with a TestRsp. */
static void
on_test(zn_msg_req_t *req, const ProtobufCMessage *msg, void *ud)
{
    Demo__TestRsp rsp = DEMO__TEST_RSP__INIT;

    (void)msg;
    (void)ud;
    rsp.res = "hello, i'm server";
    zn_msg_reply(req, &rsp.base); /* same cmd and seq, RESPONSE set */
}


/* cmd 2 gets its payload back. */
static void
on_echo(zn_msg_req_t *req, const ProtobufCMessage *msg, void *ud)
{
    const Demo__EchoReq *in = (const Demo__EchoReq *)msg;
    Demo__EchoRsp rsp = DEMO__ECHO_RSP__INIT;

    (void)ud;
    rsp.payload = in->payload;
    zn_msg_reply(req, &rsp.base);
}


/* SIGINT or SIGTERM, on the loop's thread: zn_loop_run() returns. */
static void
on_signal(zn_loop_t *loop, int signum, void *ud)
{
    (void)ud;
    ZN_LOG(ZN_LOG_INFO, "rpc_server: signal %d, shutting down", signum);
    zn_loop_stop(loop);
}


/* The flags, and logging: --log-conf is the seed's initLog(conf, "server"),
 * --log-level overrides the file's level. A bad flag: usage, exit 2. */
static void
parse_args(int argc, char **argv, zn_server_opts_t *so, zn_msg_opts_t *mo)
{
    const char *conf = NULL, *level = NULL;
    zn_log_level_t lv = ZN_LOG_INFO;
    int i, rc;

    for (i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--host") == 0)
            so->host = argv[i + 1];
        else if (strcmp(argv[i], "--port") == 0)
            so->port = (uint16_t)atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--io-threads") == 0)
            so->io_threads = (unsigned)atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--workers") == 0)
            mo->workers = (unsigned)atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--log-conf") == 0)
            conf = argv[i + 1];
        else if (strcmp(argv[i], "--log-level") == 0)
            level = argv[i + 1];
        else
            break;
    }
    if (i < argc || (level != NULL && zn_log_level_parse(level, &lv) != 0)) {
        fprintf(stderr, "usage: %s [--host H] [--port P] [--io-threads N] "
                "[--workers N] [--log-level L] [--log-conf F]\n", argv[0]);
        exit(2);
    }
    if (conf != NULL && (rc = zn_log_init(conf, "server")) != 0) {
        fprintf(stderr, "rpc_server: %s: %s\n", conf, zn_strerror(rc));
        exit(1);
    }
    if (level != NULL)
        zn_log_set_level(lv);
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

    /* 1. logging (the seed's initLog), with the other flags */
    zn_server_opts_default(&so);
    zn_msg_opts_default(&mo);
    so.host = "0.0.0.0";
    so.port = 11111;
    parse_args(argc, argv, &so, &mo);

    /* 2. the main loop; SIGINT and SIGTERM reach it through a signalfd */
    if ((rc = zn_loop_new(&loop)) != 0 ||
        (rc = zn_loop_handle_signals(loop, NULL, on_signal, NULL)) != 0)
        goto free_all;

    /* 3 and 4. the request map (command id, request type, handler) and the
     * data handler that decodes frames for it and runs it: on the loop
     * (RequestMfcMap) or on --workers N threads (AsyncRequestMfcMap) */
    if ((rc = zn_msg_table_new(&table)) != 0 ||
        (rc = zn_msg_table_register(table, 1, &demo__test_req__descriptor,
                                    on_test, NULL)) != 0 ||
        (rc = zn_msg_table_register(table, 2, &demo__echo_req__descriptor,
                                    on_echo, NULL)) != 0 ||
        (rc = zn_msg_service_new(table, &mo, &svc)) != 0)
        goto free_all;

    /* 5 and 6. the server, with the service as its handler (--io-threads
     * N: N IO loops, the seed's TcpServerMt), and listen */
    zn_msg_service_bind(svc, &so);
    if ((rc = zn_server_new(loop, &so, &srv)) != 0 ||
        (rc = zn_server_start(srv)) != 0)
        goto free_all;
    ZN_LOG(ZN_LOG_INFO, "rpc_server: listening on %s:%u", so.host,
           zn_server_port(srv));

    /* 7. run until SIGINT or SIGTERM; then stop accepting, finish the
     * requests in flight and flush their replies, in 5 s at most */
    rc = zn_loop_run(loop);
    if (zn_msg_service_drain(svc, srv, 5000) != 0)
        ZN_LOG(ZN_LOG_WARN, "rpc_server: shutdown cut short after 5 s");
free_all:
    if (rc != 0)
        fprintf(stderr, "rpc_server: %s:%u: %s\n", so.host, so.port,
                zn_strerror(rc));
    zn_server_free(srv);
    zn_msg_service_free(svc);
    zn_msg_table_free(table);
    zn_loop_free(loop);
    zn_log_fini();
    return rc == 0 ? 0 : 1;
}
