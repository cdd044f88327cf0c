# Augmenting declarations for _envelope_py.py, read by Cython only.
#
# setup.py compiles _envelope_py.py, unchanged, with these declarations into
# fastsmtplib._envelope_c (copies under build/cython/), as it does the engine
# (_engine_py.pxd).  Nothing here changes behaviour; every attribute the .py
# sets must be declared here.

cimport cython

cdef object _encode_envelope, _crlf_normalize, _dot_stuff_sized, _NO_SUFFIX


@cython.final
cdef class Prepared:
    cdef public object from_addr, to_addrs, envelope, payload
    cdef public bint bdat, utf8


@cython.final
cdef class Encoder:
    cdef public object caps
    cdef public bint bdat
    cdef dict _suffixes
    cdef bint _esmtp, _binarymime
    cdef object _size

    cpdef object _suffix(self, object mail_options, object rcpt_options)
    @cython.locals(suffix=tuple, bdat=bint, size=Py_ssize_t)
    cpdef object _fast(self, object from_addr, list to_list, object msg, object mail_options, object rcpt_options)
