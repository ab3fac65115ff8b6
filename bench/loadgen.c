/*
 * loadgen: the benchmark's load generator, one thread over epoll.
 *
 * Opens N Server-Sent Events subscribers to one server (pyhasses or
 * nginx+nchan), publishes through one keep-alive connection (pyhasses'
 * control port, or HTTP POST to nchan's publisher location) and stamps every
 * message with its publish time (CLOCK_MONOTONIC, ns), so that latency is
 * receive time minus publish time on one clock.  Streams may be chunked
 * (pyhasses) or not; both are parsed.
 *
 * Modes:
 *   broadcast  storm (e) and memory (f) while N subscribe to one channel,
 *              then (a) acked one by one, (b) one batch, (c) a fixed rate
 *   p2p        storm, then (d): each subscriber on its own channel,
 *              messages to random channels with a window of unacked ones
 *   tls        storm and memory only ("ge", "gf"), every subscriber over
 *              TLS (OpenSSL, a full handshake each, no session reuse)
 *
 * Output: one JSON object per line and scenario.  Each carries the load
 * generator's CPU share over the scenario (getrusage) and the server's (from
 * /proc/PID/stat); "saturated" is true when the load generator used more
 * than 90% of its core, and then the figure is not to be trusted.
 *
 * Every wait has a deadline; the program ends by itself.  Sockets are closed
 * with a reset (SO_LINGER 0) so that repeated runs leave no TIME_WAIT.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

enum { SRV_PYHASSES, SRV_NCHAN };
enum { ST_CONNECTING, ST_TLS, ST_HEAD, ST_STREAM, ST_DEAD };
enum { CH_SIZE, CH_DATA, CH_CRLF };

#define HEAD_MAX 4096
#define LINE_MAX_ 256
#define PUB_ID (-1)

typedef struct {
    SSL *ssl;            /* --mode tls only */
    int fd;
    unsigned char state, chunked, chunk_state, in_ext;
    int64_t chunk_left;
    char *head;          /* handshake bytes until the empty line; freed after */
    int head_len;
    char line[LINE_MAX_]; /* carry of a partial SSE line */
    int line_len;
} Sub;

/* -- options ---------------------------------------------------------- */
static const char *opt_host = "127.0.0.1";
static int opt_port, opt_pub_port, opt_server = SRV_PYHASSES, opt_n = 1000;
static const char *opt_mode = "broadcast";
static int opt_server_pid, opt_inflight = 500, opt_messages = 50, opt_rate = 20, opt_rate_messages = 40;
static int opt_p2p_messages = 10000, opt_window = 64;
static double opt_wait = 20.0;
static const char *opt_only = "abc";

/* -- state ------------------------------------------------------------ */
static int ep;
static SSL_CTX *tls_ctx; /* --mode tls: subscribers speak TLS */
static Sub *subs;
static int connecting, established, dead, next_to_open;
static int64_t t_last_handshake;
static int pub_fd = -1;
static char pub_in[65536];
static int pub_in_len;
static long acks, pub_errors;
/* the current scenario's receipts */
static long seq_base, seq_count;
static int64_t *lat;
static long lat_len, lat_cap, received, stray;
static int64_t t_last_recv;
static int *per_msg;
static int64_t *debug_max; /* LOADGEN_DEBUG=1: each message's slowest delivery, on stderr */

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "loadgen: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(2);
}

/* -- CPU accounting ---------------------------------------------------- */
typedef struct { int64_t wall, self, server, server_wait, self_wait; } Mark;

static int64_t self_cpu_ns(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000000LL +
           (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1000LL;
}

static int64_t server_cpu_ns(void) {
    if (!opt_server_pid) return 0;
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", opt_server_pid);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    if (!p) return 0;
    unsigned long ut = 0, st = 0;
    /* fields after the name: state ppid ... utime(14) stime(15) */
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2) return 0;
    return (int64_t)(ut + st) * (1000000000LL / sysconf(_SC_CLK_TCK));
}

