# cython: language_level=3, binding=True
"""Byte kernels, compiled twin.

This module must behave exactly like ``fastsmtplib._wire_py``: same names, same
results, same exceptions for every input.  ``_wire_py`` is the reference and its
docstrings are the contract (typed in ``_wire_c.pyi``); the test-suite runs every
kernel test against both and crosses them with hypothesis.  Only speed differs.

One place for what the twins share: ``__all__`` is imported from ``_wire_py``,
and so are the docstrings (see the end of this file).  ``binding=True`` (the
default since Cython 3, stated because this relies on it) makes the functions
and methods cyfunctions, which ``inspect.signature`` reads like Python functions
and whose ``__doc__`` is writable.  The class's ``__init__`` is a C slot with no
signature of its own: its signature is written at the head of the class
docstring (see ``ReplyParser``).

All loops walk ``const unsigned char*`` pointers between a start and an ``end``
pointer taken from the buffer's own length, so there is no indexing to bounds
check (but for 256-entry tables indexed by a byte); every read is guarded by
``< end`` and every write stays inside an output that was allocated at its
proven worst-case size (see ``_encode``) or at its exact size, added up in a
first pass (see ``encode_envelope``).
"""

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport (
    PyBytes_AS_STRING,
    PyBytes_CheckExact,
    PyBytes_FromStringAndSize,
    PyBytes_GET_SIZE,
)
from cpython.list cimport PyList_Check
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.ref cimport Py_INCREF, Py_XDECREF, PyObject
from cpython.sequence cimport PySequence_Fast, PySequence_Fast_GET_ITEM, PySequence_Fast_GET_SIZE
from cpython.tuple cimport PyTuple_Check
from cpython.unicode cimport PyUnicode_1BYTE_DATA, PyUnicode_Check, PyUnicode_GET_LENGTH
from libc.stdint cimport uint64_t
from libc.stdio cimport snprintf
from libc.string cimport memchr, memcmp, memcpy

from fastsmtplib._wire_py import MAX_REPLY_BYTES, MAX_REPLY_LINES, MAXLINE, ReplyLimitError
from fastsmtplib._wire_py import __all__

cdef extern from "Python.h":
    # Raw-pointer spellings: the output is created uninitialised, filled in
    # place and shrunk once, which Cython's object-typed declarations can't do.
    PyObject* _new_bytes "PyBytes_FromStringAndSize"(const char *v, Py_ssize_t n) except NULL
    char* _bytes_data "PyBytes_AS_STRING"(PyObject *o)
    int _PyBytes_Resize(PyObject **o, Py_ssize_t n) except -1
    void Py_DECREF(PyObject *o)
    const Py_ssize_t PY_SSIZE_T_MAX


cdef enum:
    # Reply memo (see ReplyParser._line): slots (a power of two), longest line.
    MEMO_SLOTS = 16
    MEMO_LINE = 64
    # _encode: inputs of SCRATCH_FROM bytes and more go through a scratch
    # buffer of up to SCRATCH_MAX bytes.  Below SCRATCH_FROM the bound 2n+5
    # stays under 128 KiB, glibc's initial (and smallest) mmap threshold.
    SCRATCH_FROM = 63 * 1024
    SCRATCH_MAX = 8 * 1024 * 1024

cdef enum:
    LF = 10
    CR = 13
    SP = 32
    TAB = 9
    DOT = 46
    DASH = 45


# Codes 0..999 as ready-made ints (CPython only caches up to 256, and most
# reply codes are above that).
cdef tuple _CODES = tuple(range(1000))


# --------------------------------------------------------------------------
# Input: any object bytes() accepts, read without a copy when it exports a
# contiguous buffer.


cdef inline int _try_buffer(object data, Py_buffer* view) except -1:
    """1 and ``view`` filled when ``data`` exports a contiguous buffer, else 0."""
    try:
        PyObject_GetBuffer(data, view, PyBUF_SIMPLE)
    except (TypeError, BufferError):
        return 0
    return 1


# --------------------------------------------------------------------------
# DATA / BDAT encoders


cdef extern from *:
    """
    /* First CR or LF in [p, end), or end.  SSE2 (always there on x86-64) tests
       16 bytes per step; elsewhere a portable test does 8 bytes per step (a
       word has a zero byte iff (x - 0x01..) & ~x & 0x80.. is non-zero; x is the
       word XOR CR or LF repeated); a byte loop finds the exact place and does
       the last few bytes.  Define FASTSMTPLIB_NO_SIMD to build (and test) the
       portable path on x86.  Measured 2026-11 on a shared Xeon, 64 KB of mail
       text: SSE2 about 4 GB/s, 8-byte words 1.6-2 GB/s, byte loop 0.6 GB/s. */
    #include <stdint.h>
    #include <string.h>
    #if defined(__SSE2__) && !defined(FASTSMTPLIB_NO_SIMD)
    #include <emmintrin.h>
    #if defined(_MSC_VER)
    #include <intrin.h>
    static __inline int fsl_ctz(unsigned int m) { unsigned long i; _BitScanForward(&i, m); return (int)i; }
    #else
    #define fsl_ctz(m) __builtin_ctz(m)
    #endif
    #endif
    static inline const unsigned char *
    fsl_find_eol(const unsigned char *p, const unsigned char *end)
    {
    #if defined(__SSE2__) && !defined(FASTSMTPLIB_NO_SIMD)
        const __m128i cr = _mm_set1_epi8('\\r'), lf = _mm_set1_epi8('\\n');
        while (end - p >= 16) {
            __m128i v = _mm_loadu_si128((const __m128i *)p);
            int m = _mm_movemask_epi8(_mm_or_si128(_mm_cmpeq_epi8(v, cr),
                                                   _mm_cmpeq_epi8(v, lf)));
            if (m)
                return p + fsl_ctz((unsigned int)m);
            p += 16;
        }
    #else
        const uint64_t ones = 0x0101010101010101ULL, high = 0x8080808080808080ULL;
        while (end - p >= 8) {
            uint64_t v, a, b;
            memcpy(&v, p, 8);
            a = v ^ (ones * '\\n');
            b = v ^ (ones * '\\r');
            if ((((a - ones) & ~a) | ((b - ones) & ~b)) & high)
                break;
            p += 8;
        }
    #endif
        while (p < end && *p != '\\r' && *p != '\\n')
            p++;
        return p;
    }
    """
    const unsigned char* _find_eol "fsl_find_eol"(const unsigned char* p,
                                                   const unsigned char* end) noexcept nogil


