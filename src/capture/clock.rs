//! The hybrid logical clock that versions every change.
//!
//! A version is (wall µs, counter, node), totally ordered. The clock never runs
//! backwards and always moves past every version it has observed, so an edit made
//! after a node has seen version V is greater than V whatever the wall clocks say: a
//! clinic whose clock is a year behind still overwrites the value it was shown. The
//! clock's state lives in `ferry_meta` and is read and written under the stamping lock.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::bundle::Version;

/// The clock's state: the greatest (wall, counter) issued or observed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hlc {
    pub wall_us: i64,
    pub counter: u32,
}

impl Hlc {
    /// Parses the stored form `wall,counter`.
    pub fn parse(text: &str) -> Option<Hlc> {
        let (w, c) = text.split_once(',')?;
        Some(Hlc {
            wall_us: w.trim().parse().ok()?,
            counter: c.trim().parse().ok()?,
        })
    }

    /// The stored form.
    pub fn to_text(self) -> String {
        format!("{},{}", self.wall_us, self.counter)
    }

    /// Issues the next version for a local event at `physical_us`, by `node`.
    pub fn tick(&mut self, physical_us: i64, node: &str) -> Version {
        if physical_us > self.wall_us {
            self.wall_us = physical_us;
            self.counter = 0;
        } else {
            self.counter += 1;
        }
        Version {
            wall_us: self.wall_us,
            counter: self.counter,
            node: node.to_string(),
        }
    }

    /// Moves the clock past a version received from elsewhere.
    pub fn observe(&mut self, v: &Version) {
        if (v.wall_us, v.counter) > (self.wall_us, self.counter) {
            self.wall_us = v.wall_us;
            self.counter = v.counter;
        }
    }
}

/// The wall clock ferry uses, shifted by an offset that tests use to fake a node whose
/// clock is wrong (the machine's clock is left alone).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WallClock {
    pub offset_us: i64,
}

impl WallClock {
    /// Now, in µs since the epoch, shifted.
    pub fn now_us(&self) -> i64 {
        let real = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0);
        real + self.offset_us
    }

    /// A time the database recorded (trigger wall time), shifted the same way.
    pub fn shift(&self, db_us: i64) -> i64 {
        db_us + self.offset_us
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_runs_backwards_and_passes_what_it_saw() {
        let mut c = Hlc::default();
        let a = c.tick(100, "a");
        let b = c.tick(50, "a"); // wall clock went back
        assert!(b > a);
        let seen = Version {
            wall_us: 10_000,
            counter: 7,
            node: "z".into(),
        };
        c.observe(&seen);
        let d = c.tick(60, "a"); // a year behind, still after what it saw
        assert!(d > seen);
        assert_eq!(Hlc::parse(&c.to_text()), Some(c));
    }
}
