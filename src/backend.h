/*
 * backend.h: what a loop asks of the system's readiness (or completion)
 * interface. loop.c keeps timers, tasks and the order of an iteration's
 * phases; a backend keeps the kernel object (an epoll instance today),
 * starts and stops watching descriptors, waits, and hands each event to
 * zn__loop_io_ready(). A second backend (io_uring) is a second file that
 * fills this table, plus a line in zn__backend_pick().
 */
#ifndef ZNET_BACKEND_H
#define ZNET_BACKEND_H

#include "znet/loop.h"

typedef struct zn__backend_s {
    const char *name;

    /* Creates the backend's state (loop->be_data). Returns 0 or a
     * negative error. */
    int (*open)(zn_loop_t *loop);

    /* Frees it; every watcher has been stopped. */
    void (*close)(zn_loop_t *loop);

    /* Starts watching io->fd for `events` (ZN_EV_READABLE | ZN_EV_WRITABLE),
     * or changes the set of a started watcher (io->slot >= 0). Sets
     * io->slot on a start. Returns 0 or a negative error (the watcher is
     * then as before). */
    int (*watch)(zn_loop_t *loop, zn_io_t *io, unsigned events);

    /* Stops watching, and forgets the events for io that the current
     * wait returned and that were not dispatched yet: the fd may be
     * closed and its number reused before they would be. Sets io->slot
     * to -1. */
    void (*unwatch)(zn_loop_t *loop, zn_io_t *io);

    /* Waits at most timeout_ms (-1: no bound), refreshes loop->now once
     * the wait is over, and dispatches what arrived through
     * zn__loop_io_ready(). Returns the number of callbacks run, or a
     * negative error (EINTR is not one). */
    int (*poll)(zn_loop_t *loop, int timeout_ms);
} zn__backend_t;

extern const zn__backend_t zn__backend_epoll;

/* Runs io's callback for `events` (filtered by what it asked for; hang-up
 * and error always pass). Returns 1 if it ran, else 0. Inline: a backend
 * calls it for every event. */
static inline int
zn__loop_io_ready(zn_io_t *io, unsigned ev)
{
    ev &= io->events | ZN_EV_HANGUP | ZN_EV_ERROR;
    if ((ev & (ZN_EV_READABLE | ZN_EV_WRITABLE)) == 0 && !(ev & ZN_EV_ERROR))
        return 0;
    io->cb(io, ev, io->ud);
    return 1;
}

#endif /* ZNET_BACKEND_H */
