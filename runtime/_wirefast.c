/* The container's wire work for the common message, in C: the same results as the Python in
 * runtime/transport.py and runtime/wire.py, which stay the definition and word every error.
 *
 * It is only a shortcut. Each function either does exactly what its Python counterpart does
 * for the input it is given, or stops (returns where it stopped, or None) and leaves the
 * input to the Python path: a ZMTP command, a large frame, a frame still arriving, a limit
 * reached, a message that is not a well-formed prediction request. Nothing here raises for
 * bad input from the peer; only a caller's wrong argument types do.
 *
 * - zmtp_cut: ZmtpReader.feed's loop over complete small data frames.
 * - zmtp_join / stream_join: one message, framed for a ZMTP or a stream (Unix) socket, as one
 *   bytes object: b"".join(zmtp_message(frames)) and b"".join([stream_header(frames), *frames]).
 * - predict_request: decode_from_frontend's answer for a plain v3 or packed prediction request.
 * - predict_response / packed_response: encode_predict_response's and encode_packed_response's
 *   frames.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define ZMTP_MORE 1
#define ZMTP_LONG 2
#define ZMTP_COMMAND 4
#define COPY_BELOW 4096 /* transport._COPY_BELOW: larger frames are views, made in Python */

static inline uint64_t be64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v = (v << 8) | p[i];
    return v;
}

static inline uint64_t le64(const unsigned char *p) {
    uint64_t v;
    memcpy(&v, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}

/* zmtp_cut(data, pos, frames, total, out, max_frames, max_bytes) -> (pos, frames, total)
 *
 * From data[pos], cut every complete data frame smaller than COPY_BELOW as bytes onto
 * ``frames`` (the message arriving, ``total`` its bytes); a frame without MORE ends the
 * message: ``frames`` goes onto ``out`` and a new list starts. Stops before the first frame
 * it does not take: a command, a large frame, an incomplete one, or one that would pass a
 * limit (so that the Python loop words the error). */
static PyObject *zmtp_cut(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 7 || !PyBytes_CheckExact(args[0]) || !PyList_CheckExact(args[2]) ||
        !PyList_CheckExact(args[4])) {
        PyErr_SetString(PyExc_TypeError,
                        "zmtp_cut(data: bytes, pos, frames: list, total, out: list, "
                        "max_frames, max_bytes)");
        return NULL;
    }
    Py_ssize_t pos = PyLong_AsSsize_t(args[1]);
    Py_ssize_t total = PyLong_AsSsize_t(args[3]);
    Py_ssize_t max_frames = PyLong_AsSsize_t(args[5]);
    Py_ssize_t max_bytes = PyLong_AsSsize_t(args[6]);
    if (PyErr_Occurred()) return NULL;
    const unsigned char *data = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    Py_ssize_t end = PyBytes_GET_SIZE(args[0]);
    if (pos < 0 || pos > end || total < 0) {
        PyErr_SetString(PyExc_ValueError, "zmtp_cut: position or total out of range");
        return NULL;
    }
    PyObject *frames = args[2], *out = args[4];
    Py_INCREF(frames);
    while (end - pos >= 2) {
        unsigned char flags = data[pos];
        Py_ssize_t size, at;
        if (flags & ZMTP_COMMAND) break;
        if (flags & ZMTP_LONG) {
            if (end - pos < 9) break;
            uint64_t long_size = be64(data + pos + 1);
            if (long_size >= COPY_BELOW) break;
            size = (Py_ssize_t)long_size;
            at = pos + 9;
        } else {
            size = data[pos + 1];
            at = pos + 2;
        }
        if (size >= COPY_BELOW || end - at < size || total + size > max_bytes) break;
        int last = !(flags & ZMTP_MORE);
        if (last && PyList_GET_SIZE(frames) + 1 > max_frames) break;
        PyObject *frame = PyBytes_FromStringAndSize((const char *)data + at, size);
        if (frame == NULL || PyList_Append(frames, frame) < 0) {
            Py_XDECREF(frame);
            Py_DECREF(frames);
            return NULL;
        }
        Py_DECREF(frame);
        total += size;
        pos = at + size;
        if (last) {
            int failed = PyList_Append(out, frames);
            Py_DECREF(frames);
            if (failed < 0) return NULL;
            frames = PyList_New(0);
            if (frames == NULL) return NULL;
            total = 0;
        }
    }
    PyObject *result = Py_BuildValue("(nOn)", pos, frames, total);
    Py_DECREF(frames);
    return result;
}

