//! Moving sealed bundles between directories: the outbox, the inbox, quarantine, and
//! whatever carries them between nodes (a USB stick, an rsync'd folder).

pub mod atomic;
pub mod carry;
pub mod sequences;
pub mod state;

pub use carry::{receive, send, ReceiveReport, Receiver, Refused, SendReport};
pub use state::{StateDirs, TransportError};
