/*
 * rpc_server: the seed's demo on znet's message layer.
 *
 *   cmd 1  demo.TestReq -> demo.TestRsp { res = "hello, i'm server" }
 *   cmd 2  demo.EchoReq -> demo.EchoRsp { the same payload }
 *
 *   rpc_server [--host H] [--port P] [--io-threads N] [--workers N]
 *              [--ordered] [--max-conns N] [--log-level L] [--log-conf F]
 *
 * Limits (defaults: DESIGN.md's), for tests and tuning:
 *
 *   --max-body BYTES  --frame-deadline-ms MS  --idle-ms MS  --queue-max N
 *   --out-high BYTES  --out-low BYTES  --out-hard BYTES  --in-budget BYTES
 *
 * Test hooks (tests/hostile uses them; see docs/hostile.md):
 *
 *   --port-file PATH  writes the bound port there once listening (with
 *                     --port 0 the kernel picks a free one)
 *   --stats-fd FD     on SIGUSR1, and once at exit, writes one line of JSON
 *                     to FD (an inherited pipe or file): every counter of
 *                     zn_server_stats and zn_msg_service_stats, and the
 *                     process's VmRSS, VmHWM (KiB) and open descriptors
 *   --max-fds N       lowers RLIMIT_NOFILE to N once listening (EMFILE)
 *   --test-commands   registers the commands below
 *
 *   cmd 3  push: demo.EchoReq, payload = count, size (4 bytes each, big
 *          endian; at most 65,536 frames, 1 MiB each, 256 MiB in all).
 *          Pushes `count` frames (cmd 3, demo.EchoRsp with `size` bytes)
 *          to the caller with zn_msg_push(), stopping at the first that
 *          fails, then replies EchoRsp with the number pushed (4 bytes,
 *          big endian).
 *   cmd 4  slow: demo.EchoReq, payload = milliseconds (4 bytes, big
 *          endian). Sleeps that long on the handler's thread (meant for
 *          --workers), then echoes the payload.
 *   cmd 5  tree: a recursive type, "ztest.Tree { repeated Tree kids = 1; }",
 *          described by hand below; answers demo.TestRsp { res = "tree" }.
 *          For the depth guard and allocation bombs.
 *
 * On SIGINT or SIGTERM: stops accepting, answers new requests with
 * SHUTTING_DOWN, finishes the requests in flight, flushes the replies (at
 * most 5 s in all), exits 0.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "demo.pb-c.h"
#include "znet/msg.h"
#include "znet/znet.h"

#define DRAIN_MS 5000
#define PUSH_MAX_COUNT 65536u
#define PUSH_MAX_SIZE (1u << 20)
#define PUSH_MAX_TOTAL (256ull << 20) /* even with --out-hard 0 */
#define PUSH_RETRY_MS 5000
#define SLOW_MAX_MS 10000u

/* What main and the signal handler share. */
typedef struct {
    zn_server_opts_t so;
    zn_msg_opts_t mo;
    zn_server_t *srv;
    zn_msg_service_t *svc;
    const char *log_conf, *log_level, *port_file;
    int stats_fd;          /* -1: no stats */
    unsigned max_fds;      /* 0: leave RLIMIT_NOFILE alone */
    bool test_commands;
    uint64_t stats_seq;    /* lines written so far */
} app_t;


/* The seed's CTest::onTest. */
static void
on_test(zn_msg_req_t *req, const ProtobufCMessage *msg, void *ud)
{
    Demo__TestRsp rsp = DEMO__TEST_RSP__INIT;

    (void)msg;
    (void)ud;
    rsp.res = "hello, i'm server";
    zn_msg_reply(req, &rsp.base);
}


static void
on_echo(zn_msg_req_t *req, const ProtobufCMessage *msg, void *ud)
{
    const Demo__EchoReq *in = (const Demo__EchoReq *)msg;
    Demo__EchoRsp rsp = DEMO__ECHO_RSP__INIT;

    (void)ud;
    rsp.payload = in->payload;
    zn_msg_reply(req, &rsp.base);
}

