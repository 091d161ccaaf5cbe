/*
 * peer_libevent_echo: a single-thread echo server written the way libevent's
 * documentation teaches: an evconnlistener, and a bufferevent per
 * connection whose input is moved, without a copy, to its output.
 *
 * usage: peer_libevent_echo --port P   (binds 127.0.0.1; SIGINT/SIGTERM:
 * exit 0)
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>


static int
parse_port(int argc, char **argv)
{
    char *end;
    long port;

    if (argc != 3 || strcmp(argv[1], "--port") != 0) {
        fprintf(stderr, "usage: %s --port P\n", argv[0]);
        exit(2);
    }
    port = strtol(argv[2], &end, 10);
    if (*end || port < 1 || port > 65535) {
        fprintf(stderr, "%s: bad port '%s'\n", argv[0], argv[2]);
        exit(2);
    }
    return (int)port;
}


/* evbuffer_add_buffer moves the chains of the input to the output: the
 * data is not copied, as libevent intends for an echo. */
static void
on_read(struct bufferevent *bev, void *arg)
{
    (void)arg;
    evbuffer_add_buffer(bufferevent_get_output(bev),
                        bufferevent_get_input(bev));
}


/* End of file or error: freeing the bufferevent closes the socket. */
static void
on_event(struct bufferevent *bev, short what, void *arg)
{
    (void)arg;
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
        bufferevent_free(bev);
}


static void
on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa,
          int len, void *arg)
{
    struct event_base *base = evconnlistener_get_base(l);
    struct bufferevent *bev;
    int one = 1;

    (void)sa;
    (void)len;
    (void)arg;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    bev = bufferevent_socket_new(base, fd, BEV_OPT_CLOSE_ON_FREE);
    if (bev == NULL) {
        evutil_closesocket(fd);
        return;
    }
    bufferevent_setcb(bev, on_read, NULL, on_event, NULL);
    bufferevent_enable(bev, EV_READ | EV_WRITE);
}


static void
on_signal(evutil_socket_t sig, short what, void *arg)
{
    (void)sig;
    (void)what;
    event_base_loopbreak(arg);
}


int
main(int argc, char **argv)
{
    struct sockaddr_in sa;
    struct event_base *base;
    struct evconnlistener *l;
    struct event *sigint, *sigterm;

    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((unsigned short)parse_port(argc, argv));
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    signal(SIGPIPE, SIG_IGN);
    base = event_base_new();
    if (base == NULL)
        return 1;
    l = evconnlistener_new_bind(base, on_accept, NULL,
                                LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE,
                                SOMAXCONN, (struct sockaddr *)&sa,
                                sizeof(sa));
    if (l == NULL) {
        perror("peer_libevent_echo: bind");
        return 1;
    }
    sigint = evsignal_new(base, SIGINT, on_signal, base);
    sigterm = evsignal_new(base, SIGTERM, on_signal, base);
    event_add(sigint, NULL);
    event_add(sigterm, NULL);
    event_base_dispatch(base);
    event_free(sigint);
    event_free(sigterm);
    evconnlistener_free(l);
    event_base_free(base);
    return 0;
}
