/* test_resolve: the resolver on a real loop: numeric addresses (never
 * answered inside resolve_start), "localhost" through the system resolver,
 * a name under the reserved .invalid TLD, cancelling (queued, running and
 * answered requests: no callback), many requests at once, and a stop that
 * leaves nothing behind (ASan), after which resolving works again. */
#include "../../src/resolve.c"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "unit.h"

/* log.c is not linked: the few lines resolve.c may log go to stderr. */
int log_threshold = 0;
void log_msg(int level, const char *fmt, ...)
{
    (void)level;
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

struct answer {
    int calls;
    char err[64];
    char addr[INET6_ADDRSTRLEN];
    int port;
    int family;
};

static int pending;

static void on_answer(void *data, const char *err, const struct sockaddr *sa, socklen_t salen)
{
    struct answer *a = data;
    a->calls++;
    pending--;
    if (err) {
        snprintf(a->err, sizeof a->err, "%s", err);
        return;
    }
    a->family = sa->sa_family;
    if (sa->sa_family == AF_INET && salen == sizeof(struct sockaddr_in)) {
        const struct sockaddr_in *in = (const void *)sa;
        inet_ntop(AF_INET, &in->sin_addr, a->addr, sizeof a->addr);
        a->port = ntohs(in->sin_port);
    } else if (sa->sa_family == AF_INET6 && salen == sizeof(struct sockaddr_in6)) {
        const struct sockaddr_in6 *in6 = (const void *)sa;
        inet_ntop(AF_INET6, &in6->sin6_addr, a->addr, sizeof a->addr);
        a->port = ntohs(in6->sin6_port);
    }
}

static void guard_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)w;
    (void)revents;
    fprintf(stderr, "test_resolve: answers never came\n");
    ev_break(loop, EVBREAK_ALL);
}

/* Run the loop until every started request has answered (or 20 s). */
static void run_until_answered(struct ev_loop *loop)
{
    ev_timer guard;
    ev_timer_init(&guard, guard_cb, 20, 0);
    ev_timer_start(loop, &guard);
    while (pending > 0 && ev_is_active(&guard))
        ev_run(loop, EVRUN_ONCE);
    ev_timer_stop(loop, &guard);
}

/* A request cancelled from the callback of an earlier one in the batch. */
static struct resolve_req *victim;
static void cancel_other(void *data, const char *err, const struct sockaddr *sa, socklen_t salen)
{
    on_answer(data, err, sa, salen);
    if (victim) {
        resolve_cancel(victim);
        pending--; /* it will never answer */
        victim = NULL;
    }
}

