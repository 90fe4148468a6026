/* test_origin: the Origin allow-list: exact origins, default ports, any
 * port, subdomain wildcards, "null", "*", and patterns the config must
 * refuse. */
#include "origin.h"

#include <stdio.h>
#include <string.h>

#include "unit.h"

static int allowed(const char *pattern, const char *origin)
{
    const char *p[1] = {pattern};
    struct origin_list *l = origin_list_new(p, 1);
    int r = origin_allowed(l, origin);
    origin_list_free(l);
    return r;
}

#define YES(p, o) do { if (!allowed(p, o)) fprintf(stderr, "%s should allow %s\n", p, o); CHECK(allowed(p, o)); } while (0)
#define NO(p, o) do { if (allowed(p, o)) fprintf(stderr, "%s should refuse %s\n", p, o); CHECK(!allowed(p, o)); } while (0)

int main(void)
{
    YES("https://chat.example.com", "https://chat.example.com");
    YES("https://chat.example.com", "HTTPS://Chat.Example.COM");
    YES("https://chat.example.com", "https://chat.example.com:443");
    YES("https://chat.example.com:443", "https://chat.example.com");
    NO("https://chat.example.com", "http://chat.example.com");
    NO("https://chat.example.com", "https://chat.example.com:8443");
    NO("https://chat.example.com", "https://chat.example.com.evil.net");
    NO("https://chat.example.com", "https://evilchat.example.com");
    NO("https://chat.example.com", "https://chat.example.co");
    NO("https://chat.example.com", "https://chat.example.com/");
    NO("https://chat.example.com", "null");
    NO("https://chat.example.com", "");
    NO("https://chat.example.com", "chat.example.com");
    YES("http://localhost:*", "http://localhost:3000");
    YES("http://localhost:*", "http://localhost");
    NO("http://localhost:*", "http://localhost.evil.net:3000");
    NO("http://localhost:*", "https://localhost:3000");
    YES("http://localhost:8080", "http://localhost:8080");
    NO("http://localhost:8080", "http://localhost:8081");
    NO("http://localhost:8080", "http://localhost");
    YES("https://*.example.com", "https://a.example.com");
    YES("https://*.example.com", "https://a.b.example.com");
    NO("https://*.example.com", "https://example.com");
    NO("https://*.example.com", "https://aexample.com");
    NO("https://*.example.com", "https://*.example.com");
    YES("http://[::1]:*", "http://[::1]:5000");
    NO("http://[::1]:*", "http://[::2]:5000");
    YES("*", "https://anything.example");
    YES("*", "null");
    YES("null", "null");
    NO("null", "https://a.example");

    /* several patterns: any one */
    const char *two[] = {"https://a.example", "http://localhost:*"};
    struct origin_list *l = origin_list_new(two, 2);
    CHECK(origin_allowed(l, "https://a.example"));
    CHECK(origin_allowed(l, "http://localhost:1"));
    CHECK(!origin_allowed(l, "https://b.example"));
    origin_list_free(l);
    origin_list_free(NULL);

    const char *why;
    const char *good[] = {"*", "null", "https://a.example", "http://localhost:*",
                          "https://*.example.com", "http://[::1]:8080", "app+x://h"};
    for (size_t i = 0; i < sizeof good / sizeof *good; i++)
        CHECK_EQ(origin_pattern_check(good[i], &why), 0);
    const char *bad[] = {"", "example.com", "https://", "https://a.example/", "https://a.example:",
                         "https://a.example:x", "https://a.*.example", "https://*example.com",
                         "https://*.", "https://**.a", "://a", "1http://a", "https://u@a.example",
                         "https://[::1", "https://a.example/path"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        int r = origin_pattern_check(bad[i], &why);
        if (r != -1)
            fprintf(stderr, "accepted pattern \"%s\"\n", bad[i]);
        CHECK_EQ(r, -1);
    }
    return unit_done("origin");
}
