//! Deterministic values for the workload generator: uuids and timestamps drawn from the
//! seeded RNG (never from the clock), the names and places a clinic records, and the Luhn
//! check digit OpenMRS appends to `users.system_id` and to OpenMRS IDs.

use mysql_async::Value;
use rand::Rng;
use rand_chacha::ChaCha20Rng;

/// The instant the generated timeline starts: 2024-03-01 08:00:00 UTC, after the
/// fixture's metadata (2024-01-01).
pub const TIMELINE_START: i64 = 1_709_280_000;

/// A random (version 4 shaped) uuid from the RNG, as OpenMRS writes them: 36 lowercase chars.
pub fn uuid(rng: &mut ChaCha20Rng) -> String {
    let mut bytes = [0u8; 16];
    rng.fill(&mut bytes);
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .hyphenated()
        .to_string()
}

/// Year, month and day of a day count since 1970-01-01 (proleptic Gregorian).
fn civil(days: i64) -> (i64, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A DATETIME value for `secs` seconds since the Unix epoch (UTC).
pub fn datetime(secs: i64) -> Value {
    let (y, m, d) = civil(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    Value::Date(
        y as u16,
        m,
        d,
        (s / 3600) as u8,
        (s % 3600 / 60) as u8,
        (s % 60) as u8,
        0,
    )
}

/// A DATE value for `days` days since the Unix epoch.
pub fn date(days: i64) -> Value {
    let (y, m, d) = civil(days);
    Value::Date(y as u16, m, d, 0, 0, 0, 0)
}

/// The Luhn check digit of a string of decimal digits, as OpenMRS's
/// `LuhnIdentifierValidator` computes it (`2` → `6`, so user 2 gets system id `2-6`).
pub fn luhn_check_digit(digits: &str) -> u32 {
    let sum: u32 = digits
        .chars()
        .rev()
        .filter_map(|c| c.to_digit(10))
        .enumerate()
        .map(|(i, d)| {
            if i % 2 == 0 {
                let x = d * 2;
                if x > 9 {
                    x - 9
                } else {
                    x
                }
            } else {
                d
            }
        })
        .sum();
    (10 - sum % 10) % 10
}

/// Picks one element; the caller guarantees the slice is not empty.
pub fn pick<'a, T>(rng: &mut ChaCha20Rng, items: &'a [T]) -> &'a T {
    &items[rng.gen_range(0..items.len())]
}

/// Picks an element different from `current` (the list must hold at least two distinct values).
pub fn pick_other<'a>(rng: &mut ChaCha20Rng, items: &'a [&'a str], current: &str) -> &'a str {
    loop {
        let c = *pick(rng, items);
        if c != current {
            return c;
        }
    }
}

pub const GIVEN_F: &[&str] = &[
    "Amina",
    "Grace",
    "Claudine",
    "Esperance",
    "Josiane",
    "Marie",
    "Aline",
    "Divine",
    "Fatuma",
    "Immaculee",
    "Jeanne",
    "Solange",
    "Chantal",
    "Ruth",
    "Naomi",
    "Beatrice",
];
pub const GIVEN_M: &[&str] = &[
    "Jean", "Emmanuel", "Patrick", "Eric", "Innocent", "Olivier", "Samuel", "Joseph", "Theogene",
    "Didier", "Fabrice", "Claude", "Moses", "Peter", "Daniel", "Yves",
];
pub const FAMILY: &[&str] = &[
    "Uwimana",
    "Habimana",
    "Mukamana",
    "Niyonzima",
    "Mugisha",
    "Nshimiyimana",
    "Ingabire",
    "Hakizimana",
    "Uwase",
    "Bizimana",
    "Tuyishime",
    "Nsengiyumva",
    "Mutoni",
    "Kayitesi",
    "Ndayisaba",
    "Iradukunda",
];
pub const CITIES: &[&str] = &[
    "Kigali",
    "Musanze",
    "Huye",
    "Rubavu",
    "Nyagatare",
    "Muhanga",
    "Rwamagana",
    "Karongi",
];
pub const STREETS: &[&str] = &[
    "KN 5 Rd",
    "KG 11 Ave",
    "RN1",
    "Main St",
    "Market Rd",
    "Hill Rd",
];
pub const NOTES: &[&str] = &[
    "patient reports improvement",
    "cough for two weeks, no fever",
    "counselled on adherence",
    "referred for chest x-ray",
    "follow up in one month",
    "mild dehydration, oral fluids given",
];

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn luhn_matches_openmrs_system_ids() {
        // The real 2.6.4 dump holds system ids 2-6 and 3-4.
        assert_eq!(luhn_check_digit("2"), 6);
        assert_eq!(luhn_check_digit("3"), 4);
        assert_eq!(luhn_check_digit("7992739871"), 3);
    }

    #[test]
    fn timestamps_are_calendar_correct() {
        assert_eq!(datetime(0), Value::Date(1970, 1, 1, 0, 0, 0, 0));
        assert_eq!(
            datetime(TIMELINE_START),
            Value::Date(2024, 3, 1, 8, 0, 0, 0)
        );
        assert_eq!(date(19_782), Value::Date(2024, 2, 29, 0, 0, 0, 0));
    }

    #[test]
    fn uuids_follow_the_seed() {
        let mut a = ChaCha20Rng::seed_from_u64(1);
        let mut b = ChaCha20Rng::seed_from_u64(1);
        let mut c = ChaCha20Rng::seed_from_u64(2);
        let ua = uuid(&mut a);
        assert_eq!(ua.len(), 36);
        assert_eq!(ua, uuid(&mut b));
        assert_ne!(ua, uuid(&mut c));
        assert_eq!(ua, ua.to_lowercase());
    }
}
