/* upstream.c - the shared upstream error strings. */
#include "providers/upstream.h"

const char upstream_err_dns[] = "upstream name did not resolve";
const char upstream_err_connect[] = "upstream connect failed";
const char upstream_err_tls[] = "upstream TLS handshake failed";
const char upstream_err_timeout_connect[] = "upstream connect timed out";
const char upstream_err_timeout_tls[] = "upstream TLS handshake timed out";
const char upstream_err_timeout_first_byte[] = "upstream first byte timed out";
const char upstream_err_timeout_idle[] = "upstream went idle mid-response";
const char upstream_err_timeout_total[] = "upstream total time exceeded";
const char upstream_err_reset[] = "upstream closed the connection mid-response";
const char upstream_err_protocol[] = "upstream sent an invalid HTTP response";
const char upstream_err_too_big[] = "upstream response header too large";
const char upstream_err_shutdown[] = "shutting down";
const char upstream_err_injected[] = "mock provider cut the stream (failure injection)";

int upstream_err_before_response(const char *err)
{
    return err == upstream_err_dns || err == upstream_err_connect || err == upstream_err_tls ||
           err == upstream_err_timeout_connect || err == upstream_err_timeout_tls;
}
