//! The `ui` scenario (CONTRACT.md §8 and §12): how long the dashboard's agents and jobs pages take to
//! render with a fleet of `--agents` and `--ui-runs` runs in the history, and what a page
//! weighs (its HTML, the JavaScript and the CSS it loads).
//!
//! An owner is invited with the owner API key, accepts, and signs in through the dashboard's
//! own form (`/ui/login`: its cookie and form token), as a browser does; every page is then
//! fetched with that session cookie, one request at a time, and timed from the request to the
//! answer's last byte on loopback: the server's time plus a loopback round trip. The runs are
//! `ping` jobs of [`FANOUT`] agents each, created and finished before anything is timed, so
//! the writer is idle while the pages are read.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::report::{Report, percentile};
use crate::server::{Client, Server};

/// Agents per seeded job: a jobs page of 50 rows then covers 5,000 runs.
const FANOUT: u64 = 100;
const PASSWORD: &str = "bench password, not secret";

/// What the scenario needs from the harness.
pub struct Plan {
    /// The swarm's agent ids, in order.
    pub agents: Vec<String>,
    /// Runs to seed.
    pub runs: u64,
    /// A tag the first agents of the swarm declare (`first-N`).
    pub tag: String,
    /// Timed requests per page (after 10 % as warm-up).
    pub requests: usize,
    pub on: String,
}

/// A dashboard session: a client that follows no redirect, and the session cookie.
pub(crate) struct Session {
    http: reqwest::Client,
    base: String,
    cookie: String,
}

/// The value of cookie `name` among a response's `Set-Cookie` headers.
fn set_cookie(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| {
            v.split(';')
                .next()
                .and_then(|pair| pair.strip_prefix(&format!("{name}=")))
                .map(str::to_owned)
        })
}

