/* The query path's common case in one pass: a body of exactly {"input": [numbers]}
 * straight to the wire bytes of the input (float64, float32 or int32, little endian); and
 * the same for one flat array inside a larger body (the Open Inference Protocol's "data",
 * frontend/oip.py), so that only the rest of that body goes through orjson.
 *
 * It is only a shortcut. Anything it does not recognise -- another shape or another key,
 * a token that is not a plain JSON number, an empty array, a value out of range, a number
 * with a fraction for an int input -- makes it return None, and the caller takes the
 * general path (orjson + frontend/inputs.py), which defines the results and words every
 * error. Where it does answer, it answers what that path would: numbers are converted
 * with CPython's own correctly rounded string-to-double, float32 by the same C cast that
 * struct.pack('f') uses, with the same overflow rule.
 *
 * And one more shortcut of the same kind, for the HTTP layer (frontend/http.py): a whole,
 * plain keep-alive HTTP/1.1 request at the start of what a connection received, scanned in
 * one call instead of one httptools callback per part. Anything it does not recognise or
 * that a limit refuses makes it return None, and httptools parses the rest (and words every
 * error).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define MAX_TOKEN 64 /* longer number tokens are left to the general path */

static inline const char *skip_ws(const char *p, const char *end) {
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
    return p;
}

/* One JSON number token starting at p: its end, or NULL if it is not one. Also returns
 * whether it is integral (neither fraction nor exponent) and, when the token is exact in
 * Clinger's fast path (a significand up to 2^53 and a power of ten up to 22), its double:
 * one correctly rounded multiplication or division of two exact doubles, the same double
 * any correct parser gives. *exact = 0 means: convert the token the slow, general way. */
static const double POW10[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                               1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                               1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

static const uint64_t POW10_U64[] = {1, 10, 100, 1000, 10000, 100000, 1000000, 10000000,
                                     100000000};

/* The ASCII digits among the 8 bytes at p (which must be readable), counted from p: how
 * many before the first byte that is not one (0 to 8), and their value as one decimal
 * number (*value). Eight bytes at once (SWAR): each byte XOR '0' is 0..9 for a digit; a
 * byte is not one when that is 10 or more, which adding 0x76 to its low 7 bits (no carry
 * into the next byte) or its own top bit shows in bit 7. The digits, moved to the top of
 * the word (zeros, i.e. leading zeros, below them), are summed in pairs, fours and eights
 * by three multiplications. */
static inline int digits8(const char *p, uint64_t *value) {
    uint64_t x;
    memcpy(&x, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    x = __builtin_bswap64(x); /* p[0] in the lowest byte */
#endif
    x ^= UINT64_C(0x3030303030303030);
    uint64_t stop = (((x & UINT64_C(0x7F7F7F7F7F7F7F7F)) + UINT64_C(0x7676767676767676)) | x) &
                    UINT64_C(0x8080808080808080);
    int n = stop ? __builtin_ctzll(stop) >> 3 : 8;
    if (n == 0) { *value = 0; return 0; }
    if (n < 8) x <<= 8 * (8 - n);
    x = (x * 2561) >> 8;
    x = ((x & UINT64_C(0x00FF00FF00FF00FF)) * 6553601) >> 16;
    *value = ((x & UINT64_C(0x0000FFFF0000FFFF)) * UINT64_C(42949672960001)) >> 32;
    return n;
}

static const char *scan_number(const char *p, const char *end, int *integral, int *exact,
                               double *value) {
    const char *q = p;
    int negative = 0, digits = 0;
    uint64_t mantissa = 0;
    long exp10 = 0;
    *integral = 1;
    *exact = 1;
    if (q < end && *q == '-') { negative = 1; q++; }
    if (q >= end) return NULL;
    if (*q == '0') {
        q++;
    } else if (*q >= '1' && *q <= '9') {
        while (q < end && *q >= '0' && *q <= '9') {
            if (digits < 19) mantissa = mantissa * 10 + (uint64_t)(*q - '0');
            else *exact = 0;
            digits++;
            q++;
        }
    } else {
        return NULL;
    }
    if (q < end && *q == '.') {
        *integral = 0;
        q++;
        if (q >= end || *q < '0' || *q > '9') return NULL;
        /* Eight digits at a time while eight bytes are left and eight more digits fit the
         * significand (fewer than 10^19). A run of zeros before the first significant
         * digit is not counted; zeros in the same eight bytes as it are, which may only
         * send a long token to the slow, general conversion sooner. */
        int run_ended = 0;
        while (end - q >= 8 && digits <= 11) {
            uint64_t chunk;
            int k = digits8(q, &chunk);
            mantissa = mantissa * POW10_U64[k] + chunk;
            if (mantissa) digits += k;
            exp10 -= k;
            q += k;
            if (k < 8) { run_ended = 1; break; }
        }
        while (!run_ended && q < end && *q >= '0' && *q <= '9') {
            if (mantissa || *q != '0') digits++; /* leading zeros are not significant */
            if (digits <= 19) { mantissa = mantissa * 10 + (uint64_t)(*q - '0'); exp10--; }
            else *exact = 0;
            q++;
        }
    }
    if (q < end && (*q == 'e' || *q == 'E')) {
        *integral = 0;
        q++;
        int eneg = 0;
        long e = 0;
        if (q < end && (*q == '+' || *q == '-')) { eneg = *q == '-'; q++; }
        if (q >= end || *q < '0' || *q > '9') return NULL;
        while (q < end && *q >= '0' && *q <= '9') {
            if (e < 100000) e = e * 10 + (*q - '0');
            q++;
        }
        exp10 += eneg ? -e : e;
    }
    if (*exact && mantissa <= (UINT64_C(1) << 53) && exp10 >= -22 && exp10 <= 22) {
        double m = (double)mantissa;
        double v = exp10 < 0 ? m / POW10[-exp10] : m * POW10[exp10];
        /* An integer token is an int to JSON: "-0" is 0, not -0.0. */
        *value = negative && !(*integral && mantissa == 0) ? -v : v;
    } else {
        *exact = 0;
    }
    return q;
}

/* The JSON array of numbers at p (p at its '['), as wire bytes of `code` into a new bytes
 * object (*out). Returns the position after the ']', NULL to fall back (nothing to free),
 * or (const char *)-1 with a Python error set. */
static const char *parse_array(const char *p, const char *end, int code, PyObject **out) {
    const size_t item = code == 'd' ? 8 : 4;
    char token[MAX_TOKEN + 1];
    Py_ssize_t n = 0;
    *out = NULL;
    if (p >= end || *p++ != '[') return NULL;
    /* At most one number per two bytes of what is left. */
    PyObject *bytes = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(((end - p) / 2 + 1) * item));
    if (bytes == NULL) return (const char *)-1;
    unsigned char *dst = (unsigned char *)PyBytes_AS_STRING(bytes);

    for (;;) {
        p = skip_ws(p, end);
        int integral, exact;
        double v;
        const char *q = scan_number(p, end, &integral, &exact, &v);
        if (q == NULL || q - p > MAX_TOKEN) goto fallback;
        size_t len = (size_t)(q - p);
        if (code == 'i' || !exact) {
            memcpy(token, p, len);
            token[len] = '\0';
        }
        if (code == 'i') {
            if (!integral || len > 11) goto fallback;
            long long v = strtoll(token, NULL, 10);
            if (v < INT32_MIN || v > INT32_MAX) goto fallback;
            int32_t w = (int32_t)v;
            memcpy(dst + n * item, &w, 4);
        } else {
            /* orjson refuses integers beyond 64 bits (the general path's 400): leave
             * long integer tokens to it. */
            if (integral && len > 18) goto fallback;
            if (!exact) { /* CPython's correctly rounded conversion, ~10x slower */
                char *stop = NULL;
                v = PyOS_string_to_double(token, &stop, NULL);
                if (v == -1.0 && PyErr_Occurred()) { Py_DECREF(bytes); return (const char *)-1; }
                if (stop != token + len) goto fallback;
                if (integral && v == 0.0) v = 0.0; /* "-0" is the int 0 */
            }
            if (!isfinite(v)) goto fallback;
            if (code == 'd') {
                memcpy(dst + n * item, &v, 8);
            } else {
                float f = (float)v;
                if (isinf(f)) goto fallback; /* struct.pack('f') refuses it: an error */
                memcpy(dst + n * item, &f, 4);
            }
        }
        n++;
        p = skip_ws(q, end);
        if (p >= end) goto fallback;
        if (*p == ',') { p++; continue; }
        if (*p == ']') { p++; break; }
        goto fallback;
    }
    if (_PyBytes_Resize(&bytes, (Py_ssize_t)(n * item)) < 0) return (const char *)-1;
    *out = bytes;
    return p;

fallback:
    Py_DECREF(bytes);
    return NULL;
}

static int check_code(int code) {
    if (code == 'd' || code == 'f' || code == 'i') return 1;
    PyErr_SetString(PyExc_ValueError, "code must be 'd', 'f' or 'i'");
    return 0;
}

/* The wire bytes of a body of exactly {"input": [numbers]} (a new reference), Py_None (a
 * new reference) for anything else, or NULL with an exception. */
static PyObject *single_input(const char *p, const char *end, int code) {
    PyObject *out = NULL;
    p = skip_ws(p, end);
    if (p >= end || *p++ != '{') goto fallback;
    p = skip_ws(p, end);
    if (end - p < 7 || memcmp(p, "\"input\"", 7) != 0) goto fallback;
    p = skip_ws(p + 7, end);
    if (p >= end || *p++ != ':') goto fallback;
    p = skip_ws(p, end);
    p = parse_array(p, end, code, &out);
    if (p == (const char *)-1) return NULL;
    if (p == NULL) goto fallback;
    p = skip_ws(p, end);
    if (p >= end || *p++ != '}') goto fallback;
    if (skip_ws(p, end) != end) goto fallback;
    return out;

fallback:
    Py_XDECREF(out);
    Py_RETURN_NONE;
}

/* parse_input(body: bytes, code: str) -> bytes | None; code is "d", "f" or "i". */
static PyObject *parse_input(PyObject *self, PyObject *args) {
    Py_buffer body;
    int code;
    if (!PyArg_ParseTuple(args, "y*C", &body, &code)) return NULL;
    if (!check_code(code)) { PyBuffer_Release(&body); return NULL; }
    PyObject *out = single_input(body.buf, (const char *)body.buf + body.len, code);
    PyBuffer_Release(&body);
    return out;
}

/* parse_array_at(body: bytes, offset: int, code: str) -> tuple[bytes, int] | None: the JSON
 * array of numbers that starts at body[offset] ('['), and the offset just after it. */
static PyObject *parse_array_at(PyObject *self, PyObject *args) {
    Py_buffer body;
    Py_ssize_t offset;
    int code;
    if (!PyArg_ParseTuple(args, "y*nC", &body, &offset, &code)) return NULL;
    if (!check_code(code)) { PyBuffer_Release(&body); return NULL; }
    if (offset < 0 || offset >= body.len) { PyBuffer_Release(&body); Py_RETURN_NONE; }
    const char *start = body.buf, *end = start + body.len;
    PyObject *out = NULL;
    const char *p = parse_array(start + offset, end, code, &out);
    PyBuffer_Release(&body);
    if (p == (const char *)-1) return NULL;
    if (p == NULL) Py_RETURN_NONE;
    PyObject *result = Py_BuildValue("(Nn)", out, (Py_ssize_t)(p - start));
    return result;
}

/* ------------------------------------------------------------------------------------
 * scan_request: one complete HTTP/1.1 request, the common kind, in one pass.
 *
 * Recognised: METHOD SP target SP "HTTP/1.1" CRLF, header lines "Name: value" CRLF, an
 * empty line, then exactly Content-Length bytes of body (none without the header), all in
 * the buffer. METHOD is one of METHOD_NAMES; the target starts with '/' and holds only
 * RFC 3986 characters; names are RFC 9110 tokens; values hold visible characters, spaces,
 * tabs and obs-text. Not recognised, so left to httptools: anything else, and any of
 * Transfer-Encoding, Upgrade, Expect, a Connection other than keep-alive, a repeated
 * header that matters here, a value of one with trailing spaces, a target, head or body
 * past its limit, or a request not all received yet. */

static const char *const METHOD_NAMES[] = {"GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS",
                                          "PATCH"};
#define N_METHODS (sizeof(METHOD_NAMES) / sizeof(METHOD_NAMES[0]))
static PyObject *method_strs[N_METHODS];

/* Byte classes, filled at import: RFC 9110 tchar (header names), and the RFC 3986
 * characters of a request target (unreserved, sub-delims, ':', '@', '/', '?', '%'). */
static unsigned char TCHAR[256], TARGET[256];

static void fill_classes(void) {
    for (int c = 0; c < 256; c++) {
        int alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
        TCHAR[c] = (unsigned char)(alnum || (c && strchr("!#$%&'*+-.^_`|~", c)));
        TARGET[c] = (unsigned char)(alnum || (c && strchr("-._~!$&'()*+,;=:@/?%", c)));
    }
}

/* Case-insensitive compare of a header name with a lowercase literal. */
static inline int name_is(const char *name, size_t len, const char *lower) {
    size_t n = strlen(lower);
    if (len != n) return 0;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (c >= 'A' && c <= 'Z') c = (char)(c + 32);
        if (c != lower[i]) return 0;
    }
    return 1;
}

