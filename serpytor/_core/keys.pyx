# cython: boundscheck=False, wraparound=False
"""Journal-key kernel (compiled): a batch's keys and parts texts.

The inputs, the texts and the digests are written down in the reference,
``serpytor/_core/_ref_keys.py``; the lists are checked by the same function
(``check_keys_inputs``). Working state: ``buf``, one growable byte buffer that holds,
in turn, each vertex's key text and its parts text; ``inputs_hex`` and ``key_hex``,
the two digests of the vertex in hand. BLAKE2b is ``blake2b.h`` (RFC 7693).
"""

from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from libc.string cimport memcpy

from ._ref_keys import KEY_BYTES, check_keys_inputs

cdef extern from "Python.h":
    const char *PyUnicode_AsUTF8AndSize(object text, Py_ssize_t *size) except NULL
    object PyUnicode_DecodeUTF8(const char *data, Py_ssize_t size, const char *errors)
    object PyUnicode_DecodeASCII(const char *data, Py_ssize_t size, const char *errors)

cdef extern from "blake2b.h":
    void spt_blake2b_hex(const unsigned char *data, size_t n, size_t digest_size,
                         char *hex) nogil

cdef enum:
    DIGEST_BYTES = 20
    HEX_CHARS = 2 * DIGEST_BYTES

if KEY_BYTES != DIGEST_BYTES:  # the reference and this kernel must digest alike
    raise ImportError(f"keys.pyx digests {DIGEST_BYTES} bytes, the reference {KEY_BYTES}")


cdef struct Text:
    const char *data
    Py_ssize_t size


cdef struct Buffer:
    char *data
    Py_ssize_t size
    Py_ssize_t capacity


cdef inline Text utf8(object value) except *:
    cdef Text text
    if type(value) is not str:
        raise TypeError(f"journal_keys: {type(value).__name__} where a str belongs")
    text.data = PyUnicode_AsUTF8AndSize(value, &text.size)
    return text


cdef int reserve(Buffer *buf, Py_ssize_t size) except -1:
    """Room for ``size`` bytes (the buffer is emptied)."""
    cdef char *grown
    buf.size = 0
    if size <= buf.capacity:
        return 0
    grown = <char *>PyMem_Realloc(buf.data, size)
    if grown == NULL:
        raise MemoryError()
    buf.data = grown
    buf.capacity = size
    return 0


cdef inline void put(Buffer *buf, const char *data, Py_ssize_t size) noexcept:
    memcpy(buf.data + buf.size, data, size)
    buf.size += size


cdef inline void put_text(Buffer *buf, Text text) noexcept:
    put(buf, text.data, text.size)


cdef void put_json_string(Buffer *buf, Text text) noexcept:
    """``text`` as orjson writes a JSON string: quoted, with ``"``, ``\\`` and control
    characters escaped (the short forms where JSON has one), UTF-8 otherwise as is."""
    cdef const char *digits = b"0123456789abcdef"
    cdef const char *short_forms = b"btn?fr"  # of bytes 8 to 13 (11 has none)
    cdef unsigned char c
    cdef Py_ssize_t i
    put(buf, b'"', 1)
    for i in range(text.size):
        c = <unsigned char>text.data[i]
        if c == 34 or c == 92:  # '"' and '\\'
            buf.data[buf.size] = 92
            buf.data[buf.size + 1] = c
            buf.size += 2
        elif c >= 32:
            buf.data[buf.size] = c
            buf.size += 1
        elif c == 8 or c == 9 or c == 10 or c == 12 or c == 13:
            buf.data[buf.size] = 92
            buf.data[buf.size + 1] = short_forms[c - 8]
            buf.size += 2
        else:
            put(buf, b"\\u00", 4)
            buf.data[buf.size] = digits[c >> 4]
            buf.data[buf.size + 1] = digits[c & 15]
            buf.size += 2
    put(buf, b'"', 1)


def journal_keys(list template_parts, list contexts, list inputs, list names):
    """Per vertex, its key and its parts as JSON text (see ``_ref_keys``)."""
    cdef Py_ssize_t count = check_keys_inputs(template_parts, contexts, inputs, names)
    cdef Py_ssize_t i
    cdef Text function, arguments, function_json, context, joined, name
    cdef char inputs_hex[HEX_CHARS]
    cdef char key_hex[HEX_CHARS]
    cdef Buffer buf
    cdef object parts_of
    cdef list keys = [None] * count
    cdef list parts = [None] * count
    buf.data = NULL
    buf.size = buf.capacity = 0
    try:
        for i in range(count):
            parts_of = template_parts[i]
            if type(parts_of) is not tuple or len(<tuple>parts_of) != 3:
                raise TypeError("journal_keys: template parts are (function, arguments, "
                                "function JSON) tuples")
            function = utf8((<tuple>parts_of)[0])
            arguments = utf8((<tuple>parts_of)[1])
            function_json = utf8((<tuple>parts_of)[2])
            context = utf8(contexts[i])
            joined = utf8(inputs[i])
            name = utf8(names[i])
            spt_blake2b_hex(<const unsigned char *>joined.data, joined.size, DIGEST_BYTES,
                            inputs_hex)
            # the key's text: 45 bytes of labels beside the parts
            reserve(&buf, 45 + arguments.size + context.size + function.size + HEX_CHARS
                    + name.size)
            put(&buf, b"arguments=", 10)
            put_text(&buf, arguments)
            put(&buf, b"|context=", 9)
            put_text(&buf, context)
            put(&buf, b"|function=", 10)
            put_text(&buf, function)
            put(&buf, b"|inputs=", 8)
            put(&buf, inputs_hex, HEX_CHARS)
            put(&buf, b"|vertex=", 8)
            put_text(&buf, name)
            spt_blake2b_hex(<const unsigned char *>buf.data, buf.size, DIGEST_BYTES, key_hex)
            keys[i] = PyUnicode_DecodeASCII(key_hex, HEX_CHARS, NULL)
            # the parts' JSON: 64 bytes of labels, and a name escaped 6 bytes a byte at most
            reserve(&buf, 64 + function_json.size + arguments.size + HEX_CHARS
                    + context.size + 6 * name.size + 2)
            put(&buf, b'{"function":', 12)
            put_text(&buf, function_json)
            put(&buf, b',"arguments":"', 14)
            put_text(&buf, arguments)
            put(&buf, b'","inputs":"', 12)
            put(&buf, inputs_hex, HEX_CHARS)
            put(&buf, b'","context":"', 13)
            put_text(&buf, context)
            put(&buf, b'","vertex":', 11)
            put_json_string(&buf, name)
            put(&buf, b"}", 1)
            parts[i] = PyUnicode_DecodeUTF8(buf.data, buf.size, NULL)
    finally:
        PyMem_Free(buf.data)
    return keys, parts


__all__ = ["journal_keys"]
