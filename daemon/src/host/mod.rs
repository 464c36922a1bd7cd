//! The host the daemon runs on: files written whole, memory handed back,
//! the process set up (secrets off the command line, limits, logging),
//! systemd (notify, watchdog, shutdown inhibition), and the facts a node
//! reports about its machine.

pub mod fsutil;
pub mod memory;
pub mod nodeinfo;
pub mod process;
pub mod systemd;
