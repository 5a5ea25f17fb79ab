//! The HTTP load generator the service benchmarks share: runs Debian's `wrk` against one URL
//! and reads requests/s and the 99th-percentile latency from its report. It knows nothing of
//! what is being measured.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// How hard and how long to load.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub threads: u32,
    pub connections: u32,
    pub seconds: u32,
}

/// What one wrk run measured.
#[derive(Debug, Clone, Copy)]
pub struct Measurement {
    pub requests_per_second: f64,
    pub p99: Duration,
}

/// Loads `url` with `headers` (`Name: value`); any non-2xx/3xx answer fails the run.
pub fn measure(load: Load, url: &str, headers: &[String]) -> Result<Measurement> {
    let mut command = Command::new("wrk");
    command
        .arg(format!("-t{}", load.threads))
        .arg(format!("-c{}", load.connections))
        .arg(format!("-d{}s", load.seconds))
        .arg("--latency");
    for header in headers {
        command.arg("-H").arg(header);
    }
    let output = command.arg(url).output().context("running wrk")?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "wrk failed on {url}: {text}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    parse_report(&text).with_context(|| format!("reading wrk's report for {url}:\n{text}"))
}

fn parse_report(text: &str) -> Result<Measurement> {
    if let Some(line) = text
        .lines()
        .find(|l| l.contains("Non-2xx or 3xx responses"))
    {
        bail!("errors during the run: {}", line.trim());
    }
    let requests_per_second = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .context("no Requests/sec line")?;
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .and_then(|v| parse_duration(v.trim()))
        .context("no 99% latency line")?;
    Ok(Measurement {
        requests_per_second,
        p99,
    })
}

/// wrk's durations: `812.00us`, `3.21ms`, `1.02s`, `2.00m`.
fn parse_duration(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().ok()?;
    let seconds = match unit {
        "us" => value / 1e6,
        "ms" => value / 1e3,
        "s" => value,
        "m" => value * 60.0,
        _ => return None,
    };
    Some(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_reports() {
        let report = "Running 10s test @ http://127.0.0.1:1/\n  Latency Distribution\n     50%  1.10ms\n     99%  812.00us\n  123 requests in 10s\nRequests/sec:  24567.89\nTransfer/sec:      3.1MB\n";
        let m = parse_report(report).expect("parsed");
        assert_eq!(m.requests_per_second, 24567.89);
        assert_eq!(m.p99, Duration::from_micros(812));
        assert_eq!(parse_duration("3.5ms"), Some(Duration::from_micros(3500)));
        assert!(parse_report("Non-2xx or 3xx responses: 5\nRequests/sec: 1\n").is_err());
    }
}
