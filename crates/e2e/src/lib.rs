//! End-to-end tests of the macvtap CNI plugin and device plugin with real
//! container runtimes. Everything lives in `tests/`; this library is empty.
