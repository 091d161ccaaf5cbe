/*
 * greeter_client: calls the Greeter service of greeter.proto through the
 * stubs protoc-c generated, on one thread.
 *
 *   greeter_client [--port P] [NAME]
 *
 * Prints Hello's text and Count's numbers; exits 1 if a call failed.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "greeter.pb-c.h"
#include "znet/service.h"
#include "znet/znet.h"

static zn_loop_t *loop;
static int pending = 2, failed;


/* One call ended: a reply, or NULL and the call's status. */
static void
ended(const zn_call_t *call, const char *method)
{
    if (call->status != 0) {
        fprintf(stderr, "%s: %s", method, zn_strerror(call->status));
        if (call->status == ZN_EPROTO)
            fprintf(stderr, " (error %u: %s)", call->code, call->message);
        fprintf(stderr, "\n");
        failed = 1;
    }
    if (--pending == 0)
        zn_loop_stop(loop);
}


static void
on_hello(const Greet__HelloRsp *rsp, void *closure_data)
{
    if (rsp != NULL)
        printf("%s\n", rsp->text);
    ended(closure_data, "Hello");
}


static void
on_count(const Greet__CountRsp *rsp, void *closure_data)
{
    size_t i;

    for (i = 0; rsp != NULL && i < rsp->n_n; i++)
        printf("%u%s", rsp->n[i], i + 1 < rsp->n_n ? " " : "\n");
    ended(closure_data, "Count");
}


int
main(int argc, char **argv)
{
    Greet__HelloReq hello = GREET__HELLO_REQ__INIT;
    Greet__CountReq count = GREET__COUNT_REQ__INIT;
    zn_call_t c1 = {.timeout_ms = 2000}, c2 = {.timeout_ms = 2000};
    ProtobufCService *greeter = NULL;
    zn_rpc_t *rpc = NULL;
    zn_rpc_opts_t o;
    int i = 1, rc;

    zn_rpc_opts_default(&o);
    o.client.host = "127.0.0.1";
    o.client.port = 7700;
    if (argc > 2 && strcmp(argv[1], "--port") == 0) {
        o.client.port = (uint16_t)atoi(argv[2]);
        i = 3;
    }
    hello.name = i < argc ? argv[i] : "world";
    count.upto = 3;
    if ((rc = zn_loop_new(&loop)) != 0 ||
        (rc = zn_rpc_new(loop, &o, &rpc)) != 0 ||
        (rc = zn_rpc_service_new(rpc, &greet__greeter__descriptor, NULL,
                                 &greeter)) != 0) {
        fprintf(stderr, "greeter_client: %s\n", zn_strerror(rc));
        return 1;
    }
    /* the calls wait for the connection; their closures run in the loop */
    greet__greeter__hello(greeter, &hello, on_hello, &c1);
    greet__greeter__count(greeter, &count, on_count, &c2);
    zn_loop_run(loop);
    zn_rpc_service_free(greeter);
    zn_rpc_free(rpc);
    zn_loop_free(loop);
    return failed;
}