/* ---- test commands ------------------------------------------------------ */


static uint32_t
get_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 |
           p[3];
}


static void
sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};

    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}


/*
 * Pushes one frame. On the loop thread ZN_ENOBUFS means the connection
 * passed its hard output bound and is closed; from a worker it means the
 * bytes posted to the loop and not yet queued would pass it, and the
 * connection stays open: wait for the loop to catch up (bounded), so that
 * a reader that never reads still ends at the hard bound in every model.
 */
static int
push_one(zn_conn_t *c, const ProtobufCMessage *m)
{
    unsigned waited = 0;
    int rc;

    while ((rc = zn_msg_push(c, 3, m)) == ZN_ENOBUFS &&
           !zn_loop_in_thread(zn_conn_loop(c)) && zn_conn_is_open(c) &&
           waited++ < PUSH_RETRY_MS)
        sleep_ms(1);
    return rc;
}


static void
on_push(zn_msg_req_t *req, const ProtobufCMessage *msg, void *ud)
{
    const Demo__EchoReq *in = (const Demo__EchoReq *)msg;
    Demo__EchoRsp rsp = DEMO__ECHO_RSP__INIT;
    uint32_t count, size, n;
    uint8_t done[4];

    (void)ud;
    if (in->payload.len != 8 ||
        (count = get_be32(in->payload.data)) > PUSH_MAX_COUNT ||
        (size = get_be32(in->payload.data + 4)) > PUSH_MAX_SIZE ||
        (uint64_t)count * size > PUSH_MAX_TOTAL) {
        zn_msg_reply_error(req, ZN_ERR_APP_BASE, "push: count, size");
        return;
    }
    if ((rsp.payload.data = malloc(size > 0 ? size : 1)) == NULL) {
        zn_msg_reply_error(req, ZN_ERR_INTERNAL, "push: out of memory");
        return;
    }
    memset(rsp.payload.data, 'p', size);
    rsp.payload.len = size;
    for (n = 0; n < count; n++)
        if (push_one(zn_msg_req_conn(req), &rsp.base) != 0)
            break;
    free(rsp.payload.data);
    done[0] = (uint8_t)(n >> 24);
    done[1] = (uint8_t)(n >> 16);
    done[2] = (uint8_t)(n >> 8);
    done[3] = (uint8_t)n;
    rsp.payload.data = done;
    rsp.payload.len = sizeof(done);
    zn_msg_reply(req, &rsp.base);
}


static void
on_slow(zn_msg_req_t *req, const ProtobufCMessage *msg, void *ud)
{
    const Demo__EchoReq *in = (const Demo__EchoReq *)msg;
    Demo__EchoRsp rsp = DEMO__ECHO_RSP__INIT;
    uint32_t ms;

    (void)ud;
    if (in->payload.len != 4 || (ms = get_be32(in->payload.data)) >
                                    SLOW_MAX_MS) {
        zn_msg_reply_error(req, ZN_ERR_APP_BASE, "slow: milliseconds");
        return;
    }
    sleep_ms(ms);
    rsp.payload = in->payload;
    zn_msg_reply(req, &rsp.base);
}


/*
 * ztest.Tree { repeated Tree kids = 1; }: a recursive request type, which
 * the demo proto lacks and the depth guard and allocation budget need.
 * Written by hand in the layout protoc-c would generate, so that the
 * example builds from demo.proto alone.
 */
typedef struct tree_s tree_t;
struct tree_s {
    ProtobufCMessage base;
    size_t n_kids;
    tree_t **kids;
};

static const ProtobufCMessageDescriptor tree_descriptor;


static void
tree_init(ProtobufCMessage *m)
{
    tree_t *t = (tree_t *)m;

    memset(t, 0, sizeof(*t));
    t->base.descriptor = &tree_descriptor;
}


