/* loadgen: moonport's load generator. One process, one thread, one epoll
 * loop driving many non-blocking WebSocket client connections in one of four
 * modes: echo, conns, broadcast and churn (see usage below). Every frame it
 * sends is masked with a fresh random key, and every message that comes back
 * is compared byte for byte with what was sent (a sequence number and a send
 * timestamp are encoded at the front of each payload), so a fast but wrong
 * server fails the run instead of winning it.
 *
 * It needs libc and, for the SHA-1 of the handshake's accept key, OpenSSL's
 * libcrypto: not the server's own src/sha1.c, so that the key the server
 * computes is checked against an implementation it does not share. It must
 * never be the bottleneck, so the hot path does no allocation
 * and one read and one write per connection per wakeup.
 *
 * Exit status: 0 for a clean run; 1 for a wrong echo, a message out of
 * order, an unexpected close, a failed handshake or a timeout; 2 for a bad
 * command line. */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/sha.h>
#include <signal.h>
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

/* ---------------------------------------------------------------------- */
/* Settings and run state                                                  */

enum mode { MODE_ECHO, MODE_CONNS, MODE_BROADCAST, MODE_CHURN };
static const char *const mode_names[] = {"echo", "conns", "broadcast", "churn"};

/* What a connection is for. */
enum role {
    ROLE_ECHO,  /* keeps `inflight` messages going and checks every echo */
    ROLE_IDLE,  /* conns mode: says nothing until the final liveness check */
    ROLE_SUB,   /* broadcast subscriber: only receives */
    ROLE_PUB,   /* broadcast publisher: only sends */
    ROLE_CHURN, /* handshake, close, reconnect */
};

enum conn_state {
    CS_FREE,       /* no socket */
    CS_CONNECTING, /* connect() in progress */
    CS_HANDSHAKE,  /* request sent, waiting for the 101 */
    CS_OPEN,
    CS_CLOSING,  /* our close frame is queued, waiting for the server's */
    CS_DRAINING, /* the server answered our close: waiting for its FIN */
};

/* The run moves through these in order. */
enum phase {
    PH_CONNECT, /* opening connections */
    PH_WARMUP,  /* load running, not counted */
    PH_MEASURE, /* load running and counted */
    PH_DRAIN,   /* no new load: wait for what is in flight */
    PH_CLOSE,   /* closing handshakes */
    PH_DONE,
};

#define HDR_LEN 22             /* sequence number and timestamp, 11 characters each */
#define MIN_SIZE 24            /* room for the header and a little pattern */
#define PATTERN_SPAN 65536     /* payload bodies start at an offset in [0, PATTERN_SPAN) */
#define MAX_FRAME (64u << 20)  /* a frame larger than this from the server is an error */
#define HANDSHAKE_TIMEOUT_NS (10 * 1000000000ull)
#define CLOSE_TIMEOUT_NS (5 * 1000000000ull)
#define EOF_TIMEOUT_NS (2 * 1000000000ull)

struct buf {
    uint8_t *p;
    size_t off, len, cap; /* data is p[off, len) */
};

struct conn {
    int fd;
    uint32_t id;
    uint8_t state, role;
    uint8_t want_out; /* EPOLLOUT is registered */
    uint8_t msg_op;   /* opcode of a fragmented message being assembled, else 0 */
    uint8_t has_base; /* subscriber: has seen its first message */
    char key[25];     /* Sec-WebSocket-Key */
    struct buf in, out, frag;
    uint64_t sent, recvd; /* messages sent, and received and checked */
    uint64_t *sent_ts;    /* echo: send time of message seq at [seq % inflight] */
    uint64_t began;       /* when connect() was called */
    uint64_t deadline;    /* the current step must finish by then; 0 = no limit */
};

/* A log-linear latency histogram in nanoseconds: exact below 64, then 32
 * buckets per power of two (about 3% resolution). */
#define HIST_SUB 32
#define HIST_BUCKETS (64 + 58 * HIST_SUB)
struct hist {
    uint64_t n, max;
    uint64_t count[HIST_BUCKETS];
};

/* Where connections go: --url, and for the broadcast publisher --pub-url
 * (another node of a cluster, so the fan-out crosses the backplane). */
struct target {
    const char *url;
    char host[256], port[16], path[1024], hostport[300];
    struct sockaddr_storage addr;
    socklen_t addrlen;
};

/* --aux-pid NAME=PID: a process whose CPU time is reported apart from the
 * server's (a Redis backplane, the other node of a pair). */
struct aux {
    const char *name;
    int pids[16], npids; /* NAME=PID,PID...: a server and its workers */
    long long t0, t1;    /* their ticks at the window's edges */
};

struct cpu_sample {
    uint64_t at;          /* ns, CLOCK_MONOTONIC */
    long long srv_ticks;  /* server utime + stime, or -1 */
    long long self_us;    /* our own user + system time */
    long long all_ticks;  /* every CPU's busy time, from /proc/stat, or -1 */
};

static struct loadgen {
    /* Command line. */
    enum mode mode;
    const char *label;
    struct target sub, pub; /* pub is sub unless --pub-url */
    struct aux aux[4];
    int naux;
    int nconns, inflight, size, binary, json, server_pid, connect_limit;
    /* --server-pid PID,PID...: every process of the server (moonport
     * --workers: the master and its workers), summed; server_pid is the first. */
    int server_pids[64], nserver_pids;
    double duration, warmup, rate, drain;

    /* Run state. */
    int ep;
    struct conn *conns;
    int nslots;         /* entries of conns: nconns, plus the publisher */
    int next_open;      /* next slot to open in PH_CONNECT */
    int connecting;     /* slots in CS_CONNECTING or CS_HANDSHAKE */
    int open;           /* slots in CS_OPEN */
    int live;           /* slots with a socket */
    enum phase phase;
    uint64_t phase_at;  /* when the current phase began */
    uint64_t now;       /* refreshed after every epoll_wait */
    uint64_t t0, t1;    /* the measured window */
    struct cpu_sample s0, s1;
    uint8_t *pattern;   /* PATTERN_SPAN + size bytes that payload bodies are cut from */
    uint64_t rng;

    /* Results. */
    struct hist lat;
    uint64_t counted;     /* messages (or cycles) inside the window */
    uint64_t checked;     /* messages received and checked, all phases */
    uint64_t pending;     /* echo: messages sent and not yet back */
    uint64_t published;   /* broadcast: messages the publisher sent */
    uint64_t pub0, pub1;  /* broadcast: published at the window's edges */
    uint64_t pub_start;   /* broadcast: when publishing began */
    uint64_t delivered;   /* broadcast: messages subscribers got, all phases */
    int drained;          /* broadcast: every subscriber got every message */
    long rss_before, rss_after; /* KiB, or -1 */
} lg;

/* ---------------------------------------------------------------------- */
/* Small helpers                                                           */

static uint64_t clock_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Every failure of the server ends the run here: a benchmark that carried
 * on would report numbers for a server that does not work. */
__attribute__((format(printf, 2, 3))) static _Noreturn void die(const struct conn *c,
                                                                const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "loadgen: %s: ", mode_names[lg.mode]);
    if (c)
        fprintf(stderr, "conn %u: ", c->id);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

static void *xrealloc(void *p, size_t n)
{
    p = realloc(p, n);
    if (!p)
        die(NULL, "out of memory");
    return p;
}

