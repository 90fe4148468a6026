/* test_snapshot: what a connection keeps of its request. A snapshot taken
 * at accept and completed after the handshake must give back the same
 * addresses, path, query, captures and headers (names and values, in
 * order), whether a header name is one of the common ones stored as a code
 * or not. A freed block goes back to the size class it came from: the
 * slabs themselves are included here (SLAB_FORCE_MMAP), not the malloc
 * they fall back to under ASan, so a wrong size shows as a block that is
 * not handed out again. */
#define SLAB_FORCE_MMAP 1
#include "../../src/slab.c"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

#include "handshake.h"
#include "router.h"
#include "snapshot.h"
#include "unit.h"

static struct hs_request *parse(const char *head)
{
    struct hs_request *r = hs_new(16384, 64);
    size_t used = 0;
    int rc = hs_feed(r, head, strlen(head), &used);
    CHECK_EQ(rc, HS_DONE);
    return r;
}

static struct sockaddr_in v4(const char *ip, int port)
{
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    inet_pton(AF_INET, ip, &a.sin_addr);
    return a;
}

static struct sockaddr_in6 v6(const char *ip, int port)
{
    struct sockaddr_in6 a;
    memset(&a, 0, sizeof a);
    a.sin6_family = AF_INET6;
    a.sin6_port = htons((uint16_t)port);
    inet_pton(AF_INET6, ip, &a.sin6_addr);
    return a;
}

static void at_accept(void)
{
    struct sockaddr_in c = v4("192.0.2.7", 40001);
    struct snapshot *s = snap_new((struct sockaddr *)&c, 12.5);
    CHECK(s != NULL);
    CHECK_EQ(s->started == 12.5, 1);
    CHECK(strcmp(snap_path(s), "") == 0);
    CHECK(strcmp(snap_peer(s), "192.0.2.7:40001") == 0);
    char host[SNAP_HOST_MAX];
    int port = -1;
    snap_server(s, host, &port);
    CHECK(strcmp(host, "unix") == 0); /* not known before the handshake */
    CHECK_EQ(port, 0);
    snap_free(s);

    s = snap_new(NULL, 0); /* getpeername failed */
    CHECK(strcmp(snap_peer(s), "unix:0") == 0);
    snap_free(s);
}

/* The strings after path and rest: params, then headers, as name=value;
 * lines. */
static void dump(const struct snapshot *s, char *out, size_t len)
{
    const char *p = snap_strings(s);
    size_t n = (size_t)snprintf(out, len, "%s|", snap_next(&p));
    n += (size_t)snprintf(out + n, len - n, "%s|", snap_next(&p));
    for (unsigned i = 0; i < s->nparams; i++) {
        const char *name = snap_next(&p);
        n += (size_t)snprintf(out + n, len - n, "%s=", name);
        n += (size_t)snprintf(out + n, len - n, "%s;", snap_next(&p));
    }
    n += (size_t)snprintf(out + n, len - n, "|");
    for (unsigned i = 0; i < s->nheaders; i++) {
        const char *name = snap_header_name(snap_next(&p));
        n += (size_t)snprintf(out + n, len - n, "%s=", name);
        n += (size_t)snprintf(out + n, len - n, "%s;", snap_header_value(snap_next(&p)));
    }
}