static const ProtobufCFieldDescriptor tree_fields[1] = {
    {"kids", 1, PROTOBUF_C_LABEL_REPEATED, PROTOBUF_C_TYPE_MESSAGE,
     offsetof(tree_t, n_kids), offsetof(tree_t, kids), &tree_descriptor,
     NULL, 0, 0, NULL, NULL}};
static const unsigned tree_by_name[1] = {0};
static const ProtobufCIntRange tree_ranges[2] = {{1, 0}, {0, 1}};
static const ProtobufCMessageDescriptor tree_descriptor = {
    PROTOBUF_C__MESSAGE_DESCRIPTOR_MAGIC, "ztest.Tree", "Tree", "ztest__Tree",
    "ztest", sizeof(tree_t), 1, tree_fields, tree_by_name, 1, tree_ranges,
    tree_init, NULL, NULL, NULL};


static void
on_tree(zn_msg_req_t *req, const ProtobufCMessage *msg, void *ud)
{
    Demo__TestRsp rsp = DEMO__TEST_RSP__INIT;

    (void)msg;
    (void)ud;
    rsp.res = "tree";
    zn_msg_reply(req, &rsp.base);
}


static int
register_commands(zn_msg_table_t *t, bool test_commands)
{
    int rc;

    if ((rc = zn_msg_table_register(t, 1, &demo__test_req__descriptor,
                                    on_test, NULL)) != 0 ||
        (rc = zn_msg_table_register(t, 2, &demo__echo_req__descriptor,
                                    on_echo, NULL)) != 0 || !test_commands)
        return rc;
    if ((rc = zn_msg_table_register(t, 3, &demo__echo_req__descriptor,
                                    on_push, NULL)) != 0 ||
        (rc = zn_msg_table_register(t, 4, &demo__echo_req__descriptor,
                                    on_slow, NULL)) != 0)
        return rc;
    return zn_msg_table_register(t, 5, &tree_descriptor, on_tree, NULL);
}

/* ---- statistics --------------------------------------------------------- */


static void
json_add(char *buf, size_t cap, size_t *off, const char *key, int64_t v)
{
    int n;

    if (*off >= cap)
        return;
    n = snprintf(buf + *off, cap - *off, "%s\"%s\":%lld",
                 *off > 1 ? "," : "", key, (long long)v);
    if (n > 0)
        *off += (size_t)n;
}


static void
json_server(char *buf, size_t cap, size_t *off, const zn_server_t *srv)
{
    char key[48];
    zn_server_stats_t st;
    int i;

    zn_server_stats(srv, &st);
    json_add(buf, cap, off, "conns_live", (int64_t)st.conns_live);
    json_add(buf, cap, off, "conns_accepted", (int64_t)st.conns_accepted);
    json_add(buf, cap, off, "conns_rejected", (int64_t)st.conns_rejected);
    json_add(buf, cap, off, "emfile_events", (int64_t)st.emfile_events);
    json_add(buf, cap, off, "accept_errors", (int64_t)st.accept_errors);
    json_add(buf, cap, off, "bytes_in", (int64_t)st.bytes_in);
    json_add(buf, cap, off, "bytes_out", (int64_t)st.bytes_out);
    json_add(buf, cap, off, "sends_dropped", (int64_t)st.sends_dropped);
    json_add(buf, cap, off, "high_water_events",
             (int64_t)st.high_water_events);
    json_add(buf, cap, off, "tasks_queued", (int64_t)st.tasks_queued);
    json_add(buf, cap, off, "in_held", (int64_t)st.in_held);
    for (i = 0; i < ZN_CLOSE_REASON_MAX; i++) {
        snprintf(key, sizeof(key), "close_%s", zn_close_reason_name(i));
        json_add(buf, cap, off, key, (int64_t)st.closes[i]);
    }
}


