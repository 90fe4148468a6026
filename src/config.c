/* config: the command line and the config file. The file is Lua run in its
 * own short-lived lua_State, so a config can compute values, and nothing it
 * does survives into the apps' state. */
#include "config.h"

#include <getopt.h>
#include <sched.h>
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bpwire.h"
#include "log.h"
#include "origin.h"
#include "proxy.h"
#include "ws_frame.h"

static const char usage[] =
    "usage: moonport [options] [APPS_DIR]\n"
    "\n"
    "Serve every APPS_DIR/NAME.lua as a WebSocket app at /NAME (index.lua at /);\n"
    "a file that defines no handler, or that apps require, is a module, not a route.\n"
    "\n"
    "options:\n"
    "  --host ADDR        address to listen on (default 127.0.0.1; 0.0.0.0 or :: for all)\n"
    "  --port N           port to listen on (default 8080; 0 picks a free one)\n"
    "  --config FILE      a Lua file returning a table of settings (see README)\n"
    "  --log-level LEVEL  error, warn, info (default) or debug, for stderr; the access\n"
    "                     log on stdout is written whatever the level (log.access)\n"
    "  --reload on|off    reload apps when their files change (default on); SIGHUP\n"
    "                     reloads every app and the config file either way\n"
    "  --tls-cert FILE    serve wss:// with this PEM certificate chain (needs --tls-key);\n"
    "                     SIGHUP reloads it and the key for new connections\n"
    "  --tls-key FILE     the PEM private key of --tls-cert\n"
    "  --workers N|auto   serve with N processes on the one port (default 1; auto: one\n"
    "                     per CPU this process may run on); topics reach all of them\n"
    "  --admin HOST:PORT  serve /metrics (Prometheus) and /healthz over HTTP there\n"
    "                     (default: off; keep it off the public network)\n"
    "  --backplane URL    a Redis server (redis://[:password@]host[:port][/db]) that\n"
    "                     carries topics to and from other nodes; repeat it to shard\n"
    "                     topics over several (replaces the config's backplane.redis)\n"
    "  --takeover         start on the address of a moonport already serving it (a\n"
    "                     rolling restart): both accept until the old one is sent\n"
    "                     SIGTERM or SIGUSR2; without it, a taken port is an error\n"
    "  -h, --help         print this help and exit\n"
    "  -v, --version      print the version and exit\n"
    "\n"
    "   or: moonport publish [--config FILE] [--backplane URL] [--binary] TOPIC MESSAGE\n"
    "\n"
    "publishes MESSAGE (- reads it from stdin) to TOPIC on every node, through the\n"
    "backplane of FILE or --backplane; text unless --binary (see moonport publish --help).\n";

void config_init(struct config *c)
{
    memset(c, 0, sizeof *c);
    c->host = strdup("127.0.0.1");
    c->port = 8080;
    c->log_level = LOG_INFO;
    c->log_access = 1;
    c->reload = 1;
    c->workers = 1;
    c->max_message = 16u << 20;
    c->max_fragments = 131072; /* Autobahn 9.3.1, 9.4.1: 65,537 frames */
    c->max_head = 16384;
    c->max_headers = 100;
    c->send_buffer = 1u << 20;
    c->max_send_buffer = 64u << 20;
    c->max_connections = 100000;
    c->compression = 1;
    c->compression_threshold = 256;
    c->compression_level = 1;
    c->compression_window = 15;
    c->compression_mem_level = 8;
    c->handshake_timeout = 10;
    c->close_timeout = 5;
    c->ping_interval = 30;
    c->idle_timeout = 90;
    c->backplane_prefix = strdup(BP_DEFAULT_PREFIX);
    c->backplane_max_pending = 8u << 20;
    c->drain = 10;
    c->inbound_memory = c->outbound_memory = config_default_budget();
}

static void free_backplane(struct config *c)
{
    for (size_t i = 0; i < c->nbackplane; i++)
        free(c->backplane[i]);
    free(c->backplane);
    c->backplane = NULL;
    c->nbackplane = 0;
}

int config_set_backplane(struct config *c, const char *const *urls, size_t n, char *err,
                         size_t errlen)
{
    if (n > CONFIG_BACKPLANE_MAX) {
        snprintf(err, errlen, "the backplane takes %d Redis servers at most, not %zu",
                 CONFIG_BACKPLANE_MAX, n);
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        struct bp_url u;
        char why[200];
        if (bp_url_parse(urls[i], &u, why, sizeof why)) {
            snprintf(err, errlen, "backplane: bad Redis URL \"%s\": %s", urls[i], why);
            return -1;
        }
    }
    char **list = n ? calloc(n, sizeof *list) : NULL;
    if (n && !list) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        if (!(list[i] = strdup(urls[i]))) {
            while (i--)
                free(list[i]);
            free(list);
            snprintf(err, errlen, "out of memory");
            return -1;
        }
    }
    free_backplane(c);
    c->backplane = list;
    c->nbackplane = n;
    return 0;
}

size_t config_default_budget(void)
{
    /* An eighth of the machine's memory, from 64 MiB to 4 GiB: enough for
     * hundreds of messages of max_message in flight, and far from what
     * takes the machine down when many clients hold one open at once. */
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    uint64_t total = pages > 0 && page > 0 ? (uint64_t)pages * (uint64_t)page : 1ull << 30;
    uint64_t b = total / 8;
    if (b < 64ull << 20)
        b = 64ull << 20;
    if (b > 4ull << 30)
        b = 4ull << 30;
    return (size_t)b;
}

