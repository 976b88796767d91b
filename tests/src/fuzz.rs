//! A small time-boxed fuzz harness: a seeded generator and a loop that runs
//! a target until the time is up, catching panics.
//!
//! `LB_FUZZ_SECS` sets the time (tests default to a few seconds; the long
//! runs in the closing notes use 600), `LB_FUZZ_SEED` replays a run. A
//! panicking input is written to `target/fuzz-crash-<name>.bin`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

/// xorshift64*: fast, seedable, good enough to steer mutations.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// 0..n (0 when n is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    pub fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }

    /// Byte-level mutations of `data`: flips, inserts, cuts, copies.
    pub fn mutate_bytes(&mut self, data: &mut Vec<u8>) {
        for _ in 0..=self.below(6) {
            let at = self.below(data.len() + 1);
            match self.below(5) {
                0 if !data.is_empty() => {
                    let i = self.below(data.len());
                    data[i] ^= 1 << self.below(8);
                }
                1 => data.insert(at, self.next_u64() as u8),
                2 => {
                    let end = (at + self.below(16)).min(data.len());
                    data.drain(at..end);
                }
                3 => {
                    let end = (at + self.below(32)).min(data.len());
                    let copy = data[at..end].to_vec();
                    let to = self.below(data.len() + 1);
                    data.splice(to..to, copy);
                }
                _ if !data.is_empty() => {
                    // An interesting value: 0, 0xff, a length-ish byte.
                    let i = self.below(data.len());
                    data[i] = *self.pick(&[0u8, 0xff, 0x7f, 0x80, 4, 8, 16]);
                }
                _ => {}
            }
        }
    }
}

/// Runs `target` on fresh inputs until `LB_FUZZ_SECS` (default
/// `default_secs`) have passed. `target` makes an input from the generator,
/// stores its bytes in the buffer it is given (for the crash file), then
/// checks it; a panic fails the run with the seed and the input saved.
/// Prints what was done.
pub fn run(name: &str, default_secs: u64, mut target: impl FnMut(&mut Rng, &mut Vec<u8>)) {
    let secs: u64 = std::env::var("LB_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default_secs);
    let seed: u64 = std::env::var("LB_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut rng = Rng::new(seed);
    let mut rounds = 0u64;
    // The input of the round in progress, for the crash file.
    let mut last = Vec::new();
    while Instant::now() < deadline {
        last.clear();
        let outcome = catch_unwind(AssertUnwindSafe(|| target(&mut rng, &mut last)));
        if outcome.is_err() {
            let path = format!(
                "{}/../target/fuzz-crash-{name}.bin",
                env!("CARGO_MANIFEST_DIR")
            );
            let _ = std::fs::write(&path, &last);
            panic!("{name}: seed {seed}, round {rounds}: a panic; the input is in {path}");
        }
        rounds += 1;
    }
    println!("fuzz {name}: seed {seed}, {rounds} inputs in {secs} s, no panic");
}
