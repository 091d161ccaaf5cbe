/*
 * stats.c: the --stats-fd line of znet-test-server.
 *
 * On SIGUSR1, and once at exit, the server writes one line of JSON to the
 * descriptor given with --stats-fd (an inherited pipe or file): every
 * counter of zn_server_stats and zn_msg_service_stats, and the process's
 * VmRSS, VmHWM (KiB) and open descriptors, read from /proc. The hostile
 * suite reads it to check what the server counted (docs/hostile.md).
 */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "app.h"


/* Appends "key":v to the object in buf, with a comma after the first;
 * silently stops when buf is full (the caller checks the end). */
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


/* Every counter of zn_server_stats, close reasons by name. */
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


/* Every counter of zn_msg_service_stats, errors sent by code. */
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
    json_add(buf, cap, off, "held", (int64_t)st.held);
    json_add(buf, cap, off, "held_peak", (int64_t)st.held_peak);
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


/* The open descriptors, from /proc/self/fd; -1 if it cannot be read. */
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
/*
 * One line of JSON with every counter, written with a single write() so
 * that a reader of a pipe gets it whole. The descriptor is non-blocking: a
 * reader that does not read loses lines rather than stalling the loop.
 */
void
app_write_stats(app_t *app)
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

