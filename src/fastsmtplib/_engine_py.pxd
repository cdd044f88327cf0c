# Augmenting declarations for _engine_py.py, read by Cython only.
#
# setup.py compiles _engine_py.py, unchanged, with these declarations into
# fastsmtplib._engine_c (copies under build/cython/).  Nothing here changes
# behaviour: it gives the engine's state C types (cdef classes, C ints, typed
# lists), makes the internal methods C calls, and inlines the small helpers.
# Keep it in step with the .py: an attribute added there must be declared
# here, or the compiled twin cannot set it (the tests would fail).

cimport cython

cdef int _RSET, _MAIL, _RCPT, _DATA, _FINAL, _DOT
cdef int _SIG_FAIL, _SIG_PLAIN, _SIG_A, _SIG_D, _SIG_I
cdef Py_ssize_t _MAX_HELD_FACTOR, _OWED_COMPACT


@cython.final
cdef class SendResult:
    cdef public object index, from_addr, to_addrs, status, recipients, reply, exception, attempts
    cdef public object data_replies, sent_at, done_at


@cython.final
cdef class _Msg:
    cdef SendResult result
    cdef list to_addrs
    cdef object envelope, payload, mail
    cdef bint mail_ok
    cdef list accepted, finals, lines
    cdef dict recipients
    cdef Py_ssize_t owed, next_line, nrcpt
    cdef bint data_sent, body_sent, dot_only, body_due
    cdef Py_ssize_t epoch
    cdef object status, exc, reply


cdef inline bint _positive(int kind, int code)
cdef inline int _expected_class(int kind)
@cython.locals(n=Py_ssize_t, i=Py_ssize_t)
cdef int _enhanced_class(bytes text)
cdef bytes _bdat_last(Py_ssize_t size)
cdef object _by_code(int code)
cdef dict _refused(dict recipients)
cdef object _refusal_status(dict refused)
cdef SendResult _publish(_Msg m)
cdef void _report_unknown(_Msg m, object exc) except *


@cython.final
cdef class Engine:
    cdef public object caps, encoder, parser, broken
    cdef public bint lmtp, pipelining, bdat, enhanced
    cdef public Py_ssize_t window, low_water
    cdef list _queue, _flights, _okinds, _omsgs, _held, _ready, _body_due
    cdef Py_ssize_t _qhead, _fhead, _ohead, _epoch, _envelopes_out
    cdef bint _need_rset
    cdef int _prev_sig
    cdef _Msg _lockstep

    cpdef Py_ssize_t room(self) except -1
    cpdef list take_results(self)
    @cython.locals(m=_Msg, out=list)
    cpdef bytes bytes_to_send(self)
    cpdef list receive(self, object data)
    cpdef list receive_replies(self, object replies)
    cpdef list connection_lost(self, object exc)
    @cython.locals(head=Py_ssize_t, m=_Msg)
    cdef _Msg _pop_queue(self)
    @cython.locals(head=Py_ssize_t)
    cdef void _add_flight(self, _Msg m) except *
    @cython.locals(head=Py_ssize_t)
    cdef void _owe(self, int kind, _Msg m) except *
    cdef void _write_rset(self, list out) except *
    @cython.locals(m=_Msg, flying=Py_ssize_t, room=Py_ssize_t, budget=Py_ssize_t, payload=bytes)
    cdef void _pipelined_write(self, list out) except *
    @cython.locals(m=_Msg, lines=list)
    cdef void _lockstep_write(self, list out) except *
    @cython.locals(head=Py_ssize_t, kind=int, m=_Msg, sig=int, want=int, prev=int, held_before=Py_ssize_t)
    cdef void _match(self, int code, bytes text, tuple reply) except *
    cdef void _advance(self, _Msg m) except *
    cdef void _reset_after_failure(self, _Msg m) noexcept
    cdef void _finish_envelope(self, _Msg m) except *
    @cython.locals(finals=list, code=int, delivered=Py_ssize_t, partial=bint)
    cdef void _finish_final(self, _Msg m) except *
    @cython.locals(flights=list, head=Py_ssize_t, i=Py_ssize_t)
    cdef void _finish(self, _Msg m, object status, object exc) except *
    @cython.locals(held=list, ready=list, n=Py_ssize_t, i=Py_ssize_t)
    cdef void _confirm(self, Py_ssize_t upto) except *
    cdef void _closing(self, int kind, _Msg m, int code, bytes text, tuple reply) except *
    @cython.locals(m=_Msg, ready=list)
    cdef void _stop(self, object exc) except *
