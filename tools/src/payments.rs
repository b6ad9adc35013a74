//! The payments event of DESIGN.md, generated deterministically from a seed.
//!
//! `{"event_id":"…","ts":…,"user_id":"u…","card_id":"c…","device_id":"d…",
//! "merchant_id":"m…","amount_cents":1234,"currency":"USD","country":"US"}`, key =
//! `user_id`. Users are drawn from a Zipf law (`skew`); each user has a home country,
//! one or two cards and one or two devices that nobody else uses.
//!
//! **Planted fraud rings** ([`Plan::rings`]): ring `r` has [`Plan::ring_size`] users
//! (ids from [`RING_USER_BASE`]) who all pay with one shared card and one shared
//! device, so the user–card–device graph has exactly `rings` components of that many
//! users and no other component with more than one user. A [`Plan::ring_share`] of
//! events comes from ring members, cycling through every member in turn.
//!
//! **Late events** ([`Plan::late_fraction`]): such an event's `ts` is
//! [`Plan::late_by_ms`] before the time it is sent, as if it sat on a phone offline.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};
use std::io::Write;

const COUNTRIES: [(&str, &str); 6] =
    [("US", "USD"), ("GB", "GBP"), ("DE", "EUR"), ("FR", "EUR"), ("JP", "JPY"), ("BR", "BRL")];
/// Merchants events are spread over.
pub const MERCHANTS: u64 = 2_000;
/// First user id of planted rings (far above any ordinary user).
pub const RING_USER_BASE: u64 = 1_000_000_000;
/// Cards and devices of ring `r` are `RING_SHARED_BASE + r` (ordinary users own
/// `2u` and `2u + 1`, below `2 * RING_USER_BASE`).
pub const RING_SHARED_BASE: u64 = 4 * RING_USER_BASE;

/// What the generator plants besides ordinary payments.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Plan {
    /// Ordinary users.
    pub users: u64,
    /// Zipf exponent of user activity (> 0).
    pub skew: f64,
    /// Fraud rings planted.
    pub rings: u64,
    /// Users per ring.
    pub ring_size: u64,
    /// Fraction of events from ring members.
    pub ring_share: f64,
    /// Fraction of events sent late.
    pub late_fraction: f64,
    /// How far behind its send time a late event's `ts` is.
    pub late_by_ms: i64,
}

impl Plan {
    /// Ordinary payments only.
    pub fn ordinary(users: u64, skew: f64) -> Self {
        Self { users, skew, rings: 0, ring_size: 0, ring_share: 0.0, late_fraction: 0.0, late_by_ms: 0 }
    }
}

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
    /// Sent late: `ts` is behind the send time by the plan's `late_by_ms`.
    pub late: bool,
    /// From a planted ring member.
    pub ring: bool,
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
    plan: Plan,
    users: Zipf<f64>,
    merchants: Zipf<f64>,
    sequence: u64,
    ring_events: u64,
    start_ms: i64,
    step_us: u64,
}

impl Generator {
    /// `users` users drawn with Zipf exponent `skew` (> 0); events `step_us` apart in
    /// event time, starting at `start_ms`.
    pub fn new(seed: u64, users: u64, skew: f64, start_ms: i64, step_us: u64) -> Self {
        Self::with_plan(seed, Plan::ordinary(users, skew), start_ms, step_us)
    }

    /// A generator following `plan`.
    pub fn with_plan(seed: u64, plan: Plan, start_ms: i64, step_us: u64) -> Self {
        assert!(plan.users > 0 && plan.skew > 0.0);
        assert!(plan.rings == 0 || plan.ring_size > 0, "rings need members");
        assert!((0.0..=1.0).contains(&plan.ring_share) && (0.0..=1.0).contains(&plan.late_fraction));
        Self {
            rng: SmallRng::seed_from_u64(seed),
            plan,
            users: Zipf::new(plan.users, plan.skew).expect("valid zipf parameters"),
            merchants: Zipf::new(MERCHANTS, 1.0).expect("valid zipf parameters"),
            sequence: 0,
            ring_events: 0,
            start_ms,
            step_us,
        }
    }

    /// The next payment, created at the generator's own clock.
    pub fn next_payment(&mut self) -> Payment {
        let ts = self.start_ms + (self.sequence * self.step_us / 1000) as i64;
        self.next_payment_at(ts)
    }

    /// The next payment, sent at `send_ms` (its `ts`, unless it is late).
    pub fn next_payment_at(&mut self, send_ms: i64) -> Payment {
        let sequence = self.sequence;
        self.sequence += 1;
        let amount_cents = 100 + (self.rng.gen::<f64>().powi(3) * 200_000.0) as u64;
        let merchant = self.merchants.sample(&mut self.rng) as u64;
        let from_ring = self.plan.rings > 0 && self.rng.gen_bool(self.plan.ring_share);
        let late = self.plan.late_fraction > 0.0 && self.rng.gen_bool(self.plan.late_fraction);
        let ts = if late { send_ms - self.plan.late_by_ms } else { send_ms };
        let (user, card, device) = if from_ring {
            let member = self.ring_events % (self.plan.rings * self.plan.ring_size);
            self.ring_events += 1;
            let ring = member / self.plan.ring_size;
            (RING_USER_BASE + member, RING_SHARED_BASE + ring, RING_SHARED_BASE + ring)
        } else {
            let user = self.users.sample(&mut self.rng) as u64;
            (
                user,
                user * 2 + u64::from(self.rng.gen_ratio(1, 8)),
                user * 2 + u64::from(self.rng.gen_ratio(1, 16)),
            )
        };
        Payment {
            sequence,
            ts,
            user,
            card,
            device,
            merchant,
            amount_cents,
            country: (user % COUNTRIES.len() as u64) as usize,
            late,
            ring: from_ring,
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

    #[test]
    fn given_planted_rings_and_late_events_when_generated_then_every_member_shares_its_rings_card() {
        let plan = Plan {
            rings: 3,
            ring_size: 5,
            ring_share: 0.2,
            late_fraction: 0.1,
            late_by_ms: 30_000,
            ..Plan::ordinary(1000, 1.1)
        };
        let mut generator = Generator::with_plan(3, plan, 0, 1000);
        let mut members = std::collections::BTreeMap::new();
        let (mut late, mut total) = (0, 0);
        for i in 0..5000 {
            let payment = generator.next_payment_at(1_000_000 + i);
            total += 1;
            if payment.late {
                late += 1;
                assert_eq!(payment.ts, 1_000_000 + i - 30_000);
            }
            if payment.ring {
                assert_eq!(payment.card, payment.device);
                members
                    .entry(payment.card)
                    .or_insert_with(std::collections::BTreeSet::new)
                    .insert(payment.user);
            } else {
                assert!(payment.user <= 1000 && payment.card / 2 == payment.user);
            }
        }
        assert_eq!(members.len(), 3);
        assert!(members.values().all(|users| users.len() == 5));
        assert!((300..700).contains(&late), "{late} of {total} late");
    }
}