/// The value of the first `name="_csrf" value="…"` in a page.
fn csrf_of(html: &str) -> Option<String> {
    let marker = "name=\"_csrf\" value=\"";
    let start = html.find(marker)? + marker.len();
    html[start..].split('"').next().map(str::to_owned)
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Session {
    /// Invites an owner with the API key and signs them in through `/ui/login`: a new user
    /// each time (emails are unique on a server, and the `ui` and `results` scenarios each
    /// sign one in).
    pub(crate) async fn sign_in(server: &Server, client: &Client) -> anyhow::Result<Self> {
        static SIGNED_IN: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = SIGNED_IN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let email = format!("bench-ui-{}-{n}@example.com", std::process::id());
        let invited = client
            .post("/api/users", &json!({"email": email, "role": "owner"}))
            .await?;
        let invite = invited
            .get("invite_token")
            .and_then(Value::as_str)
            .context("no invite_token in POST /api/users")?;
        client
            .post_anonymous(
                "/api/auth/accept-invite",
                &json!({"token": invite, "password": PASSWORD}),
            )
            .await?;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .tcp_nodelay(true)
            .build()?;
        let base = format!("http://{}", server.addr);
        let page = http.get(format!("{base}/ui/login")).send().await?;
        let login = set_cookie(&page, "outpost_login").context("no sign-in cookie")?;
        let html = page.text().await?;
        let csrf = csrf_of(&html).context("no form token on /ui/login")?;
        let response = http
            .post(format!("{base}/ui/login"))
            .header(reqwest::header::COOKIE, format!("outpost_login={login}"))
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(format!(
                "_csrf={}&email={}&password={}",
                encode(&csrf),
                encode(&email),
                encode(PASSWORD)
            ))
            .send()
            .await?;
        if response.status() != reqwest::StatusCode::SEE_OTHER {
            bail!("signing in at /ui/login: {}", response.status());
        }
        let cookie = set_cookie(&response, "outpost_session").context("no session cookie")?;
        Ok(Self { http, base, cookie })
    }

    /// GETs `path`; its body and the time to its last byte. Keeps a refreshed cookie.
    async fn get(&mut self, path: &str) -> anyhow::Result<(String, Duration)> {
        let started = Instant::now();
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .header(
                reqwest::header::COOKIE,
                format!("outpost_session={}", self.cookie),
            )
            .send()
            .await
            .with_context(|| format!("GET {path}"))?;
        let status = response.status();
        let fresh = set_cookie(&response, "outpost_session");
        let body = response.text().await?;
        let took = started.elapsed();
        if !status.is_success() {
            bail!("GET {path}: {status}: {body}");
        }
        if let Some(cookie) = fresh {
            self.cookie = cookie;
        }
        Ok((body, took))
    }

    /// `path` fetched `requests` times after 10 % as warm-up: (p50, p99, max) in ms, and the
    /// last body.
    pub(crate) async fn timed(
        &mut self,
        path: &str,
        requests: usize,
    ) -> anyhow::Result<((f64, f64, f64), String)> {
        let mut times = Vec::with_capacity(requests);
        let mut body = String::new();
        for i in 0..requests + requests / 10 {
            let (text, took) = self.get(path).await?;
            if i >= requests / 10 {
                times.push(took.as_secs_f64() * 1e3);
            }
            body = text;
        }
        times.sort_by(f64::total_cmp);
        Ok((
            (
                percentile(&times, 50.0),
                percentile(&times, 99.0),
                times.last().copied().unwrap_or_default(),
            ),
            body,
        ))
    }
}

/// The assets a page links: `…/static/<name>` in `src` and `href` attributes.
fn assets_of(html: &str) -> Vec<String> {
    let mut found = Vec::new();
    for attribute in ["src=\"", "href=\""] {
        for part in html.split(attribute).skip(1) {
            if let Some(path) = part.split('"').next()
                && path.contains("/static/")
                && !found.iter().any(|f| f == path)
            {
                found.push(path.to_owned());
            }
        }
    }
    found
}

/// Seeds the runs, then times the pages.
pub async fn scenario(server: &Server, plan: &Plan, report: &mut Report) -> anyhow::Result<()> {
    let client = server.client();
    let on = &plan.on;
    let fanout = FANOUT.min(plan.agents.len() as u64).max(1);
    let jobs = plan.runs.div_ceil(fanout);
    let seeded = Instant::now();
    let mut last_job = String::new();
    for j in 0..jobs {
        let first = ((j * fanout) % plan.agents.len() as u64) as usize;
        let target: Vec<&String> = plan
            .agents
            .iter()
            .cycle()
            .skip(first)
            .take(fanout as usize)
            .collect();
        let job = client
            .post(
                "/api/jobs?wait=120",
                &json!({"command": "ping", "target": {"agents": target}, "timeout_s": 60}),
            )
            .await
            .context("seeding a ping job")?;
        last_job = job
            .get("job_id")
            .and_then(Value::as_str)
            .context("no job_id in POST /api/jobs")?
            .to_owned();
    }
    eprintln!(
        "outpost-bench: ui: {jobs} jobs of {fanout} runs seeded in {:.1} s",
        seeded.elapsed().as_secs_f64()
    );

    let mut session = Session::sign_in(server, &client).await?;
    let agents = plan.agents.len();
    let pages = agents.div_ceil(50).max(1);
    let tag = &plan.tag;
    let cases = [
        ("/ui/agents".to_owned(), "agents page 1"),
        (format!("/ui/agents?page={pages}"), "agents, last page"),
        (
            format!("/ui/agents?tag={tag}&status=online"),
            "agents filtered by tag and status",
        ),
        ("/ui/jobs".to_owned(), "jobs page 1"),
        (format!("/ui/jobs/{last_job}"), "one job of 100 runs"),
    ];
    let mut measured = Vec::new();
    let mut data = serde_json::Map::new();
    let mut bodies = Vec::new();
    for (path, what) in &cases {
        let ((p50, p99, max), body) = session.timed(path, plan.requests).await?;
        measured.push(format!("{what} {p50:.1} / {p99:.1} ms"));
        data.insert(
            (*what).to_owned(),
            json!({"path": path, "p50_ms": p50, "p99_ms": p99, "max_ms": max, "html_bytes": body.len()}),
        );
        bodies.push(body);
    }
    report.row(
        &format!(
            "dashboard page of a {agents}-agent fleet with {} runs, server time p50 / p99{on}",
            jobs * fanout
        ),
        "200 ms",
        "20 ms",
        format!("{} ({} requests each)", measured.join("; "), plan.requests),
        Value::Object(data),
    );

    // Page weight: the HTML of the two lists and the assets they load (the same two files).
    let mut asset_bytes = 0;
    let mut assets = Vec::new();
    for path in assets_of(&bodies[0]) {
        let (body, _) = session.get(&path).await?;
        asset_bytes += body.len();
        assets.push(json!({"path": path, "bytes": body.len()}));
    }
    let (agents_html, jobs_html) = (bodies[0].len(), bodies[3].len());
    report.row(
        &format!("dashboard page weight (HTML + JS + CSS){on}"),
        "—",
        "—",
        format!(
            "agents {:.1} KiB, jobs {:.1} KiB of HTML; JS + CSS {:.1} KiB (cached after the first page)",
            agents_html as f64 / 1024.0,
            jobs_html as f64 / 1024.0,
            asset_bytes as f64 / 1024.0
        ),
        json!({"agents_html": agents_html, "jobs_html": jobs_html, "assets": assets}),
    );
    Ok(())
}