/* xorshift64*: fast, and seeded from the kernel, for masking keys. */
static uint64_t rnd(void)
{
    lg.rng ^= lg.rng >> 12;
    lg.rng ^= lg.rng << 25;
    lg.rng ^= lg.rng >> 27;
    return lg.rng * 0x2545F4914F6CDD1Dull;
}

static void rnd_seed(void)
{
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (fd < 0 || read(fd, &lg.rng, sizeof lg.rng) != (ssize_t)sizeof lg.rng)
        lg.rng = clock_ns();
    if (fd >= 0)
        close(fd);
    lg.rng |= 1;
}

/* Make room for n more bytes at the end, moving the data down first. */
static void buf_reserve(struct buf *b, size_t n)
{
    if (b->cap - b->len >= n)
        return;
    if (b->off) {
        memmove(b->p, b->p + b->off, b->len - b->off);
        b->len -= b->off;
        b->off = 0;
        if (b->cap - b->len >= n)
            return;
    }
    size_t cap = b->cap ? b->cap : 512;
    while (cap - b->len < n)
        cap *= 2;
    b->p = xrealloc(b->p, cap);
    b->cap = cap;
}

static void buf_free(struct buf *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}

/* ---------------------------------------------------------------------- */
/* base64, for Sec-WebSocket-Accept (its SHA-1 is OpenSSL's)               */

static const char b64_chars[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static void base64(const uint8_t *in, size_t len, char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < len)
            v |= (uint32_t)in[i + 1] << 8;
        if (i + 2 < len)
            v |= in[i + 2];
        out[o++] = b64_chars[v >> 18];
        out[o++] = b64_chars[(v >> 12) & 63];
        out[o++] = i + 1 < len ? b64_chars[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < len ? b64_chars[v & 63] : '=';
    }
    out[o] = 0;
}

/* ---------------------------------------------------------------------- */
/* Payloads: "SSSSSSSSSSSTTTTTTTTTTT" + a slice of the pattern              */

/* The sequence number and the timestamp are written as 11 characters of
 * the base64 alphabet each (66 bits), so a text payload stays ASCII. The
 * body is a slice of a random pattern at an offset that depends on the
 * stream and the sequence number, so a message swapped with another, or
 * delivered to the wrong connection, does not compare equal. */
static void put_num(uint8_t *p, uint64_t v)
{
    for (int i = 10; i >= 0; i--) {
        p[i] = (uint8_t)b64_chars[v & 63];
        v >>= 6;
    }
}

static int get_num(const uint8_t *p, uint64_t *v)
{
    uint64_t x = 0;
    for (int i = 0; i < 11; i++) {
        const char *at = p[i] ? strchr(b64_chars, p[i]) : NULL;
        if (!at)
            return -1;
        x = x << 6 | (uint64_t)(at - b64_chars);
    }
    *v = x;
    return 0;
}

static size_t body_offset(uint32_t stream, uint64_t seq)
{
    uint64_t h = (seq + 1) * 0x9E3779B97F4A7C15ull ^ (uint64_t)(stream + 1) * 0xC2B2AE3D27D4EB4Full;
    return (size_t)((h >> 29) % PATTERN_SPAN);
}

static void make_payload(uint8_t *p, uint32_t stream, uint64_t seq, uint64_t ts)
{
    put_num(p, seq);
    put_num(p + 11, ts);
    memcpy(p + HDR_LEN, lg.pattern + body_offset(stream, seq), (size_t)lg.size - HDR_LEN);
}

/* Compare a received payload with the one that was sent. */
static void check_payload(const struct conn *c, const uint8_t *got, size_t len, uint32_t stream,
                          uint64_t seq, uint64_t ts)
{
    if (len != (size_t)lg.size)
        die(c, "message %llu is %zu bytes, sent %d", (unsigned long long)seq, len, lg.size);
    uint8_t hdr[HDR_LEN];
    put_num(hdr, seq);
    put_num(hdr + 11, ts);
    const uint8_t *body = lg.pattern + body_offset(stream, seq);
    if (memcmp(got, hdr, HDR_LEN) == 0 && memcmp(got + HDR_LEN, body, len - HDR_LEN) == 0)
        return;
    size_t i = 0;
    while (i < len && got[i] == (i < HDR_LEN ? hdr[i] : body[i - HDR_LEN]))
        i++;
    uint64_t got_seq = 0;
    char what[64] = "";
    if (get_num(got, &got_seq) == 0 && got_seq != seq)
        snprintf(what, sizeof what, " (it is message %llu: out of order or lost)",
                 (unsigned long long)got_seq);
    die(c, "message %llu differs at byte %zu: got 0x%02x, sent 0x%02x%s",
        (unsigned long long)seq, i, got[i], i < HDR_LEN ? hdr[i] : body[i - HDR_LEN], what);
}

/* ---------------------------------------------------------------------- */
/* Histogram                                                               */

static int hist_index(uint64_t v)
{
    if (v < 64)
        return (int)v;
    int b = 63 - __builtin_clzll(v); /* >= 6 */
    int shift = b - 5;
    return 64 + (b - 6) * HIST_SUB + (int)((v >> shift) - HIST_SUB);
}

/* The largest value that falls in bucket i. */
static uint64_t hist_upper(int i)
{
    if (i < 64)
        return (uint64_t)i;
    int b = (i - 64) / HIST_SUB + 6, sub = (i - 64) % HIST_SUB;
    int shift = b - 5;
    return (((uint64_t)(HIST_SUB + sub) + 1) << shift) - 1;
}

static void hist_add(struct hist *h, uint64_t v)
{
    h->count[hist_index(v)]++;
    h->n++;
    if (v > h->max)
        h->max = v;
}

static uint64_t hist_quantile(const struct hist *h, double q)
{
    if (!h->n)
        return 0;
    uint64_t want = (uint64_t)(q * (double)h->n + 0.999999), seen = 0;
    if (want < 1)
        want = 1;
    for (int i = 0; i < HIST_BUCKETS; i++) {
        seen += h->count[i];
        if (seen >= want)
            return hist_upper(i) < h->max ? hist_upper(i) : h->max;
    }
    return h->max;
}

/* ---------------------------------------------------------------------- */
/* The server process, from /proc                                          */

static long long pid_ticks(int pid)
{
    char path[64], text[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        die(NULL, "cannot read %s: %s (is the server still running?)", path, strerror(errno));
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = 0;
    /* The command name may hold spaces and parentheses: fields start after
     * the last ')'. utime and stime are fields 14 and 15. */
    char *p = strrchr(text, ')');
    unsigned long long utime, stime;
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime,
                     &stime) != 2)
        die(NULL, "cannot parse %s", path);
    return (long long)(utime + stime);
}

static long long server_ticks(void)
{
    if (!lg.server_pid)
        return -1;
    long long sum = 0;
    for (int i = 0; i < lg.nserver_pids; i++)
        sum += pid_ticks(lg.server_pids[i]);
    return sum;
}

static long long aux_ticks(const struct aux *a)
{
    long long sum = 0;
    for (int i = 0; i < a->npids; i++)
        sum += pid_ticks(a->pids[i]);
    return sum;
}