/* Where scan_one found the parts of a request (pointers into the scanned buffer). */
typedef struct {
    Py_ssize_t end;            /* the offset after the request */
    size_t method;             /* index into METHOD_NAMES */
    const char *url, *url_end; /* the request target */
    const char *body;
    Py_ssize_t body_len;
    const char *auth, *ihcl;   /* Authorization, Inference-Header-Content-Length; or NULL */
    size_t auth_len, ihcl_len;
} Scanned;

/* One whole plain request at start[offset:len] (the rules above): 1 and *out, or 0. */
static int scan_one(const char *start, Py_ssize_t len, Py_ssize_t offset, Py_ssize_t max_url,
                    Py_ssize_t max_headers, Py_ssize_t max_header_bytes, Py_ssize_t max_body,
                    Scanned *out) {
    const char *end = start + len;
    if (offset < 0 || offset >= len) return 0;
    const char *p = start + offset;

    /* the request line */
    size_t m;
    for (m = 0; m < N_METHODS; m++) {
        size_t n = strlen(METHOD_NAMES[m]);
        if ((size_t)(end - p) > n && memcmp(p, METHOD_NAMES[m], n) == 0 && p[n] == ' ') {
            p += n + 1;
            break;
        }
    }
    if (m == N_METHODS) return 0;
    const char *url = p;
    if (p >= end || *p != '/') return 0;
    while (p < end && *p != ' ') {
        if (!TARGET[(unsigned char)*p]) return 0;
        p++;
    }
    const char *url_end = p;
    if (url_end - url > max_url) return 0;
    if (end - p < 11 || memcmp(p, " HTTP/1.1\r\n", 11) != 0) return 0;
    p += 11;

    /* the headers */
    Py_ssize_t headers = 0, header_bytes = 0;
    long long content_length = -1;
    const char *auth = NULL, *ihcl = NULL;
    size_t auth_len = 0, ihcl_len = 0;
    for (;;) {
        if (end - p < 2) return 0;
        if (p[0] == '\r' && p[1] == '\n') { p += 2; break; }
        const char *name = p;
        while (p < end && TCHAR[(unsigned char)*p]) p++;
        if (p == name || p >= end || *p != ':') return 0;
        size_t name_len = (size_t)(p - name);
        p++;
        while (p < end && (*p == ' ' || *p == '\t')) p++;
        const char *value = p;
        while (p < end && *p != '\r') {
            unsigned char c = (unsigned char)*p;
            if ((c < 0x20 && c != '\t') || c == 0x7F) return 0;
            p++;
        }
        if (end - p < 2 || p[1] != '\n') return 0;
        const char *value_end = p;
        p += 2;
        int trailing = value_end > value && (value_end[-1] == ' ' || value_end[-1] == '\t');
        size_t value_len = (size_t)(value_end - value);
        headers++;
        header_bytes += (Py_ssize_t)(name_len + value_len);
        if (headers > max_headers || header_bytes > max_header_bytes) return 0;
        if (name_is(name, name_len, "content-length")) {
            if (content_length >= 0 || trailing || value_len == 0 || value_len > 15) return 0;
            content_length = 0;
            for (size_t i = 0; i < value_len; i++) {
                if (value[i] < '0' || value[i] > '9') return 0;
                content_length = content_length * 10 + (value[i] - '0');
            }
        } else if (name_is(name, name_len, "connection")) {
            if (trailing || !name_is(value, value_len, "keep-alive")) return 0;
        } else if (name_is(name, name_len, "transfer-encoding") ||
                   name_is(name, name_len, "upgrade") || name_is(name, name_len, "expect")) {
            return 0;
        } else if (name_is(name, name_len, "authorization")) {
            if (auth != NULL || trailing) return 0;
            auth = value;
            auth_len = value_len;
        } else if (name_is(name, name_len, "inference-header-content-length")) {
            if (ihcl != NULL || trailing) return 0;
            ihcl = value;
            ihcl_len = value_len;
        }
    }

    /* the body */
    if (content_length > max_body) return 0;
    Py_ssize_t body_len = content_length < 0 ? 0 : (Py_ssize_t)content_length;
    if (end - p < body_len) return 0;
    out->end = (Py_ssize_t)(p + body_len - start);
    out->method = m;
    out->url = url;
    out->url_end = url_end;
    out->body = p;
    out->body_len = body_len;
    out->auth = auth;
    out->auth_len = auth_len;
    out->ihcl = ihcl;
    out->ihcl_len = ihcl_len;
    return 1;
}