void config_free(struct config *c)
{
    free(c->host);
    free(c->apps_dir);
    free(c->config_file);
    free(c->tls_cert);
    free(c->tls_key);
    free(c->admin);
    free_backplane(c);
    free(c->backplane_prefix);
    for (size_t i = 0; i < c->nroutes; i++)
        config_route_free(&c->routes[i]);
    free(c->routes);
    free(c->trusted);
    origin_list_free(c->origins);
    memset(c, 0, sizeof *c);
}

void config_route_free(struct route_spec *r)
{
    free(r->pattern);
    free(r->file);
    origin_list_free(r->origins);
    r->pattern = r->file = NULL;
    r->origins = NULL;
}

static void set_str(char **dst, const char *s)
{
    free(*dst);
    *dst = s ? strdup(s) : NULL;
}

/* A path from the config file is relative to the file's directory. */
static char *relative_to(const char *file, const char *path)
{
    const char *slash = strrchr(file, '/');
    if (path[0] == '/' || !slash)
        return strdup(path);
    size_t dl = (size_t)(slash - file) + 1;
    char *out = malloc(dl + strlen(path) + 1);
    if (!out)
        return NULL;
    memcpy(out, file, dl);
    strcpy(out + dl, path);
    return out;
}

/* "auto": the CPUs this process may run on; else a number, 1 to the most. */
static int parse_workers(const char *s, unsigned *out)
{
    if (strcmp(s, "auto") == 0) {
        cpu_set_t set;
        int n = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : 1;
        *out = n < 1 ? 1 : n > CONFIG_WORKERS_MAX ? CONFIG_WORKERS_MAX : (unsigned)n;
        return 0;
    }
    char *end;
    long n = strtol(s, &end, 10);
    if (*s == '\0' || *end || n < 1 || n > CONFIG_WORKERS_MAX)
        return -1;
    *out = (unsigned)n;
    return 0;
}

static int field_number(lua_State *L, int t, const char *key, const char *where, double min,
                        double max, double *out, char *err, size_t errlen)
{
    lua_getfield(L, t, key);
    int type = lua_type(L, -1);
    if (type == LUA_TNIL) {
        lua_pop(L, 1);
        return 0;
    }
    if (type != LUA_TNUMBER) {
        snprintf(err, errlen, "%s%s must be a number, not %s", where, key, lua_typename(L, type));
        return -1;
    }
    double v = lua_tonumber(L, -1);
    lua_pop(L, 1);
    if (!(v >= min && v <= max)) {
        /* %.15g: every whole number a limit takes, digit for digit (%g
         * would say 4294967296 is not between 1 and 4.29497e+09) */
        snprintf(err, errlen, "%s%s must be between %.15g and %.15g, not %.15g", where, key, min,
                 max, v);
        return -1;
    }
    *out = v;
    return 1;
}

static int field_string(lua_State *L, int t, const char *key, const char **out, char *err,
                        size_t errlen)
{
    lua_getfield(L, t, key);
    int type = lua_type(L, -1);
    lua_pop(L, 1);
    if (type == LUA_TNIL)
        return 0;
    if (type != LUA_TSTRING) {
        snprintf(err, errlen, "%s must be a string, not %s", key, lua_typename(L, type));
        return -1;
    }
    lua_getfield(L, t, key);
    *out = lua_tostring(L, -1); /* stays valid: the table holds the string */
    lua_pop(L, 1);
    return 1;
}

static int add_route(struct config *c, const char *pattern, const char *file,
                     struct origin_list *origins, char *err, size_t errlen)
{
    if (pattern[0] != '/') {
        snprintf(err, errlen, "route \"%s\" must start with /", pattern);
        origin_list_free(origins);
        return -1;
    }
    /* Routes match the request path as sent, so a character a client must
     * percent-encode ("/sp ace" arrives as "/sp%20ace") makes a route no
     * request can reach. ':' starts a capture. */
    for (const char *p = pattern; *p; p++) {
        if (*p == '/' || (*p == ':' && p[-1] == '/') || route_char(*p))
            continue;
        snprintf(err, errlen, "route \"%s\": '%c' (0x%02X) would be percent-encoded in a request "
                 "path, so no request could reach it; use letters, digits, - . _ ~",
                 pattern, (unsigned char)*p >= 0x20 && (unsigned char)*p < 0x7f ? *p : '?',
                 (unsigned char)*p);
        origin_list_free(origins);
        return -1;
    }
    struct route_spec *r = realloc(c->routes, (c->nroutes + 1) * sizeof *r);
    if (!r) {
        snprintf(err, errlen, "out of memory");
        origin_list_free(origins);
        return -1;
    }
    c->routes = r;
    r[c->nroutes].pattern = strdup(pattern);
    r[c->nroutes].file = relative_to(c->config_file, file);
    r[c->nroutes].origins = origins;
    c->nroutes++;
    return 0;
}

/* How many entries the table at index t holds, of any key. */
static size_t entries(lua_State *L, int t)
{
    size_t n = 0;
    t = t < 0 ? lua_gettop(L) + t + 1 : t;
    lua_pushnil(L);
    while (lua_next(L, t)) {
        lua_pop(L, 1);
        n++;
    }
    return n;
}