static long pid_rss_kib(int pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/statm", pid);
    FILE *f = fopen(path, "r");
    long size, resident;
    if (!f || fscanf(f, "%ld %ld", &size, &resident) != 2)
        die(NULL, "cannot read %s", path);
    fclose(f);
    return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

static long server_rss_kib(void)
{
    if (!lg.server_pid)
        return -1;
    long sum = 0;
    for (int i = 0; i < lg.nserver_pids; i++)
        sum += pid_rss_kib(lg.server_pids[i]);
    return sum;
}

/* Busy ticks of the whole machine: whatever is neither idle nor iowait. */
static long long machine_ticks(void)
{
    FILE *f = fopen("/proc/stat", "r");
    unsigned long long v[8] = {0};
    int n = f ? fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2],
                       &v[3], &v[4], &v[5], &v[6], &v[7])
              : 0;
    if (f)
        fclose(f);
    if (n < 7)
        return -1;
    return (long long)(v[0] + v[1] + v[2] + v[5] + v[6] + v[7]);
}

static struct cpu_sample cpu_sample(void)
{
    struct cpu_sample s;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    s.at = clock_ns();
    s.srv_ticks = server_ticks();
    s.all_ticks = machine_ticks();
    s.self_us = (long long)ru.ru_utime.tv_sec * 1000000 + ru.ru_utime.tv_usec +
                (long long)ru.ru_stime.tv_sec * 1000000 + ru.ru_stime.tv_usec;
    return s;
}

/* ---------------------------------------------------------------------- */
/* Sockets and frames                                                      */

static void set_events(struct conn *c, int want_out)
{
    if (c->want_out == want_out)
        return;
    struct epoll_event ev = {.events = EPOLLIN | (want_out ? EPOLLOUT : 0), .data.ptr = c};
    if (epoll_ctl(lg.ep, EPOLL_CTL_MOD, c->fd, &ev) < 0)
        die(c, "epoll_ctl: %s", strerror(errno));
    c->want_out = (uint8_t)want_out;
}

static void flush(struct conn *c)
{
    while (c->out.off < c->out.len) {
        ssize_t n = send(c->fd, c->out.p + c->out.off, c->out.len - c->out.off, MSG_NOSIGNAL);
        if (n > 0) {
            c->out.off += (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            break;
        } else {
            die(c, "send: %s (the server closed the connection)", strerror(errno));
        }
    }
    if (c->out.off == c->out.len)
        c->out.off = c->out.len = 0;
    set_events(c, c->out.len > 0);
}

/* XOR len bytes with the 4-byte key, a word at a time. */
static void mask(uint8_t *p, size_t len, const uint8_t key[4])
{
    uint32_t k32;
    memcpy(&k32, key, 4);
    uint64_t k64 = (uint64_t)k32 << 32 | k32;
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        w ^= k64;
        memcpy(p + i, &w, 8);
    }
    for (; i < len; i++)
        p[i] ^= key[i & 3];
}

/* Queue a masked frame header for a payload of len bytes and return where
 * the payload goes; the caller writes it there and calls frame_seal. */
static uint8_t *frame_open(struct conn *c, uint8_t opcode, size_t len)
{
    buf_reserve(&c->out, len + 14);
    uint8_t *h = c->out.p + c->out.len, *p = h;
    *p++ = (uint8_t)(0x80 | opcode);
    if (len < 126) {
        *p++ = (uint8_t)(0x80 | len);
    } else if (len < 65536) {
        *p++ = 0x80 | 126;
        *p++ = (uint8_t)(len >> 8);
        *p++ = (uint8_t)len;
    } else {
        *p++ = 0x80 | 127;
        for (int k = 7; k >= 0; k--)
            *p++ = (uint8_t)((uint64_t)len >> (8 * k));
    }
    uint32_t key = (uint32_t)(rnd() >> 32);
    memcpy(p, &key, 4);
    p += 4;
    c->out.len += (size_t)(p - h) + len;
    return p;
}

static void frame_seal(uint8_t *payload, size_t len)
{
    mask(payload, len, payload - 4);
}

static void send_frame(struct conn *c, uint8_t opcode, const void *data, size_t len)
{
    uint8_t *p = frame_open(c, opcode, len);
    if (len)
        memcpy(p, data, len);
    frame_seal(p, len);
}

static uint8_t data_opcode(void)
{
    return lg.binary ? 0x2 : 0x1;
}

/* Queue the next echo message of c. */
static void send_echo(struct conn *c)
{
    uint64_t seq = c->sent++;
    uint64_t ts = clock_ns();
    c->sent_ts[seq % (uint64_t)lg.inflight] = ts;
    uint8_t *p = frame_open(c, data_opcode(), (size_t)lg.size);
    make_payload(p, c->id, seq, ts);
    frame_seal(p, (size_t)lg.size);
    lg.pending++;
}

static void start_close(struct conn *c)
{
    static const uint8_t normal[2] = {0x03, 0xE8}; /* 1000 */
    send_frame(c, 0x8, normal, 2);
    c->state = CS_CLOSING;
    c->deadline = lg.now + CLOSE_TIMEOUT_NS;
    lg.open--;
}

static void open_conn(struct conn *c);

/* The connection is over: release the socket, and for churn start again. */
static void finish_conn(struct conn *c)
{
    if (c->state == CS_OPEN)
        lg.open--;
    close(c->fd);
    c->fd = -1;
    c->state = CS_FREE;
    c->deadline = 0;
    c->want_out = 0;
    c->in.off = c->in.len = c->out.off = c->out.len = c->frag.len = 0;
    c->msg_op = 0;
    lg.live--;
    if (c->role == ROLE_CHURN) {
        uint64_t t = clock_ns();
        if (lg.phase == PH_MEASURE) {
            lg.counted++;
            hist_add(&lg.lat, t - c->began);
        }
        if (lg.phase == PH_WARMUP || lg.phase == PH_MEASURE)
            open_conn(c);
    }
}

static const struct target *target_of(const struct conn *c)
{
    return c->role == ROLE_PUB ? &lg.pub : &lg.sub;
}

static void open_conn(struct conn *c)
{
    const struct target *t = target_of(c);
    int fd = socket(t->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        die(c, "socket: %s", strerror(errno));
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->fd = fd;
    c->began = clock_ns();
    c->deadline = c->began + HANDSHAKE_TIMEOUT_NS;
    c->sent = c->recvd = 0;
    c->has_base = 0;
    if (connect(fd, (struct sockaddr *)&t->addr, t->addrlen) < 0 && errno != EINPROGRESS)
        die(c, "connect to %s: %s", t->hostport, strerror(errno));
    c->state = CS_CONNECTING;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
    if (epoll_ctl(lg.ep, EPOLL_CTL_ADD, fd, &ev) < 0)
        die(c, "epoll_ctl: %s", strerror(errno));
    c->want_out = 1;
    lg.connecting++;
    lg.live++;
}

/* ---------------------------------------------------------------------- */
/* The handshake                                                           */

static void send_request(struct conn *c)
{
    uint8_t raw[16];
    for (int i = 0; i < 16; i += 8) {
        uint64_t r = rnd();
        memcpy(raw + i, &r, 8);
    }
    base64(raw, 16, c->key);
    char req[2048];
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\n"
                     "Host: %s\r\n"
                     "Upgrade: websocket\r\n"
                     "Connection: Upgrade\r\n"
                     "Sec-WebSocket-Key: %s\r\n"
                     "Sec-WebSocket-Version: 13\r\n"
                     "\r\n",
                     target_of(c)->path, target_of(c)->hostport, c->key);
    buf_reserve(&c->out, (size_t)n);
    memcpy(c->out.p + c->out.len, req, (size_t)n);
    c->out.len += (size_t)n;
    c->state = CS_HANDSHAKE;
    flush(c);
}