static long server_rss_bytes(void) {
    if (!opt_server_pid) return 0;
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", opt_server_pid);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    long kb = 0;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "VmRSS:", 6)) kb = atol(line + 6);
    fclose(f);
    return kb * 1024;
}

/* Time spent runnable but waiting for a CPU (/proc/PID/schedstat, second
 * field): other processes on the machine took the core. */
static int64_t runq_wait_ns(int pid) {
    char path[64];
    if (pid) snprintf(path, sizeof path, "/proc/%d/schedstat", pid);
    else snprintf(path, sizeof path, "/proc/self/schedstat");
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    unsigned long long run = 0, wait = 0;
    if (fscanf(f, "%llu %llu", &run, &wait) != 2) wait = 0;
    fclose(f);
    return (int64_t)wait;
}

static Mark mark(void) {
    Mark m = {now_ns(), self_cpu_ns(), server_cpu_ns(), opt_server_pid ? runq_wait_ns(opt_server_pid) : 0,
              runq_wait_ns(0)};
    return m;
}

/* -- output ------------------------------------------------------------- */
static void emit_begin(const char *scenario) {
    printf("{\"scenario\": \"%s\", \"server\": \"%s\", \"n\": %d", scenario,
           opt_server == SRV_NCHAN ? "nchan" : "pyhasses", opt_n);
}

static void emit_cpu(Mark a, Mark b) {
    double wall = (double)(b.wall - a.wall);
    double self = wall > 0 ? (b.self - a.self) / wall : 0;
    double server = wall > 0 ? (b.server - a.server) / wall : 0;
    double server_wait = wall > 0 ? (b.server_wait - a.server_wait) / wall : 0;
    double self_wait = wall > 0 ? (b.self_wait - a.self_wait) / wall : 0;
    printf(", \"loadgen_cpu\": %.3f, \"server_cpu\": %.3f, \"server_runq_wait\": %.3f, "
           "\"loadgen_runq_wait\": %.3f, \"saturated\": %s}\n", self, server, server_wait, self_wait,
           self > 0.9 ? "true" : "false");
    fflush(stdout);
}

static int cmp64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static void emit_latency(void) {
    if (!lat_len) {
        printf(", \"p50_ms\": null, \"p99_ms\": null, \"max_ms\": null");
        return;
    }
    qsort(lat, lat_len, sizeof *lat, cmp64);
    printf(", \"p50_ms\": %.3f, \"p99_ms\": %.3f, \"max_ms\": %.3f", lat[lat_len / 2] / 1e6,
           lat[(long)(lat_len * 0.99)] / 1e6, lat[lat_len - 1] / 1e6);
}

/* -- receipts ----------------------------------------------------------- */
static void start_scenario(long base, long count, long expected) {
    seq_base = base;
    seq_count = count;
    received = stray = 0;
    lat_len = 0;
    if (expected > lat_cap) {
        lat_cap = expected;
        lat = realloc(lat, lat_cap * sizeof *lat);
        if (!lat) die("out of memory");
    }
    free(per_msg);
    per_msg = calloc(count, sizeof *per_msg);
    if (getenv("LOADGEN_DEBUG")) {
        free(debug_max);
        debug_max = calloc(count, sizeof *debug_max);
    }
    t_last_recv = 0;
}

/* "data: SEQ:NS" */
static void on_data_line(const char *p, int len, int64_t t) {
    char tmp[64];
    if (len >= (int)sizeof tmp) return;
    memcpy(tmp, p, len);
    tmp[len] = 0;
    char *colon = strchr(tmp, ':');
    if (!colon) return;
    long seq = atol(tmp);
    int64_t sent = atoll(colon + 1);
    if (seq < seq_base || seq >= seq_base + seq_count) {
        stray++;
        return;
    }
    per_msg[seq - seq_base]++;
    if (debug_max && t - sent > debug_max[seq - seq_base]) debug_max[seq - seq_base] = t - sent;
    if (lat_len < lat_cap) lat[lat_len++] = t - sent;
    received++;
    t_last_recv = t;
}

