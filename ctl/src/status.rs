//! HTTP status codes as keepalived's `status_code` writes them — one code
//! (`503`) or an inclusive range (`200-299`) — for the `--check-status`
//! flag, the keepalived importer and the exporter alike.

/// HTTP status codes as keepalived's `status_code` takes them: one code
/// (`503`) or an inclusive range (`200-299`), the range spelled out. Whether
/// each is an HTTP status (100..=599) is the API's rule; this reads the
/// words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusCodes(pub Vec<u32>);

impl std::str::FromStr for StatusCodes {
    type Err = String;

    fn from_str(word: &str) -> Result<Self, Self::Err> {
        let code = |w: &str| {
            w.trim().parse::<u32>().map_err(|_| {
                format!("{word:?} is not a status code or a range of them (200, 200-299)")
            })
        };
        match word.split_once('-') {
            None => Ok(StatusCodes(vec![code(word)?])),
            Some((from, to)) => {
                let (from, to) = (code(from)?, code(to)?);
                if from > to {
                    return Err(format!("{word:?}: the range starts above its end"));
                }
                if to - from > 1000 {
                    return Err(format!("{word:?}: wider than any range of HTTP statuses"));
                }
                Ok(StatusCodes((from..=to).collect()))
            }
        }
    }
}

/// Status codes written back as keepalived reads them, each run of
/// consecutive codes as a range: `200-299 503`.
pub fn status_ranges(codes: &[u16]) -> String {
    let mut sorted = codes.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut runs: Vec<(u16, u16)> = Vec::new();
    for c in sorted {
        match runs.last_mut() {
            Some((_, end)) if *end + 1 == c => *end = c,
            _ => runs.push((c, c)),
        }
    }
    runs.iter()
        .map(|(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_and_ranges() {
        let codes = |w: &str| w.parse::<StatusCodes>().map(|c| c.0);
        assert_eq!(codes("503"), Ok(vec![503]));
        assert_eq!(codes("200-204"), Ok(vec![200, 201, 202, 203, 204]));
        assert!(codes("5xx")
            .unwrap_err()
            .contains("not a status code or a range"));
        assert!(codes("299-200")
            .unwrap_err()
            .contains("starts above its end"));
        assert_eq!(
            status_ranges(&[503, 200, 201, 202, 404, 201]),
            "200-202 404 503"
        );
        // The flag takes them as the importer does.
        let cli = <crate::cli::Cli as clap::Parser>::try_parse_from([
            "lbctl",
            "service",
            "create",
            "web",
            "--vip",
            "10.0.0.1:80/tcp",
            "--check",
            "http",
            "--check-status",
            "200-201",
            "--check-status",
            "503",
        ]);
        assert!(cli.is_ok(), "{cli:?}");
    }
}
