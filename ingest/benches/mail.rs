//! Parsing adversarial mail: each shape of [`HostileShape`] at 1 MB, through the same
//! [`parse`] the SMTP listener and the IMAP poller use.
//!
//! `cargo bench -p switchboard-ingest --bench mail` prints, before criterion's own figures, the
//! time of one parse of each shape (the figure quoted in the README), then lets criterion
//! measure each. Every shape must parse in time linear in its size: a quadratic step shows up
//! as seconds here.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use switchboard_ingest::email::{hostile_mail, parse, HostileShape};

const SIZE: usize = 1 << 20;
const DOMAIN: &str = "support.example.com";

fn once() {
    for shape in HostileShape::ALL {
        let raw = hostile_mail(shape, SIZE);
        let t = Instant::now();
        let outcome = parse(black_box(&raw), DOMAIN);
        let took = t.elapsed();
        let what = match &outcome {
            Ok(p) => format!("parsed, {} bytes of text", p.text.len()),
            Err(e) => format!("refused: {e}"),
        };
        println!(
            "mail/{:<13} {:>8} bytes  {:>10.2} ms  {what}",
            shape.name(),
            raw.len(),
            took.as_secs_f64() * 1e3
        );
    }
}

fn bench(c: &mut Criterion) {
    once();
    let mut g = c.benchmark_group("mail");
    g.sample_size(10).measurement_time(Duration::from_secs(3));
    for shape in HostileShape::ALL {
        let raw = hostile_mail(shape, SIZE);
        g.bench_function(shape.name(), |b| b.iter(|| parse(black_box(&raw), DOMAIN)));
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