static void sse_line(const char *p, int len, int64_t t) {
    if (len > 0 && p[len - 1] == '\r') len--;
    if (len > 6 && !memcmp(p, "data: ", 6)) on_data_line(p + 6, len - 6, t);
}

/* Bytes of the event stream itself (after any chunked framing). */
static void sse_bytes(Sub *s, const char *p, int len, int64_t t) {
    while (len > 0) {
        const char *nl = memchr(p, '\n', len);
        if (!nl) {
            int take = len < LINE_MAX_ - s->line_len ? len : LINE_MAX_ - s->line_len;
            memcpy(s->line + s->line_len, p, take);
            s->line_len += take;
            return;
        }
        int part = nl - p;
        if (s->line_len) {
            int take = part < LINE_MAX_ - s->line_len ? part : LINE_MAX_ - s->line_len;
            memcpy(s->line + s->line_len, p, take);
            sse_line(s->line, s->line_len + take, t);
            s->line_len = 0;
        } else {
            sse_line(p, part, t);
        }
        p = nl + 1;
        len -= part + 1;
    }
}

static void body_bytes(Sub *s, const char *p, int len, int64_t t) {
    if (!s->chunked) {
        sse_bytes(s, p, len, t);
        return;
    }
    while (len > 0) {
        if (s->chunk_state == CH_SIZE) {
            char c = *p++;
            len--;
            if (c == '\n') {
                s->in_ext = 0;
                if (!s->chunk_left) { /* last chunk: the stream ended */
                    s->state = ST_DEAD;
                    return;
                }
                s->chunk_state = CH_DATA;
            } else if (s->in_ext || c == '\r') {
                continue;
            } else if (isxdigit((unsigned char)c)) {
                s->chunk_left = s->chunk_left * 16 + (isdigit((unsigned char)c) ? c - '0' : (tolower(c) - 'a' + 10));
            } else {
                s->in_ext = 1; /* a chunk extension: ignored up to the line end */
            }
        } else if (s->chunk_state == CH_DATA) {
            int take = len < s->chunk_left ? len : (int)s->chunk_left;
            sse_bytes(s, p, take, t);
            p += take;
            len -= take;
            s->chunk_left -= take;
            if (!s->chunk_left) {
                s->chunk_state = CH_CRLF;
                s->chunk_left = 2;
            }
        } else { /* CRLF after the data */
            int take = len < s->chunk_left ? len : (int)s->chunk_left;
            p += take;
            len -= take;
            s->chunk_left -= take;
            if (!s->chunk_left) s->chunk_state = CH_SIZE;
        }
    }
}

/* -- subscribers --------------------------------------------------------- */

static void close_reset(int fd) {
    struct linger lg = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(fd);
}

static void sub_fail(Sub *s) {
    if (s->state == ST_CONNECTING || s->state == ST_TLS || s->state == ST_HEAD) connecting--;
    else if (s->state == ST_STREAM) established--;
    s->state = ST_DEAD;
    dead++;
    epoll_ctl(ep, EPOLL_CTL_DEL, s->fd, NULL);
    close_reset(s->fd);
    s->fd = -1;
    free(s->head);
    s->head = NULL;
    if (s->ssl) SSL_free(s->ssl);
    s->ssl = NULL;
}

static void sub_send_request(int i, int switch_to_input);
static void sub_tls_step(int i);

static void sub_watch(int i, uint32_t events) {
    struct epoll_event ev = {.events = events, .data.u32 = i};
    epoll_ctl(ep, EPOLL_CTL_MOD, subs[i].fd, &ev);
}

static void sub_tls_start(int i) {
    Sub *s = &subs[i];
    s->ssl = SSL_new(tls_ctx);
    if (!s->ssl) die("SSL_new failed");
    SSL_set_fd(s->ssl, s->fd);
    SSL_set_connect_state(s->ssl);
    s->state = ST_TLS;
    sub_tls_step(i);
}

