"""Wire formats of the gateway: pure functions, no Django, no I/O.

Parsing and writing of ``message/http`` envelopes, ``Link`` headers, labels, leases and
``Requesting-Client`` values, as required by ``shared/spec/PROTOCOL.md``.
"""
