//! `umcg-sim`: synchronous idle-server handoff (UMCG v0.3's tag-bit list) against fd-based
//! idle wakeup (eventfd + epoll), measured on real threads and in a calibrated model.
//!
//! Status: not built yet (issue 5). The CLI says so instead of printing made-up numbers.
