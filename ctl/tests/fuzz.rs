//! A mutation fuzzer for the importers: no input makes a parser panic, and
//! every refusal names a line of the file.
//!
//! Seeds are the fixtures; each round mutates one (byte flips to syntax
//! characters, inserted keywords, cut, doubled or spliced ranges) and feeds
//! it to all three parsers, then validates and exports what they accept.
//! CI runs it for a few seconds; a long run is
//!
//!   LB_FUZZ_SECS=600 cargo test --release -p lbctl --test fuzz -- --nocapture
//!
//! `LB_FUZZ_SEED` replays a run. A panicking input is written to
//! `target/fuzz-crash-importers.bin` (the harness is `lb_testkit::fuzz`).

use lb_testkit::fuzz::{run, Rng};
use lbctl::export;
use lbctl::import::{self, Format};

const FIXTURES: &[&str] = &[
    "keepalived.conf",
    "keepalived-lb2.conf",
    "keepalived-messy.conf",
    "lvs.cf",
    "lvs-nat.cf",
    "lvs-tunnel.cf",
    "ipvsadm-save.txt",
];

/// Words that steer the parsers into their branches.
const WORDS: &[&str] = &[
    "{",
    "}",
    "\"",
    "'",
    "#",
    "!",
    "=",
    "\n",
    "\r\n",
    "\t",
    " ",
    "-",
    ":",
    "/",
    "[",
    "]",
    "virtual_server",
    "virtual_server_group",
    "group",
    "fwmark",
    "real_server",
    "TCP_CHECK",
    "HTTP_GET",
    "SSL_GET",
    "MISC_CHECK",
    "url",
    "path",
    "digest",
    "status_code",
    "misc_path",
    "vrrp_instance",
    "virtual_ipaddress",
    "priority",
    "global_defs",
    "router_id",
    "lb_kind",
    "lb_algo",
    "persistence_timeout",
    "persistence_granularity",
    "sorry_server",
    "quorum",
    "hysteresis",
    "delay_loop",
    "connect_timeout",
    "retry",
    "weight",
    "inhibit_on_failure",
    "virtual",
    "server",
    "address",
    "port",
    "network",
    "send",
    "expect",
    "send_program",
    "timeout",
    "reentry",
    "persistent",
    "pmask",
    "active",
    "-A",
    "-a",
    "-t",
    "-u",
    "-f",
    "-6",
    "-r",
    "-s",
    "-p",
    "-M",
    "-b",
    "-g",
    "-i",
    "-m",
    "-w",
    "-x",
    "-y",
    "-o",
    "--pe",
    "--tun-type",
    "10.0.0.1",
    "10.0.0.1:80",
    "[2001:db8::1]:80",
    "2001:db8::1",
    "0",
    "65536",
    "4294967296",
    "-1",
    "1.5",
    "NaN",
    "1e308",
    "255.255.255.0",
    "10.0.0.1-300",
    "sh-port",
    "mh-fallback",
    "\u{feff}",
    "é",
    "\u{0}",
];

fn mutate(rng: &mut Rng, seeds: &[String]) -> String {
    let mut text: Vec<char> = seeds[rng.below(seeds.len())].chars().collect();
    for _ in 0..=rng.below(8) {
        let at = rng.below(text.len() + 1);
        match rng.below(6) {
            0 if !text.is_empty() => {
                let w = WORDS[rng.below(WORDS.len())];
                let end = (at + 1).min(text.len());
                text.splice(at..end, w.chars());
            }
            1 => {
                let w = WORDS[rng.below(WORDS.len())];
                text.splice(at..at, w.chars());
            }
            2 => {
                let end = (at + rng.below(64)).min(text.len());
                text.drain(at..end);
            }
            3 => {
                let end = (at + rng.below(256)).min(text.len());
                let copy: Vec<char> = text[at..end].to_vec();
                let to = rng.below(text.len() + 1);
                text.splice(to..to, copy);
            }
            4 => {
                let other: Vec<char> = seeds[rng.below(seeds.len())].chars().collect();
                let from = rng.below(other.len() + 1);
                text.truncate(at);
                text.extend(&other[from..]);
            }
            _ => {
                // Everything on one line, or a random byte.
                if rng.below(2) == 0 {
                    text.retain(|c| *c != '\n');
                } else if !text.is_empty() {
                    let i = rng.below(text.len());
                    text[i] = char::from(rng.below(128) as u8);
                }
            }
        }
    }
    text.into_iter().collect()
}

/// One input through every parser: refusals name a line in the file, and
/// whatever is accepted validates and exports without trouble. Counts, per
/// format, the inputs read and those that went on to be exported.
fn exercise(text: &str, reached: &mut [(u64, u64); 3]) {
    let lines = text.split('\n').count();
    for (k, format) in [Format::Keepalived, Format::Piranha, Format::Ipvsadm]
        .into_iter()
        .enumerate()
    {
        match import::parse(format, "fuzz", text) {
            Err(e) => assert!(
                (1..=lines).contains(&e.line),
                "{format:?}: error line {} outside 1..={lines}: {e}",
                e.line
            ),
            Ok(imported) => {
                reached[k].0 += 1;
                for n in &imported.notes {
                    assert!((1..=lines).contains(&n.line), "{format:?}: note {n}");
                }
                if let Ok(services) = imported.validate() {
                    reached[k].1 += 1;
                    let k = export::keepalived(&services, Some("lb1")).text;
                    let i = export::ipvsadm(&services).text;
                    // Our own output always reads back.
                    import::parse(Format::Keepalived, "k", &k)
                        .unwrap_or_else(|e| panic!("exported keepalived unreadable: {e}\n{k}"));
                    import::parse(Format::Ipvsadm, "i", &i)
                        .unwrap_or_else(|e| panic!("exported ipvsadm unreadable: {e}\n{i}"));
                }
            }
        }
    }
}

#[test]
fn importers_never_panic() {
    let dir = format!("{}/tests/fixtures", env!("CARGO_MANIFEST_DIR"));
    let seeds: Vec<String> = FIXTURES
        .iter()
        .map(|f| std::fs::read_to_string(format!("{dir}/{f}")).unwrap())
        .collect();
    let mut reached = [(0u64, 0u64); 3];
    run("importers", 3, |rng, input| {
        let text = mutate(rng, &seeds);
        input.extend_from_slice(text.as_bytes());
        exercise(&text, &mut reached);
    });
    println!(
        "fuzz importers: (read, exported) keepalived {:?}, piranha {:?}, ipvsadm {:?}",
        reached[0], reached[1], reached[2]
    );
    // Each importer read inputs and handed services on to the exporters:
    // the mutations did not only ever produce refusals.
    for (format, (read, exported)) in ["keepalived", "piranha", "ipvsadm"].iter().zip(reached) {
        assert!(
            read > 0 && exported > 0,
            "{format}: {read} read, {exported} exported"
        );
    }
}