/* A sequence of frames (bytes, bytearray, contiguous memoryview) held open: the sequence, each
 * frame's buffer, how many and their total size. */
typedef struct {
    PyObject *seq;
    Py_buffer *views;
    Py_ssize_t n, body;
} Frames;

static void frames_close(Frames *f);

/* Open ``arg``'s frames into ``f``; 0, or -1 with an exception set (and nothing held). */
static int frames_open(PyObject *arg, const char *what, Frames *f) {
    f->seq = PySequence_Fast(arg, what);
    if (f->seq == NULL) return -1;
    f->n = PySequence_Fast_GET_SIZE(f->seq);
    f->body = 0;
    f->views = PyMem_Calloc(f->n ? (size_t)f->n : 1, sizeof(Py_buffer));
    if (f->views == NULL) {
        Py_DECREF(f->seq);
        PyErr_NoMemory();
        return -1;
    }
    PyObject **items = PySequence_Fast_ITEMS(f->seq);
    for (Py_ssize_t i = 0; i < f->n; i++) {
        if (PyBytes_CheckExact(items[i])) { /* most frames; obj NULL: nothing to release */
            f->views[i].buf = PyBytes_AS_STRING(items[i]);
            f->views[i].len = PyBytes_GET_SIZE(items[i]);
        } else if (PyObject_GetBuffer(items[i], &f->views[i], PyBUF_SIMPLE) < 0) {
            f->n = i; /* release the ones opened */
            frames_close(f);
            return -1;
        }
        f->body += f->views[i].len;
    }
    return 0;
}

static void frames_close(Frames *f) {
    for (Py_ssize_t i = 0; i < f->n; i++) PyBuffer_Release(&f->views[i]);
    PyMem_Free(f->views);
    Py_DECREF(f->seq);
}

/* zmtp_join(frames) -> bytes: each frame's ZMTP header (MORE on all but the last), then the
 * frame, all in one bytes object. */
static PyObject *zmtp_join(PyObject *self, PyObject *arg) {
    Frames f;
    if (frames_open(arg, "zmtp_join(frames): frames must be a sequence", &f) < 0) return NULL;
    Py_ssize_t size = f.body;
    for (Py_ssize_t i = 0; i < f.n; i++) size += f.views[i].len < 256 ? 2 : 9;
    PyObject *result = PyBytes_FromStringAndSize(NULL, size);
    if (result != NULL) {
        unsigned char *p = (unsigned char *)PyBytes_AS_STRING(result);
        for (Py_ssize_t i = 0; i < f.n; i++) {
            uint64_t len = (uint64_t)f.views[i].len;
            unsigned char more = i + 1 < f.n ? ZMTP_MORE : 0;
            if (len < 256) {
                *p++ = more;
                *p++ = (unsigned char)len;
            } else {
                *p++ = more | ZMTP_LONG;
                for (int b = 7; b >= 0; b--) *p++ = (unsigned char)(len >> (8 * b));
            }
            memcpy(p, f.views[i].buf, (size_t)len);
            p += len;
        }
    }
    frames_close(&f);
    return result;
}

/* stream_join(frames) -> bytes: wire.stream_header(frames) (u32 count, u32 size of each,
 * little endian), then the frames, in one bytes object. */
static PyObject *stream_join(PyObject *self, PyObject *arg) {
    Frames f;
    if (frames_open(arg, "stream_join(frames): frames must be a sequence", &f) < 0) return NULL;
    PyObject *result = NULL;
    if ((uint64_t)f.n > UINT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "stream_join: more than 2**32 - 1 frames");
        goto done;
    }
    for (Py_ssize_t i = 0; i < f.n; i++) {
        if ((uint64_t)f.views[i].len > UINT32_MAX) {
            PyErr_SetString(PyExc_OverflowError, "stream_join: a frame of 4 GiB or more");
            goto done;
        }
    }
    result = PyBytes_FromStringAndSize(NULL, 4 * (f.n + 1) + f.body);
    if (result != NULL) {
        unsigned char *p = (unsigned char *)PyBytes_AS_STRING(result);
        uint32_t word = (uint32_t)f.n;
        for (Py_ssize_t i = -1; i < f.n; i++) {
            if (i >= 0) word = (uint32_t)f.views[i].len;
            for (int b = 0; b < 4; b++) *p++ = (unsigned char)(word >> (8 * b));
        }
        for (Py_ssize_t i = 0; i < f.n; i++) {
            memcpy(p, f.views[i].buf, (size_t)f.views[i].len);
            p += f.views[i].len;
        }
    }
