//! Moving sealed bundles between directories: the outbox, the inbox, quarantine, and
//! whatever carries them between nodes (a USB stick, an rsync'd folder).

pub mod atomic;
