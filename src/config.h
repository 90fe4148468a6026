/* config: everything the host can be told, from the command line and from a
 * config file (a Lua file that returns a table). The command line wins over
 * the file. Loading never exits: a mistake comes back as one line in err. */
#ifndef MOONPORT_CONFIG_H
#define MOONPORT_CONFIG_H

#include <stddef.h>
#include <stdint.h>

struct proxy_cidr;
struct origin_list;

struct route_spec {
    char *pattern; /* "/echo", "/rooms/:room" */
    char *file;    /* path of the app's Lua file */
    struct origin_list *origins; /* the route's own allow-list; NULL: the global one */
};

struct config {
    char *host;
    int port;
    char *apps_dir;    /* NULL: no directory of apps */
    char *config_file; /* NULL: none */
    int log_level;
    int log_access;
    int log_json; /* log.format = "json": the access log as JSON lines */
    int reload; /* watch app files and reload them on change */
    char *tls_cert; /* PEM certificate chain; with tls_key, serve wss:// */
    char *tls_key;  /* PEM private key; both NULL: plain ws:// */
    unsigned workers; /* processes serving (workers.h), 1 to CONFIG_WORKERS_MAX */
    char *admin;      /* "host:port" of the admin listener (admin.h), NULL: none */

    struct route_spec *routes; /* explicit routes from the config file, in order */
    size_t nroutes;

    uint64_t max_message;
    uint32_t max_fragments;
    size_t max_head;
    unsigned max_headers;
    size_t send_buffer;     /* stop reading a connection whose output is over this */
    size_t max_send_buffer; /* close a connection whose output is over this */
    unsigned max_connections;
    /* throttle.h: rates per connection (0: none), their bursts, and what
     * happens past them (0: pause reading, 1: close with 1008); the
     * memory budgets of the whole server (divided among the workers). */
    double messages_per_second, bytes_per_second;
    double burst_messages, burst_bytes;
    int rate_close;
    size_t inbound_memory, outbound_memory;

    /* permessage-deflate (RFC 7692) */
    int compression;              /* accept it when a client offers it */
    size_t compression_threshold; /* send shorter messages uncompressed */
    int compression_level;        /* zlib level 1..9 */
    int compression_window;       /* server_max_window_bits 9..15 */
    int compression_mem_level;    /* zlib memLevel 1..9 */

    double handshake_timeout;
    double close_timeout;
    double ping_interval; /* ping a connection silent this long; 0: never */
    double idle_timeout;  /* close a connection silent this long; 0: never */
    double publish_delay; /* published output may wait this long to leave
                             with more; 0: it leaves in its loop turn */

    /* The Redis backplane (backplane.h): topics across nodes. */
    char **backplane;             /* redis:// URLs, checked; topics are sharded over them */
    size_t nbackplane;            /* 0: no backplane */
    char *backplane_prefix;       /* the Redis channel of topic T is prefix .. T */
    size_t backplane_max_pending; /* publish bytes a Redis may owe replies for */
    char node_id[17];             /* this node's id, hex (made by main, not read) */
    double drain;    /* shutdown spreads its closes over this long (drain.h); 0: at once */
    double lifetime; /* close a connection this long after it came (+ up to
                        10%); 0: never */
    int takeover;    /* --takeover: share the port with a moonport serving it */
    /* Behind proxies (proxy.h): the peers whose X-Forwarded-For/-Proto and
     * PROXY protocol header are believed; with proxy_protocol, those peers
     * must start every connection with a PROXY header. */
    struct proxy_cidr *trusted;
    size_t ntrusted;
    int proxy_protocol;
    struct origin_list *origins; /* origin.h: allowed Origins; NULL: any */
    int origins_required;        /* refuse a handshake that has no Origin */
    unsigned max_connections_per_ip; /* open connections per client address; 0: no limit */
};

#define CONFIG_BACKPLANE_MAX 64 /* Redis servers at most */
#define CONFIG_PREFIX_MAX 128

#define CONFIG_WORKERS_MAX 256

/* CONFIG_ERROR: a bad command line; CONFIG_FILE_ERROR: a bad config file. */
enum { CONFIG_OK = 0, CONFIG_EXIT_OK = 1, CONFIG_ERROR = -1, CONFIG_FILE_ERROR = -2 };

/* Whether ch may appear in a route as is: RFC 3986's unreserved characters
 * (letters, digits, - . _ ~). Anything else arrives percent-encoded. */
static inline int route_char(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           ch == '-' || ch == '.' || ch == '_' || ch == '~';
}

void config_init(struct config *c);
/* The default of limits.inbound_memory and limits.outbound_memory: an
 * eighth of the machine's memory, from 64 MiB to 4 GiB. */
size_t config_default_budget(void);
/* Free what a route_spec holds (not the struct itself). */
void config_route_free(struct route_spec *r);
void config_free(struct config *c);

/* Parse argv, then the config file it names, then apply argv over the file.
 * CONFIG_EXIT_OK means --help or --version was printed. */
int config_load(struct config *c, int argc, char **argv, char *err, size_t errlen);

/* Only read the config file (for `moonport publish`, which serves nothing):
 * 0, or -1 with err set. */
int config_load_file(struct config *c, const char *file, char *err, size_t errlen);

/* Replace the backplane's URLs with urls (checked: -1 with err naming the
 * bad one). */
int config_set_backplane(struct config *c, const char *const *urls, size_t n, char *err,
                         size_t errlen);

#endif