cdef extern from *:
    """
    /* First CR LF "." in [p, end) (all three bytes inside), or NULL: in DATA
       content, the start of a stuffed line or of the terminator (RFC 5321
       §4.5.2).  SSE2 tests 16 starting places per step (loads at p, p+1, p+2);
       elsewhere memchr finds each LF.  Uses fsl_ctz from the block above. */
    static inline const unsigned char *
    fsl_find_crlf_dot(const unsigned char *p, const unsigned char *end)
    {
    #if defined(__SSE2__) && !defined(FASTSMTPLIB_NO_SIMD)
        const __m128i cr = _mm_set1_epi8('\\r'), lf = _mm_set1_epi8('\\n'),
                      dot = _mm_set1_epi8('.');
        while (end - p >= 18) {
            __m128i a = _mm_cmpeq_epi8(_mm_loadu_si128((const __m128i *)p), cr);
            __m128i b = _mm_cmpeq_epi8(_mm_loadu_si128((const __m128i *)(p + 1)), lf);
            __m128i c = _mm_cmpeq_epi8(_mm_loadu_si128((const __m128i *)(p + 2)), dot);
            int m = _mm_movemask_epi8(_mm_and_si128(_mm_and_si128(a, b), c));
            if (m)
                return p + fsl_ctz((unsigned int)m);
            p += 16;
        }
    #endif
        while (end - p >= 3) {
            /* An LF at p+1 .. end-2 can be the middle of CR LF ".". */
            const unsigned char *f = memchr(p + 1, '\\n', (size_t)(end - p - 2));
            if (f == NULL)
                return NULL;
            if (f[-1] == '\\r' && f[1] == '.')
                return f - 1;
            p = f;
        }
        return NULL;
    }
    """
    const unsigned char* _find_crlf_dot "fsl_find_crlf_dot"(const unsigned char* p,
                                                             const unsigned char* end) noexcept nogil


# Scratch output for mid-sized inputs (see _encode), kept between calls.  Only
# used with the GIL held, and no Python code runs between filling it and
# copying out of it, so calls cannot interleave.
cdef unsigned char* _scratch = NULL
cdef Py_ssize_t _scratch_cap = 0


cdef Py_ssize_t _encode_into(const unsigned char* p, Py_ssize_t n, bint stuff,
                             unsigned char* o, Py_ssize_t* dots) noexcept nogil:
    """Write the encoding of ``p[:n]`` to ``o`` (room for ``2 * n + 5``); return its length.

    ``dots[0]`` is set to the number of dots added by stuffing.
    """
    cdef unsigned char* o0 = o
    cdef Py_ssize_t added = 0
    cdef const unsigned char* end = p + n
    cdef const unsigned char* cur = p
    cdef const unsigned char* e
    cdef Py_ssize_t k
    while True:
        # cur is at the start of a line here (start of data or after a line end).
        if stuff and cur < end and cur[0] == DOT:
            o[0] = DOT
            o += 1
            added += 1
        e = _find_eol(cur, end)
        k = e - cur
        memcpy(o, cur, <size_t>k)
        o += k
        if e == end:
            break
        o[0] = CR
        o[1] = LF
        o += 2
        cur = e + 1
        if e[0] == CR and cur < end and cur[0] == LF:
            cur += 1
    # The output ends with CRLF exactly when the input's last byte is a line end.
    if n == 0 or (p[n - 1] != LF and p[n - 1] != CR):
        o[0] = CR
        o[1] = LF
        o += 2
    if stuff:
        o[0] = DOT
        o[1] = CR
        o[2] = LF
        o += 3
    dots[0] = added
    return o - o0


cdef object _encode(const unsigned char* p, Py_ssize_t n, bint stuff, Py_ssize_t* dots):
    """DATA (``stuff``) or BDAT encoding of ``p[:n]`` as a new bytes object.

    Each input byte yields at most two output bytes ('.' at a line start -> '..',
    CR or LF -> CRLF, CRLF -> CRLF), plus 2 for a missing final CRLF and 3 for
    the terminator: ``2 * n + 5`` bounds the output, so ``_encode_into`` writes
    into a buffer of that size without checks.
    """
    global _scratch, _scratch_cap
    if n > (PY_SSIZE_T_MAX - 5) // 2:
        raise MemoryError()
    cdef Py_ssize_t cap = 2 * n + 5
    cdef Py_ssize_t size
    cdef PyObject* res
    if SCRATCH_FROM <= n and cap <= SCRATCH_MAX:
        # Mid-sized inputs: a block allocated at the bound and then shrunk
        # defeats glibc's mmap threshold, which settles on the shrunk size, so
        # every next call maps and faults in fresh pages.  Measured 2026-11,
        # fresh process, 96 KB to 1 MB of mail text: 1.4-1.7 GB/s that way,
        # 2.5-4.6 GB/s through a reused scratch buffer copied out at the exact
        # size (its one extra memcpy costs ~10% when the heap had room).
        if cap > _scratch_cap:
            PyMem_Free(_scratch)
            _scratch_cap = 0
            _scratch = <unsigned char*>PyMem_Malloc(<size_t>cap)
            if _scratch == NULL:
                raise MemoryError()
            _scratch_cap = cap
        size = _encode_into(p, n, stuff, _scratch, dots)
        return (<char*>_scratch)[:size]
    # Small inputs (the bound stays under glibc's smallest mmap threshold, so
    # the shrink happens on the heap) and huge ones: fill a bytes object
    # allocated at the bound, then shrink it.
    res = _new_bytes(NULL, cap)
    size = _encode_into(p, n, stuff, <unsigned char*>_bytes_data(res), dots)
    _PyBytes_Resize(&res, size)  # on failure res is freed and the error raised
    result = <object>res  # new reference...
    Py_DECREF(res)  # ...so drop the one _new_bytes gave us
    return result


