/*
 * znet/client.h: a TCP or Unix-socket client with reconnection.
 *
 * A client makes one connection at a time to one address, with a connect
 * time-out, and (if asked) reconnects after a failure or a close with
 * exponential back-off and jitter, up to a retry limit. It calls the same
 * handler as a server. Loop-thread only unless marked.
 */
#ifndef ZNET_CLIENT_H
#define ZNET_CLIENT_H

#include <stdbool.h>
#include <stdint.h>

#include "common.h"
#include "conn.h"
#include "loop.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct zn_client_s zn_client_t;

typedef struct {
    const char *host;        /* numeric address, or "unix:/path" */
    uint16_t port;
    uint64_t connect_timeout_ms; /* 0: 10,000 */
    bool reconnect;          /* reconnect after a failure or a close */
    uint64_t backoff_min_ms; /* first retry delay; 0: 100 */
    uint64_t backoff_max_ms; /* cap on the delay; 0: 10,000 */
    unsigned max_retries;    /* failed attempts in a row before giving up;
                                0: unlimited */
    bool no_nodelay;
    /* The loop the connection lives on once established (NULL: the
     * client's own loop). As in a server's multi-loop model, the client's
     * loop connects (and reconnects) and hands the connected socket to
     * this loop through its task queue; the handler's callbacks then run
     * on this loop's thread, while on_give_up runs on the client's. */
    zn_loop_t *conn_loop;
    zn_conn_limits_t limits;
    zn_handler_t handler;
    /* Called when the client gives up (retry limit reached, or a failure
     * without reconnect): status is the last error. Optional. */
    void (*on_give_up)(zn_client_t *cl, int status, void *ud);
} zn_client_opts_t;

ZN_EXTERN void zn_client_opts_default(zn_client_opts_t *opts);

/* Creates a client on `loop`. Options are copied. Returns 0, ZN_EINVAL
 * (bad address), ZN_ENOMEM. */
ZN_EXTERN int zn_client_new(zn_loop_t *loop, const zn_client_opts_t *opts,
                            zn_client_t **out);

/* Starts connecting. Returns 0, or ZN_EALREADY if started. A connect
 * failure is reported later (retry, or on_give_up). */
ZN_EXTERN int zn_client_start(zn_client_t *cl);

/* Stops: cancels a connect or a pending retry; closes the connection
 * (graceful unless `abortive`). Idempotent. */
ZN_EXTERN void zn_client_stop(zn_client_t *cl, bool abortive);

/* Stops the client and frees it, in any state (also from inside one of its
 * callbacks: the memory then goes after the callback returns). */
ZN_EXTERN void zn_client_free(zn_client_t *cl);

/* The connection if connected, with a new reference; else NULL. */
ZN_EXTERN zn_conn_t *zn_client_conn(zn_client_t *cl);

/* Attempts made since the last successful connect. */
ZN_EXTERN unsigned zn_client_failures(const zn_client_t *cl);

#ifdef __cplusplus
}
#endif
#endif /* ZNET_CLIENT_H */