/* An allow-list of origins: the array of strings at index t. Returns 0 and
 * sets *out, or -1 with err set (where names it: "origins",
 * "routes[\"/x\"].origins"). */
static int load_origins(lua_State *L, int t, const char *where, struct origin_list **out,
                        char *err, size_t errlen)
{
    if (!lua_istable(L, t)) {
        snprintf(err, errlen, "%s must be a list of origins such as { \"https://chat.example.com\" "
                 "}", where);
        return -1;
    }
    size_t n = lua_objlen(L, t);
    if (entries(L, t) != n) {
        snprintf(err, errlen, "%s must be a list (an array of strings)", where);
        return -1;
    }
    const char **pats = calloc(n ? n : 1, sizeof *pats);
    if (!pats) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (size_t i = 1; i <= n; i++) {
        lua_rawgeti(L, t, (int)i);
        const char *why;
        if (lua_type(L, -1) != LUA_TSTRING) {
            snprintf(err, errlen, "%s[%zu] must be a string", where, i);
            lua_pop(L, 1);
            free(pats);
            return -1;
        }
        pats[i - 1] = lua_tostring(L, -1); /* the table keeps it */
        lua_pop(L, 1);
        if (origin_pattern_check(pats[i - 1], &why)) {
            snprintf(err, errlen, "%s[%zu] \"%s\": %s", where, i, pats[i - 1], why);
            free(pats);
            return -1;
        }
    }
    *out = origin_list_new(pats, n);
    free(pats);
    if (!*out) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    return 0;
}

/* routes["/path"] = { app = "file.lua", origins = {...} }, the table at t. */
static int route_table(struct config *c, lua_State *L, const char *pattern, int t, char *err,
                       size_t errlen)
{
    lua_pushnil(L);
    while (lua_next(L, t)) {
        lua_pop(L, 1);
        const char *k = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
        if (!k || (strcmp(k, "app") != 0 && strcmp(k, "origins") != 0)) {
            snprintf(err, errlen, "routes[\"%s\"]: a route table has app and origins only",
                     pattern);
            lua_pop(L, 1);
            return -1;
        }
    }
    lua_getfield(L, t, "app");
    if (lua_type(L, -1) != LUA_TSTRING) {
        snprintf(err, errlen, "routes[\"%s\"].app must be a file name", pattern);
        lua_pop(L, 1);
        return -1;
    }
    const char *file = lua_tostring(L, -1);
    lua_pop(L, 1); /* the table keeps the string */
    struct origin_list *origins = NULL;
    lua_getfield(L, t, "origins");
    if (!lua_isnil(L, -1)) {
        char where[256];
        snprintf(where, sizeof where, "routes[\"%s\"].origins", pattern);
        if (load_origins(L, lua_gettop(L), where, &origins, err, errlen)) {
            lua_pop(L, 1);
            return -1;
        }
    }
    lua_pop(L, 1);
    return add_route(c, pattern, file, origins, err, errlen);
}

/* proxy = { trusted = { "10.0.0.0/8", ... }, protocol = false }, at t. */
static int load_proxy(struct config *c, lua_State *L, int t, char *err, size_t errlen)
{
    lua_getfield(L, t, "trusted");
    int l = lua_gettop(L);
    if (!lua_isnil(L, l)) {
        size_t n = lua_istable(L, l) ? lua_objlen(L, l) : 0;
        if (!lua_istable(L, l) || entries(L, l) != n) {
            snprintf(err, errlen, "proxy.trusted must be a list of address ranges such as "
                     "{ \"10.0.0.0/8\", \"::1/128\" }");
            return -1;
        }
        struct proxy_cidr *list = calloc(n ? n : 1, sizeof *list);
        if (!list) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        for (size_t i = 1; i <= n; i++) {
            lua_rawgeti(L, l, (int)i);
            const char *s = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
            if (!s || proxy_cidr_parse(s, &list[i - 1])) {
                snprintf(err, errlen, "proxy.trusted[%zu]%s%s%s is not an address range (CIDR such "
                         "as \"10.0.0.0/8\", no bits set past the prefix)", i, s ? " \"" : "",
                         s ? s : "", s ? "\"" : "");
                free(list);
                return -1;
            }
            lua_pop(L, 1);
        }
        free(c->trusted);
        c->trusted = list;
        c->ntrusted = n;
    }
    lua_pop(L, 1);
    lua_getfield(L, t, "protocol");
    if (!lua_isnil(L, -1)) {
        if (!lua_isboolean(L, -1)) {
            snprintf(err, errlen, "proxy.protocol must be true or false");
            return -1;
        }
        c->proxy_protocol = lua_toboolean(L, -1);
    }
    lua_pop(L, 1);
    if (c->proxy_protocol && !c->ntrusted) {
        snprintf(err, errlen, "proxy.protocol needs proxy.trusted: the addresses of the load "
                 "balancers that send the PROXY header");
        return -1;
    }
    return 0;
}