static void
json_msg(char *buf, size_t cap, size_t *off, const zn_msg_service_t *svc)
{
    static const char *const err_names[6] = {
        "errors_app",        "errors_unknown_cmd", "errors_bad_request",
        "errors_overloaded", "errors_internal",    "errors_shutting_down"};
    zn_msg_stats_t st;
    int i;

    zn_msg_service_stats(svc, &st);
    json_add(buf, cap, off, "requests", (int64_t)st.requests);
    json_add(buf, cap, off, "replies", (int64_t)st.replies);
    for (i = 0; i < 6; i++)
        json_add(buf, cap, off, err_names[i], (int64_t)st.errors_sent[i]);
    json_add(buf, cap, off, "oneway", (int64_t)st.oneway);
    json_add(buf, cap, off, "bad_frames", (int64_t)st.bad_frames);
    json_add(buf, cap, off, "too_large", (int64_t)st.too_large);
    json_add(buf, cap, off, "deadline_closes", (int64_t)st.deadline_closes);
    json_add(buf, cap, off, "responses_dropped",
             (int64_t)st.responses_dropped);
    json_add(buf, cap, off, "late_replies", (int64_t)st.late_replies);
    json_add(buf, cap, off, "overloaded", (int64_t)st.overloaded);
    json_add(buf, cap, off, "queued", (int64_t)st.queued);
    json_add(buf, cap, off, "in_flight", (int64_t)st.in_flight);
    json_add(buf, cap, off, "handoffs", (int64_t)st.handoffs);
}


/* A "Name:   123 kB" line of /proc/self/status, in KiB; -1 if unknown
 * (for instance when out of descriptors). */
static int64_t
proc_status_kb(const char *name)
{
    size_t len = strlen(name);
    char line[256];
    int64_t v = -1;
    FILE *f;

    if ((f = fopen("/proc/self/status", "r")) == NULL)
        return -1;
    while (fgets(line, sizeof(line), f) != NULL)
        if (strncmp(line, name, len) == 0 && line[len] == ':') {
            v = strtoll(line + len + 1, NULL, 10);
            break;
        }
    fclose(f);
    return v;
}


static int64_t
proc_fd_count(void)
{
    int64_t n = -1; /* the directory's own descriptor is not counted */
    DIR *d;

    if ((d = opendir("/proc/self/fd")) == NULL)
        return -1;
    while (readdir(d) != NULL)
        n++;
    closedir(d);
    return n - 2; /* "." and ".." */
}


/*
 * One line of JSON with every counter, written with a single write() so
 * that a reader of a pipe gets it whole. The descriptor is non-blocking: a
 * reader that does not read loses lines rather than stalling the loop.
 */
static void
write_stats(app_t *app)
{
    char buf[3072];
    size_t off = 1;

    if (app->stats_fd < 0)
        return;
    buf[0] = '{';
    json_add(buf, sizeof(buf), &off, "seq", (int64_t)++app->stats_seq);
    json_server(buf, sizeof(buf), &off, app->srv);
    json_msg(buf, sizeof(buf), &off, app->svc);
    json_add(buf, sizeof(buf), &off, "rss_kb", proc_status_kb("VmRSS"));
    json_add(buf, sizeof(buf), &off, "hwm_kb", proc_status_kb("VmHWM"));
    json_add(buf, sizeof(buf), &off, "fds", proc_fd_count());
    if (off + 3 > sizeof(buf))
        return;
    memcpy(buf + off, "}\n", 2);
    (void)!write(app->stats_fd, buf, off + 2);
}

/* ---- arguments ---------------------------------------------------------- */

typedef enum { OPT_FLAG, OPT_STR, OPT_PORT, OPT_UINT, OPT_U32, OPT_U64,
               OPT_SIZE, OPT_FD } opt_kind_t;

typedef struct {
    const char *name;
    opt_kind_t kind;
    void *dst;
} opt_t;


static void
usage(const char *prog)
{
    fprintf(stderr,
            "usage: %s [--host H] [--port P] [--io-threads N] [--workers N]\n"
            "          [--ordered] [--max-conns N] [--log-level L] "
            "[--log-conf FILE]\n"
            "          [--max-body B] [--frame-deadline-ms MS] "
            "[--idle-ms MS]\n"
            "          [--queue-max N] [--out-high B] [--out-low B] "
            "[--out-hard B]\n"
            "          [--in-budget B]\n"
            "          [--port-file F] [--stats-fd FD] [--max-fds N] "
            "[--test-commands]\n",
            prog);
    exit(2);
}