/* The Python objects of a scanned request: path and query (the target split at its first
 * '?', as latin-1), body, and the two header values as bytes or None. 0, or -1 with an
 * exception (and nothing to release). */
static int scanned_objects(const Scanned *s, PyObject **path, PyObject **query, PyObject **body,
                           PyObject **binary_header, PyObject **authorization) {
    const char *q = memchr(s->url, '?', (size_t)(s->url_end - s->url));
    *path = PyUnicode_DecodeLatin1(s->url, (q ? q : s->url_end) - s->url, NULL);
    *query = q ? PyUnicode_DecodeLatin1(q + 1, s->url_end - q - 1, NULL)
               : PyUnicode_FromStringAndSize("", 0);
    *body = PyBytes_FromStringAndSize(s->body, s->body_len);
    *binary_header = s->ihcl == NULL ? Py_NewRef(Py_None)
                                     : PyBytes_FromStringAndSize(s->ihcl, (Py_ssize_t)s->ihcl_len);
    *authorization = s->auth == NULL ? Py_NewRef(Py_None)
                                     : PyBytes_FromStringAndSize(s->auth, (Py_ssize_t)s->auth_len);
    if (*path && *query && *body && *binary_header && *authorization) return 0;
    Py_CLEAR(*path);
    Py_CLEAR(*query);
    Py_CLEAR(*body);
    Py_CLEAR(*binary_header);
    Py_CLEAR(*authorization);
    return -1;
}

/* scan_request(data, offset, max_url, max_headers, max_header_bytes, max_body) ->
 *   (end, method, path, query, body, binary_header, authorization) | None
 * end: the offset after the request; binary_header: the Inference-Header-Content-Length
 * value (bytes; http.binary_header_length reads it) or None; authorization: the
 * Authorization value (bytes) or None. */
static PyObject *scan_request(PyObject *self, PyObject *args) {
    Py_buffer data;
    Py_ssize_t offset, max_url, max_headers, max_header_bytes, max_body;
    if (!PyArg_ParseTuple(args, "y*nnnnn", &data, &offset, &max_url, &max_headers,
                          &max_header_bytes, &max_body))
        return NULL;
    Scanned s;
    PyObject *result = NULL;
    if (!scan_one(data.buf, data.len, offset, max_url, max_headers, max_header_bytes, max_body,
                  &s)) {
        PyBuffer_Release(&data);
        Py_RETURN_NONE;
    }
    PyObject *path, *query, *body, *binary_header, *authorization;
    if (scanned_objects(&s, &path, &query, &body, &binary_header, &authorization) == 0)
        result = Py_BuildValue("(nONNNNN)", s.end, method_strs[s.method], path, query, body,
                               binary_header, authorization);
    PyBuffer_Release(&data);
    return result;
}

/* ------------------------------------------------------------------------------------
 * The HTTP connection's common case (frontend/http.py): ConnCore is the C base of
 * HttpProtocol and holds what the request path reads and writes; Request is one request
 * and, called, its reply. frontend/http.py's _PyCore and _PyRequest do the same in Python
 * (without a C compiler; the tests run both), and define it:
 *
 *   data_received  whole plain requests scanned here (scan_one), each completed at once;
 *                  the rest of the bytes go to the Python side's _feed (httptools), as do
 *                  all of them while httptools holds part of a request or the connection
 *                  is closing;
 *   _complete      a request gets its place in line (the connection's slots) and goes to
 *                  its handler: the router's remembered (method, path) pairs are looked
 *                  up here, anything else is the router's own dispatch; a handler that
 *                  raises is the Python side's _handler_failed (a logged 500);
 *   reply          the response rendered once (http.render's bytes; the status line and
 *                  fixed headers from http's _HEAD_CACHE), then _flush;
 *   _flush         answered responses at the head of the line written in order.
 *
 * http.py hands over its constants and the head cache once (http_setup). */

enum { PHASE_IDLE = 0 };

static PyObject *head_cache, *new_head, *json_type, *empty_bytes; /* from http_setup */
static Py_ssize_t max_pipeline = 256, trim_after = 1 << 20;
static PyObject *str_feed, *str_append, *str_popleft, *str_write, *str_pause_reading,
    *str_resume_reading, *str_close, *str_trim, *str_dispatch, *str_handler_failed,
    *str_content_type, *str_headers;

typedef struct ConnCore ConnCore;

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *method, *path, *query, *body, *param, *header_length, *cancel, *authorization;
    PyObject *answer;  /* the response's bytes, once answered */
    ConnCore *conn;    /* NULL for a request made by hand: its reply goes nowhere */
    char close, head, big;
} Request;

struct ConnCore {
    PyObject_HEAD
    PyObject *listener, *router, *routes, *transport, *slots;
    char broken, inside, paused, write_paused, scan;
    int phase;
    Py_ssize_t left, max_url, max_headers, max_header_bytes, max_body;
};

static PyTypeObject RequestType, ConnCoreType;

static inline int is_none(PyObject *o) { return o == NULL || o == Py_None; }

/* ---- Request */

/* The decimal digits of n (n >= 0) at out, which has room for 20; returns how many. */
static int format_u64(char *out, unsigned long long n) {
    char tmp[20];
    int len = 0;
    do {
        tmp[len++] = (char)('0' + n % 10);
        n /= 10;
    } while (n);
    for (int i = 0; i < len; i++) out[i] = tmp[len - 1 - i];
    return len;
}

static PyObject *request_reply(PyObject *op, PyObject *const *args, size_t nargsf,
                               PyObject *kwnames);

static Request *request_make(PyObject *method, PyObject *path, PyObject *query, PyObject *body,
                             PyObject *header_length) {
    Request *r = PyObject_GC_New(Request, &RequestType);
    if (r == NULL) return NULL;
    r->vectorcall = request_reply;
    r->method = Py_NewRef(method);
    r->path = Py_NewRef(path);
    r->query = Py_NewRef(query);
    r->body = Py_NewRef(body);
    r->param = Py_NewRef(Py_None);
    r->header_length = Py_NewRef(header_length);
    r->cancel = Py_NewRef(Py_None);
    r->authorization = Py_NewRef(Py_None);
    r->answer = NULL;
    r->conn = NULL;
    r->close = r->head = r->big = 0;
    PyObject_GC_Track(r);
    return r;
}

static PyObject *request_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"method", "path", "query", "body", "header_length", NULL};
    PyObject *method, *path, *query, *body, *header_length = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOO|O:Request", names, &method, &path,
                                     &query, &body, &header_length))
        return NULL;
    return (PyObject *)request_make(method, path, query, body, header_length);
}

static int request_traverse(Request *r, visitproc visit, void *arg) {
    Py_VISIT(r->method);
    Py_VISIT(r->path);
    Py_VISIT(r->query);
    Py_VISIT(r->body);
    Py_VISIT(r->param);
    Py_VISIT(r->header_length);
    Py_VISIT(r->cancel);
    Py_VISIT(r->authorization);
    Py_VISIT(r->answer);
    Py_VISIT(r->conn);
    return 0;
}

static int request_clear(Request *r) {
    Py_CLEAR(r->method);
    Py_CLEAR(r->path);
    Py_CLEAR(r->query);
    Py_CLEAR(r->body);
    Py_CLEAR(r->param);
    Py_CLEAR(r->header_length);
    Py_CLEAR(r->cancel);
    Py_CLEAR(r->authorization);
    Py_CLEAR(r->answer);
    Py_CLEAR(r->conn);
    return 0;
}

static void request_dealloc(Request *r) {
    PyObject_GC_UnTrack(r);
    request_clear(r);
    PyObject_GC_Del(r);
}

