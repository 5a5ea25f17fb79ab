//! `cargo xtask bench gateway`: the release gateway and nginx (`proxy_pass` to an `upstream`
//! block with `keepalive`) side by side in one run, all in front of the same upstream (a
//! separate nginx answering 200 from memory), loaded by Debian's `wrk`. nginx runs twice: bare
//! (`proxy_pass` alone, as the issue names it), and doing the gateway's header work (the
//! request id generated, sent upstream and echoed, `X-Forwarded-For/-Proto/-Host` and
//! `X-Real-IP` set), which is the like-for-like alternative. Rounds cycle through the three so
//! that drift on a shared machine hits all alike; it prints requests/s and p99 per round, the
//! median of each side, the ratios, and the gateway's idle RSS and binary size.
//!
//! Access logs are off on every side (nginx `access_log off`, gateway `RUST_LOG=warn`) and the
//! gateway's rate limits are off.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use testkit::ProcessGuard;
use xshell::{Shell, cmd};

use super::nginx::Nginx;
use super::wrk::{self, Load, Measurement};
use crate::project;

#[derive(Debug, clap::Args)]
pub struct GatewayBenchArgs {
    /// Seconds of load per round and side.
    #[arg(long, default_value_t = 5)]
    duration: u32,
    /// Concurrent connections wrk keeps open.
    #[arg(long, default_value_t = 64)]
    connections: u32,
    /// wrk threads.
    #[arg(long, default_value_t = 2)]
    threads: u32,
    /// Rounds; each runs bare nginx, nginx with the header work, then the gateway, so load from
    /// elsewhere hits all alike. Single rounds swing by about 8 % on 2 cores; nine give a median
    /// that moves by a few percent between runs.
    #[arg(long, default_value_t = 9)]
    rounds: u32,
}

pub fn run(args: &GatewayBenchArgs) -> Result<()> {
    for tool in ["nginx", "wrk"] {
        if testkit::find_program(tool).is_none() {
            bail!("{tool} is missing: apt-get install -y {tool}");
        }
    }
    let root = project::root();
    let sh = Shell::new()?;
    sh.change_dir(&root);
    cmd!(sh, "cargo build --release --locked -p gateway")
        .run()
        .context("building the release gateway")?;
    let binary = root.join("target/release/gateway");
    let work = root.join("target/bench/gateway");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;

    let upstream_port = testkit::free_port();
    let _upstream = start_nginx(&work.join("upstream"), &upstream_conf(upstream_port))?;
    let bare_port = testkit::free_port();
    let _bare = start_nginx(
        &work.join("proxy"),
        &proxy_conf(bare_port, upstream_port, ""),
    )?;
    let headers_port = testkit::free_port();
    let _headers = start_nginx(
        &work.join("proxy-headers"),
        &proxy_conf(headers_port, upstream_port, GATEWAY_HEADER_WORK),
    )?;
    let gateway_port = testkit::free_port();
    let gateway = start_gateway(&binary, gateway_port, upstream_port, &work)?;
    let idle_rss_kib = rss_kib(gateway.id())?;

    let url = |port: u16| format!("http://127.0.0.1:{port}/api/bench");
    let sides = [
        ("nginx", url(bare_port)),
        ("nginx+headers", url(headers_port)),
        ("gateway", url(gateway_port)),
    ];
    for (_, url) in &sides {
        wrk::measure(args.load(2), url, &[]).with_context(|| format!("warming up {url}"))?;
    }
    let mut runs: [Vec<Measurement>; 3] = Default::default();
    for round in 1..=args.rounds {
        let mut line = format!("round {round}:");
        for ((name, url), side_runs) in sides.iter().zip(&mut runs) {
            let m = wrk::measure(args.load(args.duration), url, &[])?;
            line += &format!(
                " {name} {:>7.0} req/s p99 {:>7.2?} |",
                m.requests_per_second, m.p99
            );
            side_runs.push(m);
        }
        let [bare, headers, ours] = &runs;
        let last =
            |runs: &Vec<Measurement>| runs.last().map_or(f64::NAN, |m| m.requests_per_second);
        println!(
            "{line} ratio {:.2}x / {:.2}x",
            last(ours) / last(bare),
            last(ours) / last(headers)
        );
    }
    let [bare, headers, ours] = &runs;
    let (Some(n), Some(h), Some(g)) = (median(bare), median(headers), median(ours)) else {
        bail!("no rounds ran (--rounds 0)");
    };
    let size = std::fs::metadata(&binary)
        .with_context(|| format!("reading {}", binary.display()))?
        .len();
    println!(
        "\nmedian of {} rounds, {} connections, {} wrk threads, {} s each, on {} cores:",
        args.rounds,
        args.connections,
        args.threads,
        args.duration,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "  nginx           {:>9.0} req/s  p99 {:.2?}",
        n.requests_per_second, n.p99
    );
    println!(
        "  nginx+headers   {:>9.0} req/s  p99 {:.2?}",
        h.requests_per_second, h.p99
    );
    println!(
        "  gateway         {:>9.0} req/s  p99 {:.2?}",
        g.requests_per_second, g.p99
    );
    println!(
        "  ratio   {:.2}x bare nginx's requests/s (target >= 0.90x), {:.2}x nginx doing the same header work",
        g.requests_per_second / n.requests_per_second,
        g.requests_per_second / h.requests_per_second
    );
    println!(
        "  gateway idle RSS {} KiB, stripped binary {:.2} MiB ({size} bytes)",
        idle_rss_kib,
        size as f64 / 1048576.0
    );
    Ok(())
}