cdef object _encode_obj(object data, bint stuff, Py_ssize_t* dots):
    cdef Py_buffer view
    if PyBytes_CheckExact(data):
        return _encode(<const unsigned char*>PyBytes_AS_STRING(data),
                       PyBytes_GET_SIZE(data), stuff, dots)
    if _try_buffer(data, &view):
        try:
            return _encode(<const unsigned char*>view.buf, view.len, stuff, dots)
        finally:
            PyBuffer_Release(&view)
    data = bytes(data)  # non-contiguous buffers, iterables of ints, ...: as _wire_py
    return _encode(<const unsigned char*>PyBytes_AS_STRING(data),
                   PyBytes_GET_SIZE(data), stuff, dots)


def dot_stuff(data):
    """See fastsmtplib._wire_py.dot_stuff."""
    cdef Py_ssize_t dots
    return _encode_obj(data, True, &dots)


def dot_stuff_sized(data):
    """See fastsmtplib._wire_py.dot_stuff_sized."""
    cdef Py_ssize_t dots = 0  # dots added by stuffing, counted while encoding
    payload = _encode_obj(data, True, &dots)
    return payload, len(payload) - 3 - dots


def crlf_normalize(data):
    """See fastsmtplib._wire_py.crlf_normalize."""
    cdef Py_ssize_t dots
    return _encode_obj(data, False, &dots)


# --------------------------------------------------------------------------
# Reply parser


cdef inline bint _blank(unsigned char c) noexcept nogil:
    return c == SP or c == TAB or c == CR or c == LF


cdef inline int _line_code(const unsigned char* l, Py_ssize_t n, bint* more) noexcept nogil:
    """Code of one line (without its LF) or -1; sets ``more`` for ``DDD-``."""
    more[0] = False
    if n < 3:
        return -1
    if not (48 <= l[0] <= 57 and 48 <= l[1] <= 57 and 48 <= l[2] <= 57):
        return -1
    cdef int code = (l[0] - 48) * 100 + (l[1] - 48) * 10 + (l[2] - 48)
    if n == 3 or l[3] == SP:
        return code
    if l[3] == DASH:
        more[0] = True
        return code
    if l[3] == CR and n == 4:  # "DDD\r": bare code, CRLF-terminated
        return code
    return -1


cdef inline int _grow(unsigned char** buf, Py_ssize_t* cap, Py_ssize_t need) except -1:
    """Make ``*buf`` hold at least ``need`` bytes (and be allocated)."""
    if need <= cap[0] and buf[0] != NULL:
        return 0
    cdef Py_ssize_t new_cap = max(need, 2 * cap[0], 256)
    cdef void* r = PyMem_Realloc(buf[0], <size_t>new_cap)
    if r == NULL:
        raise MemoryError()
    buf[0] = <unsigned char*>r
    cap[0] = new_cap
    return 0


cdef inline unsigned int _memo_slot(const unsigned char* l, Py_ssize_t n) noexcept nogil:
    """Memo slot for a line of 1..MEMO_LINE bytes: a hash of its length and of
    its first and last 8 bytes (fewer when shorter).  Collisions only cost a miss."""
    cdef uint64_t a = 0, b = 0
    if n >= 8:
        memcpy(&a, l, 8)
        memcpy(&b, l + n - 8, 8)
    else:
        memcpy(&a, l, <size_t>n)
    cdef uint64_t h = (a * <uint64_t>0x9E3779B97F4A7C15) ^ (b * <uint64_t>0xC2B2AE3D27D4EB4F) ^ <uint64_t>n
    h ^= h >> 29
    return <unsigned int>((h * <uint64_t>0x94D049BB133111EB) >> 32) & (MEMO_SLOTS - 1)


cdef Py_ssize_t _clamp(object limit) except -1:
    # Limits above what any buffer can hold behave as "no limit".
    if limit > PY_SSIZE_T_MAX:
        return PY_SSIZE_T_MAX
    return limit