/* http.render(status, body, content_type, close, headers) */
static PyObject *render(PyObject *status, PyObject *body, PyObject *content_type, int close,
                        PyObject *headers) {
    PyObject *key = PyTuple_Pack(3, status, content_type, close ? Py_True : Py_False);
    if (key == NULL) return NULL;
    PyObject *head = PyDict_GetItemWithError(head_cache, key); /* borrowed */
    if (head != NULL) {
        Py_INCREF(head);
    } else if (!PyErr_Occurred()) {
        head = PyObject_CallFunctionObjArgs(new_head, status, content_type,
                                            close ? Py_True : Py_False, NULL);
    }
    Py_DECREF(key);
    if (head == NULL) return NULL;
    PyObject *result = NULL;
    Py_buffer b = {0}, h = {0};
    if (!PyBytes_Check(head)) {
        PyErr_SetString(PyExc_TypeError, "a response head must be bytes");
        goto done;
    }
    if (PyObject_GetBuffer(body, &b, PyBUF_SIMPLE) < 0) goto done;
    if (PyObject_GetBuffer(headers, &h, PyBUF_SIMPLE) < 0) goto done;
    char digits[24];
    int nd = format_u64(digits, (unsigned long long)b.len);
    Py_ssize_t hl = PyBytes_GET_SIZE(head);
    result = PyBytes_FromStringAndSize(NULL, hl + nd + 2 + h.len + 2 + b.len);
    if (result == NULL) goto done;
    char *out = PyBytes_AS_STRING(result);
    memcpy(out, PyBytes_AS_STRING(head), (size_t)hl);
    out += hl;
    memcpy(out, digits, (size_t)nd);
    out += nd;
    memcpy(out, "\r\n", 2);
    out += 2;
    if (h.len) memcpy(out, h.buf, (size_t)h.len);
    out += h.len;
    memcpy(out, "\r\n", 2);
    out += 2;
    if (b.len) memcpy(out, b.buf, (size_t)b.len);
done:
    if (b.obj) PyBuffer_Release(&b);
    if (h.obj) PyBuffer_Release(&h);
    Py_DECREF(head);
    return result;
}

static int conn_flush(ConnCore *c);

/* reply(status, body, content_type=JSON, headers=b""): the first call answers, later ones
 * and those after the connection closed do nothing. */
static PyObject *request_reply(PyObject *op, PyObject *const *args, size_t nargsf,
                               PyObject *kwnames) {
    Request *r = (Request *)op;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *status, *body, *content_type = json_type, *headers = empty_bytes;
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    if (nargs < 2 || nargs > 4) {
        PyErr_Format(PyExc_TypeError, "reply() takes 2 to 4 positional arguments (%zd given)",
                     nargs);
        return NULL;
    }
    status = args[0];
    body = args[1];
    if (nargs > 2) content_type = args[2];
    if (nargs > 3) headers = args[3];
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, i);
        if (PyUnicode_Compare(name, str_content_type) == 0 && nargs <= 2) {
            content_type = args[nargs + i];
        } else if (PyUnicode_Compare(name, str_headers) == 0 && nargs <= 3) {
            headers = args[nargs + i];
        } else {
            if (!PyErr_Occurred())
                PyErr_Format(PyExc_TypeError, "reply() got an unexpected or repeated keyword "
                             "argument %R", name);
            return NULL;
        }
    }
    ConnCore *c = r->conn;
    if (r->answer != NULL || c == NULL || is_none(c->transport)) Py_RETURN_NONE;
    Py_ssize_t body_len = PyObject_Length(body);
    if (body_len < 0) return NULL;
    if ((r->big || body_len > trim_after) && !is_none(c->listener)) {
        if (PyObject_SetAttr(c->listener, str_trim, Py_True) < 0) return NULL;
    }
    PyObject *data = render(status, body, content_type, r->close, headers);
    if (data == NULL) return NULL;
    if (r->head) { /* a HEAD request's answer has the Content-Length, not the body */
        PyObject *cut = PyBytes_FromStringAndSize(PyBytes_AS_STRING(data),
                                                  PyBytes_GET_SIZE(data) - body_len);
        Py_DECREF(data);
        if (cut == NULL) return NULL;
        data = cut;
    }
    r->answer = data;
    Py_CLEAR(r->cancel); /* its cancel holds its queries, which hold this reply */
    Py_INCREF(c);
    int ok = conn_flush(c);
    Py_DECREF(c);
    if (ok < 0) return NULL;
    Py_RETURN_NONE;
}

