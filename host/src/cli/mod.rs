//! The `snapstore` command's parts: its arguments (`args`), the commands
//! that run them (`commands`), the child process a build or a cache run
//! starts (`child`), what is printed (`output`) and the exit statuses
//! (`exit`).

pub mod args;
pub mod child;
pub mod commands;
pub mod exit;
pub mod output;