cdef class ReplyParser:
    # A docstring that starts "Name(...)\n--\n\n" gives the type a
    # __text_signature__ (what inspect.signature reads, defaults evaluated in
    # this module); __doc__ is the rest.  Keep it the twin's __init__ signature.
    "ReplyParser(max_line=MAXLINE, max_lines=MAX_REPLY_LINES, max_bytes=MAX_REPLY_BYTES)\n--\n\nSee fastsmtplib._wire_py.ReplyParser."

    cdef public Py_ssize_t max_line
    cdef public Py_ssize_t max_lines
    cdef public Py_ssize_t max_bytes
    # Incomplete last line (never holds an LF).
    cdef unsigned char* _tail
    cdef Py_ssize_t _tail_len, _tail_cap
    # Texts of the current reply's completed lines, already joined with LF.
    cdef unsigned char* _text
    cdef Py_ssize_t _text_len, _text_cap
    cdef Py_ssize_t _ntexts  # lines in the current reply so far
    cdef int _code  # code of the reply's first line
    cdef bint _bad  # a line of the reply changed the code
    cdef Py_ssize_t _nbytes  # bytes of the reply's completed lines
    # Memo of recent one-line replies: raw line (without LF) -> (code, text)
    # tuple.  Servers repeat the same few lines ("250 2.1.5 Ok", "354 ...")
    # for every message, and a hit skips building and freeing two objects.
    # The tuple is immutable and a pure function of the line's bytes.
    cdef PyObject* _memo_reply[MEMO_SLOTS]
    cdef unsigned char _memo_line[MEMO_SLOTS][MEMO_LINE]
    cdef Py_ssize_t _memo_len[MEMO_SLOTS]  # 0: empty slot

    def __init__(self, max_line=MAXLINE, max_lines=MAX_REPLY_LINES, max_bytes=MAX_REPLY_BYTES):
        if max_line < 4 or max_lines < 1 or max_bytes < 4:
            raise ValueError("reply limits are too small to hold a reply")
        self.max_line = _clamp(max_line)
        self.max_lines = _clamp(max_lines)
        self.max_bytes = _clamp(max_bytes)
        self.reset()

    def __dealloc__(self):
        PyMem_Free(self._tail)
        PyMem_Free(self._text)
        cdef int i
        for i in range(MEMO_SLOTS):
            Py_XDECREF(self._memo_reply[i])

    def reset(self):
        """See fastsmtplib._wire_py.ReplyParser.reset."""
        self._tail_len = 0
        self._new_reply()

    @property
    def pending(self):
        """See fastsmtplib._wire_py.ReplyParser.pending."""
        return self._tail_len + self._nbytes

    @property
    def in_reply(self):
        """See fastsmtplib._wire_py.ReplyParser.in_reply."""
        return self._tail_len > 0 or self._ntexts > 0

    def feed(self, data):
        """See fastsmtplib._wire_py.ReplyParser.feed."""
        cdef Py_buffer view
        if PyBytes_CheckExact(data):
            return self._feed(<const unsigned char*>PyBytes_AS_STRING(data),
                              PyBytes_GET_SIZE(data))
        if _try_buffer(data, &view):
            try:
                return self._feed(<const unsigned char*>view.buf, view.len)
            finally:
                PyBuffer_Release(&view)
        data = bytes(data)  # as _wire_py does for anything else
        return self._feed(<const unsigned char*>PyBytes_AS_STRING(data),
                          PyBytes_GET_SIZE(data))

    cdef inline void _new_reply(self) noexcept:
        self._ntexts = 0
        self._text_len = 0
        self._code = 0
        self._bad = False
        self._nbytes = 0
        if self._text_cap > 65536:  # don't keep a huge reply's buffer around
            PyMem_Free(self._text)
            self._text = NULL
            self._text_cap = 0

    cdef list _feed(self, const unsigned char* p, Py_ssize_t n):
        cdef list out
        cdef const unsigned char* end = p + n
        cdef const unsigned char* nl
        cdef Py_ssize_t max_line = self.max_line
        cdef Py_ssize_t k
        if (self._tail_len == 0 and 0 < n <= max_line and p[n - 1] == LF
                and memchr(p, LF, <size_t>(n - 1)) == NULL):
            # Fast path: the chunk is exactly one line (one reply, or one line
            # of a multi-line reply).  Same steps as the loop below.
            reply = self._line(p, n - 1)
            self._check_pending()
            return [] if reply is None else [reply]
        out = []
        if self._tail_len:
            # Finish the buffered line first; the tail never holds an LF, so the
            # line ends at the first LF of this chunk.
            nl = <const unsigned char*>memchr(p, LF, <size_t>n)
            k = n if nl == NULL else nl - p
            if self._tail_len + k + (nl != NULL) > max_line:
                raise ReplyLimitError("line", max_line)
            _grow(&self._tail, &self._tail_cap, self._tail_len + k)
            memcpy(self._tail + self._tail_len, p, <size_t>k)
            self._tail_len += k
            if nl == NULL:
                self._check_pending()
                return out
            k = self._tail_len
            self._tail_len = 0
            reply = self._line(self._tail, k)
            if reply is not None:
                out.append(reply)
            p = nl + 1
        while p < end:
            nl = <const unsigned char*>memchr(p, LF, <size_t>(end - p))
            if nl == NULL:
                if end - p > max_line:
                    raise ReplyLimitError("line", max_line)
                break
            if nl - p >= max_line:  # the line with its LF is longer than max_line
                raise ReplyLimitError("line", max_line)
            reply = self._line(p, nl - p)
            if reply is not None:
                out.append(reply)
            p = nl + 1
        if p < end:
            k = end - p
            _grow(&self._tail, &self._tail_cap, k)
            memcpy(self._tail, p, <size_t>k)
            self._tail_len = k
        self._check_pending()
        return out

    cdef inline int _check_pending(self) except -1:
        if self._nbytes + self._tail_len > self.max_bytes:
            raise ReplyLimitError("bytes", self.max_bytes)
        return 0

    @cython.boundscheck(False)  # _CODES[code]: _line_code returns -1 or 0..999
    @cython.wraparound(False)
    cdef object _line(self, const unsigned char* l, Py_ssize_t n):
        """Take one complete line ``l[:n]`` (its LF not included); return the
        reply it completes, or None."""
        cdef bint more
        cdef int code
        cdef const unsigned char* s
        cdef const unsigned char* t = l + n
        cdef Py_ssize_t k
        cdef unsigned int slot = 0
        self._nbytes += n + 1
        if self._nbytes > self.max_bytes:
            raise ReplyLimitError("bytes", self.max_bytes)
        if self._ntexts == 0 and 0 < n <= MEMO_LINE:
            slot = _memo_slot(l, n)
            if self._memo_len[slot] == n and memcmp(self._memo_line[slot], l, <size_t>n) == 0:
                # Same bytes as a one-line reply seen before: same reply.
                self._nbytes = 0
                return <object>self._memo_reply[slot]
        code = _line_code(l, n, &more)
        # Text: line[4:] with blanks stripped from both ends.
        s = l + 4 if n > 4 else t
        while s < t and _blank(s[0]):
            s += 1
        while t > s and _blank((t - 1)[0]):
            t -= 1
        if self._ntexts == 0 and (code < 0 or not more):
            # A whole reply in one line: the common case, no joining.
            reply = (_CODES[code] if code >= 0 else -1, (<char*>s)[:t - s])
            if 0 < n <= MEMO_LINE:
                Py_XDECREF(self._memo_reply[slot])
                Py_INCREF(reply)
                self._memo_reply[slot] = <PyObject*>reply
                memcpy(self._memo_line[slot], l, <size_t>n)
                self._memo_len[slot] = n
            self._nbytes = 0
            return reply
        k = t - s
        if self._ntexts:
            _grow(&self._text, &self._text_cap, self._text_len + k + 1)
            self._text[self._text_len] = LF
            self._text_len += 1
        else:
            _grow(&self._text, &self._text_cap, k)
        memcpy(self._text + self._text_len, s, <size_t>k)
        self._text_len += k
        self._ntexts += 1
        if code < 0:  # malformed line: it ends the reply, as in the stdlib
            return self._emit(-1)
        if self._ntexts == 1:
            self._code = code
        elif code != self._code:
            self._bad = True
        if more:
            if self._ntexts >= self.max_lines:
                raise ReplyLimitError("lines", self.max_lines)
            return None
        return self._emit(-1 if self._bad else self._code)

    @cython.boundscheck(False)  # _CODES[code]: code is -1 or 0..999
    @cython.wraparound(False)
    cdef tuple _emit(self, int code):
        reply = (_CODES[code] if code >= 0 else -1, (<char*>self._text)[:self._text_len])
        self._new_reply()
        return reply


