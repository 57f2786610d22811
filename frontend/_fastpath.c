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

static PyMethodDef methods[] = {
    {"parse_input", parse_input, METH_VARARGS,
     "parse_input(body, code) -> bytes | None: the wire bytes of a body that is exactly "
     "{\"input\": [numbers]} ('d' float64, 'f' float32, 'i' int32), or None."},
    {"parse_array_at", parse_array_at, METH_VARARGS,
     "parse_array_at(body, offset, code) -> (bytes, end) | None: the wire bytes of the JSON "
     "array of numbers at body[offset], and the offset after it; None to fall back."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fastpath",
    "The query path's common case in C (see frontend/_fastpath.c).", -1, methods,
};

PyMODINIT_FUNC PyInit__fastpath(void) { return PyModule_Create(&module); }