static int load_routes(struct config *c, lua_State *L, int t, char *err, size_t errlen)
{
    lua_getfield(L, t, "routes");
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return 0;
    }
    if (!lua_istable(L, -1)) {
        snprintf(err, errlen, "routes must be a table");
        return -1;
    }
    int rt = lua_gettop(L);
    /* Array part first, in order: { {"/path", "file.lua"}, ... } */
    size_t n = lua_objlen(L, rt);
    for (size_t i = 1; i <= n; i++) {
        lua_rawgeti(L, rt, (int)i);
        if (!lua_istable(L, -1)) {
            snprintf(err, errlen, "routes[%zu] must be a table {\"/path\", \"file.lua\"}", i);
            return -1;
        }
        lua_rawgeti(L, -1, 1);
        lua_rawgeti(L, -2, 2);
        if (entries(L, -3) > 2) { /* a misplaced key, or a route split wrong */
            snprintf(err, errlen, "routes[%zu] has more than {\"/path\", \"file.lua\"}", i);
            return -1;
        }
        if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING) {
            snprintf(err, errlen, "routes[%zu] must be {\"/path\", \"file.lua\"}", i);
            return -1;
        }
        if (add_route(c, lua_tostring(L, -2), lua_tostring(L, -1), NULL, err, errlen))
            return -1;
        lua_pop(L, 3);
    }
    /* Then the map part: { ["/path"] = "file.lua" } or
     * { ["/path"] = { app = "file.lua", origins = {...} } }. */
    lua_pushnil(L);
    while (lua_next(L, rt)) {
        if (lua_type(L, -2) == LUA_TSTRING) {
            if (lua_istable(L, -1)) {
                if (route_table(c, L, lua_tostring(L, -2), lua_gettop(L), err, errlen))
                    return -1;
                lua_pop(L, 1);
                continue;
            }
            if (lua_type(L, -1) != LUA_TSTRING) {
                snprintf(err, errlen, "routes[\"%s\"] must be a file name or a table "
                         "{ app = \"file.lua\", origins = {...} }", lua_tostring(L, -2));
                return -1;
            }
            if (add_route(c, lua_tostring(L, -2), lua_tostring(L, -1), NULL, err, errlen))
                return -1;
        } else if (lua_type(L, -2) != LUA_TNUMBER) {
            snprintf(err, errlen, "routes keys must be paths");
            return -1;
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    return 0;
}

/* Every key the file may set, by section ("" is the top level). A key not
 * listed is a mistake (a typo such as "prot" or "limits.max_mesage"), and
 * silently ignoring it would leave the default in force unnoticed. */
struct known_keys {
    const char *section;
    const char *const *keys;
};

static const char *const top_keys[] = {"host", "port", "apps", "routes", "limits", "timeouts",
                                       "compression", "log", "tls", "reload", "workers",
                                       "admin", "backplane", "proxy", "origins",
                                       "origins_required", NULL};
static const char *const limits_keys[] = {"max_message", "max_fragments", "max_head",
                                          "max_headers", "send_buffer", "max_send_buffer",
                                          "max_connections", "messages_per_second",
                                          "bytes_per_second", "burst_messages", "burst_bytes",
                                          "rate_action", "inbound_memory", "outbound_memory",
                                          "max_connections_per_ip", NULL};
static const char *const timeouts_keys[] = {"handshake", "close", "ping", "idle",
                                            "publish_delay", "drain", "lifetime", NULL};
static const char *const compression_keys[] = {"enabled", "threshold", "level", "window_bits",
                                               "mem_level", NULL};
static const char *const log_keys[] = {"level", "access", "format", NULL};
static const char *const tls_keys[] = {"cert", "key", NULL};
static const char *const backplane_keys[] = {"redis", "prefix", "max_pending", NULL};
static const char *const proxy_keys[] = {"trusted", "protocol", NULL};

static const struct known_keys sections[] = {
    {"", top_keys},
    {"limits", limits_keys},
    {"timeouts", timeouts_keys},
    {"compression", compression_keys},
    {"log", log_keys},
    {"tls", tls_keys},
    {"backplane", backplane_keys},
    {"proxy", proxy_keys},
};

/* Edit distance counting a swap of two neighbours as one edit ("prot" is
 * one from "port"). Keys are short; longer strings are simply far. */
static size_t key_distance(const char *a, const char *b)
{
    enum { MAXK = 40 };
    size_t la = strlen(a), lb = strlen(b);
    if (la >= MAXK || lb >= MAXK)
        return (size_t)-1;
    size_t d[MAXK + 1][MAXK + 1];
    for (size_t i = 0; i <= la; i++)
        d[i][0] = i;
    for (size_t j = 0; j <= lb; j++)
        d[0][j] = j;
    for (size_t i = 1; i <= la; i++) {
        for (size_t j = 1; j <= lb; j++) {
            size_t best = d[i - 1][j - 1] + (a[i - 1] != b[j - 1]);
            if (d[i - 1][j] + 1 < best)
                best = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < best)
                best = d[i][j - 1] + 1;
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] &&
                d[i - 2][j - 2] + 1 < best)
                best = d[i - 2][j - 2] + 1;
            d[i][j] = best;
        }
    }
    return d[la][lb];
}

/* The known key closest to key, as a full path, or "" if none is close: in
 * the same section first, then a key of another section spelled (almost)
 * the same ("max_message" at the top level is "limits.max_message"). */
