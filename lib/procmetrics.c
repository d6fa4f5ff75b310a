/*
 * procmetrics: build and process metrics (see procmetrics.h).
 *
 * Everything is read from the kernel at scrape time, as the Prometheus
 * client libraries do: /proc/self/stat for CPU time, RSS and start time
 * (in clock ticks since boot, plus btime from /proc/stat), /proc/self/fd
 * for the open descriptors and getrlimit for their limit. Nothing is kept
 * between scrapes, so there is no thread and no timer.
 */
#include "procmetrics.h"

#include <dirent.h>
#include <event2/buffer.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "mbox_commit.h"
#include "metrics.h"

#ifndef MBOX_VERSION
#define MBOX_VERSION "unknown"
#endif

const char *
procmetrics_commit(void)
{
    /* vcs_tag writes the fallback when git or the checkout is missing. */
    return MBOX_COMMIT[0] != '\0' ? MBOX_COMMIT : "unknown";
}

/* Reads a small /proc file into buf (NUL-terminated); its length or -1. */
static ssize_t
read_small(const char *path, char *buf, size_t size)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    size_t len = 0;
    while (len < size - 1) {
        ssize_t n = read(fd, buf + len, size - 1 - len);
        if (n <= 0)
            break;
        len += (size_t)n;
    }
    close(fd);
    buf[len] = '\0';
    return (ssize_t)len;
}

/* The system boot time in unix seconds (btime of /proc/stat), or -1. */
static int64_t
boot_time(void)
{
    FILE *f = fopen("/proc/stat", "re");
    if (f == NULL)
        return -1;
    /* Lines can be long (intr lists every interrupt); btime is short. */
    char line[256];
    int64_t btime = -1;
    bool at_line_start = true;
    while (fgets(line, sizeof(line), f) != NULL) {
        bool whole = strchr(line, '\n') != NULL;
        if (at_line_start && strncmp(line, "btime ", 6) == 0) {
            btime = strtoll(line + 6, NULL, 10);
            break;
        }
        at_line_start = whole;
    }
    fclose(f);
    return btime;
}

/* Open descriptors: the entries of /proc/self/fd but the one reading it. */
static int64_t
open_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (d == NULL)
        return -1;
    int self = dirfd(d);
    int64_t n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        if (atoi(e->d_name) == self)
            continue;
        n++;
    }
    closedir(d);
    return n;
}

bool
procmetrics_read(struct proc_stats *st)
{
    *st = (struct proc_stats){-1, -1, -1, -1, -1};
    st->open_fds = open_fds();
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
        st->max_fds = rl.rlim_cur == RLIM_INFINITY ? INT64_MAX : (int64_t)rl.rlim_cur;

    /* "pid (comm) state ppid ...": comm may hold spaces and parentheses,
     * so the fields are counted from the last ')'. */
    char buf[4096];
    if (read_small("/proc/self/stat", buf, sizeof(buf)) <= 0)
        return false;
    char *p = strrchr(buf, ')');
    if (p == NULL)
        return false;
    p++;
    /* After ')' field 3 (state) comes first: utime is field 14, stime 15,
     * starttime 22, rss 24 (proc(5)). */
    unsigned long long utime = 0, stime = 0, start = 0;
    long long rss = 0;
    bool got_cpu = false, got_start = false, got_rss = false;
    int field = 2;
    for (char *save = NULL, *tok = strtok_r(p, " \n", &save); tok != NULL;
         tok = strtok_r(NULL, " \n", &save)) {
        field++;
        if (field == 14)
            utime = strtoull(tok, NULL, 10);
        else if (field == 15) {
            stime = strtoull(tok, NULL, 10);
            got_cpu = true;
        } else if (field == 22) {
            start = strtoull(tok, NULL, 10);
            got_start = true;
        } else if (field == 24) {
            rss = strtoll(tok, NULL, 10);
            got_rss = true;
            break;
        }
    }
    long ticks = sysconf(_SC_CLK_TCK);
    long page = sysconf(_SC_PAGESIZE);
    if (ticks <= 0)
        return false;
    if (got_cpu)
        st->cpu_seconds = (double)(utime + stime) / (double)ticks;
    if (got_rss && page > 0)
        st->rss_bytes = (int64_t)rss * page;
    int64_t btime = boot_time();
    if (got_start && btime >= 0)
        st->start_time_seconds = (double)btime + (double)start / (double)ticks;
    return got_cpu && got_rss && got_start;
}

/* One single-series family without labels. */
static void
family(struct evbuffer *out, const char *name, const char *type, const char *help)
{
    evbuffer_add_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

void
procmetrics_render(struct evbuffer *out, void *arg)
{
    (void)arg;
    struct proc_stats st;
    (void)procmetrics_read(&st);
    if (st.cpu_seconds >= 0) {
        family(out, "process_cpu_seconds_total", "counter",
               "Total user and system CPU time spent in seconds.");
        evbuffer_add_printf(out, "process_cpu_seconds_total %.2f\n", st.cpu_seconds);
    }
    if (st.rss_bytes >= 0) {
        family(out, "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.");
        evbuffer_add_printf(out, "process_resident_memory_bytes %" PRId64 "\n", st.rss_bytes);
    }
    if (st.open_fds >= 0) {
        family(out, "process_open_fds", "gauge", "Number of open file descriptors.");
        evbuffer_add_printf(out, "process_open_fds %" PRId64 "\n", st.open_fds);
    }
    if (st.max_fds >= 0) {
        family(out, "process_max_fds", "gauge", "Maximum number of open file descriptors.");
        evbuffer_add_printf(out, "process_max_fds %" PRId64 "\n", st.max_fds);
    }
    if (st.start_time_seconds >= 0) {
        family(out, "process_start_time_seconds", "gauge",
               "Start time of the process since unix epoch in seconds.");
        evbuffer_add_printf(out, "process_start_time_seconds %.2f\n", st.start_time_seconds);
    }
}

bool
procmetrics_register(struct metrics *m)
{
    char labels[160];
    snprintf(labels, sizeof(labels), "version=\"%s\",commit=\"%s\"", MBOX_VERSION,
             procmetrics_commit());
    struct metric *info = metrics_gauge(m, "mbox_build_info",
                                        "version and git commit of this binary (always 1)", labels);
    if (info == NULL)
        return false;
    metric_set(info, 1);
    return metrics_add_collector(m, procmetrics_render, NULL);
}