/* The table of options, pointing into app. Returns the count. */
static size_t
options(app_t *app, opt_t *t)
{
    const opt_t all[] = {
        {"--host", OPT_STR, &app->so.host},
        {"--port", OPT_PORT, &app->so.port},
        {"--io-threads", OPT_UINT, &app->so.io_threads},
        {"--workers", OPT_UINT, &app->mo.workers},
        {"--ordered", OPT_FLAG, &app->mo.ordered},
        {"--max-conns", OPT_UINT, &app->so.max_conns},
        {"--log-level", OPT_STR, &app->log_level},
        {"--log-conf", OPT_STR, &app->log_conf},
        {"--max-body", OPT_U32, &app->mo.max_body},
        {"--frame-deadline-ms", OPT_U64, &app->mo.frame_deadline_ms},
        {"--idle-ms", OPT_U64, &app->mo.idle_ms},
        {"--queue-max", OPT_UINT, &app->mo.queue_max},
        {"--out-high", OPT_SIZE, &app->so.limits.out_high},
        {"--out-low", OPT_SIZE, &app->so.limits.out_low},
        {"--out-hard", OPT_SIZE, &app->so.limits.out_hard},
        {"--in-budget", OPT_SIZE, &app->so.in_budget},
        {"--port-file", OPT_STR, &app->port_file},
        {"--stats-fd", OPT_FD, &app->stats_fd},
        {"--max-fds", OPT_UINT, &app->max_fds},
        {"--test-commands", OPT_FLAG, &app->test_commands},
    };

    memcpy(t, all, sizeof(all));
    return sizeof(all) / sizeof(all[0]);
}


/* Stores the value v of option o; false if v is not a valid number for
 * it. */
static bool
set_option(const opt_t *o, const char *v)
{
    unsigned long long n;
    char *end;

    if (o->kind == OPT_STR) {
        *(const char **)o->dst = v;
        return true;
    }
    errno = 0;
    n = strtoull(v, &end, 10);
    if (errno != 0 || end == v || *end != '\0' || v[0] == '-')
        return false;
    switch (o->kind) {
    case OPT_PORT:
        *(uint16_t *)o->dst = (uint16_t)n;
        return n <= UINT16_MAX;
    case OPT_UINT:
        *(unsigned *)o->dst = (unsigned)n;
        return n <= UINT_MAX;
    case OPT_U32:
        *(uint32_t *)o->dst = (uint32_t)n;
        return n <= UINT32_MAX;
    case OPT_FD:
        *(int *)o->dst = (int)n;
        return n <= INT_MAX;
    case OPT_U64:
        *(uint64_t *)o->dst = n;
        return true;
    default:
        *(size_t *)o->dst = (size_t)n;
        return true;
    }
}


static int
parse_args(int argc, char **argv, app_t *app)
{
    opt_t opts[32];
    size_t i, n = options(app, opts);
    zn_log_level_t lv;
    int a, rc;

    for (a = 1; a < argc; a++) {
        for (i = 0; i < n && strcmp(argv[a], opts[i].name) != 0; i++)
            ;
        if (i == n)
            usage(argv[0]);
        if (opts[i].kind == OPT_FLAG) {
            *(bool *)opts[i].dst = true;
            continue;
        }
        if (a + 1 >= argc || !set_option(&opts[i], argv[++a]))
            usage(argv[0]);
    }
    if (app->log_conf != NULL &&
        (rc = zn_log_init(app->log_conf, "server")) != 0) {
        fprintf(stderr, "%s: %s\n", app->log_conf, zn_strerror(rc));
        return rc;
    }
    if (app->log_level != NULL) {
        if (zn_log_level_parse(app->log_level, &lv) != 0)
            usage(argv[0]);
        zn_log_set_level(lv);
    }
    return 0;
}

