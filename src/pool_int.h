/*
 * pool_int.h: the steps of a loop pool, for a server that must set its
 * loops up (listeners) before their threads run, and must let them stop
 * by themselves once drained.
 */
#ifndef ZNET_POOL_INT_H
#define ZNET_POOL_INT_H

#include <stdbool.h>

#include "znet/pool.h"

/* Creates the loops, without threads. */
int zn__loop_pool_create(unsigned n, const char *name, zn_loop_pool_t **out);

/* Starts a thread running each loop; on failure none is left running. */
int zn__loop_pool_run(zn_loop_pool_t *p);

/* Waits for every loop's thread to return (the loops stop themselves). */
void zn__loop_pool_join(zn_loop_pool_t *p);

/* True while loop i's thread runs (started, not yet joined). */
bool zn__loop_pool_running(const zn_loop_pool_t *p, unsigned i);

#endif /* ZNET_POOL_INT_H */
