/*
 * znet/rpc.h: an RPC client for protocol v1 (docs/protocol.md) on znet's
 * client: asynchronous calls with request ids, per-call deadlines,
 * pipelining, server pushes, and a blocking helper for tools and tests.
 *
 * Loop-thread only unless marked: zn_rpc_call(), zn_rpc_send_oneway(),
 * zn_rpc_connected() and zn_rpc_stats() are safe from any thread;
 * zn_rpc_call_sync() only from a thread that is not the loop's, while the
 * loop runs on its own thread. See docs/rpc.md.
 */
#ifndef ZNET_RPC_H
#define ZNET_RPC_H

#include <stdbool.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

#include "client.h"
#include "common.h"
#include "frame.h"
#include "loop.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct zn_rpc_s zn_rpc_t;

/* An error response from the server (znet.Error). */
typedef struct {
    uint32_t code;             /* ZN_CODE_* or an application code >= 1000 */
    const char *message;       /* valid during the callback only */
} zn_rpc_error_t;

/*
 * The outcome of a call, on the loop thread, exactly once:
 *   status 0            `rsp` is the decoded response (of the type given to
 *                       the call); it is freed after the callback returns;
 *   ZN_EPROTO           the server answered with an error: see `err`;
 *   ZN_ETIMEDOUT        the call's deadline passed (a late response is
 *                       then dropped and counted);
 *   ZN_ECONNRESET       the connection dropped with the call outstanding;
 *   ZN_ENOTCONN         the client gave up connecting;
 *   ZN_EBADMSG          the response did not decode as the expected type
 *                       (or nested too deep, or over its memory budget);
 *   ZN_ECANCELED        the client was freed;
 *   ZN_ENOBUFS          (a call from another thread) too many outstanding;
 *   ZN_ENOMEM           out of memory on the loop (rare).
 */
typedef void (*zn_rpc_cb)(int status, const ProtobufCMessage *rsp,
                          const zn_rpc_error_t *err, void *ud);

/* A frame the server sent of its own (RESPONSE clear): a push. `body` is
 * the raw protobuf body, valid during the callback. */
typedef void (*zn_rpc_push_cb)(zn_rpc_t *r, uint32_t cmd, const void *body,
                               size_t len, void *ud);

typedef struct {
    zn_client_opts_t client;   /* address, connect time-out, reconnect;
                                  its handler is replaced by the RPC's;
                                  its on_give_up, if set, is called after
                                  the queued calls failed, with `ud` */
    uint32_t max_body;         /* largest response body; 0: 4 MiB */
    uint64_t timeout_ms;       /* default per-call deadline; 0: 30 s */
    unsigned max_pending;      /* outstanding calls; 0: 65,536. Over it a
                                  call fails at once with ZN_ENOBUFS */
    unsigned max_depth;        /* protobuf nesting limit; 0: 64 */
    zn_rpc_push_cb on_push;    /* optional */
    void (*on_state)(zn_rpc_t *r, bool connected, void *ud); /* optional */
    void *ud;                  /* for on_push and on_state */
} zn_rpc_opts_t;

/* Fills `o` with the defaults (client: zn_client_opts_default(); host
 * NULL, to be set). */
ZN_EXTERN void zn_rpc_opts_default(zn_rpc_opts_t *o);

/* Creates a client on `loop` and starts connecting (a loopback connect
 * may complete, and so on_state run, before this returns). Returns 0,
 * ZN_EINVAL (no host, bad address, max_depth over 256), ZN_ENOMEM. */
ZN_EXTERN int zn_rpc_new(zn_loop_t *loop, const zn_rpc_opts_t *o,
                         zn_rpc_t **out);

/* Fails every outstanding call with ZN_ECANCELED, closes, frees. Loop
 * thread (or any thread once the loop has stopped running), also inside
 * one of the client's callbacks. Calls posted from other threads and not
 * yet run by the loop fail with ZN_ECANCELED when it runs them (or in
 * zn_loop_free()); the memory goes after the last of them. */
ZN_EXTERN void zn_rpc_free(zn_rpc_t *r);

/* True while connected. Any thread. */
ZN_EXTERN bool zn_rpc_connected(const zn_rpc_t *r);

/*
 * Calls `cmd` with request `req` (packed at once: the caller keeps it);
 * the response is decoded as `rsp_type`. `timeout_ms` 0 means the default.
 * Calls made while the client is still connecting (or waiting to
 * reconnect) wait for the connection (their deadline runs) and are
 * written in order once it is up. Any thread: from another thread the
 * call is posted to the loop, which gives it its seq (and deadline) when
 * it runs it, and `cb` runs there.
 * Returns 0 (cb will run exactly once), ZN_ENOMEM, ZN_ENOBUFS (too many
 * outstanding, counting calls posted and not yet run), ZN_EMSGSIZE,
 * ZN_EINVAL; on the loop thread also ZN_ENOTCONN (the client gave up, or
 * lost its connection without `reconnect`) and ZN_ECANCELED (the client
 * is being freed). From another thread those last two reach `cb`.
 */
ZN_EXTERN int zn_rpc_call(zn_rpc_t *r, uint32_t cmd,
                          const ProtobufCMessage *req,
                          const ProtobufCMessageDescriptor *rsp_type,
                          uint64_t timeout_ms, zn_rpc_cb cb, void *ud);

/* Sends a ONEWAY request: no response, no callback. Any thread (from
 * another thread it is posted, and dropped if the connection is gone by
 * then). Returns 0, ZN_ENOTCONN, ZN_ENOMEM, ZN_EMSGSIZE. */
ZN_EXTERN int zn_rpc_send_oneway(zn_rpc_t *r, uint32_t cmd,
                                 const ProtobufCMessage *req);

/*
 * The blocking helper: calls and waits for the outcome. On 0, *rsp_out is
 * the response, to be freed with zn_rpc_msg_free(); on ZN_EPROTO, *err_out
 * (if given) gets the error code, and its message is copied into
 * `errbuf` (if given, `errlen` bytes). Other statuses as for zn_rpc_cb.
 * Must not be called on the loop's thread (it would wait for itself):
 * then it returns ZN_EDEADLK at once; so does a call from the thread that
 * created the loop before the loop runs on its own thread. If the loop
 * does not answer within the deadline plus one second (it stopped), it
 * returns ZN_ETIMEDOUT without waiting for the call.
 */
ZN_EXTERN int zn_rpc_call_sync(zn_rpc_t *r, uint32_t cmd,
                               const ProtobufCMessage *req,
                               const ProtobufCMessageDescriptor *rsp_type,
                               uint64_t timeout_ms,
                               ProtobufCMessage **rsp_out, uint32_t *err_out,
                               char *errbuf, size_t errlen);

/* Frees a response returned by zn_rpc_call_sync(). */
ZN_EXTERN void zn_rpc_msg_free(ProtobufCMessage *msg);

typedef struct {
    uint64_t calls;            /* calls started */
    uint64_t ok;               /* answered with a response */
    uint64_t errors;           /* answered with an error response, or
                                  with a body that did not decode */
    uint64_t timeouts;
    uint64_t failed;           /* connection dropped, gave up, canceled,
                                  refused (from another thread) */
    uint64_t late_responses;   /* responses whose seq matches no call */
    uint64_t pushes;
    uint64_t outstanding;      /* now */
} zn_rpc_stats_t;

/* Any thread. */
ZN_EXTERN void zn_rpc_stats(const zn_rpc_t *r, zn_rpc_stats_t *st);

#ifdef __cplusplus
}
#endif
#endif /* ZNET_RPC_H */