static void completed(void)
{
    static const char head[] = "GET /rooms/blue%20sky?x=1&y=2 HTTP/1.1\r\n"
                               "Host: example.com\r\n"
                               "Upgrade: websocket\r\n"
                               "Connection: Upgrade\r\n"
                               "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                               "Sec-WebSocket-Version: 13\r\n"
                               "Hosts: not the host header\r\n"
                               "X-Custom: a\r\n"
                               "Origin: https://example.com\r\n"
                               "X-Custom: b\r\n"
                               "\r\n";
    struct hs_request *r = parse(head);
    struct sockaddr_in6 c = v6("2001:db8::1", 50123);
    struct sockaddr_in srv = v4("127.0.0.1", 9000);
    struct snapshot *s = snap_new((struct sockaddr *)&c, 3.0);
    struct route_match m = {0};
    m.nparams = 1;
    m.params[0].name = "room";
    m.params[0].name_len = 4;
    m.params[0].value = "blue%20sky";
    m.params[0].value_len = 10;
    CHECK_EQ(snap_complete(&s, (struct sockaddr *)&srv, hs_target(r), &m, r), 0);
    CHECK_EQ(s->started == 3.0, 1);
    CHECK(strcmp(snap_path(s), "/rooms/blue%20sky") == 0);
    CHECK(strcmp(snap_peer(s), "2001:db8::1:50123") == 0);
    char host[SNAP_HOST_MAX];
    int port = 0;
    snap_server(s, host, &port);
    CHECK(strcmp(host, "127.0.0.1") == 0);
    CHECK_EQ(port, 9000);
    snap_client(s, host, &port);
    CHECK(strcmp(host, "2001:db8::1") == 0);
    CHECK_EQ(port, 50123);
    CHECK_EQ(s->nheaders, 8); /* all but Sec-WebSocket-Key, the used-up nonce */
    char text[1024];
    dump(s, text, sizeof text);
    static const char want[] = "/rooms/blue%20sky|?x=1&y=2|room=blue%20sky;|host=example.com;"
                               "upgrade=websocket;connection=Upgrade;"
                               "sec-websocket-version=13;hosts=not the host header;x-custom=a;"
                               "origin=https://example.com;x-custom=b;";
    CHECK(strcmp(text, want) == 0);
    if (strcmp(text, want) != 0)
        fprintf(stderr, "got:  %s\nwant: %s\n", text, want);
    snap_free(s);
    hs_free(r);
}

/* Path and rest: the path ends at '?' or '#', the rest keeps the remainder. */
static void targets(void)
{
    static const struct {
        const char *target, *path, *rest;
    } cases[] = {
        {"/", "/", ""},
        {"/a", "/a", ""},
        {"/a?b=1", "/a", "?b=1"},
        {"/a#frag?x", "/a", "#frag?x"},
        {"/a?", "/a", "?"},
    };
    struct sockaddr_in c = v4("10.0.0.1", 1);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char head[256];
        snprintf(head, sizeof head,
                 "GET %s HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n", cases[i].target);
        struct hs_request *r = parse(head);
        struct snapshot *s = snap_new((struct sockaddr *)&c, 0);
        struct route_match m = {0};
        CHECK_EQ(snap_complete(&s, NULL, hs_target(r), &m, r), 0);
        const char *p = snap_strings(s);
        CHECK(strcmp(snap_next(&p), cases[i].path) == 0);
        CHECK(strcmp(snap_next(&p), cases[i].rest) == 0);
        CHECK(strcmp(snap_header_name(snap_next(&p)), "host") == 0);
        CHECK(strcmp(snap_next(&p), "h") == 0);
        char host[SNAP_HOST_MAX];
        int port = -1;
        snap_server(s, host, &port); /* no server address given */
        CHECK(strcmp(host, "unix") == 0);
        CHECK(strcmp(snap_peer(s), "10.0.0.1:1") == 0);
        snap_free(s);
        hs_free(r);
    }
}

/* Common values are stored as a code, others as sent; both read back the
 * same, and the code makes the block smaller. */