/* 1 if the comma-separated list holds token, ignoring case. */
static int has_token(const char *list, size_t len, const char *token)
{
    size_t tl = strlen(token), i = 0;
    while (i < len) {
        while (i < len && (list[i] == ' ' || list[i] == '\t' || list[i] == ','))
            i++;
        size_t s = i;
        while (i < len && list[i] != ',')
            i++;
        size_t e = i;
        while (e > s && (list[e - 1] == ' ' || list[e - 1] == '\t'))
            e--;
        if (e - s == tl && strncasecmp(list + s, token, tl) == 0)
            return 1;
    }
    return 0;
}

static void on_open(struct conn *c);

/* Read the response head once it is complete; bytes after it are frames. */
static void parse_response(struct conn *c)
{
    char *head = (char *)c->in.p + c->in.off;
    size_t avail = c->in.len - c->in.off;
    char *end = memmem(head, avail, "\r\n\r\n", 4);
    if (!end) {
        if (avail > 16384)
            die(c, "handshake response head over 16 KiB");
        return;
    }
    size_t head_len = (size_t)(end - head) + 4;
    char *eol = memmem(head, head_len, "\r\n", 2);
    int status_len = (int)(eol - head);
    if (status_len < 12 || strncmp(head, "HTTP/1.1 101", 12) != 0 ||
        (status_len > 12 && head[12] != ' '))
        die(c, "handshake failed: \"%.*s\"", status_len, head);

    uint8_t digest[20];
    char accept_in[64], accept[29];
    snprintf(accept_in, sizeof accept_in, "%s258EAFA5-E914-47DA-95CA-C5AB0DC85B11", c->key);
    SHA1((const unsigned char *)accept_in, strlen(accept_in), digest);
    base64(digest, 20, accept);

    int upgrade = 0, connection = 0, accepted = 0;
    for (char *line = eol + 2; line < end;) {
        char *next = memmem(line, (size_t)(end + 2 - line), "\r\n", 2);
        char *colon = memchr(line, ':', (size_t)(next - line));
        if (!colon)
            die(c, "malformed response header \"%.*s\"", (int)(next - line), line);
        size_t name_len = (size_t)(colon - line);
        char *v = colon + 1, *ve = next;
        while (v < ve && (*v == ' ' || *v == '\t'))
            v++;
        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
            ve--;
        size_t vl = (size_t)(ve - v);
#define IS(name) (name_len == sizeof name - 1 && strncasecmp(line, name, name_len) == 0)
        if (IS("upgrade"))
            upgrade = vl == 9 && strncasecmp(v, "websocket", 9) == 0;
        else if (IS("connection"))
            connection = has_token(v, vl, "upgrade");
        else if (IS("sec-websocket-accept"))
            accepted = vl == 28 && memcmp(v, accept, 28) == 0;
        else if (IS("sec-websocket-extensions") || IS("sec-websocket-protocol"))
            die(c, "the server chose \"%.*s\", which was not offered", (int)(next - line), line);
#undef IS
        line = next + 2;
    }
    if (!upgrade || !connection || !accepted)
        die(c, "handshake failed: %s", !upgrade      ? "no \"Upgrade: websocket\""
                                       : !connection ? "no \"Connection: upgrade\""
                                                     : "wrong or missing Sec-WebSocket-Accept");
    c->in.off += head_len;
    c->state = CS_OPEN;
    c->deadline = 0;
    lg.connecting--;
    lg.open++;
    on_open(c);
}

/* ---------------------------------------------------------------------- */
/* Messages                                                                */


#define PUB_STREAM 0xB0ADu /* the body offsets of broadcast messages */

static void on_open(struct conn *c)
{
    switch (c->role) {
    case ROLE_ECHO:
        for (int i = 0; i < lg.inflight; i++)
            send_echo(c);
        break;
    case ROLE_IDLE: /* conns mode measures how long handshakes take */
        hist_add(&lg.lat, lg.now - c->began);
        break;
    case ROLE_CHURN:
        start_close(c);
        break;
    default:
        break;
    }
}

static void publish(struct conn *pub)
{
    uint64_t seq = lg.published++;
    uint8_t *p = frame_open(pub, data_opcode(), (size_t)lg.size);
    make_payload(p, PUB_STREAM, seq, clock_ns());
    frame_seal(p, (size_t)lg.size);
    pub->sent++;
}

static void on_message(struct conn *c, uint8_t opcode, const uint8_t *data, size_t len)
{
    if (opcode != data_opcode())
        die(c, "got a %s message, sent %s", opcode == 1 ? "text" : "binary",
            lg.binary ? "binary" : "text");
    if (c->role == ROLE_ECHO || c->role == ROLE_IDLE) {
        if (c->recvd >= c->sent)
            die(c, "got a message when none was in flight (%llu sent)",
                (unsigned long long)c->sent);
        uint64_t seq = c->recvd, ts = c->sent_ts[seq % (uint64_t)lg.inflight];
        check_payload(c, data, len, c->id, seq, ts);
        c->recvd++;
        lg.checked++;
        lg.pending--;
        if (c->role == ROLE_ECHO && lg.phase <= PH_MEASURE) {
            if (lg.phase == PH_MEASURE) {
                lg.counted++;
                hist_add(&lg.lat, lg.now - ts);
            }
            send_echo(c);
        }
    } else if (c->role == ROLE_SUB) {
        uint64_t seq, ts;
        if (len < HDR_LEN || get_num(data, &seq) || get_num(data + 11, &ts))
            die(c, "got a message that the publisher did not send");
        /* A subscriber may have been registered a moment after its 101 (a
         * server may run its handler after the handshake): its first
         * message sets where it starts; from there, every one in order. */
        if (!c->has_base) {
            if (seq >= lg.published)
                die(c, "got message %llu before it was published", (unsigned long long)seq);
            c->recvd = seq;
            c->has_base = 1;
        }
        check_payload(c, data, len, PUB_STREAM, c->recvd, ts);
        if (ts < lg.pub_start || ts > lg.now)
            die(c, "message %llu carries a timestamp from outside the run",
                (unsigned long long)seq);
        c->recvd++;
        lg.checked++;
        lg.delivered++;
        if (lg.phase == PH_MEASURE) {
            lg.counted++;
            hist_add(&lg.lat, lg.now - ts);
        }
    } else if (c->role == ROLE_PUB) {
        die(c, "the publisher got a message: the app must not send to the sender");
    } else {
        die(c, "got a message on a connection that sent none");
    }
}

static void append_fragment(struct conn *c, const uint8_t *data, size_t len)
{
    if (c->frag.len + len > MAX_FRAME)
        die(c, "a fragmented message over %u bytes", MAX_FRAME);
    if (!len)
        return;
    buf_reserve(&c->frag, len);
    memcpy(c->frag.p + c->frag.len, data, len);
    c->frag.len += len;
}