/// The median of each figure on its own (requests/s and p99 need not come from the same round).
fn median(runs: &[Measurement]) -> Option<Measurement> {
    let middle = |mut values: Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values.get(values.len() / 2).copied()
    };
    Some(Measurement {
        requests_per_second: middle(runs.iter().map(|m| m.requests_per_second).collect())?,
        p99: Duration::from_secs_f64(middle(runs.iter().map(|m| m.p99.as_secs_f64()).collect())?),
    })
}

fn upstream_conf(port: u16) -> String {
    format!(
        "worker_processes 1;\n{common}\nhttp {{\n  access_log off;\n  keepalive_requests 1000000;\n{temps}\n  server {{\n    listen 127.0.0.1:{port} reuseport;\n    location / {{ default_type text/plain; return 200 \"ok\\n\"; }}\n  }}\n}}\n",
        common = COMMON,
        temps = TEMPS,
    )
}

/// What the gateway does to every proxied request and response, in nginx's words: a request id
/// generated, sent upstream and echoed, and the forwarding headers set.
const GATEWAY_HEADER_WORK: &str = "      proxy_set_header X-Forwarded-Host $host;\n      proxy_set_header X-Real-IP $remote_addr;\n      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n      proxy_set_header X-Forwarded-Proto $scheme;\n      proxy_set_header X-Request-Id $request_id;\n      add_header X-Request-Id $request_id always;\n";

fn proxy_conf(port: u16, upstream_port: u16, extra: &str) -> String {
    format!(
        "worker_processes auto;\n{common}\nhttp {{\n  access_log off;\n  keepalive_requests 1000000;\n{temps}\n  upstream backend {{\n    server 127.0.0.1:{upstream_port};\n    keepalive 128;\n    keepalive_requests 1000000;\n  }}\n  server {{\n    listen 127.0.0.1:{port};\n    location / {{\n      proxy_pass http://backend;\n      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n{extra}    }}\n  }}\n}}\n",
        common = COMMON,
        temps = TEMPS,
    )
}

const COMMON: &str =
    "daemon off;\npid nginx.pid;\nerror_log stderr warn;\nevents { worker_connections 4096; }";
const TEMPS: &str = "  client_body_temp_path tmp/body;\n  proxy_temp_path tmp/proxy;\n  fastcgi_temp_path tmp/fastcgi;\n  uwsgi_temp_path tmp/uwsgi;\n  scgi_temp_path tmp/scgi;";

/// An nginx master that stops with SIGTERM, so that its workers exit with it (a SIGKILL'd
/// master leaves them behind).
fn start_nginx(prefix: &Path, conf: &str) -> Result<Nginx> {
    let mut nginx = Nginx::spawn(prefix, conf)?;
    wait_for_http(nginx.process(), &listen_port(conf)?)?;
    Ok(nginx)
}

fn listen_port(conf: &str) -> Result<String> {
    conf.lines()
        .filter_map(|line| line.trim().strip_prefix("listen 127.0.0.1:"))
        .map(|rest| rest.split([' ', ';']).next().unwrap_or_default().to_owned())
        .next()
        .context("no listen line in the generated nginx config")
}

fn start_gateway(
    binary: &Path,
    port: u16,
    upstream_port: u16,
    work: &Path,
) -> Result<ProcessGuard> {
    let upstream = format!("http://127.0.0.1:{upstream_port}");
    let log = std::fs::File::create(work.join("gateway.log")).context("creating gateway.log")?;
    let mut guard = ProcessGuard::spawn(
        "gateway",
        Command::new(binary)
            .env("GATEWAY_LISTEN", format!("127.0.0.1:{port}"))
            .env("GATEWAY_API_UPSTREAMS", &upstream)
            .env("GATEWAY_INFERENCE_UPSTREAMS", &upstream)
            .env("GATEWAY_API_KEYS", "bench-only-key")
            .env("GATEWAY_RATE_GENERAL", "off")
            .env("RUST_LOG", "warn")
            .stdout(log)
            .stderr(Stdio::inherit()),
    );
    wait_for_http(&mut guard, &port.to_string())?;
    Ok(guard)
}

fn wait_for_http(guard: &mut ProcessGuard, port: &str) -> Result<()> {
    let port: u16 = port.parse().context("port")?;
    for _ in 0..500 {
        guard.assert_running();
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("nothing listens on 127.0.0.1:{port} after 10 s")
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS line")
}

impl GatewayBenchArgs {
    fn load(&self, seconds: u32) -> Load {
        Load {
            threads: self.threads,
            connections: self.connections,
            seconds,
        }
    }
}
