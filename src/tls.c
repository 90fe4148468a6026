/* tls: the server's SSL_CTX and the non-blocking wrappers around SSL_read,
 * SSL_write and SSL_shutdown. OpenSSL's error queue is emptied whenever a
 * call fails, with the reason kept for tls_error(), so the next call starts
 * clean (SSL_get_error needs that) without clearing before every read. */
#include "tls.h"

#include <errno.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static char last_error[256];

/* Keep the most telling reason of the queued errors, and empty the queue. */
static void keep_error(const char *fallback)
{
    unsigned long e = ERR_peek_last_error();
    if (e) {
        const char *reason = ERR_reason_error_string(e);
        if (reason)
            snprintf(last_error, sizeof last_error, "%s", reason);
        else
            ERR_error_string_n(e, last_error, sizeof last_error);
    } else {
        snprintf(last_error, sizeof last_error, "%s", fallback);
    }
    ERR_clear_error();
}

const char *tls_error(void)
{
    return last_error;
}

/* An encrypted key would make OpenSSL ask for its passphrase on the
 * terminal, which would hang a start, or the whole loop at a SIGHUP: no
 * passphrase, so it fails to load instead. */
static int no_passphrase(char *buf, int size, int rwflag, void *userdata)
{
    (void)buf;
    (void)size;
    (void)rwflag;
    (void)userdata;
    return 0;
}

/* What is wrong with a PEM file OpenSSL would not load, in words: OpenSSL's
 * own reason for most of these is "PEM lib" or "no start line". NULL when
 * the file looks right and only OpenSSL can say more. */
static const char *pem_trouble(const char *file, int want_key)
{
    char text[16384];
    FILE *f = fopen(file, "r");
    if (!f)
        return NULL;
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = '\0';
    if (!strstr(text, "-----BEGIN "))
        return n == 0 ? "the file is empty"
                      : "not a PEM file (no -----BEGIN line; a DER file needs converting to PEM)";
    int has_cert = strstr(text, "-----BEGIN CERTIFICATE-----") != NULL;
    int has_key = strstr(text, "PRIVATE KEY-----") != NULL;
    if (want_key) {
        if (strstr(text, "-----BEGIN ENCRYPTED PRIVATE KEY-----") || strstr(text, "ENCRYPTED\n"))
            return "the key is encrypted, and moonport asks for no passphrase: decrypt it "
                   "(openssl pkey -in KEY -out PLAIN) and keep the file readable only by the server";
        if (!has_key)
            return has_cert ? "it holds a certificate, not a private key"
                            : "it holds no private key (no -----BEGIN ... PRIVATE KEY----- line)";
    } else if (!has_cert) {
        return has_key ? "it holds a private key, not a certificate"
                       : "it holds no certificate (no -----BEGIN CERTIFICATE----- line)";
    }
    return NULL;
}

SSL_CTX *tls_ctx_new(const char *cert_file, const char *key_file, char *err, size_t errlen)
{
    /* Name the file that is missing: OpenSSL's message for it is vague. */
    const char *files[] = {cert_file, key_file};
    for (size_t i = 0; i < 2; i++) {
        if (access(files[i], R_OK) != 0) {
            snprintf(err, errlen, "tls: cannot read %s %s: %s", i ? "key" : "certificate", files[i],
                     strerror(errno));
            return NULL;
        }
    }
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) {
        keep_error("out of memory");
        snprintf(err, errlen, "tls: cannot create a context: %s", last_error);
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    /* No compression (CRIME), no renegotiation (a peer could make us do a
     * handshake's work at will). A peer that drops TCP without close_notify
     * is an EOF, not an error: WebSocket's close frame already says whether
     * the conversation ended cleanly. */
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
                                 SSL_OP_CIPHER_SERVER_PREFERENCE);
#ifdef SSL_OP_IGNORE_UNEXPECTED_EOF /* OpenSSL 3; 1.1 reports EOF as SSL_ERROR_SYSCALL */
    SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