static void suggest_key(const struct known_keys *in, const char *key, char *out, size_t len)
{
    size_t best = (size_t)-1, limit = strlen(key) / 3 > 2 ? strlen(key) / 3 : 2;
    const struct known_keys *best_sec = NULL;
    const char *best_key = NULL;
    for (const char *const *k = in->keys; *k; k++) {
        size_t d = key_distance(key, *k);
        if (d < best)
            best = d, best_key = *k, best_sec = in;
    }
    if (best > limit) {
        best = (size_t)-1;
        for (size_t s = 0; s < sizeof sections / sizeof *sections; s++) {
            for (const char *const *k = sections[s].keys; *k && &sections[s] != in; k++) {
                size_t d = key_distance(key, *k);
                if (d < best)
                    best = d, best_key = *k, best_sec = &sections[s];
            }
        }
        limit = 1;
    }
    if (best > limit)
        snprintf(out, len, "%s", "");
    else
        snprintf(out, len, "%s%s%s", best_sec->section, best_sec->section[0] ? "." : "",
                 best_key);
}

/* Refuse a key of the table at index t that the section does not know. */
static int check_keys(lua_State *L, int t, const char *section, char *err, size_t errlen)
{
    const struct known_keys *in = NULL;
    for (size_t s = 0; s < sizeof sections / sizeof *sections; s++)
        if (strcmp(sections[s].section, section) == 0)
            in = &sections[s];
    lua_pushnil(L);
    while (lua_next(L, t)) {
        lua_pop(L, 1); /* the value */
        char path[200], hint[200];
        const char *dot = section[0] ? "." : "";
        if (lua_type(L, -1) != LUA_TSTRING) {
            /* lua_tostring would turn a number key into a string in place
             * and break lua_next: format a copy. */
            lua_pushvalue(L, -1);
            const char *k = lua_tostring(L, -1);
            snprintf(err, errlen, "unknown key [%s]%s%s: settings have names (see README)",
                     k ? k : luaL_typename(L, -1), section[0] ? " in " : "", section);
            lua_pop(L, 3);
            return -1;
        }
        const char *key = lua_tostring(L, -1);
        const char *const *k = in->keys;
        while (*k && strcmp(*k, key) != 0)
            k++;
        if (*k)
            continue;
        snprintf(path, sizeof path, "%s%s%s", section, dot, key);
        suggest_key(in, key, hint, sizeof hint);
        if (hint[0])
            snprintf(err, errlen, "unknown key \"%s\" (did you mean \"%s\"?)", path, hint);
        else {
            char known[400];
            size_t n = 0;
            known[0] = '\0';
            for (k = in->keys; *k && n < sizeof known; k++)
                n += (size_t)snprintf(known + n, sizeof known - n, "%s%s", n ? ", " : "", *k);
            snprintf(err, errlen, "unknown key \"%s\" (the known keys%s%s are %s)", path,
                     section[0] ? " of " : "", section, known);
        }
        lua_pop(L, 1);
        return -1;
    }
    return 0;
}

/* backplane.redis (a URL or a list of them) and backplane.prefix, of the
 * table at index l. */
static int load_backplane(struct config *c, lua_State *L, int l, char *err, size_t errlen)
{
    const char *urls[CONFIG_BACKPLANE_MAX];
    size_t n = 0;
    lua_getfield(L, l, "redis");
    if (lua_type(L, -1) == LUA_TSTRING) {
        urls[n++] = lua_tostring(L, -1);
    } else if (lua_istable(L, -1)) {
        size_t len = lua_objlen(L, -1);
        if (len == 0 || len != entries(L, -1)) {
            snprintf(err, errlen, "backplane.redis must be a URL or a list of URLs");
            return -1;
        }
        if (len > CONFIG_BACKPLANE_MAX) {
            snprintf(err, errlen, "backplane.redis lists %zu servers; %d at most", len,
                     CONFIG_BACKPLANE_MAX);
            return -1;
        }
        for (size_t i = 1; i <= len; i++) {
            lua_rawgeti(L, -1, (int)i);
            if (lua_type(L, -1) != LUA_TSTRING) {
                snprintf(err, errlen, "backplane.redis[%zu] must be a URL string, not %s", i,
                         luaL_typename(L, -1));
                return -1;
            }
            urls[n++] = lua_tostring(L, -1); /* the list holds it */
            lua_pop(L, 1);
        }
    } else if (!lua_isnil(L, -1)) {
        snprintf(err, errlen, "backplane.redis must be a URL or a list of URLs, not %s",
                 luaL_typename(L, -1));
        return -1;
    }
    if (n && config_set_backplane(c, urls, n, err, errlen))
        return -1;
    lua_pop(L, 1);
    const char *prefix;
    int r = field_string(L, l, "prefix", &prefix, err, errlen);
    if (r < 0)
        return -1;
    if (r) {
        if (strlen(prefix) > CONFIG_PREFIX_MAX) {
            snprintf(err, errlen, "backplane.prefix is %d bytes at most", CONFIG_PREFIX_MAX);
            return -1;
        }
        set_str(&c->backplane_prefix, prefix);
    }
    return 0;
}