/* Drive the TLS handshake; when done, send the request over it. */
static void sub_tls_step(int i) {
    Sub *s = &subs[i];
    int r = SSL_do_handshake(s->ssl);
    if (r == 1) {
        sub_send_request(i, 1);
        return;
    }
    int err = SSL_get_error(s->ssl, r);
    if (err == SSL_ERROR_WANT_READ) sub_watch(i, EPOLLIN);
    else if (err == SSL_ERROR_WANT_WRITE) sub_watch(i, EPOLLOUT);
    else {
        ERR_clear_error();
        sub_fail(s);
    }
}

static void sub_open(int i) {
    Sub *s = &subs[i];
    memset(s, 0, sizeof *s);
    s->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (s->fd < 0) die("socket: %s (raise ulimit -n)", strerror(errno));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(opt_port)};
    inet_pton(AF_INET, opt_host, &a.sin_addr);
    s->state = ST_CONNECTING;
    connecting++;
    int now = connect(s->fd, (struct sockaddr *)&a, sizeof a) == 0;
    if (!now && errno != EINPROGRESS) {
        sub_fail(s);
        return;
    }
    /* On loopback the connection is often complete at once: then the
     * request goes out now, with no epoll round (a cheaper storm). */
    struct epoll_event ev = {.events = now ? EPOLLIN : EPOLLOUT, .data.u32 = i};
    epoll_ctl(ep, EPOLL_CTL_ADD, s->fd, &ev);
    if (now && tls_ctx) sub_tls_start(i);
    else if (now) sub_send_request(i, 0);
}

static void sub_connected(int i) {
    Sub *s = &subs[i];
    int err = 0;
    socklen_t el = sizeof err;
    getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &el);
    if (err) {
        sub_fail(s);
        return;
    }
    if (tls_ctx) sub_tls_start(i);
    else sub_send_request(i, 1);
}

static void sub_send_request(int i, int switch_to_input) {
    Sub *s = &subs[i];
    char req[512], channel[32];
    if (!strcmp(opt_mode, "p2p")) snprintf(channel, sizeof channel, "t%d", i);
    else snprintf(channel, sizeof channel, "all");
    int len;
    if (opt_server == SRV_NCHAN)
        len = snprintf(req, sizeof req,
                       "GET /sub?id=%s HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n"
                       "Connection: keep-alive\r\n\r\n", channel);
    else
        len = snprintf(req, sizeof req,
                       "GET /sse?subscribe=%s HTTP/1.1\r\nHost: localhost\r\nConnection: keep-alive\r\n\r\n",
                       channel);
    if (s->ssl ? SSL_write(s->ssl, req, len) != len : send(s->fd, req, len, MSG_NOSIGNAL) != len) {
        sub_fail(s);
        return;
    }
    s->state = ST_HEAD;
    s->head = malloc(HEAD_MAX);
    if (switch_to_input) {
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = i};
        epoll_ctl(ep, EPOLL_CTL_MOD, s->fd, &ev);
    }
}

static void sub_head(Sub *s, const char *p, int len, int64_t t) {
    int take = len < HEAD_MAX - 1 - s->head_len ? len : HEAD_MAX - 1 - s->head_len;
    memcpy(s->head + s->head_len, p, take);
    s->head_len += take;
    s->head[s->head_len] = 0;
    char *end = strstr(s->head, "\r\n\r\n");
    if (!end) {
        if (s->head_len >= HEAD_MAX - 1) sub_fail(s);
        return;
    }
    if (strncmp(s->head, "HTTP/1.1 200", 12)) {
        fprintf(stderr, "loadgen: handshake refused: %.80s\n", s->head);
        sub_fail(s);
        return;
    }
    int head_bytes = end + 4 - s->head;
    s->chunked = strcasestr(s->head, "transfer-encoding: chunked") != NULL;
    s->state = ST_STREAM;
    connecting--;
    established++;
    t_last_handshake = t;
    /* bytes after the head were part of this read */
    int rest_from = head_bytes - (s->head_len - take);
    char *head = s->head;
    s->head = NULL;
    if (rest_from < len) body_bytes(s, p + rest_from, len - rest_from, t);
    free(head);
}