int main(void)
{
    struct ev_loop *loop = ev_default_loop(0);

    /* Numeric addresses: right, with the port, and only from the loop. */
    struct answer v4 = {0}, v6 = {0}, br = {0}, bad = {0}, empty = {0}, port = {0};
    pending = 6;
    CHECK(resolve_start(loop, "127.0.0.1", 8080, on_answer, &v4) != NULL);
    CHECK(resolve_start(loop, "::1", 443, on_answer, &v6) != NULL);
    CHECK(resolve_start(loop, "[::1]", 1, on_answer, &br) != NULL);
    CHECK(resolve_start(loop, "999.1.1.1.invalid", 80, on_answer, &bad) != NULL);
    CHECK(resolve_start(loop, "", 80, on_answer, &empty) != NULL);
    CHECK(resolve_start(loop, "127.0.0.1", 70000, on_answer, &port) != NULL);
    CHECK_EQ(v4.calls + v6.calls + br.calls + bad.calls + empty.calls + port.calls, 0);
    run_until_answered(loop);
    CHECK_EQ(v4.calls, 1);
    CHECK(strcmp(v4.addr, "127.0.0.1") == 0);
    CHECK_EQ(v4.port, 8080);
    CHECK_EQ(v6.calls, 1);
    CHECK(strcmp(v6.addr, "::1") == 0);
    CHECK_EQ(v6.port, 443);
    CHECK(strcmp(br.addr, "::1") == 0);
    CHECK_EQ(bad.calls, 1);
    CHECK(strcmp(bad.err, "no such host") == 0);
    CHECK(strcmp(empty.err, "no such host") == 0);
    CHECK(strcmp(port.err, "bad port") == 0);

    /* Names: localhost is IPv4 first; .invalid never resolves (RFC 6761). */
    struct answer lh = {0}, inv = {0};
    pending = 2;
    resolve_start(loop, "localhost", 6379, on_answer, &lh);
    resolve_start(loop, "nothing-here.invalid", 80, on_answer, &inv);
    CHECK_EQ(lh.calls + inv.calls, 0);
    run_until_answered(loop);
    CHECK_EQ(lh.calls, 1);
    CHECK_EQ(lh.family, AF_INET);
    CHECK(strcmp(lh.addr, "127.0.0.1") == 0);
    CHECK_EQ(lh.port, 6379);
    CHECK_EQ(inv.calls, 1);
    CHECK(strcmp(inv.err, "no such host") == 0);

    /* Cancelling: right away (queued or running), a numeric one (answered
     * already), and one from another's callback. None calls back. */
    struct answer c[64];
    memset(c, 0, sizeof c);
    for (int i = 0; i < 64; i++) {
        char name[32];
        snprintf(name, sizeof name, i % 2 ? "localhost" : "c%d.invalid", i);
        resolve_cancel(resolve_start(loop, name, 80, on_answer, &c[i]));
    }
    resolve_cancel(resolve_start(loop, "10.0.0.1", 80, on_answer, &c[0]));
    struct answer first = {0}, second = {0};
    pending = 1;
    resolve_start(loop, "127.0.0.2", 80, cancel_other, &first);
    victim = resolve_start(loop, "127.0.0.3", 80, on_answer, &second);
    pending++;
    /* and a later request that must still be answered after all that */
    struct answer last = {0};
    pending++;
    resolve_start(loop, "localhost", 1, on_answer, &last);
    run_until_answered(loop);
    int cancelled_calls = 0;
    for (int i = 0; i < 64; i++)
        cancelled_calls += c[i].calls;
    CHECK_EQ(cancelled_calls, 0);
    CHECK_EQ(first.calls, 1);
    CHECK_EQ(second.calls, 0);
    CHECK_EQ(last.calls, 1);
    CHECK(strcmp(last.addr, "127.0.0.1") == 0);

    /* Many at once, more than the threads (names from /etc/hosts: a burst
     * of DNS queries would test the network's DNS server, not this). */
    static struct answer many[500];
    pending = 500;
    for (int i = 0; i < 500; i++)
        resolve_start(loop, i % 100 ? "localhost" : "m.invalid", i, on_answer, &many[i]);
    run_until_answered(loop);
    int ok = 0, nohost = 0, total = 0;
    for (int i = 0; i < 500; i++) {
        total += many[i].calls;
        ok += many[i].port == i && strcmp(many[i].addr, "127.0.0.1") == 0;
        nohost += strcmp(many[i].err, "no such host") == 0;
    }
    CHECK_EQ(total, 500);
    CHECK_EQ(ok, 495);
    CHECK_EQ(nohost, 5);

    /* Stop with requests outstanding: no callback, nothing leaked; then
     * resolving starts again (new threads). */
    struct answer dropped[8];
    memset(dropped, 0, sizeof dropped);
    for (int i = 0; i < 8; i++)
        resolve_start(loop, i % 2 ? "localhost" : "127.0.0.1", 80, on_answer, &dropped[i]);
    resolve_stop();
    struct answer again = {0};
    pending = 1;
    resolve_start(loop, "localhost", 2, on_answer, &again);
    run_until_answered(loop);
    int dropped_calls = 0;
    for (int i = 0; i < 8; i++)
        dropped_calls += dropped[i].calls;
    CHECK_EQ(dropped_calls, 0);
    CHECK_EQ(again.calls, 1);
    CHECK_EQ(again.port, 2);
    resolve_stop();
    resolve_stop(); /* twice is fine */
    ev_loop_destroy(loop);
    return unit_done("test_resolve");
}