static PyMemberDef request_members[] = {
    {"method", T_OBJECT, offsetof(Request, method), 0, NULL},
    {"path", T_OBJECT, offsetof(Request, path), 0, NULL},
    {"query", T_OBJECT, offsetof(Request, query), 0, NULL},
    {"body", T_OBJECT, offsetof(Request, body), 0, NULL},
    {"param", T_OBJECT, offsetof(Request, param), 0, NULL},
    {"header_length", T_OBJECT, offsetof(Request, header_length), 0, NULL},
    {"authorization", T_OBJECT, offsetof(Request, authorization), 0, NULL},
    {"_answer", T_OBJECT, offsetof(Request, answer), 0, NULL},
    {"_close", T_BOOL, offsetof(Request, close), 0, NULL},
    {"_head", T_BOOL, offsetof(Request, head), 0, NULL},
    {"_big", T_BOOL, offsetof(Request, big), 0, NULL},
    {"_conn", T_OBJECT, offsetof(Request, conn), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

/* cancel: set by a handler that answers later, called if the client goes away first. Once
 * the request is answered there is nothing to cancel, and it stays None: a cancel set after
 * the answer (a request answered at once, e.g. shed) would hold the request's queries,
 * which hold this reply, in a cycle. */
static PyObject *request_get_cancel(Request *r, void *closure) {
    return Py_NewRef(r->cancel ? r->cancel : Py_None);
}

static int request_set_cancel(Request *r, PyObject *value, void *closure) {
    if (value == NULL) value = Py_None;
    if (r->answer != NULL) value = Py_None;
    Py_XSETREF(r->cancel, Py_NewRef(value));
    return 0;
}

static PyGetSetDef request_getset[] = {
    {"cancel", (getter)request_get_cancel, (setter)request_set_cancel, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject RequestType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "schooner.frontend._fastpath.Request",
    .tp_doc = "Request(method, path, query, body, header_length=None): one HTTP request, its "
              "place in its connection's line and, called as reply(status, body, "
              "content_type=JSON, headers=b''), its answer (frontend/http.py).",
    .tp_basicsize = sizeof(Request),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_new = request_new,
    .tp_dealloc = (destructor)request_dealloc,
    .tp_traverse = (traverseproc)request_traverse,
    .tp_clear = (inquiry)request_clear,
    .tp_vectorcall_offset = offsetof(Request, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_members = request_members,
    .tp_getset = request_getset,
};

/* ---- ConnCore */

/* Write every answered response at the head of the line, in request order. */
static int conn_flush(ConnCore *c) {
    if (is_none(c->transport) || c->slots == NULL) return 0;
    PyObject *transport = Py_NewRef(c->transport), *slots = Py_NewRef(c->slots);
    int ok = -1;
    for (;;) {
        Py_ssize_t n = PySequence_Size(slots);
        if (n < 0) goto done;
        if (n == 0) break;
        PyObject *first = PySequence_GetItem(slots, 0);
        if (first == NULL) goto done;
        if (Py_TYPE(first) != &RequestType) {
            Py_DECREF(first);
            PyErr_SetString(PyExc_TypeError, "a connection's slot must be a Request");
            goto done;
        }
        Request *r = (Request *)first;
        if (r->answer == NULL) {
            Py_DECREF(first);
            break;
        }
        PyObject *gone = PyObject_CallMethodNoArgs(slots, str_popleft);
        if (gone == NULL) { Py_DECREF(first); goto done; }
        Py_DECREF(gone);
        PyObject *w = PyObject_CallMethodOneArg(transport, str_write, r->answer);
        int close = r->close;
        Py_DECREF(first);
        if (w == NULL) goto done;
        Py_DECREF(w);
        if (close) {
            PyObject *x = PyObject_CallMethodNoArgs((PyObject *)c, str_close);
            if (x == NULL) goto done;
            Py_DECREF(x);
            ok = 0;
            goto done;
        }
    }
    if (c->paused) {
        Py_ssize_t n = PySequence_Size(slots);
        if (n < 0) goto done;
        if (n <= max_pipeline / 2) {
            c->paused = 0;
            if (!c->write_paused) {
                PyObject *x = PyObject_CallMethodNoArgs(transport, str_resume_reading);
                if (x == NULL) goto done;
                Py_DECREF(x);
            }
        }
    }
    ok = 0;
done:
    Py_DECREF(transport);
    Py_DECREF(slots);
    return ok;
}

/* Route one whole request and give it its place in line for the answer (borrowed
 * arguments). */
static int conn_complete(ConnCore *c, PyObject *method, PyObject *path, PyObject *query,
                         PyObject *body, int keep_alive, PyObject *header_length,
                         PyObject *authorization) {
    if (c->slots == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "the connection is not initialised");
        return -1;
    }
    Py_ssize_t body_len = PyObject_Length(body);
    if (body_len < 0) return -1;
    Request *r = request_make(method, path, query, body, header_length);
    if (r == NULL) return -1;
    Py_SETREF(r->authorization, Py_NewRef(authorization));
    r->conn = (ConnCore *)Py_NewRef(c);
    r->big = body_len > trim_after;
    r->head = PyUnicode_Check(method) && PyUnicode_CompareWithASCIIString(method, "HEAD") == 0;
    r->close = c->left == 0 || !keep_alive;
    int ok = -1;
    PyObject *x = PyObject_CallMethodOneArg(c->slots, str_append, (PyObject *)r);
    if (x == NULL) goto done;
    Py_DECREF(x);
    Py_ssize_t n = PySequence_Size(c->slots);
    if (n < 0) goto done;
    if (n > max_pipeline && !c->paused && !is_none(c->transport)) {
        c->paused = 1;
        x = PyObject_CallMethodNoArgs(c->transport, str_pause_reading);
        if (x == NULL) goto done;
        Py_DECREF(x);
    }
    PyObject *result = NULL, *found = NULL;
    if (!is_none(c->routes) && PyDict_CheckExact(c->routes)) {
        PyObject *key = PyTuple_Pack(2, method, path);
        if (key == NULL) goto done;
        found = PyDict_GetItemWithError(c->routes, key); /* borrowed */
        Py_DECREF(key);
        if (found == NULL && PyErr_Occurred()) goto done;
    }
    PyObject *pair[2] = {(PyObject *)r, (PyObject *)r};
    if (found != NULL && PyTuple_CheckExact(found) && PyTuple_GET_SIZE(found) == 2) {
        Py_INCREF(found);
        Py_SETREF(r->param, Py_NewRef(PyTuple_GET_ITEM(found, 1)));
        result = PyObject_Vectorcall(PyTuple_GET_ITEM(found, 0), pair, 2, NULL);
        Py_DECREF(found);
    } else {
        result = PyObject_VectorcallMethod(str_dispatch,
                                           (PyObject *[]){c->router, (PyObject *)r, (PyObject *)r},
                                           3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    }
    if (result == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_Exception)) goto done;
        PyObject *type, *exc, *tb;
        PyErr_Fetch(&type, &exc, &tb);
        PyErr_NormalizeException(&type, &exc, &tb);
        if (tb != NULL && exc != NULL) PyException_SetTraceback(exc, tb);
        Py_XDECREF(type);
        Py_XDECREF(tb);
        if (exc == NULL) goto done;
        result = PyObject_CallMethodObjArgs((PyObject *)c, str_handler_failed, (PyObject *)r,
                                            exc, NULL);
        Py_DECREF(exc);
        if (result == NULL) goto done;
    }
    Py_DECREF(result);
    ok = 0;
done:
    Py_DECREF(r);
    return ok;
}

/* binary_header_length in http.py: the number, or -1 unless 1 to 11 ASCII digits. */
static PyObject *binary_header_length(const char *value, size_t len) {
    if (len == 0 || len >= 12) return PyLong_FromLong(-1);
    long long n = 0;
    for (size_t i = 0; i < len; i++) {
        if (value[i] < '0' || value[i] > '9') return PyLong_FromLong(-1);
        n = n * 10 + (value[i] - '0');
    }
    return PyLong_FromLongLong(n);
}

static PyObject *core_data_received(ConnCore *c, PyObject *data) {
    if (c->broken || c->inside || !c->scan || !PyBytes_CheckExact(data))
        return PyObject_CallMethodOneArg((PyObject *)c, str_feed, data);
    Py_INCREF(data);
    const char *start = PyBytes_AS_STRING(data);
    Py_ssize_t size = PyBytes_GET_SIZE(data), offset = 0;
    PyObject *result = NULL;
    Scanned s;
    while (scan_one(start, size, offset, c->max_url, c->max_headers, c->max_header_bytes,
                    c->max_body, &s)) {
        offset = s.end;
        c->phase = PHASE_IDLE;
        c->left -= 1;
        PyObject *path, *query, *body, *binary_header, *authorization, *header_length;
        if (scanned_objects(&s, &path, &query, &body, &binary_header, &authorization) < 0)
            goto done;
        header_length = s.ihcl == NULL ? Py_NewRef(Py_None)
                                       : binary_header_length(s.ihcl, s.ihcl_len);
        int ok = header_length == NULL ? -1
                                       : conn_complete(c, method_strs[s.method], path, query,
                                                       body, 1, header_length, authorization);
        Py_DECREF(path);
        Py_DECREF(query);
        Py_DECREF(body);
        Py_DECREF(binary_header);
        Py_DECREF(authorization);
        Py_XDECREF(header_length);
        if (ok < 0) goto done;
        if (offset == size || c->broken) {
            result = Py_NewRef(Py_None);
            goto done;
        }
    }
    if (offset) {
        PyObject *rest = PyBytes_FromStringAndSize(start + offset, size - offset);
        if (rest == NULL) goto done;
        result = PyObject_CallMethodOneArg((PyObject *)c, str_feed, rest);
        Py_DECREF(rest);
    } else {
        result = PyObject_CallMethodOneArg((PyObject *)c, str_feed, data);
    }
done:
    Py_DECREF(data);
    return result;
}

static PyObject *core_complete(ConnCore *c, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "_complete(method, path, query, body, keep_alive, "
                                         "header_length, authorization)");
        return NULL;
    }
    int keep_alive = PyObject_IsTrue(args[4]);
    if (keep_alive < 0) return NULL;
    if (conn_complete(c, args[0], args[1], args[2], args[3], keep_alive, args[5], args[6]) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *core_flush(ConnCore *c, PyObject *unused) {
    if (conn_flush(c) < 0) return NULL;
    Py_RETURN_NONE;
}

static int core_traverse(ConnCore *c, visitproc visit, void *arg) {
    Py_VISIT(c->listener);
    Py_VISIT(c->router);
    Py_VISIT(c->routes);
    Py_VISIT(c->transport);
    Py_VISIT(c->slots);
    return 0;
}

static int core_clear(ConnCore *c) {
    Py_CLEAR(c->listener);
    Py_CLEAR(c->router);
    Py_CLEAR(c->routes);
    Py_CLEAR(c->transport);
    Py_CLEAR(c->slots);
    return 0;
}

static void core_dealloc(ConnCore *c) {
    PyObject_GC_UnTrack(c);
    core_clear(c);
    Py_TYPE(c)->tp_free((PyObject *)c);
}

static PyMethodDef core_methods[] = {
    {"data_received", (PyCFunction)core_data_received, METH_O,
     "asyncio's data_received: whole plain requests here, the rest to _feed."},
    {"_complete", (PyCFunction)(void (*)(void))core_complete, METH_FASTCALL,
     "_complete(method, path, query, body, keep_alive, header_length, authorization)"},
    {"_flush", (PyCFunction)core_flush, METH_NOARGS,
     "Write every answered response at the head of the line, in request order."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef core_members[] = {
    {"_listener", T_OBJECT, offsetof(ConnCore, listener), 0, NULL},
    {"_router", T_OBJECT, offsetof(ConnCore, router), 0, NULL},
    {"_routes", T_OBJECT, offsetof(ConnCore, routes), 0, NULL},
    {"_transport", T_OBJECT, offsetof(ConnCore, transport), 0, NULL},
    {"_slots", T_OBJECT, offsetof(ConnCore, slots), 0, NULL},
    {"_broken", T_BOOL, offsetof(ConnCore, broken), 0, NULL},
    {"_inside", T_BOOL, offsetof(ConnCore, inside), 0, NULL},
    {"_paused", T_BOOL, offsetof(ConnCore, paused), 0, NULL},
    {"_write_paused", T_BOOL, offsetof(ConnCore, write_paused), 0, NULL},
    {"_scan", T_BOOL, offsetof(ConnCore, scan), 0, NULL},
    {"_phase", T_INT, offsetof(ConnCore, phase), 0, NULL},
    {"_left", T_PYSSIZET, offsetof(ConnCore, left), 0, NULL},
    {"_max_url", T_PYSSIZET, offsetof(ConnCore, max_url), 0, NULL},
    {"_max_headers", T_PYSSIZET, offsetof(ConnCore, max_headers), 0, NULL},
    {"_max_header_bytes", T_PYSSIZET, offsetof(ConnCore, max_header_bytes), 0, NULL},
    {"_max_body", T_PYSSIZET, offsetof(ConnCore, max_body), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject ConnCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "schooner.frontend._fastpath.ConnCore",
    .tp_doc = "The C base of http.HttpProtocol: the request path of one connection.",
    .tp_basicsize = sizeof(ConnCore),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_dealloc = (destructor)core_dealloc,
    .tp_traverse = (traverseproc)core_traverse,
    .tp_clear = (inquiry)core_clear,
    .tp_methods = core_methods,
    .tp_members = core_members,
};

/* http_setup(head_cache, new_head, json, empty, max_pipeline, trim_after_bytes) */
static PyObject *http_setup(PyObject *self, PyObject *args) {
    PyObject *cache, *make, *json, *empty;
    Py_ssize_t pipeline, trim;
    if (!PyArg_ParseTuple(args, "O!OSSnn", &PyDict_Type, &cache, &make, &json, &empty,
                          &pipeline, &trim))
        return NULL;
    Py_XSETREF(head_cache, Py_NewRef(cache));
    Py_XSETREF(new_head, Py_NewRef(make));
    Py_XSETREF(json_type, Py_NewRef(json));
    Py_XSETREF(empty_bytes, Py_NewRef(empty));
    max_pipeline = pipeline;
    trim_after = trim;
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------------------------
 * A query and the answer of a one-input request (frontend/dispatch.py's Query and
 * frontend/query_api.py's _single_reply, which define them and are used without a C
 * compiler): the same fields and the same bytes, without an interpreter frame to make a
 * query or to answer one. */

typedef struct {
    PyObject_HEAD
    PyObject *id, *app, *data, *slo_micros, *on_done, *output, *explanation, *reason, *lost,
        *model;
    double arrival, deadline;
    char done, queued;
} Query;

static PyTypeObject QueryType;

static PyObject *query_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"query_id", "app", "data", "arrival", "slo_micros", "on_done", NULL};
    PyObject *id, *app, *data, *slo, *on_done;
    double arrival;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOdOO:Query", names, &id, &app, &data,
                                     &arrival, &slo, &on_done))
        return NULL;
    double micros = PyFloat_AsDouble(slo); /* Python: arrival + slo_micros * 1e-6 */
    if (micros == -1.0 && PyErr_Occurred()) return NULL;
    Query *q = PyObject_GC_New(Query, &QueryType);
    if (q == NULL) return NULL;
    q->id = Py_NewRef(id);
    q->app = Py_NewRef(app);
    q->data = Py_NewRef(data);
    q->slo_micros = Py_NewRef(slo);
    q->on_done = Py_NewRef(on_done);
    q->output = Py_NewRef(Py_None);
    q->explanation = Py_NewRef(Py_None);
    q->reason = Py_NewRef(Py_None);
    q->lost = Py_NewRef(Py_None);
    q->model = Py_NewRef(Py_None);
    q->arrival = arrival;
    q->deadline = arrival + micros * 1e-6;
    q->done = q->queued = 0;
    PyObject_GC_Track(q);
    return (PyObject *)q;
}

static int query_traverse(Query *q, visitproc visit, void *arg) {
    Py_VISIT(q->id);
    Py_VISIT(q->app);
    Py_VISIT(q->data);
    Py_VISIT(q->slo_micros);
    Py_VISIT(q->on_done);
    Py_VISIT(q->output);
    Py_VISIT(q->explanation);
    Py_VISIT(q->reason);
    Py_VISIT(q->lost);
    Py_VISIT(q->model);
    return 0;
}

static int query_clear(Query *q) {
    Py_CLEAR(q->id);
    Py_CLEAR(q->app);
    Py_CLEAR(q->data);
    Py_CLEAR(q->slo_micros);
    Py_CLEAR(q->on_done);
    Py_CLEAR(q->output);
    Py_CLEAR(q->explanation);
    Py_CLEAR(q->reason);
    Py_CLEAR(q->lost);
    Py_CLEAR(q->model);
    return 0;
}

static void query_dealloc(Query *q) {
    PyObject_GC_UnTrack(q);
    query_clear(q);
    PyObject_GC_Del(q);
}

static PyMemberDef query_members[] = {
    {"id", T_OBJECT, offsetof(Query, id), 0, NULL},
    {"app", T_OBJECT, offsetof(Query, app), 0, NULL},
    {"data", T_OBJECT, offsetof(Query, data), 0, NULL},
    {"arrival", T_DOUBLE, offsetof(Query, arrival), 0, NULL},
    {"deadline", T_DOUBLE, offsetof(Query, deadline), 0, NULL},
    {"slo_micros", T_OBJECT, offsetof(Query, slo_micros), 0, NULL},
    {"on_done", T_OBJECT, offsetof(Query, on_done), 0, NULL},
    {"done", T_BOOL, offsetof(Query, done), 0, NULL},
    {"output", T_OBJECT, offsetof(Query, output), 0, NULL},
    {"explanation", T_OBJECT, offsetof(Query, explanation), 0, NULL},
    {"reason", T_OBJECT, offsetof(Query, reason), 0, NULL},
    {"lost", T_OBJECT, offsetof(Query, lost), 0, NULL},
    {"model", T_OBJECT, offsetof(Query, model), 0, NULL},
    {"queued", T_BOOL, offsetof(Query, queued), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject QueryType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "schooner.frontend._fastpath.Query",
    .tp_doc = "Query(query_id, app, data, arrival, slo_micros, on_done): one input of one "
              "request, from arrival to answer (frontend/dispatch.py's Query).",
    .tp_basicsize = sizeof(Query),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = query_new,
    .tp_dealloc = (destructor)query_dealloc,
    .tp_traverse = (traverseproc)query_traverse,
    .tp_clear = (inquiry)query_clear,
    .tp_members = query_members,
};

/* SingleAnswer(app, reply, overload): the on_done of a one-input request. */

static PyObject *output_cache, *output_json_fn, *answer_json_fn, *shed_reason; /* query_setup */

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *app, *reply, *overload;
} SingleAnswer;

static PyTypeObject SingleAnswerType;

static PyObject *single_call(PyObject *op, PyObject *const *args, size_t nargsf,
                             PyObject *kwnames) {
    SingleAnswer *s = (SingleAnswer *)op;
    if (PyVectorcall_NARGS(nargsf) != 1 || kwnames != NULL) {
        PyErr_SetString(PyExc_TypeError, "on_done(query) takes one argument");
        return NULL;
    }
    PyObject *q = args[0];
    if (Py_TYPE(q) != &QueryType) {
        PyErr_SetString(PyExc_TypeError, "on_done(query): a Query");
        return NULL;
    }
    Query *query = (Query *)q;
    if (!is_none(s->overload) && query->reason != Py_None) {
        int shed = PyObject_RichCompareBool(query->reason, shed_reason, Py_EQ);
        if (shed < 0) return NULL;
        if (shed) return PyObject_CallFunctionObjArgs(s->overload, q, s->reply, NULL);
    }
    PyObject *body;
    if (query->explanation == Py_None) {
        PyObject *text = query->output;
        if (text == Py_None || !PyUnicode_Check(text)) text = PyUnicode_FromStringAndSize("", 0);
        else Py_INCREF(text);
        if (text == NULL) return NULL;
        PyObject *js = PyDict_GetItemWithError(output_cache, text); /* borrowed */
        if (js != NULL) Py_INCREF(js);
        else if (!PyErr_Occurred()) js = PyObject_CallOneArg(output_json_fn, text);
        Py_DECREF(text);
        if (js == NULL) return NULL;
        if (!PyBytes_Check(js) || !PyLong_Check(query->id)) {
            Py_DECREF(js);
            PyErr_SetString(PyExc_TypeError, "an answer's id must be an int and its JSON bytes");
            return NULL;
        }
        long long id = PyLong_AsLongLong(query->id);
        if (id == -1 && PyErr_Occurred()) { Py_DECREF(js); return NULL; }
        char head[64];
        static const char lead[] = "{\"query_id\":";
        int n = (int)sizeof lead - 1;
        memcpy(head, lead, (size_t)n);
        if (id < 0) {
            head[n++] = '-';
            n += format_u64(head + n, 0ULL - (unsigned long long)id);
        } else {
            n += format_u64(head + n, (unsigned long long)id);
        }
        memcpy(head + n, ",\"output\":", 10);
        n += 10;
        static const char tail[] = ",\"default\":false}";
        Py_ssize_t jl = PyBytes_GET_SIZE(js);
        body = PyBytes_FromStringAndSize(NULL, n + jl + (Py_ssize_t)sizeof tail - 1);
        if (body != NULL) {
            char *out = PyBytes_AS_STRING(body);
            memcpy(out, head, (size_t)n);
            memcpy(out + n, PyBytes_AS_STRING(js), (size_t)jl);
            memcpy(out + n + jl, tail, sizeof tail - 1);
        }
        Py_DECREF(js);
    } else {
        body = PyObject_CallFunctionObjArgs(answer_json_fn, s->app, q, NULL);
    }
    if (body == NULL) return NULL;
    PyObject *status = PyLong_FromLong(200);
    if (status == NULL) { Py_DECREF(body); return NULL; }
    PyObject *reply_args[2] = {status, body};
    PyObject *result = PyObject_Vectorcall(s->reply, reply_args, 2, NULL);
    Py_DECREF(status);
    Py_DECREF(body);
    return result;
}

static PyObject *single_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    PyObject *app, *reply, *overload;
    if (!PyArg_ParseTuple(args, "OOO:SingleAnswer", &app, &reply, &overload)) return NULL;
    SingleAnswer *s = PyObject_GC_New(SingleAnswer, &SingleAnswerType);
    if (s == NULL) return NULL;
    s->vectorcall = single_call;
    s->app = Py_NewRef(app);
    s->reply = Py_NewRef(reply);
    s->overload = Py_NewRef(overload);
    PyObject_GC_Track(s);
    return (PyObject *)s;
}

static int single_traverse(SingleAnswer *s, visitproc visit, void *arg) {
    Py_VISIT(s->app);
    Py_VISIT(s->reply);
    Py_VISIT(s->overload);
    return 0;
}

static int single_clear(SingleAnswer *s) {
    Py_CLEAR(s->app);
    Py_CLEAR(s->reply);
    Py_CLEAR(s->overload);
    return 0;
}

static void single_dealloc(SingleAnswer *s) {
    PyObject_GC_UnTrack(s);
    single_clear(s);
    PyObject_GC_Del(s);
}

static PyTypeObject SingleAnswerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "schooner.frontend._fastpath.SingleAnswer",
    .tp_doc = "SingleAnswer(app, reply, overload): called with the query of a one-input "
              "request, replies with its answer (frontend/query_api.py's _single_reply).",
    .tp_basicsize = sizeof(SingleAnswer),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_new = single_new,
    .tp_dealloc = (destructor)single_dealloc,
    .tp_traverse = (traverseproc)single_traverse,
    .tp_clear = (inquiry)single_clear,
    .tp_vectorcall_offset = offsetof(SingleAnswer, vectorcall),
    .tp_call = PyVectorcall_Call,
};