static void on_frame(struct conn *c, int fin, uint8_t opcode, const uint8_t *data, size_t len)
{
    switch (opcode) {
    case 0x1:
    case 0x2:
        if (c->msg_op)
            die(c, "a new message began inside a fragmented one");
        if (fin) {
            on_message(c, opcode, data, len);
            return;
        }
        c->msg_op = opcode;
        c->frag.len = 0;
        append_fragment(c, data, len);
        return;
    case 0x0:
        if (!c->msg_op)
            die(c, "a continuation frame without a message");
        append_fragment(c, data, len);
        if (fin) {
            uint8_t op = c->msg_op;
            c->msg_op = 0;
            on_message(c, op, c->frag.p, c->frag.len);
        }
        return;
    case 0x8: {
        unsigned code = len >= 2 ? (unsigned)data[0] << 8 | data[1] : 1005;
        int rlen = len > 2 ? (int)len - 2 : 0;
        const char *reason = (const char *)data + (len > 2 ? 2 : 0);
        if (c->state != CS_CLOSING)
            die(c, "the server closed the connection: code %u \"%.*s\"", code, rlen, reason);
        if (code != 1000 && code != 1005)
            die(c, "the server answered our close with code %u \"%.*s\"", code, rlen, reason);
        c->state = CS_DRAINING;
        c->deadline = lg.now + EOF_TIMEOUT_NS;
        return;
    }
    case 0x9:
        if (c->state == CS_OPEN)
            send_frame(c, 0xA, data, len);
        return;
    case 0xA:
        return;
    default:
        die(c, "the server sent reserved opcode 0x%x", opcode);
    }
}

/* Take every complete frame out of c->in. */
static void parse_frames(struct conn *c)
{
    while (c->state >= CS_OPEN && c->in.len - c->in.off >= 2) {
        const uint8_t *p = c->in.p + c->in.off;
        size_t avail = c->in.len - c->in.off, hl = 2;
        if (p[1] & 0x80)
            die(c, "the server sent a masked frame");
        if (p[0] & 0x70)
            die(c, "the server set reserved bits (0x%02x) with no extension", p[0]);
        uint64_t len = p[1] & 0x7f;
        if (len == 126) {
            if (avail < 4)
                break;
            len = (uint64_t)p[2] << 8 | p[3];
            hl = 4;
        } else if (len == 127) {
            if (avail < 10)
                break;
            len = 0;
            for (int k = 0; k < 8; k++)
                len = len << 8 | p[2 + k];
            hl = 10;
        }
        uint8_t opcode = p[0] & 0x0f;
        if (opcode >= 0x8 && (len > 125 || !(p[0] & 0x80)))
            die(c, "a control frame that is fragmented or over 125 bytes");
        if (len > MAX_FRAME)
            die(c, "a frame of %llu bytes", (unsigned long long)len);
        if (avail < hl + len) {
            buf_reserve(&c->in, hl + (size_t)len - avail); /* room for the rest */
            break;
        }
        c->in.off += hl + (size_t)len;
        on_frame(c, p[0] & 0x80, opcode, p + hl, (size_t)len);
    }
    if (c->in.off == c->in.len)
        c->in.off = c->in.len = 0;
}

static void on_readable(struct conn *c)
{
    size_t want = (size_t)lg.size * (size_t)lg.inflight + 1024;
    buf_reserve(&c->in, want < 16384 ? 16384 : want > 262144 ? 262144 : want);
    ssize_t n = recv(c->fd, c->in.p + c->in.len, c->in.cap - c->in.len, 0);
    if (n > 0) {
        c->in.len += (size_t)n;
        if (c->state == CS_HANDSHAKE)
            parse_response(c);
        if (c->state >= CS_OPEN)
            parse_frames(c);
        return;
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return;
    if (c->state == CS_DRAINING) {
        finish_conn(c);
        return;
    }
    const char *when = c->state == CS_HANDSHAKE ? " during the handshake"
                       : c->state == CS_CLOSING ? " without answering our close frame"
                                                : " without a close frame";
    if (n == 0)
        die(c, "the server closed the connection%s", when);
    die(c, "recv: %s%s", strerror(errno), when);
}

static void on_event(struct conn *c, uint32_t events)
{
    if (c->state == CS_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err)
            die(c, "connect to %s: %s", target_of(c)->hostport, strerror(err));
        send_request(c);
        return;
    }
    if (events & (EPOLLIN | EPOLLHUP | EPOLLERR))
        on_readable(c);
    /* A churn connection that ended may already be connecting again: it
     * waits for its own EPOLLOUT. */
    if (c->state > CS_CONNECTING)
        flush(c);
}

/* ---------------------------------------------------------------------- */
/* Phases                                                                  */

static void enter(enum phase ph)
{
    lg.phase = ph;
    lg.phase_at = lg.now;
}

static void close_all(void)
{
    for (int i = 0; i < lg.nslots; i++) {
        struct conn *c = &lg.conns[i];
        if (c->state == CS_OPEN) {
            start_close(c);
            flush(c);
        }
    }
    enter(PH_CLOSE);
}

static int all_subscribers_caught_up(void)
{
    for (int i = 0; i < lg.nconns; i++)
        if (lg.conns[i].recvd < lg.published)
            return 0;
    return 1;
}

/* Move the run along; returns how long epoll may sleep, in ms. */
static int advance(void)
{
    uint64_t ns = lg.now - lg.phase_at;
    uint64_t warmup = (uint64_t)(lg.warmup * 1e9), duration = (uint64_t)(lg.duration * 1e9);
    uint64_t drain = (uint64_t)(lg.drain * 1e9);
    int sleep_ms = 100;
    struct conn *pub = lg.mode == MODE_BROADCAST ? &lg.conns[lg.nconns] : NULL;

    switch (lg.phase) {
    case PH_CONNECT:
        while (lg.next_open < lg.nconns && lg.connecting < lg.connect_limit)
            open_conn(&lg.conns[lg.next_open++]);
        if (lg.mode == MODE_CHURN) {
            enter(PH_WARMUP);
        } else if (lg.open == lg.nconns) {
            if (!pub) {
                enter(PH_WARMUP);
            } else if (pub->state == CS_FREE) {
                open_conn(pub);
            }
        } else if (pub && pub->state == CS_OPEN && lg.open == lg.nconns + 1) {
            /* Give servers that register a subscriber after its 101 a moment. */
            if (!lg.pub_start)
                lg.pub_start = lg.now + 100000000ull;
            if (lg.now >= lg.pub_start) {
                lg.pub_start = lg.now;
                enter(PH_WARMUP);
            }
        }
        sleep_ms = 10;
        break;
    case PH_WARMUP:
        if (ns >= warmup) {
            enter(PH_MEASURE);
            lg.t0 = lg.now;
            lg.s0 = cpu_sample();
            lg.pub0 = lg.published;
            for (int i = 0; i < lg.naux; i++)
                lg.aux[i].t0 = aux_ticks(&lg.aux[i]);
        }
        break;
    case PH_MEASURE:
        if (ns >= duration) {
            lg.t1 = lg.now;
            lg.s1 = cpu_sample();
            lg.pub1 = lg.published;
            for (int i = 0; i < lg.naux; i++)
                lg.aux[i].t1 = aux_ticks(&lg.aux[i]);
            lg.rss_after = server_rss_kib();
            enter(PH_DRAIN);
            /* conns: are they all still there? One echo on each. */
            for (int i = 0; lg.mode == MODE_CONNS && i < lg.nconns; i++) {
                send_echo(&lg.conns[i]);
                flush(&lg.conns[i]);
            }
        }
        break;
    case PH_DRAIN:
        if (lg.mode == MODE_BROADCAST) {
            if (all_subscribers_caught_up()) {
                lg.drained = 1;
                close_all();
            } else if (ns >= drain) {
                /* The server is behind: not wrong, just slow. Leave. */
                for (int i = 0; i < lg.nslots; i++)
                    if (lg.conns[i].state != CS_FREE)
                        close(lg.conns[i].fd);
                enter(PH_DONE);
            }
        } else if (lg.mode == MODE_CHURN) {
            if (lg.live == 0)
                enter(PH_DONE);
            else if (ns >= drain)
                die(NULL, "%d handshakes or closes never finished", lg.live);
        } else if (lg.pending == 0) {
            close_all();
        } else if (ns >= drain) {
            die(NULL, "%llu messages never came back within %.0f s",
                (unsigned long long)lg.pending, lg.drain);
        }
        break;
    case PH_CLOSE:
        if (lg.live == 0)
            enter(PH_DONE);
        break;
    case PH_DONE:
        break;
    }

    if (pub && (lg.phase == PH_WARMUP || lg.phase == PH_MEASURE)) {
        double per = 1e9 / lg.rate;
        uint64_t due = (uint64_t)((double)(lg.now - lg.pub_start) / per) + 1;
        while (lg.published < due)
            publish(pub);
        flush(pub);
        uint64_t next = lg.pub_start + (uint64_t)((double)lg.published * per);
        int ms = next > lg.now ? (int)((next - lg.now + 999999) / 1000000) : 0;
        if (ms < sleep_ms)
            sleep_ms = ms;
    }
    if (lg.phase == PH_WARMUP || lg.phase == PH_MEASURE) {
        uint64_t end = lg.phase_at + (lg.phase == PH_WARMUP ? warmup : duration);
        int ms = end > lg.now ? (int)((end - lg.now + 999999) / 1000000) : 0;
        if (ms < sleep_ms)
            sleep_ms = ms;
    }
    return sleep_ms;
}