#endif
    /* An idle connection gives its read and write buffers back (about
     * 34 KiB); a write may take part of what it is offered, and be retried
     * from wherever the output queue has moved the bytes to. */
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE |
                              SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    /* Read whole socket buffers, not a record header then its body: half the
     * read calls. What OpenSSL holds then is found with tls_pending. */
    SSL_CTX_set_read_ahead(ctx, 1);
    /* Resumption uses tickets, which cost the server no memory; a session
     * cache would hold every client's session for minutes. */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);

    SSL_CTX_set_default_passwd_cb(ctx, no_passphrase);
    const char *what = "certificate";
    const char *file = cert_file;
    if (SSL_CTX_use_certificate_chain_file(ctx, cert_file) != 1)
        goto fail;
    what = "key";
    file = key_file;
    if (SSL_CTX_use_PrivateKey_file(ctx, key_file, SSL_FILETYPE_PEM) != 1) {
        /* OpenSSL checks the key against the certificate as it loads it. */
        unsigned long e = ERR_peek_last_error();
        if (ERR_GET_LIB(e) == ERR_LIB_X509 && ERR_GET_REASON(e) == X509_R_KEY_VALUES_MISMATCH)
            goto mismatch;
        goto fail;
    }
    if (SSL_CTX_check_private_key(ctx) != 1)
        goto mismatch;
    return ctx;
mismatch:
    keep_error("no reason given");
    snprintf(err, errlen, "tls: the key %s does not match the certificate %s (%s)", key_file,
             cert_file, last_error);
    SSL_CTX_free(ctx);
    return NULL;
fail:
    keep_error("no reason given");
    const char *trouble = pem_trouble(file, strcmp(what, "key") == 0);
    snprintf(err, errlen, "tls: cannot load the %s %s: %s%s%s", what, file,
             trouble ? trouble : "", trouble ? "" : "OpenSSL says: ", trouble ? "" : last_error);
    SSL_CTX_free(ctx);
    return NULL;
}

void tls_ctx_free(SSL_CTX *ctx)
{
    SSL_CTX_free(ctx);
}

SSL *tls_new(SSL_CTX *ctx, int fd)
{
    SSL *ssl = SSL_new(ctx);
    if (!ssl)
        return NULL;
    if (SSL_set_fd(ssl, fd) != 1) {
        SSL_free(ssl);
        ERR_clear_error();
        return NULL;
    }
    SSL_set_accept_state(ssl);
    return ssl;
}

void tls_free(SSL *ssl)
{
    SSL_free(ssl);
}

/* The result of a failed SSL call r, as one of the TLS_ codes. */
static int failed(SSL *ssl, int r)
{
    switch (SSL_get_error(ssl, r)) {
    case SSL_ERROR_WANT_READ:
        return TLS_WANT_READ;
    case SSL_ERROR_WANT_WRITE:
        return TLS_WANT_WRITE;
    case SSL_ERROR_ZERO_RETURN:
        return TLS_CLOSED;
    case SSL_ERROR_SYSCALL:
        /* EOF, or a peer that reset: gone, as a plain connection's peer
         * would be, which is not worth more than a debug line. */
        if (ERR_peek_error() == 0 && (errno == 0 || errno == ECONNRESET || errno == EPIPE))
            return TLS_CLOSED;
        keep_error(errno ? strerror(errno) : "I/O error");
        return TLS_ERROR;
    default:
        keep_error("TLS error");
        return TLS_ERROR;
    }
}

long tls_read(SSL *ssl, void *buf, size_t len)
{
    size_t n;
    errno = 0; /* SSL_ERROR_SYSCALL with errno 0 is an EOF */
    int r = SSL_read_ex(ssl, buf, len, &n);
    return r == 1 ? (long)n : failed(ssl, r);
}

long tls_write(SSL *ssl, const void *buf, size_t len)
{
    size_t n;
    errno = 0;
    int r = SSL_write_ex(ssl, buf, len, &n);
    return r == 1 ? (long)n : failed(ssl, r);
}

int tls_shutdown(SSL *ssl)
{
    errno = 0;
    int r = SSL_shutdown(ssl);
    if (r >= 0)
        return 0; /* 0: ours is sent; 1: theirs had come too */
    r = failed(ssl, r);
    return r == TLS_WANT_READ || r == TLS_CLOSED ? 0 : r;
}

int tls_pending(SSL *ssl)
{
    return SSL_has_pending(ssl);
}

int tls_handshake_done(SSL *ssl)
{
    return SSL_is_init_finished(ssl);
}
