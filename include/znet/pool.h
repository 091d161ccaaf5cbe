/*
 * znet/pool.h: a pool of loops, each run by a thread of its own (muduo's
 * EventLoopThreadPool). A server with io_threads = N runs its
 * connections on one; an application gives one's loops to its clients
 * (zn_client_opts_t.conn_loop) so that their connections run off the
 * main loop too.
 *
 * All functions are safe from any thread, except zn_loop_pool_stop() and
 * zn_loop_pool_free(), which must not be called from one of the pool's own
 * threads.
 */
#ifndef ZNET_POOL_H
#define ZNET_POOL_H

#include <stdint.h>

#include "common.h"
#include "loop.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct zn_loop_pool_s zn_loop_pool_t;

/*
 * Creates `n` loops (1 .. 256), named "<name>-0" .. (name NULL: "io"), and
 * starts a thread running each (with every signal blocked). Stores the
 * pool in *out. Returns 0, ZN_EINVAL, ZN_ENOMEM, or the error of
 * pthread_create / zn_loop_new (nothing is left running then).
 */
ZN_EXTERN int zn_loop_pool_new(unsigned n, const char *name,
                               zn_loop_pool_t **out);

/* Stops the loops and joins their threads. The loops stay (tasks posted
 * to them wait, and run when the pool is freed). Idempotent. */
ZN_EXTERN void zn_loop_pool_stop(zn_loop_pool_t *p);

/* Stops the pool if needed and frees its loops (running the tasks still
 * posted to them). */
ZN_EXTERN void zn_loop_pool_free(zn_loop_pool_t *p);

/* The number of loops. */
ZN_EXTERN unsigned zn_loop_pool_size(const zn_loop_pool_t *p);

/* Loop i (0 .. size - 1), or NULL. */
ZN_EXTERN zn_loop_t *zn_loop_pool_get(const zn_loop_pool_t *p, unsigned i);

/* The next loop, round robin (an atomic counter). */
ZN_EXTERN zn_loop_t *zn_loop_pool_next(zn_loop_pool_t *p);

/* The loop for a key: always the same for the same key. */
ZN_EXTERN zn_loop_t *zn_loop_pool_for_key(const zn_loop_pool_t *p,
                                          uint64_t key);

#ifdef __cplusplus
}
#endif
#endif /* ZNET_POOL_H */