static int load_file(struct config *c, const char *file, char *err, size_t errlen)
{
    lua_State *L = luaL_newstate();
    if (!L) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    luaL_openlibs(L);
    int rc = -1;
    if (luaL_dofile(L, file)) {
        snprintf(err, errlen, "config: %s", lua_tostring(L, -1));
        goto out;
    }
    if (!lua_istable(L, -1)) {
        snprintf(err, errlen, "config: %s must return a table", file);
        goto out;
    }
    int t = lua_gettop(L);
    char msg[700];
    msg[0] = '\0';
    const char *s;
    double v;
    int r;
#define NUM(tbl, where, key, min, max, dst)                                              \
    do {                                                                                 \
        r = field_number(L, tbl, key, where, min, max, &v, msg, sizeof msg);             \
        if (r < 0)                                                                       \
            goto bad;                                                                    \
        if (r > 0)                                                                       \
            dst = v;                                                                     \
    } while (0)

    if (check_keys(L, t, "", msg, sizeof msg))
        goto bad;
    if ((r = field_string(L, t, "host", &s, msg, sizeof msg)) < 0)
        goto bad;
    if (r)
        set_str(&c->host, s);
    NUM(t, "", "port", 0, 65535, c->port);
    lua_getfield(L, t, "workers");
    if (lua_type(L, -1) == LUA_TSTRING) {
        if (parse_workers(lua_tostring(L, -1), &c->workers)) {
            snprintf(msg, sizeof msg, "workers must be a number from 1 to %d or \"auto\", not "
                     "\"%s\"", CONFIG_WORKERS_MAX, lua_tostring(L, -1));
            goto bad;
        }
    } else if (!lua_isnil(L, -1)) {
        lua_pop(L, 1);
        NUM(t, "", "workers", 1, CONFIG_WORKERS_MAX, c->workers);
        lua_pushnil(L);
    }
    lua_pop(L, 1);
    lua_getfield(L, t, "reload");
    if (!lua_isnil(L, -1))
        c->reload = lua_toboolean(L, -1);
    lua_pop(L, 1);
    if ((r = field_string(L, t, "admin", &s, msg, sizeof msg)) < 0)
        goto bad;
    if (r)
        set_str(&c->admin, s);
    if ((r = field_string(L, t, "apps", &s, msg, sizeof msg)) < 0)
        goto bad;
    if (r) {
        free(c->apps_dir);
        c->apps_dir = relative_to(file, s);
    }
    if (load_routes(c, L, t, msg, sizeof msg))
        goto bad;

    lua_getfield(L, t, "limits");
    if (lua_istable(L, -1)) {
        int l = lua_gettop(L);
        if (check_keys(L, l, "limits", msg, sizeof msg))
            goto bad;
        NUM(l, "limits.", "max_message", 1, WS_MESSAGE_MAX, c->max_message);
        NUM(l, "limits.", "max_fragments", 1, 1u << 31, c->max_fragments);
        NUM(l, "limits.", "max_head", 512, 1 << 24, c->max_head);
        NUM(l, "limits.", "max_headers", 1, 10000, c->max_headers);
        NUM(l, "limits.", "send_buffer", 1024, 1ull << 40, c->send_buffer);
        NUM(l, "limits.", "max_send_buffer", 1024, 1ull << 40, c->max_send_buffer);
        NUM(l, "limits.", "max_connections", 1, 10000000, c->max_connections);
        NUM(l, "limits.", "messages_per_second", 0, 1e9, c->messages_per_second);
        NUM(l, "limits.", "bytes_per_second", 0, 1e15, c->bytes_per_second);
        NUM(l, "limits.", "burst_messages", 1, 1e9, c->burst_messages);
        NUM(l, "limits.", "burst_bytes", 1, 1e15, c->burst_bytes);
        NUM(l, "limits.", "inbound_memory", 1 << 20, 1ull << 50, c->inbound_memory);
        NUM(l, "limits.", "outbound_memory", 1 << 20, 1ull << 50, c->outbound_memory);
        if ((r = field_string(L, l, "rate_action", &s, msg, sizeof msg)) < 0)
            goto bad;
        if (r && strcmp(s, "pause") && strcmp(s, "close")) {
            snprintf(msg, sizeof msg, "limits.rate_action must be \"pause\" or \"close\", not "
                     "\"%s\"", s);
            goto bad;
        }
        if (r)
            c->rate_close = strcmp(s, "close") == 0;
        NUM(l, "limits.", "max_connections_per_ip", 0, 10000000, c->max_connections_per_ip);
    } else if (!lua_isnil(L, -1)) {
        snprintf(msg, sizeof msg, "limits must be a table");
        goto bad;
    }
    lua_pop(L, 1);

    lua_getfield(L, t, "proxy");
    if (lua_istable(L, -1)) {
        int l = lua_gettop(L);
        if (check_keys(L, l, "proxy", msg, sizeof msg) || load_proxy(c, L, l, msg, sizeof msg))
            goto bad;
    } else if (!lua_isnil(L, -1)) {
        snprintf(msg, sizeof msg, "proxy must be a table { trusted = {...}, protocol = false }");
        goto bad;
    }
    lua_pop(L, 1);

    lua_getfield(L, t, "origins");
    if (!lua_isnil(L, -1)) {
        struct origin_list *ol;
        if (load_origins(L, lua_gettop(L), "origins", &ol, msg, sizeof msg))
            goto bad;
        origin_list_free(c->origins);
        c->origins = ol;
    }
    lua_pop(L, 1);
    lua_getfield(L, t, "origins_required");
    if (!lua_isnil(L, -1))
        c->origins_required = lua_toboolean(L, -1);
    lua_pop(L, 1);

    lua_getfield(L, t, "compression");
    if (lua_istable(L, -1)) {
        int l = lua_gettop(L);
        if (check_keys(L, l, "compression", msg, sizeof msg))
            goto bad;
        lua_getfield(L, l, "enabled");
        if (!lua_isnil(L, -1))
            c->compression = lua_toboolean(L, -1);
        lua_pop(L, 1);
        NUM(l, "compression.", "threshold", 0, 1ull << 40, c->compression_threshold);
        NUM(l, "compression.", "level", 1, 9, c->compression_level);
        NUM(l, "compression.", "window_bits", 9, 15, c->compression_window);
        NUM(l, "compression.", "mem_level", 1, 9, c->compression_mem_level);
    } else if (lua_isboolean(L, -1)) {
        c->compression = lua_toboolean(L, -1);
    } else if (!lua_isnil(L, -1)) {
        snprintf(msg, sizeof msg, "compression must be a table or a boolean");
        goto bad;
    }
    lua_pop(L, 1);

    lua_getfield(L, t, "timeouts");
    if (lua_istable(L, -1)) {
        int l = lua_gettop(L);
        if (check_keys(L, l, "timeouts", msg, sizeof msg))
            goto bad;
        NUM(l, "timeouts.", "handshake", 0.001, 86400, c->handshake_timeout);
        NUM(l, "timeouts.", "close", 0.001, 3600, c->close_timeout);
        NUM(l, "timeouts.", "ping", 0, 86400, c->ping_interval);
        NUM(l, "timeouts.", "idle", 0, 864000, c->idle_timeout);
        NUM(l, "timeouts.", "publish_delay", 0, 1, c->publish_delay);
        NUM(l, "timeouts.", "drain", 0, 3600, c->drain);
        NUM(l, "timeouts.", "lifetime", 0, 30 * 86400, c->lifetime);
    } else if (!lua_isnil(L, -1)) {
        snprintf(msg, sizeof msg, "timeouts must be a table");
        goto bad;
    }
    lua_pop(L, 1);

    lua_getfield(L, t, "tls");
    if (lua_istable(L, -1)) {
        int l = lua_gettop(L);
        if (check_keys(L, l, "tls", msg, sizeof msg))
            goto bad;
        const char *cert, *key;
        int has_cert = field_string(L, l, "cert", &cert, msg, sizeof msg);
        int has_key = has_cert < 0 ? -1 : field_string(L, l, "key", &key, msg, sizeof msg);
        if (has_cert < 0 || has_key < 0)
            goto bad;
        if (!has_cert || !has_key) {
            snprintf(msg, sizeof msg, "tls needs both cert and key (PEM files)");
            goto bad;
        }
        free(c->tls_cert);
        free(c->tls_key);
        c->tls_cert = relative_to(file, cert);
        c->tls_key = relative_to(file, key);
    } else if (!lua_isnil(L, -1)) {
        snprintf(msg, sizeof msg, "tls must be a table { cert = FILE, key = FILE }");
        goto bad;
    }
    lua_pop(L, 1);

    lua_getfield(L, t, "backplane");
    if (lua_istable(L, -1)) {
        int l = lua_gettop(L);
        if (check_keys(L, l, "backplane", msg, sizeof msg) ||
            load_backplane(c, L, l, msg, sizeof msg))
            goto bad;
        NUM(l, "backplane.", "max_pending", 1024, 1ull << 40, c->backplane_max_pending);
    } else if (!lua_isnil(L, -1)) {
        snprintf(msg, sizeof msg, "backplane must be a table { redis = \"redis://host:port\" }");
        goto bad;
    }
    lua_pop(L, 1);

    lua_getfield(L, t, "log");
    if (lua_istable(L, -1)) {
        int l = lua_gettop(L);
        if (check_keys(L, l, "log", msg, sizeof msg))
            goto bad;
        if ((r = field_string(L, l, "level", &s, msg, sizeof msg)) < 0)
            goto bad;
        if (r && (c->log_level = log_level_parse(s)) < 0) {
            snprintf(msg, sizeof msg, "log.level must be error, warn, info or debug, not \"%s\"", s);
            goto bad;
        }
        lua_getfield(L, l, "access");
        if (!lua_isnil(L, -1))
            c->log_access = lua_toboolean(L, -1);
        lua_pop(L, 1);
        if ((r = field_string(L, l, "format", &s, msg, sizeof msg)) < 0)
            goto bad;
        if (r && strcmp(s, "text") && strcmp(s, "json")) {
            snprintf(msg, sizeof msg, "log.format must be \"text\" or \"json\", not \"%s\"", s);
            goto bad;
        }
        if (r)
            c->log_json = strcmp(s, "json") == 0;
    } else if (!lua_isnil(L, -1)) {
        snprintf(msg, sizeof msg, "log must be a table");
        goto bad;
    }
    lua_pop(L, 1);
#undef NUM
    rc = 0;
    goto out;
bad:
    snprintf(err, errlen, "config: %s: %s", file, msg);
out:
    lua_close(L);
    return rc;
}