done:
    frames_close(&f);
    return result;
}

/* The length of a frame (bytes, or anything with a buffer), or -1 with an exception set. */
static Py_ssize_t frame_len(PyObject *frame, const unsigned char **data) {
    if (PyBytes_CheckExact(frame)) {
        *data = (const unsigned char *)PyBytes_AS_STRING(frame);
        return PyBytes_GET_SIZE(frame);
    }
    /* a view (of a large frame): its buffer stays valid while the frame lives */
    Py_buffer view;
    if (PyObject_GetBuffer(frame, &view, PyBUF_SIMPLE) < 0) return -1;
    *data = view.buf;
    Py_ssize_t len = view.len;
    PyBuffer_Release(&view);
    return len;
}

#define N_INPUT_TYPES 5 /* wire.InputType: BYTES .. STRINGS */

/* The lengths header [input_type, N, size_0 .. size_N-1] (u64s) when it is well formed:
 * its input type, N and the sum of the sizes (which must not overflow). */
static int request_header(const unsigned char *h, Py_ssize_t len, long *input_type,
                          Py_ssize_t *n, uint64_t *sum) {
    if (len < 16 || len % 8) return 0;
    uint64_t type = le64(h), count = le64(h + 8);
    if (type >= N_INPUT_TYPES || count != (uint64_t)(len / 8 - 2)) return 0;
    *sum = 0;
    for (uint64_t i = 0; i < count; i++) {
        if (__builtin_add_overflow(*sum, le64(h + 16 + 8 * i), sum)) return 0;
    }
    *input_type = (long)type;
    *n = (Py_ssize_t)count;
    return 1;
}

/* Whether ``frame`` is the 4-byte little-endian u32 ``value`` (a small constant: version,
 * message or request type); -1: an error is set. */
static int is_u32(PyObject *frame, unsigned char value) {
    const unsigned char *p;
    Py_ssize_t len = frame_len(frame, &p);
    if (len < 0) return -1;
    return len == 4 && p[0] == value && !(p[1] | p[2] | p[3]);
}

/* predict_request(frames) -> (msg_id, input_type, sizes, inputs, payload) | None
 *
 * A well-formed prediction request as decode_from_frontend decodes it: plain v3 (``inputs``
 * the input frames, ``payload`` None) or packed (``inputs`` None, ``payload`` the payload
 * frame); None for anything else (a heartbeat reply, a malformed request), which the Python
 * path decodes or refuses. Frames are bytes or views (the ZMTP reader's large frames, every
 * frame of the stream reader). */
static PyObject *predict_request(PyObject *self, PyObject *arg) {
    if (!PyList_CheckExact(arg) || PyList_GET_SIZE(arg) < 7) Py_RETURN_NONE;
    Py_ssize_t count = PyList_GET_SIZE(arg);
    PyObject **f = ((PyListObject *)arg)->ob_item;
    const unsigned char *p, *h, *id;
    Py_ssize_t len, hlen, n;
    int plain, packed;
    if ((len = frame_len(f[0], &p)) != 0 || is_u32(f[1], 3) != 1 || is_u32(f[2], 1) != 1 ||
        frame_len(f[3], &id) != 4 || (plain = is_u32(f[4], 0)) < 0 ||
        (packed = is_u32(f[4], 2)) < 0 || !(plain || packed))
        goto not_ours;
    if (plain) {
        const unsigned char *declared;
        if (frame_len(f[5], &declared) != 8 || (hlen = frame_len(f[6], &h)) < 0 ||
            le64(declared) != (uint64_t)hlen)
            goto not_ours;
    } else if (count != 7 || (hlen = frame_len(f[5], &h)) < 0) {
        goto not_ours;
    }
    long input_type;
    uint64_t sum;
    if (!request_header(h, hlen, &input_type, &n, &sum)) goto not_ours;
    if (plain) {
        if (count != 7 + n) goto not_ours;
        for (Py_ssize_t i = 0; i < n; i++) {
            if ((len = frame_len(f[7 + i], &p)) < 0 || (uint64_t)len != le64(h + 16 + 8 * i))
                goto not_ours;
        }
    } else if ((len = frame_len(f[6], &p)) < 0 || (uint64_t)len != sum) {
        goto not_ours;
    }
    PyObject *sizes = PyTuple_New(n);
    if (sizes == NULL) return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *size = PyLong_FromUnsignedLongLong(le64(h + 16 + 8 * i));
        if (size == NULL) {
            Py_DECREF(sizes);
            return NULL;
        }
        PyTuple_SET_ITEM(sizes, i, size);
    }
    PyObject *msg_id = PyBytes_CheckExact(f[3]) ? Py_NewRef(f[3])
                                                : PyBytes_FromStringAndSize((const char *)id, 4);
    PyObject *inputs = plain ? PyList_GetSlice(arg, 7, count) : Py_NewRef(Py_None);
    if (msg_id == NULL || inputs == NULL) {
        Py_XDECREF(msg_id);
        Py_XDECREF(inputs);
        Py_DECREF(sizes);
        return NULL;
    }
    return Py_BuildValue("(NlNNO)", msg_id, input_type, sizes, inputs, plain ? Py_None : f[6]);