static char rbuf[1 << 20];

/* One read of decrypted bytes: > 0 bytes, 0 nothing now, -1 gone. */
static ssize_t sub_recv(Sub *s) {
    if (!s->ssl) {
        ssize_t n = recv(s->fd, rbuf, sizeof rbuf, 0);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) return 0;
        return n > 0 ? n : -1;
    }
    int n = SSL_read(s->ssl, rbuf, sizeof rbuf);
    if (n > 0) return n;
    int err = SSL_get_error(s->ssl, n);
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) return 0;
    ERR_clear_error();
    return -1;
}

static void sub_readable(int i) {
    Sub *s = &subs[i];
    if (s->state == ST_TLS) {
        sub_tls_step(i);
        return;
    }
    for (;;) {
        ssize_t n = sub_recv(s);
        if (n == 0) return;
        if (n < 0) {
            sub_fail(s);
            return;
        }
        int64_t t = now_ns();
        if (s->state == ST_HEAD) sub_head(s, rbuf, n, t);
        else if (s->state == ST_STREAM) body_bytes(s, rbuf, n, t);
        if (s->state == ST_DEAD) {
            if (s->fd >= 0) sub_fail(s);
            return;
        }
        if (n < (ssize_t)sizeof rbuf) return;
    }
}

/* -- publisher ------------------------------------------------------------- */
static void pub_connect(void) {
    pub_fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(opt_pub_port)};
    inet_pton(AF_INET, opt_host, &a.sin_addr);
    if (connect(pub_fd, (struct sockaddr *)&a, sizeof a) < 0) die("publisher connect: %s", strerror(errno));
    int one = 1;
    setsockopt(pub_fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)PUB_ID};
    epoll_ctl(ep, EPOLL_CTL_ADD, pub_fd, &ev);
}

static void pub_send(const char *buf, size_t len) {
    while (len) { /* blocking socket: the server reads its control input */
        ssize_t n = send(pub_fd, buf, len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("publisher send: %s", strerror(errno));
        }
        buf += n;
        len -= n;
    }
}

/* One message into buf; returns its length. */
static int pub_format(char *buf, size_t cap, const char *channel, long seq, int want_ack) {
    char body[64];
    int blen = snprintf(body, sizeof body, "%ld:%lld", seq, (long long)now_ns());
    if (opt_server == SRV_NCHAN)
        return snprintf(buf, cap,
                        "POST /pub?id=%s HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/plain\r\n"
                        "Content-Length: %d\r\n\r\n%s", channel, blen, body);
    if (want_ack)
        return snprintf(buf, cap, "{\"to\": \"%s\", \"data\": \"%s\", \"ack\": true}\n", channel, body);
    return snprintf(buf, cap, "%s=%s\n", channel, body);
}

/* Count acknowledgements: JSON lines from pyhasses, HTTP responses from nchan. */
static void pub_parse(void) {
    int pos = 0;
    for (;;) {
        char *start = pub_in + pos;
        int avail = pub_in_len - pos;
        if (opt_server != SRV_NCHAN) {
            char *nl = memchr(start, '\n', avail);
            if (!nl) break;
            if (!memmem(start, nl - start, "\"ok\": true", 10)) pub_errors++;
            acks++;
            pos += nl - start + 1;
            continue;
        }
        char *end = memmem(start, avail, "\r\n\r\n", 4);
        if (!end) break;
        int head = end + 4 - start;
        long clen = 0;
        char *cl = memmem(start, head, "Content-Length:", 15);
        if (!cl) cl = memmem(start, head, "content-length:", 15);
        if (cl) clen = atol(cl + 15);
        if (avail < head + clen) break;
        int status = atoi(start + 9);
        if (status < 200 || status > 299) pub_errors++;
        acks++;
        pos += head + clen;
    }
    memmove(pub_in, pub_in + pos, pub_in_len - pos);
    pub_in_len -= pos;
}