/* Handshakes and closes that take too long fail the run; a server that
 * answered our close but keeps the socket open is only left behind. */
static void check_deadlines(void)
{
    for (int i = 0; i < lg.nslots; i++) {
        struct conn *c = &lg.conns[i];
        if (!c->deadline || lg.now < c->deadline)
            continue;
        if (c->state == CS_DRAINING)
            finish_conn(c);
        else if (c->state == CS_CLOSING)
            die(c, "no close frame from the server within %llu s of ours",
                CLOSE_TIMEOUT_NS / 1000000000ull);
        else if (c->state == CS_CONNECTING || c->state == CS_HANDSHAKE)
            die(c, "no handshake within %llu s", HANDSHAKE_TIMEOUT_NS / 1000000000ull);
    }
}

static void run_loop(void)
{
    struct epoll_event evs[512];
    uint64_t last_scan = 0;
    lg.now = clock_ns();
    enter(PH_CONNECT);
    while (lg.phase != PH_DONE) {
        int sleep_ms = advance();
        if (lg.phase == PH_DONE)
            break;
        int n = epoll_wait(lg.ep, evs, 512, sleep_ms);
        if (n < 0 && errno != EINTR)
            die(NULL, "epoll_wait: %s", strerror(errno));
        lg.now = clock_ns();
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (c->state != CS_FREE)
                on_event(c, evs[i].events);
        }
        if (lg.now - last_scan > 100000000ull) {
            check_deadlines();
            last_scan = lg.now;
        }
    }
}

/* ---------------------------------------------------------------------- */
/* The report                                                              */

static void report(void)
{
    double secs = (double)(lg.t1 - lg.t0) / 1e9;
    double rate = secs > 0 ? (double)lg.counted / secs : 0;
    double tick = (double)sysconf(_SC_CLK_TCK);
    double srv_cpu_s = lg.server_pid ? (double)(lg.s1.srv_ticks - lg.s0.srv_ticks) / tick : -1;
    double srv_pct = lg.server_pid && secs > 0 ? 100 * srv_cpu_s / secs : -1;
    double per_cpu_s = srv_cpu_s > 0 ? (double)lg.counted / srv_cpu_s : -1;
    double gen_pct = secs > 0 ? 100 * (double)(lg.s1.self_us - lg.s0.self_us) / 1e6 / secs : 0;
    /* What the rest of the machine used meanwhile: a busy machine makes
     * every rate lower and every latency longer. */
    double other_pct = -1;
    if (lg.s0.all_ticks >= 0 && lg.s1.all_ticks >= 0 && secs > 0) {
        double all = 100 * (double)(lg.s1.all_ticks - lg.s0.all_ticks) / tick / secs;
        other_pct = all - gen_pct - (srv_pct > 0 ? srv_pct : 0);
        for (int i = 0; i < lg.naux; i++)
            other_pct -= 100 * (double)(lg.aux[i].t1 - lg.aux[i].t0) / tick / secs;
        if (other_pct < 0)
            other_pct = 0;
    }
    double p50 = (double)hist_quantile(&lg.lat, 0.50) / 1e3;
    double p99 = (double)hist_quantile(&lg.lat, 0.99) / 1e3;
    double p999 = (double)hist_quantile(&lg.lat, 0.999) / 1e3;
    double max = (double)lg.lat.max / 1e3;
    double kib_per_conn = lg.rss_before >= 0 && lg.rss_after >= 0 && lg.nconns
                              ? (double)(lg.rss_after - lg.rss_before) / lg.nconns
                              : -1;
    double expected = lg.rate * lg.nconns;
    const char *kind = lg.binary ? "binary" : "text";
    const char *label = lg.label ? lg.label : "";

    if (lg.json) {
        printf("{\"label\": \"%s\", \"mode\": \"%s\", \"conns\": %d, \"inflight\": %d, "
               "\"size\": %d, \"kind\": \"%s\", \"seconds\": %.3f, \"count\": %llu, "
               "\"per_s\": %.1f, \"server_cpu_pct\": %.1f, \"per_server_cpu_s\": %.1f, "
               "\"gen_cpu_pct\": %.1f, \"other_cpu_pct\": %.1f, \"p50_us\": %.1f, \"p99_us\": %.1f, "
               "\"p999_us\": %.1f, \"max_us\": %.1f, \"checked\": %llu",
               label, mode_names[lg.mode], lg.nconns, lg.inflight, lg.size, kind, secs,
               (unsigned long long)lg.counted, rate, srv_pct, per_cpu_s, gen_pct, other_pct, p50,
               p99, p999,
               max, (unsigned long long)lg.checked);
        if (lg.mode == MODE_CONNS)
            printf(", \"rss_before_kib\": %ld, \"rss_after_kib\": %ld, \"kib_per_conn\": %.2f",
                   lg.rss_before, lg.rss_after, kib_per_conn);
        if (lg.mode == MODE_BROADCAST)
            printf(", \"rate\": %.0f, \"expected_per_s\": %.0f, \"delivered_pct\": %.1f, "
                   "\"drained\": %s, \"published\": %llu, \"delivered\": %llu, "
                   "\"rss_before_kib\": %ld, \"rss_after_kib\": %ld",
                   lg.rate, expected, 100 * rate / expected, lg.drained ? "true" : "false",
                   (unsigned long long)lg.published, (unsigned long long)lg.delivered,
                   lg.rss_before, lg.rss_after);
        /* per aux process: its CPU %, and for broadcast its CPU time per
         * message published in the window (Redis's cost of a message) */
        for (int i = 0; i < lg.naux; i++) {
            double cpu_s = (double)(lg.aux[i].t1 - lg.aux[i].t0) / tick;
            printf(", \"%s_cpu_pct\": %.1f", lg.aux[i].name, secs > 0 ? 100 * cpu_s / secs : -1);
            if (lg.mode == MODE_BROADCAST)
                printf(", \"%s_cpu_us_per_pub\": %.2f", lg.aux[i].name,
                       lg.pub1 > lg.pub0 ? 1e6 * cpu_s / (double)(lg.pub1 - lg.pub0) : -1);
        }
        printf("}\n");
        return;
    }

    char srv[96] = "server cpu not sampled (no --server-pid)";
    if (lg.server_pid)
        snprintf(srv, sizeof srv, "server cpu %.1f%% | %.0f per server-cpu-s", srv_pct, per_cpu_s);
    char gen[96];
    snprintf(gen, sizeof gen, "gen cpu %.1f%% | other cpu %.1f%%", gen_pct, other_pct);
    char lat[128];
    snprintf(lat, sizeof lat, "p50 %.0f p99 %.0f p99.9 %.0f max %.0f us", p50, p99, p999, max);
    if (*label)
        printf("%s: ", label);
    char auxs[256] = "";
    for (int i = 0, at = 0; i < lg.naux && at < (int)sizeof auxs; i++) {
        double cpu_s = (double)(lg.aux[i].t1 - lg.aux[i].t0) / tick;
        at += snprintf(auxs + at, sizeof auxs - (size_t)at, " | %s cpu %.1f%%", lg.aux[i].name,
                       secs > 0 ? 100 * cpu_s / secs : -1);
        if (lg.mode == MODE_BROADCAST && lg.pub1 > lg.pub0 && at < (int)sizeof auxs)
            at += snprintf(auxs + at, sizeof auxs - (size_t)at, ", %.1f us per published",
                           1e6 * cpu_s / (double)(lg.pub1 - lg.pub0));
    }
    switch (lg.mode) {
    case MODE_ECHO:
        printf("echo %d B %s, %d conns x %d in flight: %.0f msgs/s | %s | %s | latency %s\n",
               lg.size, kind, lg.nconns, lg.inflight, rate, srv, gen, lat);
        break;
    case MODE_CONNS:
        printf("conns %d idle: server rss %ld -> %ld KiB, %.2f KiB/conn | server cpu %.1f%% | "
               "handshake %s\n",
               lg.nconns, lg.rss_before, lg.rss_after, kib_per_conn, srv_pct, lat);
        break;
    case MODE_BROADCAST:
        printf("broadcast %d B %s, %d subscribers at %.0f msgs/s: %.0f deliveries/s (%.1f%% of "
               "%.0f)%s | %s | %s | fan-out latency %s%s\n",
               lg.size, kind, lg.nconns, lg.rate, rate, 100 * rate / expected, expected,
               lg.drained ? "" : ", server fell behind", srv, gen, lat, auxs);
        break;
    case MODE_CHURN:
        printf("churn, %d at a time: %.0f handshakes+closes/s | %s | %s | cycle latency %s\n",
               lg.nconns, rate, srv, gen, lat);
        break;
    }
}

