/*
 * backend_epoll.c: the epoll backend of the loop. Level-triggered, one
 * epoll instance per loop; started watchers are found by fd in a table
 * that grows to the largest fd; the events of one wait are kept while they
 * are dispatched, so that a watcher stopped during the batch loses those
 * not yet delivered (its fd may be closed and reused meanwhile).
 */
#include <errno.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "backend.h"
#include "loop_int.h"

#define ZN__MAX_EVENTS 1024

typedef struct {
    int epfd;
    zn_io_t **ios;              /* started watchers, by fd */
    size_t nios;
    struct epoll_event *batch;  /* the events being dispatched */
    int batch_len;
    int batch_pos;
} zn__epoll_t;


static int
zn__epoll_open(zn_loop_t *loop)
{
    zn__epoll_t *ep = zn__calloc(1, sizeof(*ep));

    if (ep == NULL)
        return ZN_ENOMEM;
    if ((ep->epfd = epoll_create1(EPOLL_CLOEXEC)) < 0) {
        int rc = -errno;

        zn__free(ep);
        return rc;
    }
    loop->be_data = ep;
    return 0;
}


static void
zn__epoll_close(zn_loop_t *loop)
{
    zn__epoll_t *ep = loop->be_data;

    zn__close_fd(ep->epfd);
    zn__free(ep->ios);
    zn__free(ep);
    loop->be_data = NULL;
}


static int
zn__epoll_grow(zn__epoll_t *ep, int fd)
{
    size_t n = ep->nios ? ep->nios : 64;
    zn_io_t **v;

    while (n <= (size_t)fd)
        n *= 2;
    v = zn__realloc(ep->ios, n * sizeof(*v));
    if (v == NULL)
        return ZN_ENOMEM;
    memset(v + ep->nios, 0, (n - ep->nios) * sizeof(*v));
    ep->ios = v;
    ep->nios = n;
    return 0;
}


static int
zn__epoll_watch(zn_loop_t *loop, zn_io_t *io, unsigned events)
{
    zn__epoll_t *ep = loop->be_data;
    struct epoll_event ev;
    int rc;

    if (io->slot < 0 && (size_t)io->fd >= ep->nios &&
        (rc = zn__epoll_grow(ep, io->fd)) != 0)
        return rc;
    memset(&ev, 0, sizeof(ev));
    ev.events = ((events & ZN_EV_READABLE) ? EPOLLIN | EPOLLRDHUP : 0) |
                ((events & ZN_EV_WRITABLE) ? EPOLLOUT : 0);
    ev.data.fd = io->fd;
    if (epoll_ctl(ep->epfd, io->slot < 0 ? EPOLL_CTL_ADD : EPOLL_CTL_MOD,
                  io->fd, &ev) < 0)
        return -errno;
    if (io->slot < 0) {
        io->slot = io->fd;
        ep->ios[io->fd] = io;
    }
    return 0;
}


static void
zn__epoll_unwatch(zn_loop_t *loop, zn_io_t *io)
{
    zn__epoll_t *ep = loop->be_data;
    int i;

    (void)epoll_ctl(ep->epfd, EPOLL_CTL_DEL, io->fd, NULL);
    ep->ios[io->slot] = NULL;
    for (i = ep->batch_pos; i < ep->batch_len; i++)
        if (ep->batch[i].data.fd == io->fd)
            ep->batch[i].data.fd = -1;
    io->slot = -1;
}


static unsigned
zn__epoll_events(uint32_t e)
{
    unsigned ev = 0;

    if (e & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
        ev |= ZN_EV_READABLE;
    if (e & (EPOLLOUT | EPOLLHUP | EPOLLERR))
        ev |= ZN_EV_WRITABLE;
    if (e & (EPOLLHUP | EPOLLRDHUP))
        ev |= ZN_EV_HANGUP;
    if (e & EPOLLERR)
        ev |= ZN_EV_ERROR;
    return ev;
}


/*
 * One wait, then the batch's events in order. An event whose fd was
 * stopped earlier in the batch has been set to -1 by zn__epoll_unwatch().
 */
static int
zn__epoll_poll(zn_loop_t *loop, int timeout_ms)
{
    zn__epoll_t *ep = loop->be_data;
    struct epoll_event evs[ZN__MAX_EVENTS];
    int n, fd, ran = 0;

    n = epoll_wait(ep->epfd, evs, ZN__MAX_EVENTS, timeout_ms);
    if (n < 0)
        return errno == EINTR ? 0 : -errno;
    loop->now = zn_now_ms();
    ep->batch = evs;
    ep->batch_len = n;
    for (ep->batch_pos = 0; ep->batch_pos < n;) {
        fd = evs[ep->batch_pos].data.fd;
        ep->batch_pos++;
        if (fd >= 0 && (size_t)fd < ep->nios && ep->ios[fd] != NULL)
            ran += zn__loop_io_ready(
                ep->ios[fd], zn__epoll_events(evs[ep->batch_pos - 1].events));
    }
    ep->batch = NULL;
    ep->batch_len = ep->batch_pos = 0;
    return ran;
}


const zn__backend_t zn__backend_epoll = {
    "epoll",         zn__epoll_open,  zn__epoll_close,
    zn__epoll_watch, zn__epoll_unwatch, zn__epoll_poll,
};