int config_load_file(struct config *c, const char *file, char *err, size_t errlen)
{
    set_str(&c->config_file, file);
    return load_file(c, file, err, errlen);
}

int config_load(struct config *c, int argc, char **argv, char *err, size_t errlen)
{
    static const struct option opts[] = {
        {"host", required_argument, NULL, 'H'},
        {"port", required_argument, NULL, 'p'},
        {"config", required_argument, NULL, 'c'},
        {"log-level", required_argument, NULL, 'l'},
        {"reload", required_argument, NULL, 'r'},
        {"tls-cert", required_argument, NULL, 'C'},
        {"tls-key", required_argument, NULL, 'K'},
        {"workers", required_argument, NULL, 'w'},
        {"admin", required_argument, NULL, 'A'},
        {"backplane", required_argument, NULL, 'B'},
        {"takeover", no_argument, NULL, 'T'},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'v'},
        {NULL, 0, NULL, 0},
    };
    const char *host = NULL, *port = NULL, *level = NULL, *file = NULL, *reload = NULL;
    const char *tls_cert = NULL, *tls_key = NULL, *workers = NULL, *admin = NULL;
    const char *backplane[CONFIG_BACKPLANE_MAX + 1];
    size_t nbackplane = 0;
    int ch, takeover = 0;
    opterr = 0;
    optind = 0; /* glibc: 0 re-initialises, so SIGHUP can parse argv again */
    while ((ch = getopt_long(argc, argv, ":hv", opts, NULL)) != -1) {
        switch (ch) {
        case 'H': host = optarg; break;
        case 'p': port = optarg; break;
        case 'c': file = optarg; break;
        case 'l': level = optarg; break;
        case 'r': reload = optarg; break;
        case 'C': tls_cert = optarg; break;
        case 'K': tls_key = optarg; break;
        case 'w': workers = optarg; break;
        case 'A': admin = optarg; break;
        case 'B':
            if (nbackplane > CONFIG_BACKPLANE_MAX) {
                snprintf(err, errlen, "--backplane: %d Redis servers at most",
                         CONFIG_BACKPLANE_MAX);
                return CONFIG_ERROR;
            }
            backplane[nbackplane++] = optarg;
            break;
        case 'T': takeover = 1; break;
        case 'h': fputs(usage, stdout); return CONFIG_EXIT_OK;
        case 'v': printf("moonport %s\n", MOONPORT_VERSION); return CONFIG_EXIT_OK;
        case ':':
            snprintf(err, errlen, "option %s needs a value (see --help)", argv[optind - 1]);
            return CONFIG_ERROR;
        default:
            snprintf(err, errlen, "unknown option %s (see --help)", argv[optind - 1]);
            return CONFIG_ERROR;
        }
    }
    if (argc - optind > 1) {
        snprintf(err, errlen, "one apps directory at most, got \"%s\" and \"%s\"", argv[optind],
                 argv[optind + 1]);
        return CONFIG_ERROR;
    }
    if (file) {
        set_str(&c->config_file, file);
        if (load_file(c, file, err, errlen))
            return CONFIG_FILE_ERROR;
    }
    if (optind < argc)
        set_str(&c->apps_dir, argv[optind]);
    if (host)
        set_str(&c->host, host);
    if (port) {
        char *end;
        long p = strtol(port, &end, 10);
        if (*port == '\0' || *end || p < 0 || p > 65535) {
            snprintf(err, errlen, "--port must be a number from 0 to 65535, not \"%s\"", port);
            return CONFIG_ERROR;
        }
        c->port = (int)p;
    }
    if (level && (c->log_level = log_level_parse(level)) < 0) {
        snprintf(err, errlen, "--log-level must be error, warn, info or debug, not \"%s\"", level);
        return CONFIG_ERROR;
    }
    if (reload) {
        if (strcmp(reload, "on") && strcmp(reload, "off")) {
            snprintf(err, errlen, "--reload must be on or off, not \"%s\"", reload);
            return CONFIG_ERROR;
        }
        c->reload = strcmp(reload, "on") == 0;
    }
    if (workers && parse_workers(workers, &c->workers)) {
        snprintf(err, errlen, "--workers must be a number from 1 to %d or auto, not \"%s\"",
                 CONFIG_WORKERS_MAX, workers);
        return CONFIG_ERROR;
    }
    if (admin)
        set_str(&c->admin, admin);
    if (nbackplane && config_set_backplane(c, backplane, nbackplane, err, errlen))
        return CONFIG_ERROR;
    c->takeover = takeover;
    if (tls_cert)
        set_str(&c->tls_cert, tls_cert);
    if (tls_key)
        set_str(&c->tls_key, tls_key);
    if (!c->tls_cert != !c->tls_key) {
        snprintf(err, errlen, "TLS needs both --tls-cert and --tls-key (or the config's "
                              "tls = { cert = ..., key = ... })");
        return CONFIG_ERROR;
    }
    /* A burst of one second's worth unless set (and room for one message). */
    if (!c->burst_messages)
        c->burst_messages = c->messages_per_second > 1 ? c->messages_per_second : 1;
    if (!c->burst_bytes)
        c->burst_bytes = c->bytes_per_second > 1 ? c->bytes_per_second : 1;
    if (!c->apps_dir && c->nroutes == 0) {
        snprintf(err, errlen, "nothing to serve: give an apps directory or a config with routes "
                              "(see --help)");
        return CONFIG_ERROR;
    }
    return CONFIG_OK;
}