/* answer_all(queries, texts, now, record, status, failed): the dispatcher's answer of a
 * batch (Dispatcher.on_response's loop, in order): each query not done yet is done with its
 * text as output and its on_done called, or, where the status frame (bytes, one per output,
 * or None: none failed) flags its output as an error, failed(query, text) answers it. The
 * answers' latencies (now - arrival) are recorded as record(app, [seconds, ...]) once per
 * run of queries of one app, after them (FrontendMetrics.answered_many), also when an
 * on_done raises. */
static PyObject *answer_all(PyObject *self, PyObject *args) {
    PyObject *queries, *texts, *record, *status, *failed_fn;
    double now;
    if (!PyArg_ParseTuple(args, "O!O!dOOO:answer_all", &PyList_Type, &queries, &PyList_Type,
                          &texts, &now, &record, &status, &failed_fn))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(queries);
    if (PyList_GET_SIZE(texts) != n) {
        PyErr_SetString(PyExc_ValueError, "answer_all: one text per query");
        return NULL;
    }
    Py_buffer flags = {0};
    if (status != Py_None) {
        if (PyObject_GetBuffer(status, &flags, PyBUF_SIMPLE) < 0) return NULL;
        if (flags.len != n) {
            PyBuffer_Release(&flags);
            PyErr_SetString(PyExc_ValueError, "answer_all: one status byte per query");
            return NULL;
        }
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (Py_TYPE(PyList_GET_ITEM(queries, i)) != &QueryType) {
            if (flags.obj) PyBuffer_Release(&flags);
            PyErr_SetString(PyExc_TypeError, "answer_all: the queries must be Query objects");
            return NULL;
        }
    }
    PyObject *app = NULL, *latencies = NULL; /* the current run */
    int failed = 0;
    for (Py_ssize_t i = 0; i < n && !failed; i++) {
        Query *q = (Query *)PyList_GET_ITEM(queries, i);
        if (q->done) continue;
        Py_INCREF(q);
        if (flags.obj && ((const unsigned char *)flags.buf)[i]) { /* the model failed on it */
            PyObject *r = PyObject_CallFunctionObjArgs(failed_fn, (PyObject *)q,
                                                       PyList_GET_ITEM(texts, i), NULL);
            Py_DECREF(q);
            if (r == NULL) failed = 1;
            else Py_DECREF(r);
            continue;
        }
        q->done = 1;
        Py_SETREF(q->output, Py_NewRef(PyList_GET_ITEM(texts, i)));
        if (app != NULL && app != q->app) {
            int same = PyObject_RichCompareBool(app, q->app, Py_EQ);
            if (same < 0) { Py_DECREF(q); failed = 1; break; }
            if (!same) {
                PyObject *r = PyObject_CallFunctionObjArgs(record, app, latencies, NULL);
                Py_CLEAR(app);
                Py_CLEAR(latencies);
                if (r == NULL) { Py_DECREF(q); failed = 1; break; }
                Py_DECREF(r);
            }
        }
        if (app == NULL) {
            app = Py_NewRef(q->app);
            latencies = PyList_New(0);
            if (latencies == NULL) { Py_DECREF(q); failed = 1; break; }
        }
        PyObject *seconds = PyFloat_FromDouble(now - q->arrival);
        if (seconds == NULL || PyList_Append(latencies, seconds) < 0) {
            Py_XDECREF(seconds);
            Py_DECREF(q);
            failed = 1;
            break;
        }
        Py_DECREF(seconds);
        PyObject *r = PyObject_CallOneArg(q->on_done, (PyObject *)q);
        Py_DECREF(q);
        if (r == NULL) failed = 1;
        else Py_DECREF(r);
    }
    if (app != NULL) { /* recorded also after a failure: those queries were answered */
        PyObject *type = NULL, *value = NULL, *tb = NULL;
        if (failed) PyErr_Fetch(&type, &value, &tb);
        PyObject *r = PyObject_CallFunctionObjArgs(record, app, latencies, NULL);
        if (failed) {
            Py_XDECREF(r);
            PyErr_Restore(type, value, tb);
        } else if (r == NULL) {
            failed = 1;
        } else {
            Py_DECREF(r);
        }
    }
    Py_XDECREF(app);
    Py_XDECREF(latencies);
    if (flags.obj) PyBuffer_Release(&flags);
    if (failed) return NULL;
    Py_RETURN_NONE;
}

