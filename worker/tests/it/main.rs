//! Integration tests of the worker against in-process master clusters: the client API and its
//! errors (`api`), timeline semantics (`timeline`), the history/live boundary under concurrent
//! writes (`boundary`), and the worker's life with the masters: registration, fail-over, shedding,
//! graceful stop, respawn requests (`control`); batched writes and writes that move on from a
//! leader cut off or late (`writes`); real worker processes (`process`); a user trying to
//! make the cluster work for nothing (`abuse`); and sessions ended, keys rotated (`sessions`).

mod abuse;
mod accounts;
mod api;
mod boundary;
mod control;
mod fixture;
mod health;
mod metrics;
mod process;
mod sessions;
mod timeline;
mod writes;
