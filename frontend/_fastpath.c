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

/* parse_input(body: bytes, code: str) -> bytes | None; code is "d", "f" or "i". */
static PyObject *parse_input(PyObject *self, PyObject *args) {
    Py_buffer body;
    int code;
    if (!PyArg_ParseTuple(args, "y*C", &body, &code)) return NULL;
    if (!check_code(code)) { PyBuffer_Release(&body); return NULL; }
    const char *p = body.buf, *end = p + body.len;
    PyObject *out = NULL;

    p = skip_ws(p, end);
    if (p >= end || *p++ != '{') goto fallback;
    p = skip_ws(p, end);
    if (end - p < 7 || memcmp(p, "\"input\"", 7) != 0) goto fallback;
    p = skip_ws(p + 7, end);
    if (p >= end || *p++ != ':') goto fallback;
    p = skip_ws(p, end);
    p = parse_array(p, end, code, &out);
    if (p == (const char *)-1) { PyBuffer_Release(&body); return NULL; }
    if (p == NULL) goto fallback;
    p = skip_ws(p, end);
    if (p >= end || *p++ != '}') goto fallback;
    if (skip_ws(p, end) != end) goto fallback;
    PyBuffer_Release(&body);
    return out;

fallback:
    PyBuffer_Release(&body);
    Py_XDECREF(out);
    Py_RETURN_NONE;
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
    const char *start = data.buf, *end = start + data.len;
    PyObject *result = NULL;
    if (offset < 0 || offset >= data.len) goto fallback;
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
    if (m == N_METHODS) goto fallback;
    const char *url = p;
    if (p >= end || *p != '/') goto fallback;
    while (p < end && *p != ' ') {
        if (!TARGET[(unsigned char)*p]) goto fallback;
        p++;
    }
    const char *url_end = p;
    if (url_end - url > max_url) goto fallback;
    if (end - p < 11 || memcmp(p, " HTTP/1.1\r\n", 11) != 0) goto fallback;
    p += 11;

    /* the headers */
    Py_ssize_t headers = 0, header_bytes = 0;
    long long content_length = -1;
    const char *auth = NULL, *ihcl = NULL;
    size_t auth_len = 0, ihcl_len = 0;
    for (;;) {
        if (end - p < 2) goto fallback;
        if (p[0] == '\r' && p[1] == '\n') { p += 2; break; }
        const char *name = p;
        while (p < end && TCHAR[(unsigned char)*p]) p++;
        if (p == name || p >= end || *p != ':') goto fallback;
        size_t name_len = (size_t)(p - name);
        p++;
        while (p < end && (*p == ' ' || *p == '\t')) p++;
        const char *value = p;
        while (p < end && *p != '\r') {
            unsigned char c = (unsigned char)*p;
            if ((c < 0x20 && c != '\t') || c == 0x7F) goto fallback;
            p++;
        }
        if (end - p < 2 || p[1] != '\n') goto fallback;
        const char *value_end = p;
        p += 2;
        int trailing = value_end > value && (value_end[-1] == ' ' || value_end[-1] == '\t');
        size_t value_len = (size_t)(value_end - value);
        headers++;
        header_bytes += (Py_ssize_t)(name_len + value_len);
        if (headers > max_headers || header_bytes > max_header_bytes) goto fallback;
        if (name_is(name, name_len, "content-length")) {
            if (content_length >= 0 || trailing || value_len == 0 || value_len > 15) goto fallback;
            content_length = 0;
            for (size_t i = 0; i < value_len; i++) {
                if (value[i] < '0' || value[i] > '9') goto fallback;
                content_length = content_length * 10 + (value[i] - '0');
            }
        } else if (name_is(name, name_len, "connection")) {
            if (trailing || !name_is(value, value_len, "keep-alive")) goto fallback;
        } else if (name_is(name, name_len, "transfer-encoding") ||
                   name_is(name, name_len, "upgrade") || name_is(name, name_len, "expect")) {
            goto fallback;
        } else if (name_is(name, name_len, "authorization")) {
            if (auth != NULL || trailing) goto fallback;
            auth = value;
            auth_len = value_len;
        } else if (name_is(name, name_len, "inference-header-content-length")) {
            if (ihcl != NULL || trailing) goto fallback;
            ihcl = value;
            ihcl_len = value_len;
        }
    }

    /* the body */
    if (content_length > max_body) goto fallback;
    Py_ssize_t body_len = content_length < 0 ? 0 : (Py_ssize_t)content_length;
    if (end - p < body_len) goto fallback;

    /* path and query: the target split at its first '?', as latin-1 */
    const char *q = memchr(url, '?', (size_t)(url_end - url));
    PyObject *path = PyUnicode_DecodeLatin1(url, (q ? q : url_end) - url, NULL);
    PyObject *query = q ? PyUnicode_DecodeLatin1(q + 1, url_end - q - 1, NULL)
                        : PyUnicode_FromStringAndSize("", 0);
    PyObject *body = PyBytes_FromStringAndSize(p, body_len);
    PyObject *binary_header = ihcl == NULL ? Py_NewRef(Py_None)
                                           : PyBytes_FromStringAndSize(ihcl, (Py_ssize_t)ihcl_len);
    PyObject *authorization = auth == NULL ? Py_NewRef(Py_None)
                                           : PyBytes_FromStringAndSize(auth, (Py_ssize_t)auth_len);
    if (path && query && body && binary_header && authorization) {
        result = Py_BuildValue("(nONNNNN)", (Py_ssize_t)(p + body_len - start), method_strs[m],
                               path, query, body, binary_header, authorization);
    } else {
        Py_XDECREF(path);
        Py_XDECREF(query);
        Py_XDECREF(body);
        Py_XDECREF(binary_header);
        Py_XDECREF(authorization);
    }
    PyBuffer_Release(&data);
    return result;

fallback:
    PyBuffer_Release(&data);
    Py_RETURN_NONE;
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
    return PyModule_Create(&module);
}