/* PredictRoute(api, codes): the handler of POST /<app>/predict (frontend/query_api.py's
 * QueryApi.predict, which defines it): the common request -- an app without a selection,
 * a body of exactly {"input": [numbers]} of its input type, a linked model with a current
 * version -- goes straight to api._submit_one(request, app, data, (model, version), reply);
 * anything else, and a request not made by the HTTP core, to api.predict(request, reply). */

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *api, *codes;
} PredictRoute;

static PyTypeObject PredictRouteType;
static PyObject *str_state, *str_apps, *str_current, *str_selection, *str_input_type,
    *str_linked_model, *str_submit_one, *str_predict;

/* The attribute ``name`` of ``o`` (a new reference), or NULL with an exception. */
#define ATTR(o, name) PyObject_GetAttr((o), (name))

static PyObject *predict_route_call(PyObject *op, PyObject *const *args, size_t nargsf,
                                    PyObject *kwnames) {
    PredictRoute *pr = (PredictRoute *)op;
    if (PyVectorcall_NARGS(nargsf) != 2 || kwnames != NULL) {
        PyErr_SetString(PyExc_TypeError, "predict(request, reply)");
        return NULL;
    }
    PyObject *request = args[0], *reply = args[1];
    PyObject *state = NULL, *apps = NULL, *app = NULL, *selection = NULL, *input_type = NULL,
             *model = NULL, *current = NULL, *data = NULL, *key = NULL, *result = NULL;
    Request *r = (Request *)request;
    if (Py_TYPE(request) != &RequestType || !PyUnicode_CheckExact(r->param) ||
        !PyBytes_CheckExact(r->body))
        goto general;
    if ((state = ATTR(pr->api, str_state)) == NULL) goto done;
    if ((apps = ATTR(state, str_apps)) == NULL) goto done;
    if (!PyDict_Check(apps)) goto general;
    app = PyDict_GetItemWithError(apps, r->param); /* borrowed */
    if (app == NULL) {
        if (PyErr_Occurred()) goto done;
        goto general; /* unknown: the general path words the 404 */
    }
    Py_INCREF(app);
    if ((selection = ATTR(app, str_selection)) == NULL) goto done;
    if (selection != Py_None) goto general;
    if ((input_type = ATTR(app, str_input_type)) == NULL) goto done;
    PyObject *code = PyDict_GetItemWithError(pr->codes, input_type); /* borrowed */
    if (code == NULL) {
        if (PyErr_Occurred()) goto done;
        goto general;
    }
    if (!PyUnicode_Check(code) || PyUnicode_GET_LENGTH(code) != 1) goto general;
    data = single_input(PyBytes_AS_STRING(r->body),
                        PyBytes_AS_STRING(r->body) + PyBytes_GET_SIZE(r->body),
                        (int)PyUnicode_READ_CHAR(code, 0));
    if (data == NULL) goto done;
    if (data == Py_None) goto general;
    if ((model = ATTR(app, str_linked_model)) == NULL) goto done;
    if (model == Py_None) goto general;
    PyObject *currents = ATTR(state, str_current);
    if (currents == NULL) goto done;
    current = PyDict_Check(currents) ? PyDict_GetItemWithError(currents, model) : NULL;
    Py_XINCREF(current);
    Py_DECREF(currents);
    if (current == NULL) {
        if (PyErr_Occurred()) goto done;
        goto general; /* no version: the general path answers with the default */
    }
    if ((key = PyTuple_Pack(2, model, current)) == NULL) goto done;
    result = PyObject_VectorcallMethod(
        str_submit_one, (PyObject *[]){pr->api, request, app, data, key, reply},
        6 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    goto done;
general:
    result = PyObject_VectorcallMethod(str_predict, (PyObject *[]){pr->api, request, reply},
                                       3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
done:
    Py_XDECREF(state);
    Py_XDECREF(apps);
    Py_XDECREF(app);
    Py_XDECREF(selection);
    Py_XDECREF(input_type);
    Py_XDECREF(model);
    Py_XDECREF(current);
    Py_XDECREF(data);
    Py_XDECREF(key);
    return result;
}

static PyObject *predict_route_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    PyObject *api, *codes;
    if (!PyArg_ParseTuple(args, "OO!:PredictRoute", &api, &PyDict_Type, &codes)) return NULL;
    PredictRoute *pr = PyObject_GC_New(PredictRoute, &PredictRouteType);
    if (pr == NULL) return NULL;
    pr->vectorcall = predict_route_call;
    pr->api = Py_NewRef(api);
    pr->codes = Py_NewRef(codes);
    PyObject_GC_Track(pr);
    return (PyObject *)pr;
}

static int predict_route_traverse(PredictRoute *pr, visitproc visit, void *arg) {
    Py_VISIT(pr->api);
    Py_VISIT(pr->codes);
    return 0;
}

static int predict_route_clear(PredictRoute *pr) {
    Py_CLEAR(pr->api);
    Py_CLEAR(pr->codes);
    return 0;
}

static void predict_route_dealloc(PredictRoute *pr) {
    PyObject_GC_UnTrack(pr);
    predict_route_clear(pr);
    PyObject_GC_Del(pr);
}

static PyTypeObject PredictRouteType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "schooner.frontend._fastpath.PredictRoute",
    .tp_doc = "PredictRoute(api, codes): the handler of POST /<app>/predict; the common "
              "request straight to api._submit_one, anything else to api.predict.",
    .tp_basicsize = sizeof(PredictRoute),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_new = predict_route_new,
    .tp_dealloc = (destructor)predict_route_dealloc,
    .tp_traverse = (traverseproc)predict_route_traverse,
    .tp_clear = (inquiry)predict_route_clear,
    .tp_vectorcall_offset = offsetof(PredictRoute, vectorcall),
    .tp_call = PyVectorcall_Call,
};