static void coded_values(void)
{
    const char *coded = "GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                        "Sec-WebSocket-Version: 13\r\n\r\n";
    const char *plain = "GET / HTTP/1.1\r\nUpgrade: WebSocket\r\nConnection: upgrade\r\n"
                        "Sec-WebSocket-Version: 14\r\n\r\n";
    const char *want[] = {"websocket", "Upgrade", "13", "WebSocket", "upgrade", "14"};
    struct sockaddr_in c = v4("10.0.0.1", 1);
    const char *p;
    struct route_match m = {0};
    struct hs_request *r1 = parse(coded), *r2 = parse(plain);
    struct snapshot *s1 = snap_new((struct sockaddr *)&c, 0), *s2 = snap_new((struct sockaddr *)&c, 0);
    CHECK_EQ(snap_complete(&s1, NULL, hs_target(r1), &m, r1), 0);
    CHECK_EQ(snap_complete(&s2, NULL, hs_target(r2), &m, r2), 0);
    for (int k = 0; k < 2; k++) {
        p = snap_strings(k ? s2 : s1);
        snap_next(&p);
        snap_next(&p);
        for (int i = 0; i < 3; i++) {
            snap_next(&p);
            const char *stored = snap_next(&p);
            CHECK(strcmp(snap_header_value(stored), want[3 * k + i]) == 0);
            CHECK_EQ(strlen(stored), k ? strlen(want[3 * k + i]) : 1);
        }
    }
    /* Where the stored strings end: the coded block is shorter by the
     * bytes of the three values less their codes (8 + 6 + 1). */
    const char *e1 = snap_strings(s1), *e2 = snap_strings(s2);
    for (int i = 0; i < 2 + 6; i++) {
        snap_next(&e1);
        snap_next(&e2);
    }
    CHECK_EQ((e2 - (const char *)s2) - (e1 - (const char *)s1), 15);
    snap_free(s1);
    snap_free(s2);
    hs_free(r1);
    hs_free(r2);
}

/* A close reason goes after the strings, the block grows once, and the
 * request reads the same after it. */
static void close_reason(void)
{
    struct sockaddr_in c = v4("10.0.0.1", 1);
    struct route_match m = {0};
    struct hs_request *r = parse("GET /a?b HTTP/1.1\r\nHost: h\r\n\r\n");
    struct snapshot *s = snap_new((struct sockaddr *)&c, 0);
    CHECK_EQ(snap_complete(&s, NULL, hs_target(r), &m, r), 0);
    CHECK(snap_reason(s) == NULL);
    char *room = snap_reason_room(&s);
    CHECK(room != NULL);
    memset(room, 'x', SNAP_REASON_MAX); /* all of it is ours: ASan checks */
    memcpy(room, "bye\0nul", 7);
    CHECK(snap_reason(s) == room);
    CHECK(snap_reason_room(&s) == room); /* made once */
    CHECK(memcmp(snap_reason(s), "bye\0nul", 7) == 0);
    CHECK(strcmp(snap_path(s), "/a") == 0);
    char out[256];
    dump(s, out, sizeof out);
    CHECK(strcmp(out, "/a|?b||host=h;") == 0);
    snap_free(s);
    hs_free(r);
}

/* A block freed is the next one of its size handed out: snap_free found
 * the class it came from, with and without a close reason's room. */
static void blocks_reused(void)
{
    struct sockaddr_in c = v4("10.0.0.1", 1);
    struct route_match m = {0};
    struct hs_request *r = parse("GET /a?b HTTP/1.1\r\nHost: h\r\nX-Long: "
                                 "0123456789012345678901234567890123456789\r\n\r\n");
    for (int reason = 0; reason < 2; reason++) {
        void *seen[2];
        for (int round = 0; round < 2; round++) {
            struct snapshot *s = snap_new((struct sockaddr *)&c, 0);
            CHECK_EQ(snap_complete(&s, NULL, hs_target(r), &m, r), 0);
            if (reason)
                CHECK(snap_reason_room(&s) != NULL);
            if (round)
                CHECK(s == seen[reason]);
            seen[reason] = s;
            snap_free(s);
        }
    }
    hs_free(r);
}

int main(void)
{
    blocks_reused();
    coded_values();
    close_reason();
    at_accept();
    completed();
    targets();
    hs_pool_drain();
    return unit_done("snapshot");
}
