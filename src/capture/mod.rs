//! Trigger capture of every row change into ferry_change.