/* query_setup(output_cache, output_json, answer_json, shed) */
static PyObject *query_setup(PyObject *self, PyObject *args) {
    PyObject *cache, *out, *answer, *shed;
    if (!PyArg_ParseTuple(args, "O!OOU", &PyDict_Type, &cache, &out, &answer, &shed)) return NULL;
    Py_XSETREF(output_cache, Py_NewRef(cache));
    Py_XSETREF(output_json_fn, Py_NewRef(out));
    Py_XSETREF(answer_json_fn, Py_NewRef(answer));
    Py_XSETREF(shed_reason, Py_NewRef(shed));
    Py_RETURN_NONE;
}

static int intern_names(void) {
    struct { PyObject **slot; const char *text; } names[] = {
        {&str_feed, "_feed"}, {&str_append, "append"}, {&str_popleft, "popleft"},
        {&str_write, "write"}, {&str_pause_reading, "pause_reading"},
        {&str_resume_reading, "resume_reading"}, {&str_close, "_close"}, {&str_trim, "trim"},
        {&str_dispatch, "dispatch"}, {&str_handler_failed, "_handler_failed"},
        {&str_content_type, "content_type"}, {&str_headers, "headers"},
        {&str_state, "_state"}, {&str_apps, "apps"}, {&str_current, "current"},
        {&str_selection, "selection"}, {&str_input_type, "input_type"},
        {&str_linked_model, "linked_model"}, {&str_submit_one, "_submit_one"},
        {&str_predict, "predict"},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (*names[i].slot == NULL && (*names[i].slot = PyUnicode_InternFromString(names[i].text)) == NULL)
            return -1;
    }
    return 0;
}

static PyMethodDef methods[] = {
    {"parse_input", parse_input, METH_VARARGS,
     "parse_input(body, code) -> bytes | None: the wire bytes of a body that is exactly "
     "{\"input\": [numbers]} ('d' float64, 'f' float32, 'i' int32), or None."},
    {"parse_array_at", parse_array_at, METH_VARARGS,
     "parse_array_at(body, offset, code) -> (bytes, end) | None: the wire bytes of the JSON "
     "array of numbers at body[offset], and the offset after it; None to fall back."},
    {"scan_request", scan_request, METH_VARARGS,
     "scan_request(data, offset, max_url, max_headers, max_header_bytes, max_body) -> (end, "
     "method, path, query, body, binary_header, authorization) | None: one complete, plain "
     "keep-alive HTTP/1.1 request at data[offset], or None for httptools to parse."},
    {"http_setup", http_setup, METH_VARARGS,
     "http_setup(head_cache, new_head, json, empty, max_pipeline, trim_after_bytes): what "
     "Request and ConnCore need from frontend/http.py, once at its import."},
    {"answer_all", answer_all, METH_VARARGS,
     "answer_all(queries, texts, now, record, status, failed): answer a batch's queries "
     "with their texts (Dispatcher.on_response's loop), failed outputs through "
     "failed(query, text), the latencies recorded as record(app, [seconds]) once per run "
     "of one app."},
    {"query_setup", query_setup, METH_VARARGS,
     "query_setup(output_cache, output_json, answer_json, shed): what SingleAnswer needs from "
     "frontend/query_api.py, once at its import."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fastpath",
    "The query path's common case in C (see frontend/_fastpath.c).", -1, methods,
};

PyMODINIT_FUNC PyInit__fastpath(void) {
    fill_classes();
    for (size_t m = 0; m < N_METHODS; m++) {
        if (method_strs[m] == NULL) {
            method_strs[m] = PyUnicode_InternFromString(METHOD_NAMES[m]);
            if (method_strs[m] == NULL) return NULL;
        }
    }
    if (intern_names() < 0 || PyType_Ready(&RequestType) < 0 || PyType_Ready(&ConnCoreType) < 0 ||
        PyType_Ready(&QueryType) < 0 || PyType_Ready(&SingleAnswerType) < 0 ||
        PyType_Ready(&PredictRouteType) < 0)
        return NULL;
    PyObject *mod = PyModule_Create(&module);
    if (mod == NULL) return NULL;
    if (PyModule_AddObjectRef(mod, "Request", (PyObject *)&RequestType) < 0 ||
        PyModule_AddObjectRef(mod, "ConnCore", (PyObject *)&ConnCoreType) < 0 ||
        PyModule_AddObjectRef(mod, "Query", (PyObject *)&QueryType) < 0 ||
        PyModule_AddObjectRef(mod, "SingleAnswer", (PyObject *)&SingleAnswerType) < 0 ||
        PyModule_AddObjectRef(mod, "PredictRoute", (PyObject *)&PredictRouteType) < 0) {
        Py_DECREF(mod);
        return NULL;
    }
    return mod;
}