/* ---------------------------------------------------------------------- */
/* The command line                                                        */

static const char usage[] =
    "usage: loadgen MODE --url ws://HOST:PORT/PATH [options]\n"
    "\n"
    "modes:\n"
    "  echo       -c connections each keep -p messages of -s bytes in flight; every echo is\n"
    "             checked byte for byte; reports msgs/s and round-trip latency\n"
    "  conns      open -c idle connections; the server's RSS before and after (KiB per\n"
    "             connection) and handshake latency; then one echo on each checks they live\n"
    "  broadcast  -c subscribers and one publisher sending -r msgs/s to the same URL; the\n"
    "             app must send each message to every connection but its sender; reports\n"
    "             deliveries/s and fan-out latency (publish to receipt)\n"
    "  churn      -c loops of connect, handshake, close; reports cycles/s and their latency\n"
    "\n"
    "options:\n"
    "  -c N              connections (echo 100, conns 10000, broadcast 1000, churn 16)\n"
    "  -p N              echo: messages in flight per connection (16)\n"
    "  -s BYTES          message size, at least 24 (64)\n"
    "  --text, --binary  message kind (text)\n"
    "  -d SECONDS        measured time (5); conns: how long the connections are held\n"
    "  -w SECONDS        warm-up before measuring (1)\n"
    "  -r N              broadcast: messages per second from the publisher (1000)\n"
    "  --drain SECONDS   time allowed for what is in flight at the end (10)\n"
    "  --connect-limit N handshakes in progress at once (256)\n"
    "  --server-pid PID  sample the server's CPU time and RSS from /proc/PID\n"
    "                    (PID,PID,...: the sum over several processes)\n"
    "  --pub-url URL     broadcast: the publisher connects here, not to --url (another\n"
    "                    node of a cluster: the fan-out then crosses the backplane)\n"
    "  --aux-pid NAME=PID[,PID...]  report the CPU time of other processes (a Redis,\n"
    "                    the other node) apart: NAME_cpu_pct and, in broadcast,\n"
    "                    NAME_cpu_us_per_pub, their CPU time per message published in\n"
    "                    the window (up to 4 names)\n"
    "  --label TEXT      a name for the summary\n"
    "  --json            print the summary as one JSON object\n"
    "\n"
    "Exit status: 0 for a clean run, 1 if the server misbehaved (a wrong, missing or\n"
    "out-of-order message, an unexpected close, a failed handshake, a timeout), 2 for\n"
    "a bad command line.\n";

static _Noreturn void bad_usage(const char *fmt, const char *arg)
{
    fprintf(stderr, "loadgen: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n\n%s", usage);
    exit(2);
}

static double number_arg(int argc, char **argv, int *i, double min, double max)
{
    if (*i + 1 >= argc)
        bad_usage("%s needs a value", argv[*i]);
    char *end;
    const char *s = argv[++*i];
    double v = strtod(s, &end);
    if (end == s || *end || !(v >= min && v <= max))
        bad_usage("bad value \"%s\"", s);
    return v;
}

static void parse_url(struct target *t)
{
    const char *u = t->url;
    if (!u || strncmp(u, "ws://", 5) != 0)
        bad_usage("--url and --pub-url must be ws://HOST:PORT/PATH, not \"%s\"", u ? u : "");
    u += 5;
    const char *slash = strchr(u, '/');
    size_t hp_len = slash ? (size_t)(slash - u) : strlen(u);
    if (hp_len == 0 || hp_len >= sizeof t->hostport)
        bad_usage("bad host in \"%s\"", t->url);
    memcpy(t->hostport, u, hp_len);
    t->hostport[hp_len] = 0;
    snprintf(t->path, sizeof t->path, "%s", slash ? slash : "/");
    const char *colon = strrchr(t->hostport, ':');
    if (t->hostport[0] == '[') { /* [::1]:port */
        const char *close = strchr(t->hostport, ']');
        if (!close)
            bad_usage("bad host in \"%s\"", t->url);
        snprintf(t->host, sizeof t->host, "%.*s", (int)(close - t->hostport - 1), t->hostport + 1);
        colon = close[1] == ':' ? close + 1 : NULL;
    } else {
        snprintf(t->host, sizeof t->host, "%.*s",
                 (int)(colon ? (size_t)(colon - t->hostport) : hp_len), t->hostport);
    }
    snprintf(t->port, sizeof t->port, "%s", colon ? colon + 1 : "80");
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai;
    int rc = getaddrinfo(t->host, t->port, &hints, &ai);
    if (rc)
        bad_usage("cannot resolve the host: %s", gai_strerror(rc));
    memcpy(&t->addr, ai->ai_addr, ai->ai_addrlen);
    t->addrlen = ai->ai_addrlen;
    freeaddrinfo(ai);
}

