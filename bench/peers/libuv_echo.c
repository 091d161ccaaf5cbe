/*
 * peer_libuv_echo: a single-thread echo server on libuv, written as a user
 * who cares about speed would: reads land in one shared slab, uv_try_write
 * sends them straight back, and only what the socket refuses is copied into
 * a uv_write request. While such a write is pending, reading from that peer
 * stops, so memory stays bounded.
 *
 * usage: peer_libuv_echo --port P   (binds 127.0.0.1; SIGINT/SIGTERM: exit 0)
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#define SLAB_SIZE (64 * 1024)

struct write_req {
    uv_write_t req;
    char data[];
};

static char slab[SLAB_SIZE];


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


static void
on_close(uv_handle_t *h)
{
    free(h);
}


/* Every read lands in the one slab: on_read is done with it before the
 * next read, because what uv_try_write leaves is copied. */
static void
on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    (void)h;
    (void)hint;
    *buf = uv_buf_init(slab, sizeof(slab));
}


/* The write of a short rest is done: reading resumes, since at most one
 * such write is ever pending. */
static void
on_write(uv_write_t *req, int status)
{
    uv_stream_t *s = req->handle;

    free(req);
    if (status < 0) {
        if (!uv_is_closing((uv_handle_t *)s))
            uv_close((uv_handle_t *)s, on_close);
        return;
    }
    if (uv_stream_get_write_queue_size(s) == 0 && !uv_is_closing(
            (uv_handle_t *)s))
        uv_read_start(s, on_alloc, NULL);
}


static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf);


/* Sends what uv_try_write could not, and pauses reading until it has. */
static void
write_rest(uv_stream_t *s, const char *p, size_t len)
{
    struct write_req *w = malloc(sizeof(*w) + len);
    uv_buf_t b;

    if (w == NULL) {
        uv_close((uv_handle_t *)s, on_close);
        return;
    }
    memcpy(w->data, p, len);
    b = uv_buf_init(w->data, (unsigned)len);
    if (uv_write(&w->req, s, &b, 1, on_write) != 0) {
        free(w);
        uv_close((uv_handle_t *)s, on_close);
        return;
    }
    uv_read_stop(s);
}


static void
on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    uv_buf_t b;
    int w;

    if (n < 0) {
        uv_close((uv_handle_t *)s, on_close);
        return;
    }
    if (n == 0)
        return;
    b = uv_buf_init(buf->base, (unsigned)n);
    w = uv_try_write(s, &b, 1);
    if (w == UV_EAGAIN)
        w = 0;
    if (w < 0) {
        uv_close((uv_handle_t *)s, on_close);
        return;
    }
    if (w < n)
        write_rest(s, buf->base + w, (size_t)(n - w));
}


static void
on_connection(uv_stream_t *server, int status)
{
    uv_tcp_t *c;

    if (status < 0)
        return;
    c = malloc(sizeof(*c));
    if (c == NULL)
        return;
    uv_tcp_init(server->loop, c);
    if (uv_accept(server, (uv_stream_t *)c) != 0) {
        uv_close((uv_handle_t *)c, on_close);
        return;
    }
    uv_tcp_nodelay(c, 1);
    uv_read_start((uv_stream_t *)c, on_alloc, on_read);
}


static void
on_signal(uv_signal_t *h, int sig)
{
    (void)sig;
    uv_stop(h->loop);
}


int
main(int argc, char **argv)
{
    uv_loop_t *loop = uv_default_loop();
    struct sockaddr_in sa;
    uv_tcp_t server;
    uv_signal_t sigint, sigterm;
    int rc;

    uv_ip4_addr("127.0.0.1", parse_port(argc, argv), &sa);
    signal(SIGPIPE, SIG_IGN);
    uv_tcp_init(loop, &server);
    rc = uv_tcp_bind(&server, (const struct sockaddr *)&sa, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&server, SOMAXCONN, on_connection);
    if (rc != 0) {
        fprintf(stderr, "peer_libuv_echo: listen: %s\n", uv_strerror(rc));
        return 1;
    }
    uv_signal_init(loop, &sigint);
    uv_signal_init(loop, &sigterm);
    uv_signal_start(&sigint, on_signal, SIGINT);
    uv_signal_start(&sigterm, on_signal, SIGTERM);
    uv_run(loop, UV_RUN_DEFAULT);
    return 0;
}
