//! The payments event of DESIGN.md, generated deterministically from a seed.
//!
//! `{"event_id":"…","ts":…,"user_id":"u…","card_id":"c…","device_id":"d…",
//! "merchant_id":"m…","amount_cents":1234,"currency":"USD","country":"US"}`, key =
//! `user_id`. Users are drawn from a Zipf law (`skew`); each user has a home country,
//! one or two cards and one or two devices. Fraud rings and late events arrive with the
//! stream-query issue's `gen`.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};
use std::io::Write;

const COUNTRIES: [(&str, &str); 6] =
    [("US", "USD"), ("GB", "GBP"), ("DE", "EUR"), ("FR", "EUR"), ("JP", "JPY"), ("BR", "BRL")];
/// Merchants events are spread over.
pub const MERCHANTS: u64 = 2_000;

/// One payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payment {
    /// Sequence number, unique per generator (the event id is derived from it).
    pub sequence: u64,
    /// Event creation time, ms since the epoch.
    pub ts: i64,
    /// User number (`u<n>`).
    pub user: u64,
    /// Card number (`c<n>`).
    pub card: u64,
    /// Device number (`d<n>`).
    pub device: u64,
    /// Merchant number (`m<n>`).
    pub merchant: u64,
    /// Amount in cents.
    pub amount_cents: u64,
    /// Index into the country table.
    pub country: usize,
}

impl Payment {
    /// The record key: the user id.
    pub fn key(&self, out: &mut Vec<u8>) {
        out.clear();
        write!(out, "u{}", self.user).expect("writing to a Vec");
    }

    /// The JSON value.
    pub fn json(&self, out: &mut Vec<u8>) {
        let (country, currency) = COUNTRIES[self.country];
        out.clear();
        write!(
            out,
            r#"{{"event_id":"e{:016x}","ts":{},"user_id":"u{}","card_id":"c{}","device_id":"d{}","merchant_id":"m{}","amount_cents":{},"currency":"{}","country":"{}"}}"#,
            self.sequence, self.ts, self.user, self.card, self.device, self.merchant, self.amount_cents, currency, country
        )
        .expect("writing to a Vec");
    }
}

/// A seeded stream of payments.
#[derive(Debug)]
pub struct Generator {
    rng: SmallRng,
    users: Zipf<f64>,
    merchants: Zipf<f64>,
    sequence: u64,
    start_ms: i64,
    step_us: u64,
}

impl Generator {
    /// `users` users drawn with Zipf exponent `skew` (> 0); events `step_us` apart in
    /// event time, starting at `start_ms`.
    pub fn new(seed: u64, users: u64, skew: f64, start_ms: i64, step_us: u64) -> Self {
        assert!(users > 0 && skew > 0.0);
        Self {
            rng: SmallRng::seed_from_u64(seed),
            users: Zipf::new(users, skew).expect("valid zipf parameters"),
            merchants: Zipf::new(MERCHANTS, 1.0).expect("valid zipf parameters"),
            sequence: 0,
            start_ms,
            step_us,
        }
    }

    /// The next payment.
    pub fn next_payment(&mut self) -> Payment {
        let user = self.users.sample(&mut self.rng) as u64;
        let sequence = self.sequence;
        self.sequence += 1;
        let ts = self.start_ms + (sequence * self.step_us / 1000) as i64;
        let amount_cents = 100 + (self.rng.gen::<f64>().powi(3) * 200_000.0) as u64;
        Payment {
            sequence,
            ts,
            user,
            card: user * 2 + u64::from(self.rng.gen_ratio(1, 8)),
            device: user * 2 + u64::from(self.rng.gen_ratio(1, 16)),
            merchant: self.merchants.sample(&mut self.rng) as u64,
            amount_cents,
            country: (user % COUNTRIES.len() as u64) as usize,
        }
    }
}

/// Kafka-style partition for a key: FNV-1a modulo the partition count.
pub fn partition_for(key: &[u8], partitions: u32) -> u32 {
    let hash =
        key.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3));
    (hash % u64::from(partitions)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_events_and_valid_json() {
        let mut a = Generator::new(7, 1000, 1.1, 1_700_000_000_000, 1000);
        let mut b = Generator::new(7, 1000, 1.1, 1_700_000_000_000, 1000);
        let mut json = Vec::new();
        for _ in 0..100 {
            let payment = a.next_payment();
            assert_eq!(payment, b.next_payment());
            payment.json(&mut json);
            let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
            assert_eq!(value["user_id"], format!("u{}", payment.user));
            assert_eq!(value["amount_cents"], payment.amount_cents);
        }
    }
}