static void pub_readable(void) {
    for (;;) {
        if (pub_in_len == (int)sizeof pub_in) die("publisher reply too long");
        ssize_t n = recv(pub_fd, pub_in + pub_in_len, sizeof pub_in - pub_in_len, MSG_DONTWAIT);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) break;
        if (n <= 0) die("publisher connection closed by the server");
        pub_in_len += n;
        pub_parse();
    }
}

/* -- the loop ---------------------------------------------------------------- */
static struct epoll_event events[4096];

/* One epoll pass, waiting at most timeout_ns (epoll_pwait2: a pacing loop
 * sleeps to within the timer slack of its next send instead of spinning
 * through the last millisecond, so the core it shares stays free); opens
 * more subscribers while fewer than opt_inflight handshakes are under way. */
static void pump_ns(int64_t timeout_ns) {
    while (next_to_open < opt_n && connecting < opt_inflight) sub_open(next_to_open++);
    if (timeout_ns < 0) timeout_ns = 0;
    struct timespec timeout = {timeout_ns / 1000000000LL, timeout_ns % 1000000000LL};
    int n = epoll_pwait2(ep, events, sizeof events / sizeof *events, &timeout, NULL);
    for (int k = 0; k < n; k++) {
        uint32_t id = events[k].data.u32;
        if (id == (uint32_t)PUB_ID) {
            pub_readable();
            continue;
        }
        Sub *s = &subs[id];
        if (s->state == ST_CONNECTING) sub_connected(id);
        else if (s->state != ST_DEAD) sub_readable(id);
    }
}

static void pump(int timeout_ms) { pump_ns((int64_t)timeout_ms * 1000000); }

static int wait_for(int (*done)(void), double seconds) {
    int64_t deadline = now_ns() + (int64_t)(seconds * 1e9);
    while (!done()) {
        int64_t left = deadline - now_ns();
        if (left <= 0) return 0;
        pump(left / 1000000 + 1 > 50 ? 50 : left / 1000000 + 1);
    }
    return 1;
}

static long expected_receipts;
static long acks_wanted;
static int all_settled(void) { return next_to_open >= opt_n && connecting == 0; }
static int all_received(void) { return received >= expected_receipts; }
static int acks_in(void) { return acks >= acks_wanted; }

static void idle(double seconds) {
    int64_t until = now_ns() + (int64_t)(seconds * 1e9);
    while (now_ns() < until) pump(10);
}

/* -- scenarios ------------------------------------------------------------- */
static void storm(const char *name_storm, const char *name_memory) {
    long rss_before = server_rss_bytes();
    Mark a = mark();
    int64_t t0 = a.wall;
    int ok = wait_for(all_settled, opt_wait + opt_n / 500.0);
    Mark b = mark();
    double secs = (t_last_handshake - t0) / 1e9;
    emit_begin(name_storm);
    printf(", \"established\": %d, \"failed\": %d, \"complete\": %s, \"seconds\": %.3f, \"handshakes_per_s\": %.0f",
           established, dead, ok ? "true" : "false", secs, secs > 0 ? established / secs : 0.0);
    emit_cpu(a, b);
    idle(1.0); /* let the server settle before reading its memory */
    long rss_after = server_rss_bytes();
    emit_begin(name_memory);
    printf(", \"rss_before\": %ld, \"rss_after\": %ld, \"bytes_per_conn\": %.0f, \"loadgen_cpu\": 0, "
           "\"server_cpu\": 0, \"saturated\": false}\n",
           rss_before, rss_after, established ? (double)(rss_after - rss_before) / established : 0.0);
    fflush(stdout);
}