/* ---- running ------------------------------------------------------------ */


static void
on_signal(zn_loop_t *loop, int signum, void *ud)
{
    if (signum == SIGUSR1) {
        write_stats(ud);
        return;
    }
    ZN_INFO("rpc_server: signal %d, shutting down", signum);
    zn_loop_stop(loop);
}


/* What the test hooks need once the server listens: the port file, the
 * lowered descriptor limit. */
static int
after_start(app_t *app)
{
    struct rlimit rl;
    char tmp[4096];
    FILE *f;

    if (app->port_file != NULL) {
        snprintf(tmp, sizeof(tmp), "%s.tmp", app->port_file);
        if ((f = fopen(tmp, "w")) == NULL)
            return -errno;
        fprintf(f, "%u\n", zn_server_port(app->srv));
        /* Renamed only when complete: a reader never sees half a port. */
        if (fclose(f) != 0 || rename(tmp, app->port_file) != 0)
            return -errno;
    }
    if (app->stats_fd >= 0 &&
        fcntl(app->stats_fd, F_SETFL, O_NONBLOCK | O_APPEND) != 0)
        return -errno;
    if (app->max_fds > 0) {
        if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
            return -errno;
        rl.rlim_cur = app->max_fds;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
            return -errno;
        ZN_INFO("rpc_server: descriptor limit %u", app->max_fds);
    }
    return 0;
}


static int
serve(app_t *app, zn_msg_table_t *table, zn_loop_t *loop)
{
    static const int sigs[] = {SIGINT, SIGTERM, SIGUSR1, 0};
    int rc;

    if ((rc = register_commands(table, app->test_commands)) != 0 ||
        (rc = zn_msg_service_new(table, &app->mo, &app->svc)) != 0 ||
        (rc = zn_loop_handle_signals(loop, sigs, on_signal, app)) != 0)
        return rc;
    zn_msg_service_bind(app->svc, &app->so);
    if ((rc = zn_server_new(loop, &app->so, &app->srv)) != 0 ||
        (rc = zn_server_start(app->srv)) != 0 || (rc = after_start(app)) != 0)
        return rc;
    ZN_INFO("rpc_server: listening on %s:%u, %u io threads, %u workers",
            app->so.host, zn_server_port(app->srv), app->so.io_threads,
            app->mo.workers);
    if ((rc = zn_loop_run(loop)) != 0)
        ZN_ERROR("rpc_server: loop: %s", zn_strerror(rc));
    /* Stop accepting, refuse new requests, finish those in flight, flush,
     * close: at most DRAIN_MS in all. */
    if (zn_msg_service_drain(app->svc, app->srv, DRAIN_MS) != 0)
        ZN_WARN("rpc_server: drain cut short after %d ms", DRAIN_MS);
    write_stats(app);
    return rc == 0 ? 0 : 1;
}


int
main(int argc, char **argv)
{
    zn_msg_table_t *table = NULL;
    zn_loop_t *loop = NULL;
    app_t app;
    int rc;

    memset(&app, 0, sizeof(app));
    zn_server_opts_default(&app.so);
    zn_msg_opts_default(&app.mo);
    app.so.host = "0.0.0.0";
    app.so.port = 11111;
    app.stats_fd = -1;
    if (parse_args(argc, argv, &app) != 0)
        return 1;
    if ((rc = zn_msg_table_new(&table)) == 0 &&
        (rc = zn_loop_new(&loop)) == 0)
        rc = serve(&app, table, loop);
    if (rc < 0)
        fprintf(stderr, "rpc_server: %s:%u: %s\n", app.so.host, app.so.port,
                zn_strerror(rc));
    zn_server_free(app.srv);
    zn_msg_service_free(app.svc);
    zn_msg_table_free(table);
    zn_loop_free(loop);
    zn_log_fini();
    return rc == 0 ? 0 : 1;
}