# --------------------------------------------------------------------------
# Envelope encoder


cdef extern from *:
    """
    /* 1 when str s is all ASCII (its characters are then one byte each, and
       those bytes are its ASCII encoding), else 0; -1 on error.  Strings made
       by the legacy Unicode API before 3.12 must be made ready first. */
    static inline int fsl_str_is_ascii(PyObject *s)
    {
    #if PY_VERSION_HEX < 0x030C0000
        if (PyUnicode_READY(s) < 0)
            return -1;
    #endif
        return PyUnicode_IS_ASCII(s) ? 1 : 0;
    }
    """
    int _str_is_ascii "fsl_str_is_ascii"(object s) except -1


cdef enum:
    LT = 60  # '<'
    GT = 62  # '>'
    AT = 64  # '@'
    # Address character classes (bits of _ADDR_CHAR).
    ATEXT = 1  # atext (RFC 5321 §4.1.2): may be in a local-part atom
    LABEL = 2  # may be in a domain label (letters, digits, '-')
    # Lengths of the fixed parts of the envelope lines.
    MAIL_HEAD_LEN = 11  # b"mail FROM:<"
    RCPT_HEAD_LEN = 9  # b"rcpt TO:<"
    TAIL_LEN = 3  # b">" before the parameters, b"\r\n" after them

cdef const char* MAIL_HEAD = b"mail FROM:<"
cdef const char* RCPT_HEAD = b"rcpt TO:<"

# Class bits of every byte value; 0 for anything that can't be in an address.
cdef unsigned char _ADDR_CHAR[256]


cdef void _fill_addr_chars() noexcept:
    cdef unsigned char c
    for c in b"!#$%&'*+/=?^_`{|}~":
        _ADDR_CHAR[c] = ATEXT
    for c in b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-":
        _ADDR_CHAR[c] = ATEXT | LABEL


_fill_addr_chars()


cdef bint _plain_addr(const unsigned char* p, Py_ssize_t n) noexcept nogil:
    """True when ``p[:n]`` is a bare plain address: a dot-atom, '@', a domain."""
    cdef const unsigned char* end = p + n
    # Local part: atoms of atext joined by single dots.
    while True:
        if p == end or not (_ADDR_CHAR[p[0]] & ATEXT):
            return False  # empty atom: empty local part, or a dot misplaced
        p += 1
        while p < end and (_ADDR_CHAR[p[0]] & ATEXT):
            p += 1
        if p == end or p[0] != DOT:
            break
        p += 1
    if p == end or p[0] != AT:
        return False
    p += 1
    # Domain: labels of letters, digits and '-' joined by single dots.
    while True:
        if p == end or not (_ADDR_CHAR[p[0]] & LABEL):
            return False  # empty label
        p += 1
        while p < end and (_ADDR_CHAR[p[0]] & LABEL):
            p += 1
        if p == end:
            return True
        if p[0] != DOT:
            return False
        p += 1


cdef inline Py_ssize_t _strip_brackets(object s, const unsigned char** addr) noexcept:
    """Length of ASCII str ``s`` without one pair of enclosing angle brackets,
    with ``addr[0]`` set to the first character after the '<' if any."""
    cdef const unsigned char* p = PyUnicode_1BYTE_DATA(s)
    cdef Py_ssize_t n = PyUnicode_GET_LENGTH(s)
    if n >= 2 and p[0] == LT and p[n - 1] == GT:
        p += 1
        n -= 2
    addr[0] = p
    return n


cdef Py_ssize_t _path_addr(object s, const unsigned char** addr) except -2:
    """Length of the address in ``s`` when ``s`` is a plain path (a plain
    address, bare or in one pair of angle brackets), with ``addr[0]`` set to
    its first character; -1 when it is not (or not a str)."""
    if not PyUnicode_Check(s) or not _str_is_ascii(s):
        return -1
    cdef Py_ssize_t n = _strip_brackets(s, addr)
    # A '<' or '>' left over (unbalanced, doubled) is not atext: refused here.
    return n if _plain_addr(addr[0], n) else -1


cdef inline char* _put(char* o, const void* src, Py_ssize_t n) noexcept nogil:
    memcpy(o, src, <size_t>n)
    return o + n


