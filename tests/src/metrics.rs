//! Reading a process's Prometheus metrics as an operator's tools do: curl
//! fetches them, `promtool check metrics` lints them, and a sample's value
//! is looked up by name and labels.

use std::process::Command;

use anyhow::{bail, Context};

/// `GET http://ADDR/metrics` with curl (the classic text format, as curl
/// does not ask for OpenMetrics).
pub fn scrape(addr: &str) -> anyhow::Result<String> {
    let out = Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "10"])
        .arg(format!("http://{addr}/metrics"))
        .output()
        .context("running curl (scripts/setup.sh installs it)")?;
    if !out.status.success() {
        bail!(
            "curl http://{addr}/metrics: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// `promtool check metrics` (Debian's prometheus package) on `text`: an
/// error with promtool's words when it finds a problem.
pub fn promtool_check(text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running promtool (scripts/setup.sh installs the prometheus package)")?;
    child
        .stdin
        .take()
        .context("promtool's stdin")?
        .write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "promtool check metrics: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The value of the sample `name` whose labels include every `labels`
/// pair (`None`: no such sample).
pub fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, set) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let wanted = labels
                .iter()
                .all(|(k, v)| set.split(',').any(|p| p == format!("{k}=\"{v}\"")));
            (metric == name && wanted).then(|| value.parse().ok())?
        })
}

/// The sum of every sample of `name` (0 when there is none).
pub fn sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let metric = series.split_once('{').map_or(series, |(m, _)| m);
            (metric == name).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_found_by_name_and_labels() {
        let text = "# TYPE a gauge\na{vip=\"10.0.0.1\",director=\"d1\"} 1\na{vip=\"10.0.0.2\",director=\"d2\"} 3\nb 2.5\n";
        assert_eq!(value(text, "a", &[("director", "d2")]), Some(3.0));
        assert_eq!(value(text, "b", &[]), Some(2.5));
        assert_eq!(value(text, "a", &[("director", "d3")]), None);
        assert_eq!(sum(text, "a"), 4.0);
    }
}