static void report_delivery(const char *name, Mark a, Mark b, int64_t t_first_pub, long messages) {
    if (debug_max) {
        fprintf(stderr, "%s: slowest delivery per message (ms):", name);
        for (long i = 0; i < messages && i < 100; i++) fprintf(stderr, " %.1f", debug_max[i] / 1e6);
        fprintf(stderr, "\n");
    }
    double secs = t_last_recv > t_first_pub ? (t_last_recv - t_first_pub) / 1e9 : 0;
    emit_begin(name);
    printf(", \"messages\": %ld, \"expected\": %ld, \"received\": %ld, \"lost\": %ld, \"stray\": %ld, "
           "\"pub_errors\": %ld, \"seconds\": %.4f, \"deliveries_per_s\": %.0f, \"messages_per_s\": %.0f",
           messages, expected_receipts, received, expected_receipts - received, stray, pub_errors, secs,
           secs > 0 ? received / secs : 0.0, secs > 0 ? messages / secs : 0.0);
    emit_latency();
    emit_cpu(a, b);
}

static void broadcast_acked(long base) {
    int m = opt_messages;
    expected_receipts = (long)established * m;
    start_scenario(base, m, expected_receipts);
    char buf[512];
    Mark a = mark();
    int64_t t0 = now_ns();
    for (int i = 0; i < m; i++) {
        pub_send(buf, pub_format(buf, sizeof buf, "all", base + i, 1));
        acks_wanted = acks + 1;
        if (!wait_for(acks_in, opt_wait)) break;
    }
    wait_for(all_received, opt_wait);
    Mark b = mark();
    report_delivery("a", a, b, t0, m);
}

static void broadcast_batch(long base) {
    int m = opt_messages;
    expected_receipts = (long)established * m;
    start_scenario(base, m, expected_receipts);
    size_t cap = (size_t)m * 512, len = 0;
    char *buf = malloc(cap);
    for (int i = 0; i < m; i++) len += pub_format(buf + len, cap - len, "all", base + i, 0);
    Mark a = mark();
    int64_t t0 = now_ns();
    pub_send(buf, len);
    free(buf);
    if (opt_server == SRV_NCHAN) acks_wanted = acks + m;
    wait_for(all_received, opt_wait);
    if (opt_server == SRV_NCHAN) wait_for(acks_in, opt_wait);
    Mark b = mark();
    report_delivery("b", a, b, t0, m);
}

static void broadcast_rate(long base) {
    int m = opt_rate_messages;
    expected_receipts = (long)established * m;
    start_scenario(base, m, expected_receipts);
    char buf[512];
    Mark a = mark();
    int64_t t0 = now_ns(), step = 1000000000LL / opt_rate;
    for (int i = 0; i < m; i++) {
        int64_t due = t0 + i * step;
        while (now_ns() < due) pump_ns(due - now_ns());
        pub_send(buf, pub_format(buf, sizeof buf, "all", base + i, 0));
    }
    if (opt_server == SRV_NCHAN) acks_wanted = acks + m;
    wait_for(all_received, opt_wait);
    Mark b = mark();
    emit_begin("c");
    printf(", \"rate\": %d, \"messages\": %d, \"expected\": %ld, \"received\": %ld, \"lost\": %ld, \"stray\": %ld",
           opt_rate, m, expected_receipts, received, expected_receipts - received, stray);
    emit_latency();
    emit_cpu(a, b);
}

static void point_to_point(long base) {
    int m = opt_p2p_messages;
    expected_receipts = m;
    start_scenario(base, m, m);
    char *buf = malloc((size_t)opt_window * 512);
    srand(12345);
    Mark a = mark();
    int64_t t0 = now_ns();
    /* nchan answers every POST; pyhasses' control port takes plain lines,
     * and every per_ack-th one asks for an acknowledgement (flow control). */
    int per_ack = opt_server == SRV_NCHAN || opt_window < 2 ? 1 : opt_window / 2;
    long sent = 0, acks0 = acks, acked_sent = 0;
    int64_t deadline = t0 + (int64_t)(opt_wait * 1e9) * 4;
    while (sent < m && now_ns() < deadline) {
        size_t len = 0;
        while (sent < m && sent - (acks - acks0) * per_ack < opt_window) {
            char channel[32];
            int want_ack = (sent + 1) % per_ack == 0 || sent + 1 == m;
            snprintf(channel, sizeof channel, "t%d", rand() % opt_n);
            len += pub_format(buf + len, 512, channel, base + sent, want_ack);
            acked_sent += want_ack;
            sent++;
        }
        if (len) pub_send(buf, len);
        pump(10);
    }
    free(buf);
    acks_wanted = acks0 + acked_sent;
    wait_for(acks_in, opt_wait);
    wait_for(all_received, opt_wait);
    Mark b = mark();
    report_delivery("d", a, b, t0, m);
}

