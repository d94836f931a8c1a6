//! The `snapstore` command's parts: its arguments (`args`, and `fast_path` for
//! the plain `result ID`), the commands
//! that run them (`commands`, and `info` for those about snapstore itself), what is
//! printed (`output`) and the exit statuses (`exit`). The command a build or a cache run starts is run by
//! the library's `supervise`.

pub mod args;
pub mod commands;
pub mod exit;
pub mod fast_path;
pub mod info;
pub mod output;
pub mod remote;