static void parse_args(int argc, char **argv)
{
    if (argc < 2)
        bad_usage("%s", "no mode");
    if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
        fputs(usage, stdout);
        exit(0);
    }
    int m = 0;
    while (m < 4 && strcmp(argv[1], mode_names[m]))
        m++;
    if (m == 4)
        bad_usage("unknown mode \"%s\"", argv[1]);
    lg.mode = (enum mode)m;
    static const int default_conns[] = {100, 10000, 1000, 16};
    lg.nconns = default_conns[m];
    lg.inflight = 16;
    lg.size = 64;
    lg.duration = 5;
    lg.warmup = 1;
    lg.rate = 1000;
    lg.drain = 10;
    lg.connect_limit = 256;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--url")) {
            if (i + 1 >= argc)
                bad_usage("%s needs a value", a);
            lg.sub.url = argv[++i];
        } else if (!strcmp(a, "--pub-url")) {
            if (i + 1 >= argc)
                bad_usage("%s needs a value", a);
            lg.pub.url = argv[++i];
        } else if (!strcmp(a, "--aux-pid")) {
            if (i + 1 >= argc)
                bad_usage("%s needs a value", a);
            const char *v = argv[++i], *eq = strchr(v, '=');
            struct aux *x = &lg.aux[lg.naux];
            size_t nlen = eq ? (size_t)(eq - v) : 0;
            if (!eq || !nlen || strspn(v, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                          "0123456789_") != nlen ||
                lg.naux == (int)(sizeof lg.aux / sizeof lg.aux[0]))
                bad_usage("--aux-pid takes NAME=PID[,PID...] (NAME letters, digits, _; at most "
                          "4), not %s", v);
            for (const char *list = eq + 1; *list || !x->npids;) {
                char *end;
                long pid = strtol(list, &end, 10);
                if (end == list || pid < 1 || pid > (1 << 30) || (*end && *end != ',') ||
                    x->npids == (int)(sizeof x->pids / sizeof x->pids[0]))
                    bad_usage("--aux-pid takes NAME=PID[,PID...] (NAME letters, digits, _; at "
                              "most 4), not %s", v);
                x->pids[x->npids++] = (int)pid;
                list = *end ? end + 1 : end;
            }
            x->name = strndup(v, nlen);
            lg.naux++;
        } else if (!strcmp(a, "-c")) {
            lg.nconns = (int)number_arg(argc, argv, &i, 1, 1000000);
        } else if (!strcmp(a, "-p")) {
            lg.inflight = (int)number_arg(argc, argv, &i, 1, 1 << 20);
        } else if (!strcmp(a, "-s")) {
            lg.size = (int)number_arg(argc, argv, &i, MIN_SIZE, MAX_FRAME);
        } else if (!strcmp(a, "-d")) {
            lg.duration = number_arg(argc, argv, &i, 0.01, 86400);
        } else if (!strcmp(a, "-w")) {
            lg.warmup = number_arg(argc, argv, &i, 0, 86400);
        } else if (!strcmp(a, "-r")) {
            lg.rate = number_arg(argc, argv, &i, 0.01, 1e7);
        } else if (!strcmp(a, "--drain")) {
            lg.drain = number_arg(argc, argv, &i, 0.1, 86400);
        } else if (!strcmp(a, "--connect-limit")) {
            lg.connect_limit = (int)number_arg(argc, argv, &i, 1, 1000000);
        } else if (!strcmp(a, "--server-pid")) {
            if (i + 1 >= argc)
                bad_usage("%s needs a value", a);
            const char *list = argv[++i];
            lg.nserver_pids = 0;
            while (*list) {
                char *end;
                long pid = strtol(list, &end, 10);
                if (end == list || pid < 1 || pid > (1 << 30) || (*end && *end != ',') ||
                    lg.nserver_pids == (int)(sizeof lg.server_pids / sizeof lg.server_pids[0]))
                    bad_usage("--server-pid takes PID or PID,PID,... (at most 64), not %s",
                              argv[i]);
                lg.server_pids[lg.nserver_pids++] = (int)pid;
                list = *end ? end + 1 : end;
            }
            if (!lg.nserver_pids)
                bad_usage("%s needs a pid", a);
            lg.server_pid = lg.server_pids[0];
        } else if (!strcmp(a, "--label")) {
            if (i + 1 >= argc)
                bad_usage("%s needs a value", a);
            lg.label = argv[++i];
        } else if (!strcmp(a, "--text")) {
            lg.binary = 0;
        } else if (!strcmp(a, "--binary")) {
            lg.binary = 1;
        } else if (!strcmp(a, "--json")) {
            lg.json = 1;
        } else {
            bad_usage("unknown option \"%s\"", a);
        }
    }
    if (lg.mode != MODE_ECHO)
        lg.inflight = 1; /* conns sends one check message; the others none */
    if (lg.pub.url && lg.mode != MODE_BROADCAST)
        bad_usage("%s", "--pub-url is for broadcast");
    parse_url(&lg.sub);
    if (lg.pub.url)
        parse_url(&lg.pub);
    else
        lg.pub = lg.sub;
}

/* Each connection is a descriptor: take what the hard limit allows. */
static void raise_fd_limit(int need)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (rl.rlim_cur != RLIM_INFINITY && (rlim_t)need > rl.rlim_cur)
        die(NULL, "%d connections need %d descriptors; the limit is %llu (ulimit -Hn)", lg.nconns,
            need, (unsigned long long)rl.rlim_cur);
}

static void setup(void)
{
    rnd_seed();
    lg.nslots = lg.nconns + (lg.mode == MODE_BROADCAST);
    raise_fd_limit(lg.nslots + 32);
    lg.ep = epoll_create1(EPOLL_CLOEXEC);
    if (lg.ep < 0)
        die(NULL, "epoll_create1: %s", strerror(errno));

    /* Text bodies are printable ASCII; binary ones any byte. */
    size_t plen = PATTERN_SPAN + (size_t)lg.size;
    lg.pattern = xrealloc(NULL, plen);
    for (size_t i = 0; i < plen; i++) {
        uint64_t r = rnd() >> 40;
        lg.pattern[i] = lg.binary ? (uint8_t)r : (uint8_t)(0x20 + r % 95);
    }

    lg.conns = calloc((size_t)lg.nslots, sizeof *lg.conns);
    if (!lg.conns)
        die(NULL, "out of memory");
    for (int i = 0; i < lg.nslots; i++) {
        struct conn *c = &lg.conns[i];
        c->fd = -1;
        c->id = (uint32_t)i;
        static const uint8_t roles[] = {ROLE_ECHO, ROLE_IDLE, ROLE_SUB, ROLE_CHURN};
        c->role = i == lg.nconns ? ROLE_PUB : roles[lg.mode];
        if (c->role == ROLE_ECHO || c->role == ROLE_IDLE)
            c->sent_ts = xrealloc(NULL, (size_t)lg.inflight * sizeof *c->sent_ts);
    }
    lg.rss_before = lg.rss_after = -1;
    lg.rss_before = server_rss_kib();
    signal(SIGPIPE, SIG_IGN);
}

static void teardown(void)
{
    for (int i = 0; i < lg.nslots; i++) {
        buf_free(&lg.conns[i].in);
        buf_free(&lg.conns[i].out);
        buf_free(&lg.conns[i].frag);
        free(lg.conns[i].sent_ts);
    }
    free(lg.conns);
    free(lg.pattern);
    for (int i = 0; i < lg.naux; i++)
        free((char *)lg.aux[i].name);
    close(lg.ep);
}

int main(int argc, char **argv)
{
    parse_args(argc, argv);
    setup();
    run_loop();
    report();
    teardown();
    return 0;
}
