/*
 * greeter_server: the Greeter service of greeter.proto on znet.
 *
 *   greeter_server [--port P] [--workers N]
 *
 * Each method is a plain C function with its typed request; it answers
 * through its closure, or with an application error. Ctrl-C stops it
 * gracefully (replies in flight are flushed).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "greeter.pb-c.h"
#include "znet/service.h"
#include "znet/znet.h"

static void
greeter_hello(Greet__Greeter_Service *service, const Greet__HelloReq *in,
              Greet__HelloRsp_Closure closure, void *closure_data)
{
    Greet__HelloRsp rsp = GREET__HELLO_RSP__INIT;
    char text[300];

    (void)service;
    if (in->name[0] == '\0') {
        zn_msg_reply_error(zn_msg_call_req(closure_data), 1001, "who?");
        return;
    }
    snprintf(text, sizeof(text), "hello, %.280s", in->name);
    rsp.text = text;
    closure(&rsp, closure_data);
}


static void
greeter_count(Greet__Greeter_Service *service, const Greet__CountReq *in,
              Greet__CountRsp_Closure closure, void *closure_data)
{
    Greet__CountRsp rsp = GREET__COUNT_RSP__INIT;
    uint32_t n[1000], i;

    (void)service;
    if (in->upto > 1000) {
        zn_msg_reply_error(zn_msg_call_req(closure_data), ZN_CODE_BAD_REQUEST,
                           "upto is at most 1000");
        return;
    }
    for (i = 0; i < in->upto; i++)
        n[i] = i + 1;
    rsp.n = n;
    rsp.n_n = in->upto;
    closure(&rsp, closure_data);
}


static Greet__Greeter_Service greeter = GREET__GREETER__INIT(greeter_);


static void
on_signal(zn_loop_t *loop, int signum, void *ud)
{
    (void)signum;
    (void)ud;
    zn_loop_stop(loop);
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
    int i, rc;

    zn_server_opts_default(&so);
    zn_msg_opts_default(&mo);
    so.host = "127.0.0.1";
    so.port = 7700;
    for (i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--port") == 0)
            so.port = (uint16_t)atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--workers") == 0)
            mo.workers = (unsigned)atoi(argv[i + 1]);
        else
            break;
    }
    if (i < argc) {
        fprintf(stderr, "usage: %s [--port P] [--workers N]\n", argv[0]);
        return 2;
    }
    if ((rc = zn_loop_new(&loop)) != 0 ||
        (rc = zn_loop_handle_signals(loop, NULL, on_signal, NULL)) != 0 ||
        (rc = zn_msg_table_new(&table)) != 0 ||
        (rc = zn_msg_table_add_service(table, &greeter.base, NULL)) != 0 ||
        (rc = zn_msg_service_new(table, &mo, &svc)) != 0)
        goto out;
    zn_msg_service_bind(svc, &so);
    if ((rc = zn_server_new(loop, &so, &srv)) != 0 ||
        (rc = zn_server_start(srv)) != 0)
        goto out;
    printf("greeter_server: listening on %s:%u\n", so.host,
           zn_server_port(srv));
    fflush(stdout);
    rc = zn_loop_run(loop);
    (void)zn_msg_service_drain(svc, srv, 5000);
out:
    if (rc != 0)
        fprintf(stderr, "greeter_server: %s\n", zn_strerror(rc));
    zn_server_free(srv);
    zn_msg_service_free(svc);
    zn_msg_table_free(table);
    zn_loop_free(loop);
    return rc == 0 ? 0 : 1;
}