cdef inline char* _put_line(char* o, const char* head, Py_ssize_t head_len,
                            const unsigned char* addr, Py_ssize_t n,
                            object params) noexcept:
    """Write ``head + addr[:n] + b">" + params + b"\\r\\n"`` (params: exact bytes)."""
    o = _put(o, head, head_len)
    o = _put(o, addr, n)
    o[0] = GT
    o = _put(o + 1, PyBytes_AS_STRING(params), PyBytes_GET_SIZE(params))
    o[0] = CR
    o[1] = LF
    return o + 2


def encode_envelope(from_addr, to_addrs, mail_params, rcpt_params):
    """See fastsmtplib._wire_py.encode_envelope."""
    cdef const unsigned char* addr
    cdef Py_ssize_t n, i, nrcpt, total, line
    cdef char* o
    if not PyBytes_CheckExact(mail_params):
        mail_params = memoryview(mail_params).tobytes()
    if not PyBytes_CheckExact(rcpt_params):
        rcpt_params = memoryview(rcpt_params).tobytes()
    if not (PyList_Check(to_addrs) or PyTuple_Check(to_addrs)):
        return None
    # The list or tuple itself, or (for a subclass) a list of the items its
    # iterator gives, as ``[from_addr, *to_addrs]`` in the twin.
    rcpts = PySequence_Fast(to_addrs, b"to_addrs")
    nrcpt = PySequence_Fast_GET_SIZE(rcpts)

    # Pass 1: check every address and add up the output's length.
    n = _path_addr(from_addr, &addr)
    if n < 0:
        return None
    total = MAIL_HEAD_LEN + n + TAIL_LEN + PyBytes_GET_SIZE(mail_params)
    line = RCPT_HEAD_LEN + TAIL_LEN + PyBytes_GET_SIZE(rcpt_params)  # without the address
    for i in range(nrcpt):
        n = _path_addr(<object>PySequence_Fast_GET_ITEM(rcpts, i), &addr)
        if n < 0:
            return None
        if n > PY_SSIZE_T_MAX - line - total:
            raise MemoryError()
        total += line + n

    # Pass 2: write the lines into a bytes object of exactly that length.  No
    # Python code runs between the passes (the only allocation is a bytes
    # object, which the garbage collector does not track, so it cannot start a
    # collection), so the items and their lengths are still those of pass 1.
    out = PyBytes_FromStringAndSize(NULL, total)
    o = PyBytes_AS_STRING(out)
    n = _strip_brackets(from_addr, &addr)
    o = _put_line(o, MAIL_HEAD, MAIL_HEAD_LEN, addr, n, mail_params)
    for i in range(nrcpt):
        n = _strip_brackets(<object>PySequence_Fast_GET_ITEM(rcpts, i), &addr)
        o = _put_line(o, RCPT_HEAD, RCPT_HEAD_LEN, addr, n, rcpt_params)
    return out


# --------------------------------------------------------------------------
# The sink's hot loop (see _wire_py.sink_scan, the reference).  Every test the
# twin makes on a line is made here on the same bytes, with the same notion
# of a blank (bytes.split()/strip(): SP and 9..13) and of case (ASCII only).


cdef inline bint _ws(unsigned char c) noexcept nogil:
    return c == SP or (TAB <= c and c <= CR)


cdef bint _ieq(const unsigned char* p, const char* lit, Py_ssize_t n) noexcept nogil:
    """``p[:n].upper() == lit`` for an upper-case ASCII ``lit``."""
    cdef Py_ssize_t i
    cdef unsigned char t
    for i in range(n):
        t = <unsigned char>lit[i]
        if 65 <= t <= 90:
            if (p[i] & 0xDF) != t:
                return False
        elif p[i] != t:
            return False
    return True


cdef bint _digits(const unsigned char* p, Py_ssize_t n, long long* value) noexcept nogil:
    """1 to 18 ASCII digits (``isdigit()`` and short enough for a long long)."""
    cdef long long v = 0
    cdef Py_ssize_t i
    if n < 1 or n > 18:
        return False
    for i in range(n):
        if not 48 <= p[i] <= 57:
            return False
        v = v * 10 + (p[i] - 48)
    value[0] = v
    return True


cdef inline Py_ssize_t _token(const unsigned char* l, Py_ssize_t k, Py_ssize_t j,
                              Py_ssize_t* start) noexcept nogil:
    """The next blank-separated token in ``l[k:j]``: its start in ``start``, its end returned (-1: none)."""
    while k < j and _ws(l[k]):
        k += 1
    if k >= j:
        return -1
    start[0] = k
    while k < j and not _ws(l[k]):
        k += 1
    return k


cdef int _mail_ok(const unsigned char* l, Py_ssize_t n, long long size) noexcept nogil:
    cdef Py_ssize_t i = 10, j = n, k, t = 0, vs
    cdef const unsigned char* gt
    cdef const unsigned char* eq
    cdef long long v
    cdef int binary = 0
    if n < 10 or not _ieq(l + 5, b"FROM:", 5):
        return -1
    while i < j and _ws(l[i]):
        i += 1
    while j > i and _ws(l[j - 1]):
        j -= 1
    if i >= j or l[i] != 60:  # "<"
        return -1
    gt = <const unsigned char*>memchr(l + i, 62, <size_t>(j - i))  # ">"
    if gt == NULL:
        return -1
    k = gt - l + 1
    while True:
        k = _token(l, k, j, &t)
        if k < 0:
            return binary
        eq = <const unsigned char*>memchr(l + t, 61, <size_t>(k - t))  # "="
        vs = (eq - l + 1) if eq != NULL else k
        if (eq - (l + t) if eq != NULL else k - t) != 4:
            continue
        if _ieq(l + t, b"SIZE", 4):
            if not _digits(l + vs, k - vs, &v) or v > size:
                return -1
        elif _ieq(l + t, b"BODY", 4):
            if k - vs == 10 and _ieq(l + vs, b"BINARYMIME", 10):
                binary = 1
            elif not ((k - vs == 4 and _ieq(l + vs, b"7BIT", 4))
                      or (k - vs == 8 and _ieq(l + vs, b"8BITMIME", 8))):
                return -1