not_ours: /* including a frame without a buffer: the Python path says what is wrong */
    PyErr_Clear();
    Py_RETURN_NONE;
}

/* The lengths header [N, len_0 .. len_N-1] (u64s, little endian) of the frames ``f``, as
 * bytes; NULL with an exception set. */
static PyObject *lengths_header(const Frames *f) {
    PyObject *header = PyBytes_FromStringAndSize(NULL, 8 * (f->n + 1));
    if (header == NULL) return NULL;
    unsigned char *p = (unsigned char *)PyBytes_AS_STRING(header);
    for (Py_ssize_t i = -1; i < f->n; i++) {
        uint64_t value = (uint64_t)(i < 0 ? f->n : f->views[i].len);
        for (int b = 0; b < 8; b++) *p++ = (unsigned char)(value >> (8 * b));
    }
    return header;
}

static PyObject *EMPTY, *T_CONTENT, *T_PACKED; /* b"", u32 1, u32 3 */

/* predict_response(msg_id, outputs) -> frames (``outputs``: any sequence of buffers):
 * encode_predict_response's frames, the plain v3 response
 * [b"", CONTAINER_CONTENT, msg_id, u64 header size, header, *outputs]. */
static PyObject *predict_response(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    Frames f;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "predict_response(msg_id, outputs)");
        return NULL;
    }
    if (frames_open(args[1], "predict_response: outputs must be a sequence", &f) < 0)
        return NULL;
    PyObject *header = lengths_header(&f);
    unsigned char size[8];
    uint64_t header_size = 8 * (uint64_t)(f.n + 1);
    for (int b = 0; b < 8; b++) size[b] = (unsigned char)(header_size >> (8 * b));
    PyObject *size_frame = PyBytes_FromStringAndSize((const char *)size, 8);
    PyObject *frames = PyList_New(5 + f.n);
    if (header == NULL || size_frame == NULL || frames == NULL) {
        Py_XDECREF(header);
        Py_XDECREF(size_frame);
        Py_XDECREF(frames);
        frames_close(&f);
        return NULL;
    }
    PyList_SET_ITEM(frames, 0, Py_NewRef(EMPTY));
    PyList_SET_ITEM(frames, 1, Py_NewRef(T_CONTENT));
    PyList_SET_ITEM(frames, 2, Py_NewRef(args[0]));
    PyList_SET_ITEM(frames, 3, size_frame);
    PyList_SET_ITEM(frames, 4, header);
    PyObject **outputs = PySequence_Fast_ITEMS(f.seq);
    for (Py_ssize_t i = 0; i < f.n; i++) PyList_SET_ITEM(frames, 5 + i, Py_NewRef(outputs[i]));
    frames_close(&f);
    return frames;
}

/* packed_response(msg_id, outputs, status=None) -> frames: encode_packed_response's frames,
 * [b"", PACKED_CONTENT, msg_id, header, status (n zero bytes when None), the outputs joined]. */