/* -- main ---------------------------------------------------------------------- */
static void usage(void) {
    fprintf(stderr,
            "usage: loadgen --port P --pub-port P [--server pyhasses|nchan] [--n N] [--mode broadcast|p2p]\n"
            "               [--server-pid PID] [--only abc] [--messages 50] [--rate 20] [--rate-messages 40]\n"
            "               [--p2p-messages 10000] [--window 64] [--inflight 500] [--wait S] [--host 127.0.0.1]\n");
    exit(2);
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *k = argv[i];
        if (i + 1 >= argc) usage();
        const char *v = argv[++i];
        if (!strcmp(k, "--host")) opt_host = v;
        else if (!strcmp(k, "--port")) opt_port = atoi(v);
        else if (!strcmp(k, "--pub-port")) opt_pub_port = atoi(v);
        else if (!strcmp(k, "--server")) opt_server = !strcmp(v, "nchan") ? SRV_NCHAN : SRV_PYHASSES;
        else if (!strcmp(k, "--n")) opt_n = atoi(v);
        else if (!strcmp(k, "--mode")) opt_mode = v;
        else if (!strcmp(k, "--server-pid")) opt_server_pid = atoi(v);
        else if (!strcmp(k, "--only")) opt_only = v;
        else if (!strcmp(k, "--messages")) opt_messages = atoi(v);
        else if (!strcmp(k, "--rate")) opt_rate = atoi(v);
        else if (!strcmp(k, "--rate-messages")) opt_rate_messages = atoi(v);
        else if (!strcmp(k, "--p2p-messages")) opt_p2p_messages = atoi(v);
        else if (!strcmp(k, "--window")) opt_window = atoi(v);
        else if (!strcmp(k, "--inflight")) opt_inflight = atoi(v);
        else if (!strcmp(k, "--wait")) opt_wait = atof(v);
        else usage();
    }
    if (!opt_port || !opt_pub_port || opt_n <= 0 || opt_rate <= 0 || opt_window <= 0) usage();
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_cur < (rlim_t)opt_n + 64) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        if (rl.rlim_cur < (rlim_t)opt_n + 64) die("descriptor limit %ld too low for %d subscribers", (long)rl.rlim_cur, opt_n);
    }
    ep = epoll_create1(0);
    subs = calloc(opt_n, sizeof *subs);
    if (!strcmp(opt_mode, "tls")) {
        tls_ctx = SSL_CTX_new(TLS_client_method());
        if (!tls_ctx) die("SSL_CTX_new failed");
        SSL_CTX_set_verify(tls_ctx, SSL_VERIFY_NONE, NULL);
        SSL_CTX_set_session_cache_mode(tls_ctx, SSL_SESS_CACHE_OFF); /* a full handshake each */
        storm("ge", "gf");
        for (int i = 0; i < opt_n; i++)
            if (subs[i].fd > 0) close_reset(subs[i].fd);
        return 0;
    }
    storm("e", "f");
    if (established < opt_n) fprintf(stderr, "loadgen: only %d of %d subscribers established\n", established, opt_n);
    pub_connect();
    if (!strcmp(opt_mode, "p2p")) {
        point_to_point(4000000);
    } else {
        if (strchr(opt_only, 'a')) { broadcast_acked(1000000); idle(0.3); }
        if (strchr(opt_only, 'b')) { broadcast_batch(2000000); idle(0.3); }
        if (strchr(opt_only, 'c')) broadcast_rate(3000000);
    }
    for (int i = 0; i < opt_n; i++)
        if (subs[i].fd > 0) close_reset(subs[i].fd);
    close_reset(pub_fd);
    return 0;
}