cdef bint _rcpt_ok(const unsigned char* l, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i = 8, j = n
    cdef const unsigned char* gt
    if n < 8 or not _ieq(l + 5, b"TO:", 3):
        return False
    while i < j and _ws(l[i]):
        i += 1
    while j > i and _ws(l[j - 1]):
        j -= 1
    if i >= j or l[i] != 60:
        return False
    gt = <const unsigned char*>memchr(l + i, 62, <size_t>(j - i))
    return gt != NULL and gt - (l + i) > 1


cdef bint _bdat_ok(const unsigned char* l, Py_ssize_t n, long long* size, int* last) noexcept nogil:
    """``BDAT n [LAST]`` as ``line.split()`` sees it."""
    cdef Py_ssize_t k, t = 0
    k = _token(l, 0, n, &t)  # "BDAT" (the verb test made sure)
    k = _token(l, k, n, &t)
    if k < 0 or not _digits(l + t, k - t, size):
        return False
    k = _token(l, k, n, &t)
    if k < 0:
        last[0] = 0
        return True
    if k - t != 4 or not _ieq(l + t, b"LAST", 4):
        return False
    last[0] = 1
    return _token(l, k, n, &t) < 0


cdef int _put_out(unsigned char** o, Py_ssize_t* cap, Py_ssize_t* olen,
                  const char* src, Py_ssize_t n) except -1:
    _grow(o, cap, olen[0] + n)
    memcpy(o[0] + olen[0], src, <size_t>n)
    olen[0] += n
    return 0


cdef const char* _S_MAIL_OK = b"250 2.1.0 Ok\r\n"
cdef const char* _S_RCPT_OK = b"250 2.1.5 Ok\r\n"
cdef const char* _S_OK = b"250 2.0.0 Ok\r\n"
cdef const char* _S_354 = b"354 End data with <CR><LF>.<CR><LF>\r\n"


def sink_scan(buf, pos, st, size, max_recipients, max_line, lmtp, room):
    if len(st) != 17:
        raise ValueError("sink_scan: the state list must have 17 items")
    cdef long long state = st[0], bol = st[1], remaining = st[2], last = st[3], mail_open = st[4]
    cdef long long nrcpt = st[5], binary = st[6], body = st[7], too_big = st[8], greeted = st[9]
    cdef long long bdat_ok = st[10], qid = st[11], n250 = st[12], n354 = st[13], messages = st[14]
    cdef long long recipients = st[15], nbytes = st[16]
    cdef long long c_size = size, c_max_rcpt = max_recipients, chunk = 0, length, count
    cdef Py_ssize_t c_pos = pos, c_max_line = _clamp(max_line), c_room = _clamp(room)
    cdef bint c_lmtp = lmtp
    cdef Py_buffer view
    cdef const unsigned char* p
    cdef const unsigned char* l
    cdef const unsigned char* f
    cdef Py_ssize_t n, eol, ln, start, cut, lastcrlf, q, stuffed, take
    cdef Py_ssize_t mail_at = -1, mail_len = 0
    cdef long long start_bol
    cdef int b, chunk_last = 0, last_dot
    cdef bint done = False, found
    cdef unsigned char* o = NULL
    cdef Py_ssize_t ocap = 0, olen = 0
    cdef char line[64]
    cdef int k, stop = 1
    if c_pos < 0:
        raise ValueError("sink_scan: pos must not be negative")
    PyObject_GetBuffer(buf, &view, PyBUF_SIMPLE)
    try:
        p = <const unsigned char*>view.buf
        n = view.len
        while c_pos < n and olen < c_room:
            if state == 0:
                ln = n - c_pos if n - c_pos < c_max_line else c_max_line
                f = <const unsigned char*>memchr(p + c_pos, LF, <size_t>ln) if ln > 1 else NULL
                # The first CRLF that ends inside the window (an LF at the
                # window's start, or after a byte that is not CR, is no line end).
                while f != NULL and (f == p + c_pos or f[-1] != CR):
                    q = f - p + 1
                    f = <const unsigned char*>memchr(f + 1, LF, <size_t>(c_pos + ln - q)) if q < c_pos + ln else NULL
                if f == NULL:
                    stop = 0 if n - c_pos < c_max_line else 1  # an incomplete line, or one too long
                    break
                eol = f - p - 1
                l = p + c_pos
                ln = eol - c_pos
                if ln > 4 and l[4] != SP:
                    break
                if ln >= 4 and _ieq(l, b"MAIL", 4):
                    if not greeted or mail_open:
                        break
                    b = _mail_ok(l, ln, c_size)
                    if b < 0:
                        break
                    mail_open, nrcpt, binary, body, too_big = 1, 0, b, 0, 0
                    mail_at, mail_len = c_pos, ln
                    n250 += 1
                    _put_out(&o, &ocap, &olen, _S_MAIL_OK, 14)
                elif ln >= 4 and _ieq(l, b"RCPT", 4):
                    if not mail_open or nrcpt >= c_max_rcpt or not _rcpt_ok(l, ln):
                        break
                    nrcpt += 1
                    n250 += 1
                    _put_out(&o, &ocap, &olen, _S_RCPT_OK, 14)
                elif ln >= 4 and _ieq(l, b"DATA", 4):
                    if ln > 4 or not mail_open or not nrcpt or binary or too_big:
                        break
                    state, bol = 1, 1
                    n354 += 1
                    _put_out(&o, &ocap, &olen, _S_354, 37)
                elif ln >= 4 and _ieq(l, b"BDAT", 4):
                    if not _bdat_ok(l, ln, &chunk, &chunk_last) or not mail_open or not nrcpt or too_big:
                        break
                    state, remaining, last, bdat_ok = 2, chunk, chunk_last, 1
                elif ln >= 4 and _ieq(l, b"RSET", 4):
                    if ln > 4:
                        break
                    mail_open, nrcpt, binary, body, too_big = 0, 0, 0, 0, 0
                    mail_at = -1
                    n250 += 1
                    _put_out(&o, &ocap, &olen, _S_OK, 14)
                elif ln >= 4 and _ieq(l, b"NOOP", 4):
                    n250 += 1
                    _put_out(&o, &ocap, &olen, _S_OK, 14)
                else:
                    break
                c_pos = eol + 2
                if state != 2 or remaining:
                    continue
            elif state == 1:
                if too_big:
                    break
                start, start_bol = c_pos, bol
                if bol:
                    if n - c_pos >= 3 and p[c_pos] == DOT and p[c_pos + 1] == CR and p[c_pos + 2] == LF:
                        state, c_pos, done = 0, c_pos + 3, True
                    else:
                        if p[c_pos] == DOT and (n - c_pos == 1 or (n - c_pos == 2 and p[c_pos + 1] == CR)):
                            stop = 0
                            break  # ".", ".\r": wait for more
                        if p[c_pos] == DOT:
                            c_pos += 1  # a stuffed dot (RFC 5321 §4.5.2)
                        bol = 0
                if not done:
                    # The CRLF-dots, up to the first CRLF.CRLF: each before
                    # the cut is a stuffed dot.  Without a terminator, the
                    # cut is after the last CRLF, found walking back.
                    found = False
                    stuffed = 0
                    lastcrlf = -1
                    last_dot = 0
                    q = c_pos
                    while True:
                        f = _find_crlf_dot(p + q, p + n)
                        if f == NULL:
                            break
                        q = f - p
                        if q + 4 < n and p[q + 3] == CR and p[q + 4] == LF:
                            found = True
                            lastcrlf = q
                            break
                        stuffed += 1
                        q += 3
                    if not found:
                        q = n - 1
                        while q > c_pos:
                            if p[q] == LF and p[q - 1] == CR:
                                lastcrlf = q - 1
                                # Its dot, if here, was counted: it is the next line's.
                                last_dot = lastcrlf + 2 < n and p[lastcrlf + 2] == DOT
                                break
                            q -= 1
                    if found:
                        cut = lastcrlf + 2
                        length = cut - c_pos - stuffed
                    elif lastcrlf >= 0:
                        cut = lastcrlf + 2
                        length = cut - c_pos - (stuffed - last_dot)
                    else:
                        cut = n - 1 if n > c_pos and p[n - 1] == CR else n
                        length = cut - c_pos if cut > c_pos else 0
                    if body + length > c_size:
                        c_pos, bol = start, start_bol
                        break
                    body += length
                    if found:
                        state, bol, c_pos, done = 0, 1, lastcrlf + 5, True
                    else:
                        if lastcrlf >= 0:
                            bol = 1
                        c_pos = cut
                        stop = 0
                        break  # the rest is not here yet
                else:
                    bol = 1
            else:
                if too_big or not bdat_ok:
                    break
                take = n - c_pos
                if remaining < take:
                    take = <Py_ssize_t>remaining
                if take:
                    if body + take > c_size:
                        break
                    body += take
                    remaining -= take
                    c_pos += take
                if remaining:
                    continue
            if state == 2:
                # The end of a chunk (RFC 3030 §2); BDAT 0 comes here too.
                state = 0
                if not last:
                    k = snprintf(line, sizeof(line), b"250 2.0.0 Ok: %lld octets\r\n", body)
                    n250 += 1
                    _put_out(&o, &ocap, &olen, line, k)
                    continue
                done = True
            if done:
                done = False
                qid += 1
                messages += 1
                recipients += nrcpt
                nbytes += body
                k = snprintf(line, sizeof(line), b"250 2.0.0 Ok: queued as %08llX\r\n",
                             <unsigned long long>qid)
                count = nrcpt if c_lmtp else 1
                n250 += count
                while count > 0:
                    _put_out(&o, &ocap, &olen, line, k)
                    count -= 1
                mail_open, nrcpt, binary, body, too_big = 0, 0, 0, 0, 0
                mail_at = -1
        else:
            stop = 0 if c_pos >= n else 2
        mail = None
        if mail_open and mail_at >= 0:
            mail = PyBytes_FromStringAndSize(<const char*>p + mail_at, mail_len)
        out = PyBytes_FromStringAndSize(<const char*>o, olen) if olen else b""
    finally:
        PyBuffer_Release(&view)
        PyMem_Free(o)
    st[:] = [state, bol, remaining, last, mail_open, nrcpt, binary, body, too_big, greeted, bdat_ok,
             qid, n250, n354, messages, recipients, nbytes]
    return c_pos, out, mail, stop


# --------------------------------------------------------------------------
# Docstrings: the twin's are the contract, kept in one place.  Functions and
# methods are cyfunctions (binding=True), whose __doc__ is writable: they take
# over the twin's docstring at import, so help() reads the same on both.  The
# class and its properties belong to a static type whose docs are fixed at
# compile time; they keep their one line pointing to the twin.


def _adopt_docs(twin):
    cyfunction = type(_adopt_docs)
    for ours, theirs in ((globals(), vars(twin)), (ReplyParser.__dict__, vars(twin.ReplyParser))):
        for name, fn in ours.items():
            if type(fn) is cyfunction and not name.startswith("_"):
                fn.__doc__ = theirs[name].__doc__


import fastsmtplib._wire_py as _twin  # noqa: E402

_adopt_docs(_twin)
del _adopt_docs, _twin