static PyObject *packed_response(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    Frames f;
    if (nargs != 2 && nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "packed_response(msg_id, outputs, status=None)");
        return NULL;
    }
    if (frames_open(args[1], "packed_response: outputs must be a sequence", &f) < 0)
        return NULL;
    PyObject *header = lengths_header(&f), *status = NULL;
    PyObject *payload = PyBytes_FromStringAndSize(NULL, f.body);
    if (payload != NULL) {
        char *p = PyBytes_AS_STRING(payload);
        for (Py_ssize_t i = 0; i < f.n; i++) {
            memcpy(p, f.views[i].buf, (size_t)f.views[i].len);
            p += f.views[i].len;
        }
        PyObject *given = nargs == 3 ? args[2] : Py_None;
        int truthy = PyObject_IsTrue(given); /* ``status or bytes(n)`` */
        if (truthy > 0) {
            status = Py_NewRef(given);
        } else if (truthy == 0) {
            status = PyBytes_FromStringAndSize(NULL, f.n);
            if (status != NULL) memset(PyBytes_AS_STRING(status), 0, (size_t)f.n);
        }
    }
    frames_close(&f);
    PyObject *frames = header && payload && status ? PyList_New(6) : NULL;
    if (frames == NULL) {
        Py_XDECREF(header);
        Py_XDECREF(payload);
        Py_XDECREF(status);
        return NULL;
    }
    PyList_SET_ITEM(frames, 0, Py_NewRef(EMPTY));
    PyList_SET_ITEM(frames, 1, Py_NewRef(T_PACKED));
    PyList_SET_ITEM(frames, 2, Py_NewRef(args[0]));
    PyList_SET_ITEM(frames, 3, header);
    PyList_SET_ITEM(frames, 4, status);
    PyList_SET_ITEM(frames, 5, payload);
    return frames;
}

/* packed_texts(payload, lengths) -> list[str]: the outputs of a packed response, each
 * decoded as UTF-8 with invalid bytes replaced (wire.PredictResponse.texts); the lengths
 * must add up to the payload's (the decoder checked). */
static PyObject *packed_texts(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyTuple_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "packed_texts(payload, lengths: tuple)");
        return NULL;
    }
    Py_buffer payload;
    if (PyObject_GetBuffer(args[0], &payload, PyBUF_SIMPLE) < 0) return NULL;
    PyObject *lengths = args[1];
    Py_ssize_t n = PyTuple_GET_SIZE(lengths), pos = 0;
    PyObject *out = PyList_New(n);
    if (out == NULL) goto fail;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t len = PyLong_AsSsize_t(PyTuple_GET_ITEM(lengths, i));
        if (len == -1 && PyErr_Occurred()) goto fail;
        if (len < 0 || len > payload.len - pos) {
            PyErr_SetString(PyExc_ValueError, "packed_texts: the lengths exceed the payload");
            goto fail;
        }
        PyObject *text = PyUnicode_DecodeUTF8((const char *)payload.buf + pos, len, "replace");
        if (text == NULL) goto fail;
        PyList_SET_ITEM(out, i, text);
        pos += len;
    }
    PyBuffer_Release(&payload);
    return out;
fail:
    Py_XDECREF(out);
    PyBuffer_Release(&payload);
    return NULL;
}

static PyMethodDef methods[] = {
    {"packed_texts", (PyCFunction)(void (*)(void))packed_texts, METH_FASTCALL,
     "packed_texts(payload, lengths) -> list[str]: a packed response's outputs as text."},
    {"zmtp_cut", (PyCFunction)(void (*)(void))zmtp_cut, METH_FASTCALL,
     "zmtp_cut(data, pos, frames, total, out, max_frames, max_bytes) -> (pos, frames, total): "
     "complete small ZMTP data frames from data[pos] (see runtime/_wirefast.c)."},
    {"zmtp_join", zmtp_join, METH_O,
     "zmtp_join(frames) -> bytes: one message framed for ZMTP, as one bytes object."},
    {"stream_join", stream_join, METH_O,
     "stream_join(frames) -> bytes: one message with its stream header, as one bytes object."},
    {"predict_response", (PyCFunction)(void (*)(void))predict_response, METH_FASTCALL,
     "predict_response(msg_id, outputs) -> frames: a plain v3 response."},
    {"packed_response", (PyCFunction)(void (*)(void))packed_response, METH_FASTCALL,
     "packed_response(msg_id, outputs, status=None) -> frames: a packed response."},
    {"predict_request", predict_request, METH_O,
     "predict_request(frames) -> (msg_id, input_type, sizes, inputs, payload) | None: a "
     "well-formed prediction request, or None for the Python decoder."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_wirefast",
    "The container's common wire work in C (see runtime/_wirefast.c).", -1, methods,
};

PyMODINIT_FUNC PyInit__wirefast(void) {
    static const char content[4] = {1, 0, 0, 0}, packed[4] = {3, 0, 0, 0};
    if (EMPTY == NULL) {
        EMPTY = PyBytes_FromStringAndSize(NULL, 0);
        T_CONTENT = PyBytes_FromStringAndSize(content, 4);
        T_PACKED = PyBytes_FromStringAndSize(packed, 4);
        if (EMPTY == NULL || T_CONTENT == NULL || T_PACKED == NULL) return NULL;
    }
    return PyModule_Create(&module);
}
