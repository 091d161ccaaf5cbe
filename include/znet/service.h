/*
 * znet/service.h: typed services from the `service` blocks of .proto
 * files, over the message layer (znet/msg.h) on the server and the RPC
 * client (znet/rpc.h) on the client. See docs/services.md.
 *
 * protoc-c generates, for `service Greeter` in package `greet`, a
 * descriptor (greet__greeter__descriptor), a struct of typed method
 * pointers (Greet__Greeter_Service, filled by GREET__GREETER__INIT(prefix)
 * with prefix##hello, ...) and typed callers (greet__greeter__hello(
 * ProtobufCService *, const Greet__HelloReq *, closure, closure_data)).
 * znet gives each method a command id and carries it over protocol v1:
 *
 *   server:  zn_msg_table_add_service(table, &impl.base, NULL);
 *            the method runs with its typed request and answers through
 *            its closure;
 *   client:  zn_rpc_service_new(rpc, &greet__greeter__descriptor, NULL,
 *            &svc); the generated callers are then the typed stubs.
 *
 * Command ids: method i gets ids[i] when an id array is given (0 in it:
 * the hashed id), else the hashed id of its full name, stable when
 * methods are added or reordered (zn_method_id()).
 */
#ifndef ZNET_SERVICE_H
#define ZNET_SERVICE_H

#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

#include "common.h"
#include "msg.h"
#include "rpc.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Hashed ids have this bit set; ids people register by hand are small,
 * so the two do not meet unless someone asks for it. */
#define ZN_METHOD_ID_BIT 0x80000000u

/*
 * The command id of a method from its full name, "package.Service.Method"
 * ("Service.Method" without a package): 32-bit FNV-1a of the name's bytes
 * (offset basis 2166136261, prime 16777619), with ZN_METHOD_ID_BIT set.
 * Pure; any thread.
 */
ZN_EXTERN uint32_t zn_method_id(const char *full_name);

/* The id of method `index` of `d` (d->name + "." + the method's name),
 * or 0 if `index` is out of range. Pure; any thread. */
ZN_EXTERN uint32_t zn_service_method_id(const ProtobufCServiceDescriptor *d,
                                        unsigned index);

/* ---- server ----------------------------------------------------------- */

/*
 * Registers every method of `impl` on the table: `impl` is the base of a
 * generated service struct (&impl.base, with impl filled by
 * PKG__SVC__INIT(prefix)); method i gets ids[i], or its hashed id where
 * `ids` is NULL or ids[i] is 0 (`ids` has d->n_methods entries).
 *
 * A method runs where a handler would (the loop or a worker, see
 * zn_msg_opts_t.workers) as
 *     prefix_method(service, const Req *in, closure, closure_data)
 * where closure_data is the request's zn_msg_req_t * (zn_msg_call_req()).
 * It answers by calling closure(&rsp, closure_data) with a message of the
 * method's output type, or with an application error through
 * zn_msg_reply_error(zn_msg_call_req(closure_data), code, text), before
 * it returns, or after zn_msg_req_defer() from any thread, exactly as a
 * handler does (one that does neither is answered INTERNAL). Call the
 * closure once: the request ends with its answer. closure(NULL, ...)
 * answers INTERNAL; a message of another type is refused (INTERNAL,
 * logged).
 *
 * Returns 0; ZN_EEXIST if an id is taken (by a hand-registered command or
 * by another method: the table is then as before, no method of `impl`
 * registered); ZN_EINVAL (NULL impl or descriptor, a bad descriptor magic,
 * the table given to a service already); ZN_ENOMEM. `impl` must outlive
 * every service made from the table. Hand-registered commands keep
 * working beside it.
 */
ZN_EXTERN int zn_msg_table_add_service(zn_msg_table_t *t,
                                       ProtobufCService *impl,
                                       const uint32_t *ids);

/* The request behind a method's closure_data (a cast, for readability). */
static inline zn_msg_req_t *
zn_msg_call_req(void *closure_data)
{
    return (zn_msg_req_t *)closure_data;
}

/* ---- client ----------------------------------------------------------- */

/*
 * One call through a typed stub, in and out. The closure_data given to a
 * generated caller on a service from zn_rpc_service_new() must point to a
 * zn_call_t, which stays valid until the closure has run; the closure gets
 * it back as its closure_data.
 */
typedef struct zn_call_s {
    uint64_t timeout_ms;       /* in: the call's deadline; 0: the client's
                                  default */
    void *ud;                  /* in: the caller's, untouched */
    int status;                /* out: 0, or as zn_rpc_cb's status
                                  (ZN_EPROTO: the server answered an
                                  error, see code and message;
                                  ZN_ETIMEDOUT; ZN_ECONNRESET: connection
                                  lost; ...) */
    uint32_t code;             /* out: with ZN_EPROTO, the error code */
    char message[128];         /* out: with ZN_EPROTO, its message
                                  (truncated), else "" */
    /* private */
    ProtobufCClosure closure_;
} zn_call_t;

/*
 * Makes a ProtobufCService for `d` whose methods call over `r`: method i
 * is called with command id ids[i], or its hashed id (as on the server).
 * A generated caller on it (any thread, as zn_rpc_call) runs the closure
 * exactly once on r's loop thread: with the response (valid during the
 * closure only) and call->status 0, or with NULL and call->status set;
 * if the call cannot even start (ZN_ENOMEM, ZN_ENOBUFS, ZN_EMSGSIZE, on
 * the loop thread ZN_ENOTCONN), the closure runs at once, inside the
 * caller, with that status.
 * Returns 0, ZN_EINVAL (NULL argument, bad descriptor magic), ZN_ENOMEM.
 * Free it with zn_rpc_service_free() (or its destroy), any time after the
 * last call has been made; calls in flight do not need it. It must not
 * outlive `r`.
 */
ZN_EXTERN int zn_rpc_service_new(zn_rpc_t *r,
                                 const ProtobufCServiceDescriptor *d,
                                 const uint32_t *ids, ProtobufCService **out);

/* Frees a service from zn_rpc_service_new(). NULL is ignored. */
ZN_EXTERN void zn_rpc_service_free(ProtobufCService *s);

/*
 * The blocking form, from a thread that is not r's loop's (as
 * zn_rpc_call_sync): calls method `method` (its name in the .proto, e.g.
 * "Hello") of a service from zn_rpc_service_new() and waits. Returns the
 * status it also stores in call->status (with code and message); on 0,
 * *rsp_out is the response, of the method's output type, to be freed
 * with zn_rpc_msg_free(). ZN_ENOENT: no such method; ZN_EINVAL: not a
 * service of zn_rpc_service_new(), or the request of another type.
 */
ZN_EXTERN int zn_rpc_service_call_sync(ProtobufCService *s,
                                       const char *method,
                                       const ProtobufCMessage *req,
                                       ProtobufCMessage **rsp_out,
                                       zn_call_t *call);

#ifdef __cplusplus
}
#endif

#endif /* ZNET_SERVICE_H */
